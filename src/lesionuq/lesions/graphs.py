"""Lesion graphs: each lesion's slightly dilated mask as a voxel graph (paper 2.2).

Nodes are the voxels of the lesion mask dilated ``cfg.dilation`` times by the 3x3x3
cube; edges join nodes that are 26-neighbours (both directions, no self loops). Node
features, in order (``n`` = number of input sequences):

    ``[I_1, ..., I_n, label, entropy, variance, pcs]`` -> ``n + 4`` columns,

where ``label`` is 1 for voxels of the predicted segmentation and 0 elsewhere and
``pcs`` is the PCS *confidence* map as is; optional extras (``cfg.extra_features``)
follow: ``"position"`` (3 columns, voxel index / (shape - 1), in [0, 1]) and
``"border_distance"`` (Euclidean distance in voxels to the lesion border, positive
inside, negative outside).

Edges come from an index volume over the lesion's bounding box and the 26 neighbour
offsets (one vectorised shift per offset), never from a loop over voxels.

Example:
    >>> labels, lesions = case_lesions(maps.seg, image, maps, gt, affine, GraphConfig(), "c0")
    >>> lesions.graphs[0]
    Data(x=[125, 5], edge_index=[2, 2604], y_iou=[1], y_fp=[1], ...)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch_geometric.data import Data

from lesionuq.config import GraphConfig
from lesionuq.lesions.components import adjusted_iou, label_lesions, lesion_table
from lesionuq.lesions.dataset import LesionSet

if TYPE_CHECKING:
    from lesionuq.uncertainty import VoxelMaps

__all__ = [
    "EXTRA_FEATURES",
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

EXTRA_FEATURES: dict[str, tuple[str, ...]] = {
    "position": ("position_x", "position_y", "position_z"),
    "border_distance": ("border_distance",),
}
"""Optional node features: config name -> feature column names."""

_OFFSETS = np.array(
    [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)], dtype=np.int64
)
"""(26, 3) neighbour offsets."""

_CUBE = np.ones((3, 3, 3), dtype=bool)


def node_feature_names(
    n_sequences: int, cfg: GraphConfig, sequences: Sequence[str] | None = None
) -> list[str]:
    """Names of the node feature columns, in order.

    Args:
        n_sequences: Number of input sequences n.
        cfg: Graph config (its ``extra_features``).
        sequences: Names of the sequences (default ``image_0, image_1, ...``).

    Returns:
        ``n + 4`` names, plus those of the extras.

    Raises:
        ValueError: Wrong number of sequence names, or an unknown extra feature.
    """
    if sequences is None:
        sequences = [f"image_{i}" for i in range(n_sequences)]
    if len(sequences) != n_sequences:
        raise ValueError(f"{len(sequences)} sequence names for {n_sequences} sequences.")
    names = [*sequences, "label", "entropy", "variance", "pcs"]
    for extra in cfg.extra_features:
        if extra not in EXTRA_FEATURES:
            raise ValueError(
                f"unknown extra feature '{extra}' (known: {', '.join(EXTRA_FEATURES)})."
            )
        names.extend(EXTRA_FEATURES[extra])
    return names


def neighbour_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-neighbour graph of the voxels of a mask.

    Nodes are numbered in C order of ``mask``. For each of the 26 offsets ``d`` the
    index volume is shifted by ``d`` (padded with -1), and node ``i`` at voxel ``v`` is
    joined to the node at ``v + d`` when there is one. Both directions are listed (the
    graph is symmetric), sorted by source node, without self loops.

    Args:
        mask: (X, Y, Z) bool.

    Returns:
        coords: (N, 3) int64 voxel indices of the nodes.
        edge_index: (2, E) int64 ``[source, target]``.
    """
    mask = np.asarray(mask, dtype=bool)
    coords = np.argwhere(mask)
    n = len(coords)
    index = np.full(np.add(mask.shape, 2), -1, dtype=np.int64)
    inner = index[1:-1, 1:-1, 1:-1]
    inner[mask] = np.arange(n, dtype=np.int64)
    sx, sy, sz = mask.shape
    nbr = np.empty((n, len(_OFFSETS)), dtype=np.int64)
    for col, (dx, dy, dz) in enumerate(_OFFSETS):
        shifted = index[1 + dx : 1 + dx + sx, 1 + dy : 1 + dy + sy, 1 + dz : 1 + dz + sz]
        nbr[:, col] = shifted[mask]
    valid = nbr >= 0
    src = np.nonzero(valid)[0]
    edge_index = np.stack([src, nbr[valid]])
    return coords, edge_index


