"""Lesions of a segmentation: connected components, adjusted IoU, the lesion table.

A *lesion* is a connected component of the binary segmentation under 26-connectivity
(paper 2.2). Each lesion gets its adjusted IoU with the ground truth (MetaSeg, Rottmann
et al. 2020), is a true positive when ``IoU_adj >= epsilon``, and gets the voxel-wise
uncertainty aggregates the baselines need (mean and logsum, paper 3.2).

Everything is vectorised over the volume: one labelling per volume and ``np.bincount`` /
``scipy.ndimage.find_objects`` over the lesion voxels, never a Python loop per voxel or
per lesion.

Example:
    >>> labels, n = label_lesions(maps.seg)
    >>> table = lesion_table(labels, n, maps, gt, affine, GraphConfig(), "case_0")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import cc3d
import numpy as np
import pandas as pd
from scipy import ndimage

from lesionuq.config import GraphConfig

if TYPE_CHECKING:
    from lesionuq.uncertainty import VoxelMaps

__all__ = [
    "IGNORE_FRACTION",
    "LESION_TABLE_COLUMNS",
    "adjusted_iou",
    "ignored_lesions",
    "label_lesions",
    "lesion_table",
]

IGNORE_FRACTION = 0.5
"""A lesion with *more than* this fraction of its voxels in the case's ignore region is
an ignored lesion: neither TP nor FP (``in_ignore``), left out of fitting and evaluation."""

LESION_TABLE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "lesion_id",
    "n_voxels",
    "volume_mm3",
    "centroid_x",
    "centroid_y",
    "centroid_z",
    "bbox",
    "iou_adj",
    "is_tp",
    "in_ignore",
    "entropy_mean",
    "entropy_logsum",
    "variance_mean",
    "variance_logsum",
    "pcs_mean",
    "pcs_logsum",
)
"""Columns of :func:`lesion_table`, in order."""

_Connectivity = Literal[6, 18, 26]
_CONNECTIVITIES: tuple[_Connectivity, ...] = (6, 18, 26)


def _checked_connectivity(connectivity: int) -> _Connectivity:
    """``connectivity`` as cc3d's literal type; ValueError unless it is 6, 18 or 26."""
    for allowed in _CONNECTIVITIES:
        if connectivity == allowed:
            return allowed
    raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}.")


