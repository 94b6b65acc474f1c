"""How well P(FP) values match the observed FP frequency on test lesions.

- Reliability diagram: ``n_bins`` equal-width bins of P(FP) over [0, 1] (bin ``b`` holds
  ``b/n_bins <= p < (b+1)/n_bins``, the last bin also holds ``p = 1``); per bin the count,
  the mean predicted P(FP) and the observed FP frequency.
- Expected calibration error (Guo et al. 2017), equal-width bins weighted by count:
  ``ECE = sum_b (n_b / N) |freq_b - mean_b|``. It equals MONAI's
  ``CalibrationErrorMetric(num_bins, calibration_reduction="expected")`` on one channel.
- Brier score ``mean((p - y)^2)``; log loss ``-mean(y log p + (1 - y) log(1 - p))`` with
  ``p`` clipped to ``[eps, 1 - eps]``; MAE ``mean|pred - target|`` (predicted IoU_adj).

:func:`calibration_rows` builds the rows of ``results/calibration.csv``. The reliability
diagrams are drawn by :mod:`lesionuq.evaluation.figures` (``plot_reliability``,
``plot_calibration``); their names here are deprecated aliases for one release, resolved
on first use (the figures import this module, so a top-level import would be a cycle).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CALIBRATION_COLUMNS",
    "Reliability",
    "brier_score",
    "calibration_rows",
    "calibration_table",
    "expected_calibration_error",
    "log_loss",
    "mean_absolute_error",
    "reliability_diagram",
]

CALIBRATION_COLUMNS: tuple[str, ...] = (
    "fold",
    "method",
    "stage",
    "ece",
    "brier",
    "log_loss",
    "mae",
    "n",
)
"""Columns of ``results/calibration.csv``; ``stage`` is ``before`` or ``after``."""


def _prob_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities for {y.size} labels.")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must be finite and in [0, 1].")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be binary (0/1 or bool).")
    return p, y.astype(np.float64)


@dataclass(frozen=True)
class Reliability:
    """Reliability diagram data.

    Attributes:
        edges: (B + 1,) bin edges, ``linspace(0, 1, B + 1)``.
        counts: (B,) int lesions per bin.
        mean_predicted: (B,) mean P(FP) per bin (NaN for empty bins).
        observed: (B,) observed FP frequency per bin (NaN for empty bins).
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray

    @property
    def ece(self) -> float:
        """Count-weighted mean |observed - mean_predicted| (NaN without lesions)."""
        n = int(self.counts.sum())
        if n == 0:
            return float("nan")
        ok = self.counts > 0
        gap = np.abs(self.observed[ok] - self.mean_predicted[ok])
        return float(np.sum(self.counts[ok] * gap) / n)

    def to_frame(self) -> pd.DataFrame:
        """One row per bin: lo, hi, count, mean_predicted, observed."""
        return pd.DataFrame(
            {
                "lo": self.edges[:-1],
                "hi": self.edges[1:],
                "count": self.counts,
                "mean_predicted": self.mean_predicted,
                "observed": self.observed,
            }
        )