def lesion_graph(
    labels: np.ndarray,
    lesion_id: int,
    box: tuple[slice, slice, slice],
    image: np.ndarray,
    maps: VoxelMaps,
    cfg: GraphConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Node features and edges of one lesion.

    Args:
        labels: (X, Y, Z) int lesion labels.
        lesion_id: The lesion's label.
        box: The lesion's bounding box (``scipy.ndimage.find_objects``).
        image: (C, X, Y, Z) input intensities.
        maps: Voxel maps ``entropy``, ``variance``, ``pcs`` each (X, Y, Z).
        cfg: ``dilation`` and ``extra_features``.

    Returns:
        x: (n_nodes, C + 4 [+ extras]) float32 node features.
        edge_index: (2, E) int64.
    """
    shape = labels.shape
    grow = cfg.dilation + 1
    crop = tuple(
        slice(max(s.start - grow, 0), min(s.stop + grow, size))
        for s, size in zip(box, shape, strict=True)
    )
    lesion = labels[crop] == lesion_id
    nodes = lesion
    if cfg.dilation > 0:
        nodes = ndimage.binary_dilation(lesion, structure=_CUBE, iterations=cfg.dilation)
    coords, edge_index = neighbour_edges(nodes)
    columns = [image[(slice(None), *crop)][:, nodes].T]
    columns.append((labels[crop][nodes] > 0)[:, None])
    for name in ("entropy", "variance", "pcs"):
        columns.append(np.asarray(getattr(maps, name))[crop][nodes][:, None])
    for extra in cfg.extra_features:
        if extra == "position":
            start = np.array([s.start for s in crop])
            denom = np.maximum(np.asarray(shape) - 1, 1)
            columns.append((coords + start) / denom)
        elif extra == "border_distance":
            inside = ndimage.distance_transform_edt(lesion)
            outside = ndimage.distance_transform_edt(~lesion)
            columns.append((inside - outside)[nodes][:, None])
        else:
            raise ValueError(
                f"unknown extra feature '{extra}' (known: {', '.join(EXTRA_FEATURES)})."
            )
    x = np.concatenate([np.asarray(c, dtype=np.float32) for c in columns], axis=1)
    return x, edge_index


def build_graphs(
    labels: np.ndarray,
    image: np.ndarray,
    maps: VoxelMaps,
    table: pd.DataFrame,
    cfg: GraphConfig,
) -> list[Data]:
    """One PyG graph per row of a lesion table (same order).

    Args:
        labels: (X, Y, Z) int lesion labels 0..N.
        image: (C, X, Y, Z) input intensities (C = n sequences).
        maps: Voxel maps ``entropy``, ``variance``, ``pcs`` each (X, Y, Z).
        table: Lesion table (:func:`~lesionuq.lesions.components.lesion_table`) with
            ``case_id``, ``lesion_id``, ``n_voxels``, ``iou_adj``, ``is_tp``.
        cfg: ``dilation`` and ``extra_features``.

    Returns:
        ``Data`` objects with ``x`` (n_nodes, C + 4 [+ extras]) float32, ``edge_index``
        (2, E) int64, ``y_iou`` (1,) float32 (NaN without ground truth), ``y_fp`` (1,)
        int64 (1 = FP, i.e. not ``is_tp``), ``case_id`` str, ``lesion_id`` int, ``size``
        int (undilated voxels; read it as ``data["size"]``, ``data.size`` is a method).

    Raises:
        ValueError: Shapes disagree, a table lesion is absent from ``labels``, or an
            extra feature is unknown.
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[1:] != labels.shape:
        raise ValueError(f"image shape {image.shape} is not (C, *{labels.shape}).")
    node_feature_names(image.shape[0], cfg)  # validates extra_features
    if len(table) == 0:
        return []
    ids = table["lesion_id"].to_numpy(dtype=np.int64)
    boxes = ndimage.find_objects(labels, max_label=int(ids.max()))
    graphs = []
    for row, lesion_id in zip(table.itertuples(index=False), ids, strict=True):
        box = boxes[lesion_id - 1] if lesion_id >= 1 else None
        if box is None:
            raise ValueError(f"lesion {lesion_id} of the table is absent from the labels.")
        x, edge_index = lesion_graph(labels, int(lesion_id), box, image, maps, cfg)
        graphs.append(
            Data(
                x=torch.from_numpy(x),
                edge_index=torch.from_numpy(edge_index),
                y_iou=torch.tensor([row.iou_adj], dtype=torch.float32),
                y_fp=torch.tensor([0 if row.is_tp else 1], dtype=torch.long),
                case_id=str(row.case_id),
                lesion_id=int(lesion_id),
                size=int(row.n_voxels),
            )
        )
    return graphs


def case_lesions(
    seg: np.ndarray,
    image: np.ndarray,
    maps: VoxelMaps,
    gt: np.ndarray | None,
    affine: np.ndarray,
    cfg: GraphConfig,
    case_id: str,
    connectivity: int = 26,
    ignore: np.ndarray | None = None,
) -> tuple[np.ndarray, LesionSet]:
    """Label, tabulate and graph the lesions of one case.

    Args:
        seg: (X, Y, Z) binary segmentation (nonzero = lesion).
        image: (C, X, Y, Z) input intensities.
        maps: Voxel maps ``entropy``, ``variance``, ``pcs`` each (X, Y, Z).
        gt: (X, Y, Z) ground-truth mask, or None.
        affine: (4, 4) voxel-to-world affine.
        cfg: Graph config.
        case_id: Case identifier for the table and graphs.
        connectivity: Lesion connectivity (26 in the paper).
        ignore: (X, Y, Z) ignore region, or None (see
            :func:`~lesionuq.lesions.components.lesion_table`).

    Returns:
        labels: (X, Y, Z) int32 lesion labels 1..N (``lesions.nii.gz``).
        lesions: :class:`LesionSet` of the N lesions (table + graphs).
    """
    labels, n = label_lesions(seg, connectivity)
    table = lesion_table(labels, n, maps, gt, affine, cfg, case_id, connectivity, ignore)
    return labels, LesionSet(table, build_graphs(labels, image, maps, table, cfg))
