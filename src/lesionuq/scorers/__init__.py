"""Lesion scorers: the paper's GCNN and baselines behind one interface, built by name."""

from __future__ import annotations

from lesionuq.scorers.base import (
    SCORER_FILE,
    LesionScorer,
    NotFittedError,
    check_is_fitted,
    table_column,
)
from lesionuq.scorers.baselines import ColumnScorer, MetaSegScorer, SizeScorer
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.nn import LesionGCN
from lesionuq.scorers.registry import (
    REGISTRY,
    ScorerSpec,
    load_scorer,
    make_estimators,
    make_scorer,
    scorer_class,
)
from lesionuq.scorers.site import FrozenScorer, site_stack

__all__ = [
    "REGISTRY",
    "SCORER_FILE",
    "ColumnScorer",
    "FrozenScorer",
    "GCNNScorer",
    "LesionGCN",
    "LesionScorer",
    "MetaSegScorer",
    "NotFittedError",
    "ScorerSpec",
    "SizeScorer",
    "check_is_fitted",
    "load_scorer",
    "make_estimators",
    "make_scorer",
    "scorer_class",
    "site_stack",
    "table_column",
]
