"""Lesions: connected components, their table (IoU_adj, TP/FP) and their graphs."""

from __future__ import annotations

from lesionuq.lesions.components import (
    LESION_TABLE_COLUMNS,
    adjusted_iou,
    label_lesions,
    lesion_table,
)
from lesionuq.lesions.dataset import LesionSet
from lesionuq.lesions.graphs import (
    EXTRA_FEATURES,
    build_graphs,
    case_lesions,
    lesion_graph,
    neighbour_edges,
    node_feature_names,
)

__all__ = [
    "EXTRA_FEATURES",
    "LESION_TABLE_COLUMNS",
    "LesionSet",
    "adjusted_iou",
    "build_graphs",
    "case_lesions",
    "label_lesions",
    "lesion_graph",
    "lesion_table",
    "neighbour_edges",
    "node_feature_names",
]
