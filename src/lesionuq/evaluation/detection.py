"""Lesion-level detection metrics used in MS-lesion work, with their matching rules.

Lesions are the 26-connected components of the predicted segmentation and of the ground
truth (:func:`lesionuq.lesions.components.label_lesions`, so predicted lesion ``k`` is label
``k`` of ``lesions.nii.gz``). Two matching rules:

- ``"iou"`` (Shifts 2022, Malinin et al.; ``lesion_f1_score`` of the Shifts ``mswml``
  code): a predicted lesion is a TP when its largest IoU with a single ground-truth
  lesion that it overlaps is ``>= 0.25``, else an FP; a ground-truth lesion is missed
  (FN) when its largest IoU with a single overlapping predicted lesion is ``< 0.25``.
  (Shifts labels with scipy's default 6-connectivity; here 26, the paper's choice.)
- ``"overlap"`` (WMH segmentation challenge, Kuijf et al. 2019): a predicted lesion is a
  TP when it shares at least one voxel with the ground truth; a ground-truth lesion is
  detected when it shares at least one voxel with the prediction.

Scores, with ``TP`` counted on predicted lesions and ``FN`` on ground-truth lesions:

- lesion TPR = detected ground-truth lesions / ground-truth lesions;
- lesion PPV = TP predicted lesions / predicted lesions;
- lesion F1 = ``TP / (TP + (FP + FN) / 2)`` (the Shifts formula; 1 when there is no lesion
  on either side). When lesions merge or split it differs from the harmonic mean of
  TPR and PPV, because TP and FN are counted on different sides.

Normalised Dice (nDSC, Raina et al. 2023, Shifts' ``dice_norm_metric``): with reference
lesion load ``r = 0.001`` and ``k = (1 - r) |G| / (r (|V| - |G|))`` (``k = 1`` when
``|G| = 0``), ``nDSC = 2 TP / (2 TP + k FP + FN)`` in voxels; 1 when both masks are empty.

Lesion-F1 retention curve (Molchanova et al. 2023, lesion scale): sort predicted
lesions by uncertainty; removing the most uncertain first, a removed lesion is handed to
a reader who corrects it (a removed FP disappears, a removed TP stays a TP), so the F1 at
retained fraction ``f`` is ``TP / (TP + (FP_retained + FN) / 2)``. The curve runs from
retained fraction 0 (all FPs removed) to 1 (the plain lesion F1); its area by the
trapezoid rule is 1 for a perfect ranking when there are no misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lesionuq.evaluation.metrics import as_bool
from lesionuq.lesions.components import label_lesions

__all__ = [
    "DETECTION_RULES",
    "LesionMatch",
    "case_detection_row",
    "detection_scores",
    "f1_retention_auc",
    "f1_retention_curve",
    "fold_detection_rows",
    "match_lesions",
    "normalised_dice",
    "retention_rows",
]

DETECTION_RULES: dict[str, str] = {
    "iou": "a predicted and a ground-truth lesion match when their IoU >= 0.25 (Shifts)",
    "overlap": "a predicted and a ground-truth lesion match when they share a voxel (WMH)",
}
"""Matching rule name -> the rule in one sentence (for tables and reports)."""


@dataclass(frozen=True)
class LesionMatch:
    """Predicted vs ground-truth lesions of one case under one rule.

    Attributes:
        rule: ``"iou"`` or ``"overlap"``.
        pred_tp: (Np,) bool, entry ``k - 1`` for predicted lesion ``k``.
        gt_detected: (Ng,) bool, entry ``j - 1`` for ground-truth lesion ``j``.
    """

    rule: str
    pred_tp: np.ndarray
    gt_detected: np.ndarray

    @property
    def n_tp(self) -> int:
        """Predicted lesions that match."""
        return int(self.pred_tp.sum())

    @property
    def n_fp(self) -> int:
        """Predicted lesions that do not match."""
        return int(self.pred_tp.size - self.pred_tp.sum())

    @property
    def n_fn(self) -> int:
        """Ground-truth lesions that are missed."""
        return int(self.gt_detected.size - self.gt_detected.sum())


def match_lesions(
    pred: np.ndarray,
    gt: np.ndarray,
    rule: str = "iou",
    iou_threshold: float = 0.25,
    connectivity: int = 26,
) -> LesionMatch:
    """Match predicted to ground-truth lesions (see the module docstring for the rules).

    Args:
        pred: (X, Y, Z) binary segmentation (nonzero = lesion).
        gt: (X, Y, Z) binary ground truth.
        rule: ``"iou"`` or ``"overlap"``.
        iou_threshold: IoU needed by the ``"iou"`` rule.
        connectivity: Connected-component connectivity (26, 18 or 6).

    Returns:
        The :class:`LesionMatch`.

    Raises:
        ValueError: Unknown rule or shape mismatch.
    """
    if rule not in DETECTION_RULES:
        raise ValueError(f"unknown matching rule '{rule}' (known: {', '.join(DETECTION_RULES)}).")
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}.")
    p_lab, n_p = label_lesions(pred, connectivity)
    g_lab, n_g = label_lesions(gt, connectivity)
    p, g = p_lab.reshape(-1).astype(np.int64), g_lab.reshape(-1).astype(np.int64)
    p_size = np.bincount(p, minlength=n_p + 1)
    g_size = np.bincount(g, minlength=n_g + 1)
    both = (p > 0) & (g > 0)
    keys, inter = np.unique(p[both] * (n_g + 1) + g[both], return_counts=True)
    k, j = np.divmod(keys, n_g + 1)
    if rule == "iou":
        ok = inter / (p_size[k] + g_size[j] - inter) >= iou_threshold
    else:
        ok = inter > 0
    pred_tp = np.zeros(n_p + 1, dtype=bool)
    gt_det = np.zeros(n_g + 1, dtype=bool)
    pred_tp[k[ok]] = True
    gt_det[j[ok]] = True
    return LesionMatch(rule, pred_tp[1:], gt_det[1:])


def detection_scores(match: LesionMatch) -> dict[str, float]:
    """Lesion TPR, PPV and F1 of one match (NaN where a denominator is 0, F1 excepted)."""
    return _scores(match.n_tp, match.n_fp, match.n_fn, match.gt_detected.size)


def _scores(n_tp: int, n_fp: int, n_fn: int, n_gt: int) -> dict[str, float]:
    nan = float("nan")
    n_pred = n_tp + n_fp
    denom = n_tp + 0.5 * (n_fp + n_fn)
    return {
        "lesion_tpr": (n_gt - n_fn) / n_gt if n_gt else nan,
        "lesion_ppv": n_tp / n_pred if n_pred else nan,
        "lesion_f1": n_tp / denom if denom else 1.0,
    }


def normalised_dice(pred: np.ndarray, gt: np.ndarray, r: float = 0.001) -> float:
    """Normalised Dice (nDSC) of Raina et al. (Shifts), see the module docstring.

    Args:
        pred: (X, Y, Z) binary segmentation.
        gt: (X, Y, Z) binary ground truth.
        r: Reference lesion load (share of lesion voxels).

    Returns:
        nDSC in [0, 1].
    """
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}.")
    n_g = int(g.sum())
    if n_g + int(p.sum()) == 0:
        return 1.0
    k = 1.0 if n_g == 0 else (1.0 - r) * n_g / (r * (g.size - n_g))
    tp = float(np.count_nonzero(p & g))
    fp = float(np.count_nonzero(p & ~g))
    fn = float(np.count_nonzero(~p & g))
    return 2.0 * tp / (2.0 * tp + k * fp + fn)


def case_detection_row(
    pred: np.ndarray, gt: np.ndarray, connectivity: int = 26, iou_threshold: float = 0.25
) -> dict[str, Any]:
    """Detection counts and scores of one case under both rules, and its nDSC.

    Returns:
        ``ndsc``, ``n_gt``, ``n_pred`` and, for each rule ``R`` in (``iou``, ``overlap``),
        ``R_tp``, ``R_fp``, ``R_fn``, ``R_lesion_tpr``, ``R_lesion_ppv``, ``R_lesion_f1``.
    """
    row: dict[str, Any] = {"ndsc": normalised_dice(pred, gt)}
    for rule in DETECTION_RULES:
        m = match_lesions(pred, gt, rule, iou_threshold, connectivity)
        row["n_gt"], row["n_pred"] = int(m.gt_detected.size), int(m.pred_tp.size)
        row |= {f"{rule}_tp": m.n_tp, f"{rule}_fp": m.n_fp, f"{rule}_fn": m.n_fn}
        row |= {f"{rule}_{k}": v for k, v in detection_scores(m).items()}
    return row


def fold_detection_rows(cases: pd.DataFrame) -> pd.DataFrame:
    """Per-fold detection metrics from :func:`case_detection_row` rows.

    Lesion counts are pooled over the fold's cases (then TPR / PPV / F1 computed once);
    nDSC is the mean over cases (as in Shifts).

    Args:
        cases: One row per test case with a ``fold`` column and the
            :func:`case_detection_row` columns.

    Returns:
        One row per fold: ``fold``, ``ndsc`` and for each rule ``R``
        ``R_lesion_tpr``, ``R_lesion_ppv``, ``R_lesion_f1``.
    """
    rows = []
    for fold, grp in cases.groupby("fold", sort=True):
        row: dict[str, Any] = {"fold": fold, "ndsc": float(grp["ndsc"].mean())}
        n_gt = int(grp["n_gt"].sum())
        for rule in DETECTION_RULES:
            tp, fp, fn = (int(grp[f"{rule}_{c}"].sum()) for c in ("tp", "fp", "fn"))
            row |= {f"{rule}_{k}": v for k, v in _scores(tp, fp, fn, n_gt).items()}
        rows.append(row)
    return pd.DataFrame(rows)


def f1_retention_curve(
    uncertainty: np.ndarray, is_tp: np.ndarray, n_fn: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-F1 retention curve (see the module docstring).

    Ties in uncertainty are broken by the input order (a stable sort), as in the
    reference implementation's ``argsort``.

    Args:
        uncertainty: (N,) per predicted lesion, higher = less trusted.
        is_tp: (N,) bool, predicted lesion matches.
        n_fn: Missed ground-truth lesions (fixed along the curve).

    Returns:
        retained: (N + 1,) fractions of lesions kept, 0, 1/N, ..., 1.
        f1: (N + 1,) lesion F1 at each retained fraction.
    """
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if u.shape != tp.shape:
        raise ValueError(f"{u.size} uncertainties for {tp.size} labels.")
    n = u.size
    order = np.argsort(-u, kind="stable")  # most uncertain first
    fp_sorted = (~tp[order]).astype(np.int64)
    # after removing the i most uncertain lesions, FP left = FP total - FP among them
    fp_removed = np.concatenate([[0], np.cumsum(fp_sorted)])
    fp_left = int(fp_sorted.sum()) - fp_removed  # (N + 1,), index i = i removed
    n_tp = int(tp.sum())
    denom = n_tp + 0.5 * (fp_left + n_fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, n_tp / np.where(denom > 0, denom, 1.0), 1.0)
    retained = 1.0 - np.arange(n + 1) / max(n, 1)
    return retained[::-1].copy(), f1[::-1].copy()