def reliability_diagram(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> Reliability:
    """Bin lesions by P(FP) into equal-width bins.

    Args:
        p: (N,) P(FP) in [0, 1].
        y: (N,) 1 = FP lesion.
        n_bins: Number of bins B.

    Returns:
        The :class:`Reliability` data.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    p, y = _prob_label(p, y)
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=n_bins) / counts
        freq = np.bincount(b, weights=y, minlength=n_bins) / counts
    return Reliability(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_p, freq)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins weighted by count (NaN without lesions)."""
    return reliability_diagram(p, y, n_bins).ece


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of P(FP) against the 0/1 label (NaN without lesions)."""
    p, y = _prob_label(p, y)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def log_loss(p: np.ndarray, y: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood, ``p`` clipped to ``[eps, 1 - eps]`` (NaN if empty)."""
    p, y = _prob_label(p, y)
    if not p.size:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def mean_absolute_error(pred: np.ndarray, target: np.ndarray) -> float:
    """``mean|pred - target|`` over the finite pairs (NaN when none)."""
    a = np.asarray(pred, dtype=np.float64).reshape(-1)
    b = np.asarray(target, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} predictions for {b.size} targets.")
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else float("nan")


def _stage_row(
    fold: int | str,
    method: str,
    stage: str,
    p: np.ndarray | None,
    is_fp: np.ndarray,
    iou_pred: np.ndarray | None,
    iou: np.ndarray | None,
    n_bins: int,
) -> dict[str, Any]:
    nan = float("nan")
    row: dict[str, Any] = {"fold": fold, "method": method, "stage": stage}
    if p is None:
        row |= {"ece": nan, "brier": nan, "log_loss": nan}
    else:
        row |= {
            "ece": expected_calibration_error(p, is_fp, n_bins),
            "brier": brier_score(p, is_fp),
            "log_loss": log_loss(p, is_fp),
        }
    row["mae"] = (
        mean_absolute_error(iou_pred, iou) if iou_pred is not None and iou is not None else nan
    )
    row["n"] = int(np.asarray(is_fp).size)
    return row


def calibration_rows(
    fold: int | str,
    method: str,
    is_fp: np.ndarray,
    p_before: np.ndarray | None,
    p_after: np.ndarray | None,
    iou: np.ndarray | None = None,
    iou_pred_before: np.ndarray | None = None,
    iou_pred_after: np.ndarray | None = None,
    n_bins: int = 10,
) -> list[dict[str, Any]]:
    """The two rows (``before``, ``after``) of one method on one fold's test lesions.

    Args:
        fold: Fold index.
        method: Method name (``gcnn_classif``, ...).
        is_fp: (N,) 1 = FP test lesion.
        p_before: (N,) the raw score read as P(FP) (clipped to [0, 1] by the caller for
            regressors' ``1 - IoU_hat``), or None.
        p_after: (N,) calibrated P(FP), or None.
        iou: (N,) observed IoU_adj (regressors), or None.
        iou_pred_before: (N,) predicted IoU_adj before the IoU recalibration
            (regressors), or None (then ``mae`` is NaN).
        iou_pred_after: (N,) the same after the recalibration, or None.
        n_bins: Bins of the ECE.

    Returns:
        Two dicts with the :data:`CALIBRATION_COLUMNS`.
    """
    return [
        _stage_row(fold, method, "before", p_before, is_fp, iou_pred_before, iou, n_bins),
        _stage_row(fold, method, "after", p_after, is_fp, iou_pred_after, iou, n_bins),
    ]


def calibration_table(long: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """``results/calibration.csv``: per fold and method, and pooled (``fold = "all"``).

    Args:
        long: One row per (fold, method, test lesion): ``fold, method, is_fp, p_before,
            p_after`` and, for regressors, ``iou, iou_before, iou_after`` (the ``long``
            frames of :func:`lesionuq.pipeline.evaluate.calibrate_fold`, concatenated).
        n_bins: Bins of the expected calibration error.

    Returns:
        Two rows (``stage`` before / after) per fold and method with ``ece``, ``brier``,
        ``log_loss``, ``mae`` (predicted IoU_adj, regressors) and ``n``.
    """
    rows: list[dict] = []
    if long.empty:
        return pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    groups = [(k, g) for k, g in long.groupby(["fold", "method"], sort=True)]
    groups += [(("all", m), g) for m, g in long.groupby("method", sort=False)]
    for (fold, method), g in groups:
        if not len(g):
            continue
        reg = "iou" in g and g["iou"].notna().all()

        def col(name: str, g: pd.DataFrame = g, reg: bool = reg) -> np.ndarray | None:
            return g[name].to_numpy(dtype=np.float64) if reg else None

        rows += calibration_rows(
            fold,
            method,
            g["is_fp"].to_numpy(dtype=bool),
            g["p_before"].to_numpy(dtype=np.float64),
            g["p_after"].to_numpy(dtype=np.float64),
            col("iou"),
            col("iou_before"),
            col("iou_after"),
            n_bins=n_bins,
        )
    return pd.DataFrame(rows)


_MOVED = {"plot_calibration", "plot_reliability"}


def __getattr__(name: str) -> Any:
    """Deprecated aliases of the diagrams, now in :mod:`lesionuq.evaluation.figures`.

    Resolved on first use (PEP 562) because the figures import this module; to go after
    one release.
    """
    if name in _MOVED:
        warnings.warn(
            f"lesionuq.evaluation.calibration_metrics.{name} moved to "
            f"lesionuq.evaluation.figures.{name}.",
            DeprecationWarning,
            stacklevel=2,
        )
        # lazy: lesionuq.evaluation.figures imports this module (a top-level import: a cycle)
        return getattr(importlib.import_module("lesionuq.evaluation.figures"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
