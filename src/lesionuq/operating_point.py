"""A review threshold with a known meaning, chosen on validation lesions.

A lesion is *flagged for review* when ``P(FP) >= threshold`` (the rule of ``predict``).
The threshold is chosen on the validation lesions for a target written as a string:

- ``"tp:q"``: keep at least a share ``q`` of the true lesions unflagged. The threshold is
  the lowest one that does so (flag as many lesions as the target allows).
- ``"fp:q"``: flag at least a share ``q`` of the false-positive lesions. The threshold is
  the highest one that does so (flag as few lesions as the target allows).

Every threshold between two consecutive distinct validation P(FP) values flags the same
validation lesions; the chosen one is the midpoint of that gap (the most room on either
side for new lesions), so the target is met on the validation lesions by construction,
ties included (lesions with equal P(FP) are flagged together).

:func:`operating_point_effect` states what a threshold does on other (test) lesions.

Example:
    >>> t = choose_threshold(p_fp_val, is_tp_val, "tp:0.95")
    >>> operating_point_effect(p_fp_test, is_tp_test, t)["fp_flagged"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TARGET",
    "FEW_VALIDATION_LESIONS",
    "OperatingPoint",
    "choose_threshold",
    "operating_point_effect",
    "parse_target",
]

DEFAULT_TARGET = "tp:0.95"
"""Keep at least 95 % of the true lesions unflagged."""
#: Validation lesions below which a learned scorer, or a threshold chosen on them, is
#: flagged as resting on little evidence (reports, printed tables, the review sentence):
#: on the project's quality bench the paper's GCNN passed the best untrained baseline
#: between 100 and 200 training lesions; the paper trained it on ~700 per fold.
FEW_VALIDATION_LESIONS = 100


def parse_target(target: str) -> tuple[str, float]:
    """Parse ``"tp:0.95"`` / ``"fp:0.5"`` into ``("tp", 0.95)``.

    Raises:
        ValueError: One sentence saying what is wrong with ``target``.
    """
    text = str(target).strip().lower()
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("tp", "fp"):
        raise ValueError(
            f"review target {target!r} must look like 'tp:0.95' (keep that share of true "
            "lesions unflagged) or 'fp:0.5' (flag that share of false positives)."
        )
    try:
        q = float(value)
    except ValueError:
        raise ValueError(f"review target {target!r}: {value!r} is not a number.") from None
    if not (0.0 < q <= 1.0):
        raise ValueError(f"review target {target!r}: the share must be in (0, 1], got {q:g}.")
    return kind, q


def _midpoint(lo: float, hi: float | None) -> float:
    if hi is None:
        return float(np.nextafter(lo, np.inf))
    return float(lo + (hi - lo) / 2.0)


def choose_threshold(p_fp: np.ndarray, is_tp: np.ndarray, target: str = DEFAULT_TARGET) -> float:
    """The review threshold meeting ``target`` on the given (validation) lesions.

    Args:
        p_fp: (N,) P(FP) of the validation lesions.
        is_tp: (N,) bool, true lesion.
        target: ``"tp:q"`` or ``"fp:q"`` (see the module docstring).

    Returns:
        The threshold ``t``; lesions with ``p_fp >= t`` are flagged. For ``tp:q``, at least
        ``ceil(q * n_tp)`` true lesions have ``p_fp < t``; for ``fp:q``, at least
        ``ceil(q * n_fp)`` FP lesions have ``p_fp >= t``.

    Raises:
        ValueError: Bad target, mismatched arrays, NaN, or no lesion of the class the
            target is about.
    """
    kind, q = parse_target(target)
    p = np.asarray(p_fp, dtype=np.float64).reshape(-1)
    tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if p.shape != tp.shape:
        raise ValueError(f"{p.size} P(FP) values for {tp.size} labels.")
    if not np.all(np.isfinite(p)):
        raise ValueError("P(FP) values contain NaN or inf.")
    values = np.unique(p)  # all distinct values, ascending
    if kind == "tp":
        pos = np.sort(p[tp])
        if pos.size == 0:
            raise ValueError(f"cannot meet {target!r}: the validation lesions hold no true lesion.")
        k = math.ceil(q * pos.size - 1e-9)
        lo = pos[k - 1]  # the k-th smallest TP P(FP) must stay below t
        above = values[values > lo]
        return _midpoint(float(lo), float(above[0]) if above.size else None)
    neg = np.sort(p[~tp])[::-1]
    if neg.size == 0:
        raise ValueError(f"cannot meet {target!r}: the validation lesions hold no false positive.")
    k = math.ceil(q * neg.size - 1e-9)
    hi = float(neg[k - 1])  # the k-th largest FP P(FP) must be flagged: t <= hi
    below = values[values < hi]
    if not below.size:
        return hi
    return _midpoint(float(below[-1]), hi)


def operating_point_effect(
    p_fp: np.ndarray, is_tp: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """What flagging ``p_fp >= threshold`` does to a set of lesions.

    Lesion precision is the share of true lesions among the lesions shown: all of them
    before, the unflagged ones after removing the flagged lesions.

    Args:
        p_fp: (N,) P(FP).
        is_tp: (N,) bool.
        threshold: The review threshold.

    Returns:
        ``n``, ``n_tp``, ``n_fp``, ``n_flagged``, ``fp_flagged`` (share of FP lesions
        flagged), ``tp_flagged`` (share of TP lesions flagged), ``precision_before``,
        ``precision_after`` (NaN where a denominator is 0).
    """
    p = np.asarray(p_fp, dtype=np.float64).reshape(-1)
    tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if p.shape != tp.shape:
        raise ValueError(f"{p.size} P(FP) values for {tp.size} labels.")
    flag = p >= threshold
    n_tp, n_fp = int(tp.sum()), int((~tp).sum())
    kept = ~flag

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(threshold),
        "n": int(p.size),
        "n_tp": n_tp,
        "n_fp": n_fp,
        "n_flagged": int(flag.sum()),
        "fp_flagged": ratio(int((flag & ~tp).sum()), n_fp),
        "tp_flagged": ratio(int((flag & tp).sum()), n_tp),
        "precision_before": ratio(n_tp, int(p.size)),
        "precision_after": ratio(int((kept & tp).sum()), int(kept.sum())),
    }


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen review threshold, stored with the fold model.

    Attributes:
        target: The target string (``"tp:0.95"``).
        threshold: The threshold chosen on the validation lesions.
        validation: :func:`operating_point_effect` on those validation lesions.
    """

    target: str
    threshold: float
    validation: dict[str, float | int]

    @classmethod
    def choose(
        cls, p_fp: np.ndarray, is_tp: np.ndarray, target: str = DEFAULT_TARGET
    ) -> OperatingPoint:
        """Choose the threshold for ``target`` on validation lesions."""
        t = choose_threshold(p_fp, is_tp, target)
        return cls(target, t, operating_point_effect(p_fp, is_tp, t))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"target": self.target, "threshold": self.threshold, "validation": self.validation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OperatingPoint:
        """Rebuild from :meth:`to_dict` output."""
        parse_target(d["target"])
        return cls(str(d["target"]), float(d["threshold"]), dict(d.get("validation", {})))
