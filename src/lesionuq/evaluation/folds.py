"""Evaluation of one fold from arrays: apply stored calibrators, detection of one case.

What the ``evaluate`` stage computes per fold once the pipeline has loaded the fold's
scores, calibrators and masks (:mod:`lesionuq.pipeline.evaluate`); nothing here reads a
run folder or loads a model:

>>> lesions, long, op = calibrate_scores(raw, fold, calibrations)
>>> row = case_detection(fold, "case_1", prob, gt, ignore)

The per-fold steps that read a run (``score_fold``, ``calibrate_fold``,
``detection_cases``) moved to :mod:`lesionuq.pipeline.evaluate`; their names here are
deprecated aliases for one release, resolved on first use (evaluation may not import the
pipeline, so a top-level import would break the layers).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lesionuq.calibration import Calibrator, IoURecalibrator
from lesionuq.evaluation.detection import case_detection_row
from lesionuq.evaluation.metrics import as_bool
from lesionuq.operating_point import operating_point_effect

__all__ = [
    "OPERATING_POINT_COLUMNS",
    "StoredCalibration",
    "calibrate_scores",
    "case_detection",
]

#: Columns of ``results/operating_point.csv`` (see :func:`calibrate_scores`).
OPERATING_POINT_COLUMNS = (
    "fold", "method", "target", "threshold", "n", "n_tp", "n_fp", "n_flagged",
    "fp_flagged", "tp_flagged", "precision_before", "precision_after",
)  # fmt: skip


@dataclass(frozen=True)
class StoredCalibration:
    """A fitted scorer's calibration as stored in its ``calibration.json``.

    Attributes:
        calibrator: uncertainty -> P(FP).
        iou_calibrator: A regressor's IoU recalibration, or None.
        operating_point: The stored review threshold (``target``, ``threshold``, ...), or
            None.
    """

    calibrator: Calibrator
    iou_calibrator: IoURecalibrator | None = None
    operating_point: dict[str, Any] | None = None


def calibrate_scores(
    raw: pd.DataFrame, fold: int, calibrations: Mapping[str, StoredCalibration]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Apply each calibrated method's calibrator to one fold's raw test scores.

    Classifier columns (``gcnn_classif``, ``metaseg_classif``) are replaced by their
    calibrated P(FP), a strictly increasing map of the raw score (ranking metrics are
    unchanged). Regressor columns keep ``1 - IoU_hat`` (the paper's score); their
    calibrated P(FP) appears only in the calibration rows. Methods without a calibration
    (an old run, a baseline) are left as they are.

    Args:
        raw: One row per test lesion (N rows) with ``is_tp``, ``iou_adj`` and one raw
            uncertainty column per method.
        fold: The fold number (the ``fold`` column of the outputs).
        calibrations: Method -> its stored calibration, in the order of the outputs.

    Returns:
        ``lesions`` (the calibrated frame, N rows), ``long`` (one row per lesion and
        calibrated method: ``fold, method, is_fp, p_before, p_after, iou, iou_before,
        iou_after``) and ``op`` (per calibrated method with an operating point: its
        effect on the test lesions, :func:`lesionuq.operating_point.operating_point_effect`;
        columns :data:`OPERATING_POINT_COLUMNS`).
    """
    out = raw.copy()
    is_tp = as_bool(raw["is_tp"]) if len(raw) else np.zeros(0, dtype=bool)
    longs, ops = [], []
    for m, stored in calibrations.items():
        u = raw[m].to_numpy(dtype=np.float64)
        p = stored.calibrator.predict(u) if u.size else np.zeros(0)
        part = pd.DataFrame(
            {"fold": fold, "method": m, "is_fp": ~is_tp, "p_before": np.clip(u, 0, 1)}
        )
        part["p_after"] = p
        if stored.iou_calibrator is not None:
            before = np.clip(1.0 - u, 0.0, 1.0)
            part["iou"] = raw["iou_adj"].to_numpy(dtype=np.float64)
            part["iou_before"] = before
            part["iou_after"] = stored.iou_calibrator.predict(before) if u.size else np.zeros(0)
        else:
            out[m] = p
        longs.append(part)
        op = stored.operating_point
        if op:
            effect = operating_point_effect(p, is_tp, float(op["threshold"]))
            ops.append({"fold": fold, "method": m, "target": op["target"], **effect})
    long = pd.concat(longs, ignore_index=True) if longs else pd.DataFrame()
    return out, long, pd.DataFrame(ops, columns=OPERATING_POINT_COLUMNS)


def case_detection(
    fold: int,
    case_id: str,
    prob: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`~lesionuq.evaluation.detection.case_detection_row` of one test case.

    The segmentation is ``prob > 0.5`` (``VoxelMaps.seg``: the argmax of the mean
    softmax). An ignore region is removed from both the segmentation and the ground
    truth first, as the WMH challenge's ``evaluation.py`` removes label 2.

    Args:
        fold: The fold number.
        case_id: The case.
        prob: (X, Y, Z) mean foreground probability.
        gt: (X, Y, Z) ground truth (> 0 is lesion).
        ignore: (X, Y, Z) ignore region (!= 0 is ignored), or None.

    Returns:
        ``fold``, ``case_id`` and the detection row.
    """
    seg = np.asarray(prob) > 0.5
    truth = np.asarray(gt) > 0
    if ignore is not None:
        keep = np.asarray(ignore) == 0
        seg, truth = seg & keep, truth & keep
    return {"fold": fold, "case_id": case_id, **case_detection_row(seg, truth)}


_MOVED = {"score_fold", "calibrate_fold", "detection_cases"}


def __getattr__(name: str) -> Any:
    """Deprecated aliases of the run-reading steps, now in :mod:`lesionuq.pipeline.evaluate`.

    Resolved on first use (PEP 562) because evaluation may not import the pipeline layer;
    to go after one release.
    """
    if name in _MOVED:
        warnings.warn(
            f"lesionuq.evaluation.folds.{name} moved to lesionuq.pipeline.evaluate.{name}.",
            DeprecationWarning,
            stacklevel=2,
        )
        # lazy: evaluation sits below the pipeline (docs/DESIGN.md, layers)
        return getattr(importlib.import_module("lesionuq.pipeline.evaluate"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
