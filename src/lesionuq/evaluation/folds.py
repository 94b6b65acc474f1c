"""Evaluation of one fold of a run directory: score, calibrate, match the test lesions.

These are the per-fold steps of the ``evaluate`` stage
(:func:`lesionuq.experiment.stage_evaluate`), usable on their own for a finished run:

>>> raw = score_fold(run, split, methods)  # one row per test lesion
>>> lesions, long, op = calibrate_fold(run, split, raw, methods)
>>> det = detection_cases(run, split)  # lesion-level detection per test case
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.calibration import CALIBRATOR_FILE, load_calibration
from lesionuq.evaluation.detection import case_detection_row
from lesionuq.evaluation.metrics import as_bool
from lesionuq.lesions.dataset import LesionSet
from lesionuq.operating_point import operating_point_effect
from lesionuq.rundir import FoldSplit, RunDir
from lesionuq.scorers import load_scorer
from lesionuq.utils import remove_pyg_codegen_files

__all__ = ["OPERATING_POINT_COLUMNS", "calibrate_fold", "detection_cases", "score_fold"]

#: Columns of ``results/operating_point.csv`` (see :func:`calibrate_fold`).
OPERATING_POINT_COLUMNS = (
    "fold", "method", "target", "threshold", "n", "n_tp", "n_fp", "n_flagged",
    "fp_flagged", "tp_flagged", "precision_before", "precision_after",
)  # fmt: skip


def score_fold(run: Path, split: FoldSplit, methods: Sequence[str]) -> pd.DataFrame:
    """One row per test lesion of a fold with every method's uncertainty."""
    rd = RunDir(Path(run))
    test = LesionSet.load(rd.lesion_set(split.fold, "test"))
    frame = test.table[["case_id", "lesion_id", "n_voxels", "iou_adj", "is_tp"]].copy()
    frame.insert(0, "fold", split.fold)
    for method in methods:
        scorer = load_scorer(method, rd.scorer(split.fold, method))
        frame[method] = scorer.score(test) if len(test) else np.zeros(0)
    remove_pyg_codegen_files()
    return frame


def calibrate_fold(
    run: Path, split: FoldSplit, raw: pd.DataFrame, methods: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Apply each learned scorer's stored calibrator to one fold's raw test scores.

    Classifier columns (``gcnn_classif``, ``metaseg_classif``) are replaced by their
    calibrated P(FP), a strictly increasing map of the raw score (ranking metrics are
    unchanged). Regressor columns keep ``1 - IoU_hat`` (the paper's score); their
    calibrated P(FP) appears only in the calibration rows. Scorers without a
    ``calibration.json`` (an old run, a baseline) are left as they are.

    Args:
        run: The run directory.
        split: The fold.
        raw: :func:`score_fold` output (one row per test lesion, raw method columns).
        methods: Method columns.

    Returns:
        ``lesions`` (the calibrated frame), ``long`` (one row per lesion and calibrated
        method: ``fold, method, is_fp, p_before, p_after, iou, iou_before, iou_after``)
        and ``op`` (per calibrated method with an operating point: its effect on the
        test lesions, :func:`lesionuq.operating_point.operating_point_effect`).
    """
    rd = RunDir(Path(run))
    out = raw.copy()
    is_tp = as_bool(raw["is_tp"]) if len(raw) else np.zeros(0, dtype=bool)
    longs, ops = [], []
    for m in methods:
        path = rd.scorer(split.fold, m) / CALIBRATOR_FILE
        if not path.is_file():
            continue
        cal, iou_cal, meta = load_calibration(path)
        u = raw[m].to_numpy(dtype=np.float64)
        p = cal.predict(u) if u.size else np.zeros(0)
        part = pd.DataFrame(
            {"fold": split.fold, "method": m, "is_fp": ~is_tp, "p_before": np.clip(u, 0, 1)}
        )
        part["p_after"] = p
        if iou_cal is not None:
            before = np.clip(1.0 - u, 0.0, 1.0)
            part["iou"] = raw["iou_adj"].to_numpy(dtype=np.float64)
            part["iou_before"] = before
            part["iou_after"] = iou_cal.predict(before) if u.size else np.zeros(0)
        else:
            out[m] = p
        longs.append(part)
        op = meta.get("operating_point")
        if op:
            effect = operating_point_effect(p, is_tp, float(op["threshold"]))
            ops.append({"fold": split.fold, "method": m, "target": op["target"], **effect})
    long = pd.concat(longs, ignore_index=True) if longs else pd.DataFrame()
    return out, long, pd.DataFrame(ops, columns=OPERATING_POINT_COLUMNS)


def detection_cases(run: Path, split: FoldSplit) -> pd.DataFrame:
    """:func:`~lesionuq.evaluation.detection.case_detection_row` of every test case of a fold.

    Cases without a ground truth (no ``gt.nii.gz``) are left out. A case's ignore region
    (``RUN/preprocessed/CASE/ignore.nii.gz``) is removed from both the segmentation and
    the ground truth first, as the WMH challenge's ``evaluation.py`` removes label 2.
    """
    rd = RunDir(Path(run))
    rows = []
    for c in split.test:
        case_dir = rd.case_dir(split.fold, "test", c)
        if not (case_dir / "gt.nii.gz").is_file():
            continue
        seg = _read(case_dir / "prob.nii.gz") > 0.5  # VoxelMaps.seg: argmax of the mean softmax
        gt = _read(case_dir / "gt.nii.gz") > 0
        ignore = rd.preprocessed / c / "ignore.nii.gz"
        if ignore.is_file():
            keep = _read(ignore) == 0
            seg, gt = seg & keep, gt & keep
        rows.append({"fold": split.fold, "case_id": c, **case_detection_row(seg, gt)})
    return pd.DataFrame(rows)


def _read(path: Path) -> np.ndarray:
    """A NIfTI file of the run directory as a float32 array."""
    img = cast(nib.Nifti1Image, nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32)
