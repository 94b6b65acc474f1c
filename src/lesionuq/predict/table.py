"""The ``lesions.csv`` table of one scan: its columns, :func:`lesion_rows`, :func:`empty_table`.

One row per lesion, sorted by ``p_fp`` descending: volume and centroid on the input grid,
the scorers' ``p_fp`` and ``iou_pred``, the mean voxel uncertainties and the review flag
(:data:`TABLE_COLUMNS`); with ``location``, the :data:`LOCATION_COLUMNS` follow.

Example:
    >>> list(empty_table().columns) == list(TABLE_COLUMNS)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage

if TYPE_CHECKING:
    from lesionuq.uncertainty import VoxelMaps

__all__ = ["LOCATION_COLUMNS", "TABLE_COLUMNS", "empty_table", "lesion_rows"]

#: Columns of ``lesions.csv`` (one row per lesion), in order.
TABLE_COLUMNS = (
    "lesion_id",
    "volume_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "p_fp",
    "iou_pred",
    "entropy_mean",
    "variance_mean",
    "pcs_mean",
    "review",
)
#: Columns added to ``lesions.csv`` with ``location`` (after :data:`TABLE_COLUMNS`).
LOCATION_COLUMNS = ("location", "mni_x_mm", "mni_y_mm", "mni_z_mm")


def lesion_rows(
    labels_grid: np.ndarray,
    labels_native: np.ndarray,
    native_affine: np.ndarray,
    maps: VoxelMaps,
    p_fp: np.ndarray,
    iou_pred: np.ndarray,
    threshold: float,
) -> pd.DataFrame:
    """The ``lesions.csv`` table of one scan (see :data:`TABLE_COLUMNS`).

    Volumes and centroids are measured on the input grid (``labels_native`` and its
    affine, so they match ``lesions.nii.gz``); the mean voxel measures on the
    preprocessed grid where the maps were computed.

    Args:
        labels_grid: (X, Y, Z) labels 1..N on the preprocessed grid.
        labels_native: (X', Y', Z') the same labels on the input grid.
        native_affine: (4, 4) affine of the input grid.
        maps: ``VoxelMaps`` on the preprocessed grid.
        p_fp: (N,) P(FP) of lesions 1..N.
        iou_pred: (N,) predicted IoU_adj of lesions 1..N.
        threshold: ``review = p_fp >= threshold``.

    Returns:
        N rows sorted by ``p_fp`` descending (ties by ``lesion_id``).
    """
    n = len(p_fp)
    if n == 0:
        return empty_table()
    ids = np.arange(1, n + 1)
    voxel_ml = abs(float(np.linalg.det(native_affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels_native.ravel(), minlength=n + 1)[1:]
    com = np.asarray(ndimage.center_of_mass(labels_native > 0, labels_native, ids)).reshape(n, 3)
    world = com @ native_affine[:3, :3].T + native_affine[:3, 3]
    table = pd.DataFrame(
        {
            "lesion_id": ids,
            "volume_ml": counts * voxel_ml,
            "centroid_x_mm": world[:, 0],
            "centroid_y_mm": world[:, 1],
            "centroid_z_mm": world[:, 2],
            "p_fp": np.asarray(p_fp, dtype=np.float64),
            "iou_pred": np.asarray(iou_pred, dtype=np.float64),
            "entropy_mean": ndimage.mean(maps.entropy, labels_grid, ids),
            "variance_mean": ndimage.mean(maps.variance, labels_grid, ids),
            "pcs_mean": ndimage.mean(maps.pcs, labels_grid, ids),
            "review": np.asarray(p_fp) >= threshold,
        }
    )
    order = np.lexsort((table["lesion_id"].to_numpy(), -table["p_fp"].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def empty_table() -> pd.DataFrame:
    """A ``lesions.csv`` table without rows: the :data:`TABLE_COLUMNS` and their dtypes."""
    table = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in TABLE_COLUMNS})
    return table.astype({"lesion_id": np.int64, "review": bool})
