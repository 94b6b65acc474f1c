"""The ``evaluate`` stage: load what a run stored, hand arrays to evaluation, write results.

Data flow (see docs/DESIGN.md for the files)::

    all folds  --evaluate-->  results/{lesions,cases,table1,table2,table2_folds}.csv,
                              results/{calibration,operating_point,retention}.csv,
                              results/default_method.csv,
                              results/{figure2,calibration}.png, results/report.html

Its per-fold steps read a run directory: the fold's test lesions and fitted scorers
(:func:`score_fold`), the scorers' ``calibration.json`` (:func:`load_fold_calibrations`,
:func:`calibrate_fold`) and the test cases' masks (:func:`detection_cases`). The metrics
themselves take arrays (:mod:`lesionuq.evaluation.folds`). :func:`stage_evaluate` chains
them over every fold; they are usable on their own for a finished run:

>>> raw = score_fold(run, split, methods)  # one row per test lesion
>>> lesions, long, op = calibrate_fold(run, split, raw, methods)
>>> det = detection_cases(run, split)  # lesion-level detection per test case
>>> default_method_rows(run, split, lesions)  # how the folder's default P(FP) method did
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.calibration import CALIBRATOR_FILE, load_calibration
from lesionuq.evaluation.bootstrap import auc_intervals
from lesionuq.evaluation.calibration_metrics import calibration_table
from lesionuq.evaluation.detection import fold_detection_rows, retention_rows
from lesionuq.evaluation.figures import plot_accuracy_confidence, plot_calibration
from lesionuq.evaluation.folds import (
    OPERATING_POINT_COLUMNS,
    StoredCalibration,
    calibrate_scores,
    case_detection,
)
from lesionuq.evaluation.metrics import table1, table2
from lesionuq.evaluation.report import write_report
from lesionuq.io import atomic_write_text, csv_text, read_csv_table
from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import is_learned
from lesionuq.pipeline.stages import locked
from lesionuq.rundir import FoldSplit, RunDir
from lesionuq.scorers import load_scorer
from lesionuq.scorers.default_method import PAPER_METHOD, load_default_method, validation_auc
from lesionuq.utils import remove_pyg_codegen_files, track

__all__ = [
    "DEFAULT_METHOD_COLUMNS",
    "OPERATING_POINT_COLUMNS",
    "ExperimentResult",
    "calibrate_fold",
    "default_method_rows",
    "detection_cases",
    "load_fold_calibrations",
    "score_fold",
    "stage_evaluate",
]


DEFAULT_METHOD_COLUMNS = (
    "fold",
    "method",
    "pairs",
    "val_auc",
    "val_auc_full",
    "val_best_baseline",
    "val_best_baseline_auc",
    "test_auc",
    "test_auc_val_best_baseline",
    "test_best_baseline",
    "test_best_baseline_auc",
    "test_auc_gcnn_classif",
)
"""Columns of ``results/default_method.csv`` (:func:`default_method_rows`)."""


@dataclass
class ExperimentResult:
    """What a finished run produced.

    Attributes:
        run: The run directory.
        table1: Per fold: fold, dice, n_tp, n_fp.
        table2: Per method: method, auc, spearman_rho (means over folds), then the
            bootstrap columns auc_lo, auc_hi, diff_vs_gcnn_classif, diff_lo, diff_hi.
        table2_folds: Per fold and method: fold, method, auc, spearman_rho.
        report: Path of ``report.html``.
        timings: Seconds spent per stage in this call (skipped stages are near 0).
    """

    run: Path
    table1: pd.DataFrame
    table2: pd.DataFrame
    table2_folds: pd.DataFrame
    report: Path
    timings: dict[str, float] = field(default_factory=dict)


@locked
def stage_evaluate(run: Path, progress: bool = True) -> ExperimentResult:
    """Score the test lesions of every fold and write the results (tables, figures, report).

    Besides the paper's files (``lesions.csv`` with calibrated P(FP) in the learned
    classifiers' columns, ``table1.csv`` extended with the lesion-level detection
    metrics, ``table2.csv``, ``figure2.png``) it writes ``calibration.csv`` and
    ``calibration.png`` (before / after calibration), ``operating_point.csv`` (what the
    stored review threshold does on the test lesions) and ``retention.csv`` (area of the
    lesion-F1 retention curve per fold and method) and ``default_method.csv`` (how each
    fold's default P(FP) method, the one ``predict`` reports, ranked the test lesions;
    :func:`default_method_rows`).
    """
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    methods = list(cfg.methods)
    frames, cases, longs, ops, dets = [], [], [], [], []
    for split in track(splits, "scoring test lesions", enabled=progress):
        calibrated, long, op = calibrate_fold(run, split, score_fold(run, split, methods), methods)
        frames.append(calibrated)
        longs.append(long)
        ops.append(op)
        dets.append(detection_cases(run, split))
        per_case = read_csv_table(rd.lesion_set(split.fold, "test") / "cases.csv")
        per_case.insert(0, "fold", split.fold)
        cases.append(per_case)
    lesions = pd.concat(frames, ignore_index=True)
    case_table = pd.concat(cases, ignore_index=True)
    det = pd.concat(dets, ignore_index=True)
    t1 = table1(case_table)
    if len(det):
        t1 = t1.merge(fold_detection_rows(det), on="fold", how="left")
        extra = det.drop(columns=["fold", "case_id"]).add_prefix("det_")
        case_table = case_table.merge(
            pd.concat([det[["fold", "case_id"]], extra], axis=1), on=["fold", "case_id"], how="left"
        )
    t2, t2_folds = table2(lesions, methods)
    t2 = t2.merge(auc_intervals(lesions, methods, seed=cfg.seed), on="method", how="left")
    res = rd.results
    res.mkdir(parents=True, exist_ok=True)
    atomic_write_text(res / "lesions.csv", csv_text(lesions))
    atomic_write_text(res / "cases.csv", csv_text(case_table))
    atomic_write_text(res / "table1.csv", csv_text(t1))
    atomic_write_text(res / "table2.csv", csv_text(t2))
    atomic_write_text(res / "table2_folds.csv", csv_text(t2_folds))
    long = pd.concat(longs, ignore_index=True)
    atomic_write_text(res / "calibration.csv", csv_text(calibration_table(long)))
    (res / "calibration.png").unlink(missing_ok=True)
    plot_calibration(long, res / "calibration.png")
    atomic_write_text(res / "operating_point.csv", csv_text(pd.concat(ops, ignore_index=True)))
    n_fn = (
        {int(k): int(v) for k, v in det.groupby("fold")["overlap_fn"].sum().items()}
        if len(det)
        else {}
    )  # is_tp (IoU_adj >= epsilon) is closest to the overlap rule: use its misses
    atomic_write_text(res / "retention.csv", csv_text(retention_rows(lesions, methods, n_fn)))
    chosen = [default_method_rows(run, split, lesions, methods) for split in splits]
    chosen = [frame for frame in chosen if len(frame)]
    default_rows = (
        pd.concat(chosen, ignore_index=True)
        if chosen
        else pd.DataFrame(columns=DEFAULT_METHOD_COLUMNS)
    )
    atomic_write_text(res / "default_method.csv", csv_text(default_rows))
    plot_accuracy_confidence(lesions, methods, res / "figure2.png")
    report = write_report(rd.root)
    return ExperimentResult(rd.root, t1, t2, t2_folds, report)


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


def default_method_rows(
    run: Path, split: FoldSplit, lesions: pd.DataFrame, methods: Sequence[str] = ()
) -> pd.DataFrame:
    """How a fold's default P(FP) method (``fold_K/default_method.json``) did on its test lesions.

    The default is what ``predict`` reports (:mod:`lesionuq.scorers.default_method`),
    chosen on the validation lesions; this row puts its test AUC beside the untrained
    baseline that was best on the validation lesions, the untrained baseline best on
    these test lesions (in hindsight) and the paper's GCNN.

    Args:
        run: The run directory.
        split: The fold.
        lesions: The test lesions of all folds (``results/lesions.csv``: ``fold``,
            ``is_tp`` and one column per method in ``methods``).
        methods: The method columns of ``lesions``; a default method not among them is
            scored here from its fitted scorer.

    Returns:
        One row with :data:`DEFAULT_METHOD_COLUMNS` (AUCs as fractions, NaN where not
        defined); no row when the fold has no ``default_method.json`` (fitted before the
        rule) or no test lesions.
    """
    rd = RunDir(Path(run))
    choice = load_default_method(rd.fold(split.fold))
    rows = lesions[lesions["fold"] == split.fold]
    if choice is None or not len(rows):
        return pd.DataFrame(columns=DEFAULT_METHOD_COLUMNS)
    is_tp = rows["is_tp"].to_numpy(dtype=bool)

    def test_auc(method: str | None) -> float:
        if method is None or method not in rows:
            return float("nan")
        return validation_auc(rows[method].to_numpy(dtype=np.float64), is_tp)

    if choice.method in methods:
        chosen = test_auc(choice.method)
    else:  # e.g. fitted by ``lesionuq fit --method`` beyond the config's methods
        test = LesionSet.load(rd.lesion_set(split.fold, "test"))
        score = load_scorer(choice.method, rd.scorer(split.fold, choice.method)).score(test)
        chosen = validation_auc(
            np.asarray(score, dtype=np.float64), np.asarray(test.is_tp, dtype=bool)
        )
    untrained = [m for m in methods if not is_learned(m)]
    hindsight = {m: test_auc(m) for m in untrained}
    finite = {m: a for m, a in hindsight.items() if np.isfinite(a)}
    best = max(finite, key=lambda m: finite[m]) if finite else None
    val_best = choice.best_baseline
    row = {
        "fold": split.fold,
        "method": choice.method,
        "pairs": choice.pairs,
        "val_auc": choice.val_auc.get(choice.method, float("nan")),
        "val_auc_full": choice.val_auc_full.get(choice.method, float("nan")),
        "val_best_baseline": val_best,
        "val_best_baseline_auc": choice.val_auc.get(val_best, float("nan"))
        if val_best
        else float("nan"),
        "test_auc": chosen,
        "test_auc_val_best_baseline": test_auc(val_best),
        "test_best_baseline": best,
        "test_best_baseline_auc": finite[best] if best else float("nan"),
        "test_auc_gcnn_classif": test_auc(PAPER_METHOD),
    }
    return pd.DataFrame([row], columns=DEFAULT_METHOD_COLUMNS)


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
