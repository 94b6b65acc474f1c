"""Scorer internals: the sparse GCN layer, the lesion GCNNs and their training loop.

Used by both GCNN scorers (:mod:`lesionuq.scorers.gcnn`,
:mod:`lesionuq.scorers.gcnn_ens`, and :mod:`lesionuq.scorers.robust` through the first):

- :mod:`.conv`: :func:`normalized_edges` (and :func:`normalized_edges_each`),
  :func:`gcn_adjacency`, :class:`SymmetricGCNConv`;
- :mod:`.models`: :class:`LesionGCN` (the paper's) and :class:`HybridLesionGCN`;
- :mod:`.train`: :func:`fit_graph_model`, the one training loop, and :func:`predict`.
"""

from __future__ import annotations

from lesionuq.scorers.nn.conv import (
    SymmetricGCNConv,
    gcn_adjacency,
    normalized_edges,
    normalized_edges_each,
)
from lesionuq.scorers.nn.models import HYBRID_READOUTS, READOUTS, HybridLesionGCN, LesionGCN
from lesionuq.scorers.nn.train import (
    FittedModel,
    NullProgress,
    Schedule,
    balanced_class_weight,
    fit_graph_model,
    predict,
    split_train_val,
)

__all__ = [
    "HYBRID_READOUTS",
    "READOUTS",
    "FittedModel",
    "HybridLesionGCN",
    "LesionGCN",
    "NullProgress",
    "Schedule",
    "SymmetricGCNConv",
    "balanced_class_weight",
    "fit_graph_model",
    "gcn_adjacency",
    "normalized_edges",
    "normalized_edges_each",
    "predict",
    "split_train_val",
]
