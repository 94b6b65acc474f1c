"""Deprecated alias, moved to lesionuq.pipeline.learning_curve and lesionuq.evaluation.figures.

The learning curve's computation (subsampling, refitting, ``learning_curve.csv``) is a
pipeline step, :mod:`lesionuq.pipeline.learning_curve`; its figure is
:func:`lesionuq.evaluation.figures.learning_curve_figure`; its summary table is
:func:`lesionuq.evaluation.metrics.summarize_learning_curve`. The names below are
re-exported from there for one release.
"""

from __future__ import annotations

from lesionuq.evaluation.figures import learning_curve_figure, plot_learning_curve
from lesionuq.evaluation.metrics import summarize_learning_curve
from lesionuq.pipeline.learning_curve import (
    CSV_COLUMNS,
    DEFAULT_SIZES,
    LEARNED_METHODS,
    learning_curve,
    parse_sizes,
    stratified_case_subsample,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_SIZES",
    "LEARNED_METHODS",
    "learning_curve",
    "learning_curve_figure",
    "parse_sizes",
    "plot_learning_curve",
    "stratified_case_subsample",
    "summarize_learning_curve",
]
