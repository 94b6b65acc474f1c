"""The ``fit`` stage: each fold's scorers fitted (and calibrated) on its validation lesions.

Data flow per fold K (see docs/DESIGN.md for the files)::

    fold_K/graphs/val  --fit-->  fold_K/scorers/METHOD (calibration.json for learned ones),
                                 fold_K/shift_reference.json, fold_K/default_method.json

A scorer is a :class:`~lesionuq.pipeline.stages.Unit` (its ``stamp.json`` holds
:func:`~lesionuq.rundir.fit_digest`); the stale ones are fitted by
:func:`~lesionuq.pipeline.stages.run_stale`, the slowest first.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionuq.calibration import fit_calibrated_scorer, update_operating_point
from lesionuq.config import ExperimentConfig
from lesionuq.errors import did_you_mean
from lesionuq.io import InputError, atomic_dir, load_nifti
from lesionuq.lesions.dataset import load_lesion_set
from lesionuq.methods import CATALOGUE, fit_cost, is_learned
from lesionuq.parallel import check_parallel
from lesionuq.pipeline.stages import Unit, cases_by_id, locked, run_nifti, run_stale, select_folds
from lesionuq.rundir import FoldSplit, RunDir, fit_digest, graphs_digest, shift_digest, write_stamp
from lesionuq.scorers import make_scorer
from lesionuq.scorers.default_method import fit_default_method
from lesionuq.shift import SHIFT_FILE, ShiftReference, scan_profile
from lesionuq.utils import remove_pyg_codegen_files

__all__ = ["is_calibrated", "stage_fit"]

logger = logging.getLogger(__name__)


def is_calibrated(method: str, cfg: ExperimentConfig) -> bool:
    """Whether ``method`` is a learned scorer (GCNNs, MetaSeg, ...) that gets a P(FP) calibrator.

    Every scorer that learns from the validation lesions (the catalogue's ``learned``) is
    cross-fitted and calibrated; the fixed voxel aggregates and ``size`` are not.
    """
    return is_learned(method)


@locked
def stage_fit(
    run: Path,
    folds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Fit every scorer on each fold's validation lesions (``fold_K/scorers/METHOD``).

    Learned scorers (GCNN, MetaSeg) are cross-fitted: ``cfg.calibration.n_inner`` inner
    folds give out-of-fold scores, on which the P(FP) calibrator is fitted
    (``scorers/METHOD/calibration.json``, with the operating point of
    ``cfg.calibration.review_target``); the scorer is then refitted on all the validation
    lesions. A scorer already fitted with these settings only has its operating point
    re-chosen for the current review target. The fold's validation scans also give the
    shift reference (``fold_K/shift_reference.json``).

    One unit per fold and method (:func:`~lesionuq.pipeline.stages.run_stale`: here, or
    on a Dask ``scheduler`` / a local cluster of ``workers`` single-threaded processes;
    the slowest methods are submitted first). Every fit is seeded, so the scorers are the
    same wherever they run.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, data, splits = rd.read_plan()
    _check_methods(methods)
    chosen = select_folds(splits, folds)
    parallel = scheduler is not None or workers is not None
    units = []
    for split in chosen:
        fold_graphs = graphs_digest(cfg, split)
        for method in methods or cfg.methods:
            digest = fit_digest(fold_graphs, method, cfg)
            folder = rd.scorer(split.fold, method)
            val = rd.lesion_set(split.fold, "val")
            job = _FitJob(val, split.fold, method, folder, digest, cfg, progress and not parallel)
            units.append(Unit(folder / "stamp.json", digest, {f"fold_{split.fold}/{method}": job}))
    units.sort(key=lambda u: -fit_cost(next(iter(u.jobs.values())).method))  # long fits first
    run_stale(
        _fit_method,
        units,
        what="scorer",
        desc="fitting scorers",
        progress=progress and parallel,
        scheduler=scheduler,
        workers=workers,
        on_current=lambda u: update_operating_point(u.stamp.parent, cfg.calibration.review_target),
    )
    for split in chosen:
        _fit_shift_reference(rd, cfg, split, data)
        _fit_default_method(rd, cfg, split)
        cfg.to_yaml(rd.fold(split.fold) / "config.yaml")


def _check_methods(methods: Sequence[str] | None) -> None:
    """Refuse an unknown ``--method`` with one sentence (and the closest name)."""
    for method in methods or ():
        if method not in CATALOGUE:
            known = list(CATALOGUE)
            raise InputError(
                f"--method {method!r} is not a scoring method{did_you_mean(method, known)}; "
                f"known: {', '.join(known)}."
            )


@dataclass(frozen=True)
class _FitJob:
    """One scorer of :func:`stage_fit`: the fold's val lesion set, method, folder, digest.

    ``progress`` shows the fit's own progress bar (in this process only).
    """

    val: Path
    fold: int
    method: str
    folder: Path
    digest: str
    cfg: ExperimentConfig
    progress: bool = False


def _fit_method(job: _FitJob) -> None:
    """Fit (and calibrate) one scorer into its folder, atomically, stamp last."""
    cfg = job.cfg
    val = load_lesion_set(job.val)  # once per fold in a process, not once per method
    logger.info("fold %d: fitting %s on %d validation lesions", job.fold, job.method, len(val))
    t0 = time.perf_counter()
    with atomic_dir(job.folder) as tmp:
        if is_calibrated(job.method, cfg) and len(val) >= 2:
            factory = functools.partial(make_scorer, job.method, cfg)
            scorer = fit_calibrated_scorer(factory, cfg, val, tmp, job.progress)
        else:
            scorer = make_scorer(job.method, cfg).fit(val, progress=job.progress)
        scorer.save(tmp)
        write_stamp(tmp / "stamp.json", job.digest, fit_seconds=time.perf_counter() - t0)
    remove_pyg_codegen_files()


def _fit_shift_reference(rd: RunDir, cfg: ExperimentConfig, split: FoldSplit, data: Path) -> None:
    """Profile the fold's validation scans and save ``fold_K/shift_reference.json``.

    Each profile uses the original first-sequence image (voxel size, intensity
    histogram) and the MC-dropout entropy over the brain on the preprocessed grid.
    """
    fold_dir = rd.fold(split.fold)
    unit: Unit[None] = Unit(
        fold_dir / "stamp_shift.json", shift_digest(cfg, split), requires=(fold_dir / SHIFT_FILE,)
    )
    if unit.current():
        return
    cases = cases_by_id(data, cfg)
    profiles = []
    for c in split.val:
        case_dir = rd.case_dir(split.fold, "val", c)
        entropy = np.asarray(run_nifti(case_dir / "entropy.nii.gz").dataobj, np.float32)
        brain = np.asarray(run_nifti(case_dir / "image.nii.gz").dataobj) != 0
        native = load_nifti(cases[c].images[0])
        profiles.append(
            scan_profile(native, entropy, brain, brain_threshold=cfg.preprocess.brain_threshold)
        )
    ShiftReference().fit(profiles).save(fold_dir / SHIFT_FILE)
    write_stamp(unit.stamp, unit.digest, n_scans=len(profiles))


def _fit_default_method(rd: RunDir, cfg: ExperimentConfig, split: FoldSplit) -> None:
    """Choose the fold's default P(FP) method (``lesionuq.scorers.default_method``)."""
    val = load_lesion_set(rd.lesion_set(split.fold, "val"))
    fit_default_method(rd.fold(split.fold), val, cfg.calibration.review_target, seed=cfg.seed)