def f1_retention_auc(uncertainty: np.ndarray, is_tp: np.ndarray, n_fn: int) -> float:
    """Area under :func:`f1_retention_curve` (trapezoid rule over the retained fraction)."""
    x, y = f1_retention_curve(uncertainty, is_tp, n_fn)
    if x.size < 2:
        return float(y[0])
    return float(np.trapezoid(y, x))


def retention_rows(
    lesions: pd.DataFrame,
    methods: Sequence[str],
    n_fn: dict[Any, int],
    tp_column: str = "is_tp",
) -> pd.DataFrame:
    """Lesion-F1 retention AUC per fold and method.

    Args:
        lesions: One row per test lesion with ``fold``, ``tp_column`` and one column per
            method (its uncertainty), as in ``results/lesions.csv``.
        methods: Method columns to evaluate.
        n_fn: Fold -> missed ground-truth lesions in that fold (e.g. the summed ``iou_fn``
            of :func:`case_detection_row`).
        tp_column: Column telling whether each predicted lesion is a TP.

    Returns:
        One row per (fold, method): ``fold``, ``method``, ``f1_retention_auc``.
    """
    rows = []
    for fold, grp in lesions.groupby("fold", sort=True):
        tp = as_bool(grp[tp_column])
        for m in methods:
            auc = f1_retention_auc(grp[m].to_numpy(dtype=np.float64), tp, int(n_fn.get(fold, 0)))
            rows.append({"fold": fold, "method": m, "f1_retention_auc": auc})
    return pd.DataFrame(rows, columns=["fold", "method", "f1_retention_auc"])
