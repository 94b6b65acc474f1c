"""Evaluation: Dice, accuracy-confidence curves, Tables 1 and 2, Figure 2 and the report."""

from __future__ import annotations

from lesionuq.evaluation.curves import (
    AccuracyConfidenceAUC,
    ac_auc,
    accuracy_confidence_curve,
    curve_on_grid,
    rank_probability,
    within_fold_auc,
)
from lesionuq.evaluation.figures import mean_curve, plot_accuracy_confidence
from lesionuq.evaluation.metrics import as_bool, dice, spearman_rho, table1, table2
from lesionuq.evaluation.render import render_lesion_crop
from lesionuq.evaluation.report import write_report

__all__ = [
    "AccuracyConfidenceAUC",
    "ac_auc",
    "accuracy_confidence_curve",
    "as_bool",
    "curve_on_grid",
    "dice",
    "mean_curve",
    "plot_accuracy_confidence",
    "rank_probability",
    "render_lesion_crop",
    "spearman_rho",
    "table1",
    "table2",
    "within_fold_auc",
    "write_report",
]