def label_lesions(seg: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a binary segmentation, numbered in a stable order.

    Labels are ``1..N`` ordered by each component's first voxel in C (row-major) order,
    so the numbering depends only on the segmentation, not on the labelling library.

    Args:
        seg: (X, Y, Z) segmentation; any nonzero voxel is foreground.
        connectivity: 26 (faces, edges and corners, the paper's choice), 18 or 6.

    Returns:
        labels: (X, Y, Z) int32, 0 = background, 1..N = lesions.
        n: Number of lesions N.

    Raises:
        ValueError: ``seg`` is not 3-D or ``connectivity`` is not 6, 18 or 26.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"seg must be 3-D (X, Y, Z), got shape {seg.shape}.")
    cc_connectivity = _checked_connectivity(connectivity)
    raw, n = cc3d.connected_components(
        np.ascontiguousarray(seg != 0), connectivity=cc_connectivity, return_N=True
    )
    n = int(n)
    labels = np.zeros(seg.shape, dtype=np.int32)
    if n == 0:
        return labels, 0
    flat = raw.reshape(-1)
    idx = np.flatnonzero(flat)  # C order, ascending
    lab = flat[idx].astype(np.int64)
    first = np.full(n + 1, flat.size, dtype=np.int64)
    np.minimum.at(first, lab, idx)
    order = np.argsort(first[1:], kind="stable")  # old label - 1, by first voxel
    new_of_old = np.zeros(n + 1, dtype=np.int32)
    new_of_old[order + 1] = np.arange(1, n + 1, dtype=np.int32)
    labels.reshape(-1)[idx] = new_of_old[lab]
    return labels, n


def adjusted_iou(labels: np.ndarray, n: int, gt: np.ndarray, connectivity: int = 26) -> np.ndarray:
    r"""Adjusted IoU of every predicted lesion with the ground truth (MetaSeg).

    For predicted lesion :math:`k`, let :math:`K'` be the union of ground-truth components
    that intersect :math:`k` and :math:`Q'` the union of the *other* predicted lesions
    that intersect :math:`K'`:

    .. math::
        \mathrm{IoU_{adj}}(k) = \frac{|k \cap K'|}{|(k \cup K') \setminus Q'|},
        \quad 0 \text{ when } K' = \emptyset.

    Predicted lesions are disjoint, so :math:`k \cap Q' = \emptyset` and every predicted
    voxel inside :math:`K'` other than :math:`k`'s lies in :math:`Q'`. Hence

    .. math::
        |(k \cup K') \setminus Q'| = |k| + \sum_{j \in K'} |g_j \setminus P|,

    with :math:`g_j` the ground-truth components and :math:`P` the whole segmentation:
    the denominator only needs the sizes of the ground-truth voxels left uncovered. It is
    computed from one contingency table of (lesion, ground-truth component) pairs.

    Args:
        labels: (X, Y, Z) int lesion labels 0..N (from :func:`label_lesions`).
        n: Number of lesions N.
        gt: (X, Y, Z) ground-truth mask; nonzero = lesion.
        connectivity: Connectivity used to split ``gt`` into components.

    Returns:
        (N,) float64, entry ``k - 1`` for lesion ``k``, in [0, 1].

    Raises:
        ValueError: ``gt`` and ``labels`` differ in shape.
    """
    labels = np.asarray(labels)
    gt = np.asarray(gt)
    if gt.shape != labels.shape:
        raise ValueError(f"gt shape {gt.shape} differs from the labels shape {labels.shape}.")
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    g_lab, m = cc3d.connected_components(
        np.ascontiguousarray(gt != 0),
        connectivity=_checked_connectivity(connectivity),
        return_N=True,
    )
    m = int(m)
    if m == 0:
        return np.zeros(n, dtype=np.float64)
    p = labels.reshape(-1)
    g = g_lab.reshape(-1)
    idx = np.flatnonzero(g)  # ground-truth voxels
    p_in_g = p[idx].astype(np.int64)
    g_ids = g[idx].astype(np.int64)
    gt_size = np.bincount(g_ids, minlength=m + 1)
    covered = np.bincount(g_ids[p_in_g > 0], minlength=m + 1)  # voxels of g_j in P
    uncovered = (gt_size - covered).astype(np.float64)
    # contingency table of overlapping (k, j) pairs
    both = p_in_g > 0
    keys, counts = np.unique(p_in_g[both] * (m + 1) + g_ids[both], return_counts=True)
    k_of, j_of = np.divmod(keys, m + 1)
    inter = np.bincount(k_of, weights=counts, minlength=n + 1)[1:]
    extra = np.bincount(k_of, weights=uncovered[j_of], minlength=n + 1)[1:]
    size = np.bincount(p, minlength=n + 1)[1 : n + 1].astype(np.float64)
    denominator = size + extra  # 0 only for a lesion with no voxel left (all ignored)
    return np.divide(inter, denominator, out=np.zeros(n), where=denominator > 0)


def ignored_lesions(labels: np.ndarray, n: int, ignore: np.ndarray | None) -> np.ndarray:
    r"""Which lesions lie mostly in the ignore region.

    Lesion :math:`k` is ignored when :math:`|k \cap I| / |k| >` :data:`IGNORE_FRACTION`
    (strictly more than half of its voxels; a lesion exactly half inside is kept).

    Args:
        labels: (X, Y, Z) int lesion labels 0..N.
        n: Number of lesions N.
        ignore: (X, Y, Z) ignore region (nonzero = ignored), or None (no lesion ignored).

    Returns:
        (N,) bool, entry ``k - 1`` for lesion ``k``.
    """
    if ignore is None or n == 0:
        return np.zeros(n, dtype=bool)
    labels = np.asarray(labels)
    if np.shape(ignore) != labels.shape:
        raise ValueError(f"ignore shape {np.shape(ignore)} differs from labels {labels.shape}.")
    flat = labels.reshape(-1)
    size = np.bincount(flat, minlength=n + 1)[1 : n + 1]
    inside = np.bincount(flat[np.asarray(ignore).reshape(-1) != 0], minlength=n + 1)[1 : n + 1]
    return inside > IGNORE_FRACTION * size


def lesion_table(
    labels: np.ndarray,
    n: int,
    maps: VoxelMaps,
    gt: np.ndarray | None,
    affine: np.ndarray,
    cfg: GraphConfig,
    case_id: str,
    connectivity: int = 26,
    ignore: np.ndarray | None = None,
) -> pd.DataFrame:
    r"""One row per lesion: size, position, IoU_adj, TP/FP and uncertainty aggregates.

    For each uncertainty :math:`u` (entropy, variance, and :math:`1 - \mathrm{PCS}`)
    over the (undilated) voxels :math:`v` of lesion :math:`k`:

    .. math::
        u_{mean}(k) = \frac{1}{|k|} \sum_{v \in k} u(v), \qquad
        u_{logsum}(k) = \sum_{v \in k} \log \max(u(v), \varepsilon_{log}).

    Args:
        labels: (X, Y, Z) int lesion labels 0..N.
        n: Number of lesions N.
        maps: Voxel maps with ``entropy``, ``variance``, ``pcs`` each (X, Y, Z).
        gt: (X, Y, Z) ground-truth mask, or None (then ``iou_adj`` is NaN and ``is_tp``
            False).
        affine: (4, 4) voxel-to-world affine; the voxel volume is
            :math:`|\det A_{3 \times 3}|` mm\ :sup:`3`.
        cfg: ``epsilon`` (TP threshold) and ``logsum_eps`` (log clip).
        case_id: Written in every row.
        connectivity: Connectivity used to split ``gt`` into components.
        ignore: (X, Y, Z) ignore region (nonzero = "do not score", e.g. WMH label 2), or
            None. Its voxels are removed from the lesions and from ``gt`` before IoU_adj
            (they count neither as overlap nor as miss); a lesion mostly inside it
            (:func:`ignored_lesions`) gets ``in_ignore`` True, ``iou_adj`` NaN and
            ``is_tp`` False, and is neither TP nor FP.

    Returns:
        DataFrame with the :data:`LESION_TABLE_COLUMNS`, one row per lesion in label order.
        ``centroid_*`` are voxel coordinates; ``bbox`` is ``"x0:x1,y0:y1,z0:z1"``
        (half-open voxel ranges, as Python slices).

    Raises:
        ValueError: A map or ``gt`` differs in shape from ``labels``.
    """
    labels = np.asarray(labels)
    shape = labels.shape
    for name in ("entropy", "variance", "pcs"):
        if np.shape(getattr(maps, name)) != shape:
            raise ValueError(
                f"map {name} has shape {np.shape(getattr(maps, name))}, labels {shape}."
            )
    if n == 0:
        return _empty_table()
    flat = labels.reshape(-1)
    idx = np.flatnonzero(flat)
    lab = flat[idx].astype(np.int64)
    counts = np.bincount(lab, minlength=n + 1)[1 : n + 1]
    cnt = counts.astype(np.float64)

    def per_lesion(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=values, minlength=n + 1)[1 : n + 1]

    cols: dict[str, object] = {
        "case_id": [str(case_id)] * n,
        "lesion_id": np.arange(1, n + 1, dtype=np.int64),
        "n_voxels": counts.astype(np.int64),
        "volume_mm3": cnt * abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))),
    }
    coords = np.unravel_index(idx, shape)
    for axis, name in enumerate("xyz"):
        cols[f"centroid_{name}"] = per_lesion(coords[axis].astype(np.float64)) / cnt
    slices = ndimage.find_objects(labels, max_label=n)
    cols["bbox"] = [",".join(f"{s.start}:{s.stop}" for s in sl) for sl in slices]
    in_ignore = ignored_lesions(labels, n, ignore)
    if gt is None:
        cols["iou_adj"] = np.full(n, np.nan)
        cols["is_tp"] = np.zeros(n, dtype=bool)
    else:
        if ignore is not None:
            keep = np.asarray(ignore) == 0
            iou = adjusted_iou(np.where(keep, labels, 0), n, (gt != 0) & keep, connectivity)
        else:
            iou = adjusted_iou(labels, n, gt, connectivity)
        iou[in_ignore] = np.nan
        cols["iou_adj"] = iou
        cols["is_tp"] = (iou >= cfg.epsilon) & ~in_ignore
    cols["in_ignore"] = in_ignore
    uncertainties = {
        "entropy": np.asarray(maps.entropy).reshape(-1)[idx],
        "variance": np.asarray(maps.variance).reshape(-1)[idx],
        "pcs": 1.0 - np.asarray(maps.pcs).reshape(-1)[idx],
    }
    for name, u in uncertainties.items():
        u = u.astype(np.float64)
        cols[f"{name}_mean"] = per_lesion(u) / cnt
        cols[f"{name}_logsum"] = per_lesion(np.log(np.maximum(u, cfg.logsum_eps)))
    return pd.DataFrame(cols, columns=list(LESION_TABLE_COLUMNS))


def _empty_table() -> pd.DataFrame:
    dtypes = {"case_id": object, "lesion_id": np.int64, "n_voxels": np.int64}
    dtypes |= {"bbox": object, "is_tp": bool, "in_ignore": bool}
    return pd.DataFrame(
        {c: pd.Series(dtype=dtypes.get(c, np.float64)) for c in LESION_TABLE_COLUMNS},
        columns=list(LESION_TABLE_COLUMNS),
    )
