"""The ``evaluate`` stage's per-fold steps: load what a run stored, hand arrays to evaluation.

These read a run directory: the fold's test lesions and fitted scorers
(:func:`score_fold`), the scorers' ``calibration.json`` (:func:`load_fold_calibrations`,
:func:`calibrate_fold`) and the test cases' masks (:func:`detection_cases`). The metrics
themselves take arrays (:mod:`lesionuq.evaluation.folds`). They are the per-fold steps of
:func:`lesionuq.experiment.stage_evaluate`, usable on their own for a finished run:

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
from lesionuq.evaluation.folds import (
    OPERATING_POINT_COLUMNS,
    StoredCalibration,
    calibrate_scores,
    case_detection,
)
from lesionuq.lesions.dataset import LesionSet
from lesionuq.rundir import FoldSplit, RunDir
from lesionuq.scorers import load_scorer
from lesionuq.utils import remove_pyg_codegen_files

__all__ = [
    "OPERATING_POINT_COLUMNS",
    "calibrate_fold",
    "detection_cases",
    "load_fold_calibrations",
    "score_fold",
]


def score_fold(run: Path, split: FoldSplit, methods: Sequence[str]) -> pd.DataFrame:
    """One row per test lesion of a fold with every method's uncertainty.

    Args:
        run: The run directory.
        split: The fold.
        methods: Methods whose fitted scorers the fold holds.

    Returns:
        N rows (the fold's test lesions): ``fold, case_id, lesion_id, n_voxels, iou_adj,
        is_tp`` and one (N,) float64 column per method.
    """
    rd = RunDir(Path(run))
    test = LesionSet.load(rd.lesion_set(split.fold, "test"))
    frame = test.table[["case_id", "lesion_id", "n_voxels", "iou_adj", "is_tp"]].copy()
    frame.insert(0, "fold", split.fold)
    for method in methods:
        scorer = load_scorer(method, rd.scorer(split.fold, method))
        frame[method] = scorer.score(test) if len(test) else np.zeros(0)
    remove_pyg_codegen_files()
    return frame


def load_fold_calibrations(
    run: Path, split: FoldSplit, methods: Sequence[str]
) -> dict[str, StoredCalibration]:
    """The stored calibration of every method of a fold that has a ``calibration.json``.

    Args:
        run: The run directory.
        split: The fold.
        methods: Candidate methods (those without the file, e.g. baselines, are left out).

    Returns:
        Method -> :class:`~lesionuq.evaluation.folds.StoredCalibration`, in ``methods``'
        order.
    """
    rd = RunDir(Path(run))
    out = {}
    for m in methods:
        path = rd.scorer(split.fold, m) / CALIBRATOR_FILE
        if path.is_file():
            cal, iou_cal, meta = load_calibration(path)
            out[m] = StoredCalibration(cal, iou_cal, meta.get("operating_point"))
    return out


def calibrate_fold(
    run: Path, split: FoldSplit, raw: pd.DataFrame, methods: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Apply each learned scorer's stored calibrator to one fold's raw test scores.

    :func:`load_fold_calibrations`, then
    :func:`~lesionuq.evaluation.folds.calibrate_scores` (see there for the outputs).

    Args:
        run: The run directory.
        split: The fold.
        raw: :func:`score_fold` output (one row per test lesion, raw method columns).
        methods: Method columns.

    Returns:
        ``lesions``, ``long`` and ``op`` frames.
    """
    return calibrate_scores(raw, split.fold, load_fold_calibrations(run, split, methods))


def detection_cases(run: Path, split: FoldSplit) -> pd.DataFrame:
    """Lesion-level detection (:func:`~lesionuq.evaluation.folds.case_detection`) per test case.

    Cases without a ground truth (no ``gt.nii.gz``) are left out. A case's ignore region
    (``RUN/preprocessed/CASE/ignore.nii.gz``) is removed from both the segmentation and
    the ground truth first.

    Returns:
        One row per test case with a ground truth.
    """
    rd = RunDir(Path(run))
    rows = []
    for c in split.test:
        case_dir = rd.case_dir(split.fold, "test", c)
        if not (case_dir / "gt.nii.gz").is_file():
            continue
        ignore_path = rd.preprocessed / c / "ignore.nii.gz"
        ignore = _read(ignore_path) if ignore_path.is_file() else None
        prob, gt = _read(case_dir / "prob.nii.gz"), _read(case_dir / "gt.nii.gz")
        rows.append(case_detection(split.fold, c, prob, gt, ignore))
    return pd.DataFrame(rows)


def _read(path: Path) -> np.ndarray:
    """A NIfTI file of the run directory as a float32 array."""
    img = cast(nib.Nifti1Image, nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32)
