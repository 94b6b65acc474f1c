"""The ``train`` stage: each fold's MC-dropout U-Net (``RUN/fold_K/segmenter.pt``).

Data flow per fold K (see docs/DESIGN.md for the files)::

    preprocessed/CASE  --train-->  fold_K/segmenter.pt, fold_K/stamp_train.json

A fold is a :class:`~lesionuq.pipeline.stages.Unit` (its ``stamp_train.json`` and
``segmenter.pt``). Unlike the per-case stages, the folds train in this process one after
the other by default (a failure stops the stage at once), possibly as one rank of a
``torchrun`` process group (:func:`train_run`); only with a Dask scheduler or local
workers do they go through :func:`~lesionuq.pipeline.stages.run_stale`, one task per fold.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionuq import distributed
from lesionuq.config import ExperimentConfig
from lesionuq.errors import TrainingWarning
from lesionuq.io import InputError
from lesionuq.pipeline.preprocess import stage_preprocess
from lesionuq.pipeline.stages import (
    Unit,
    load_preprocessed,
    load_preprocessed_ignore,
    locked,
    run_stale,
    select_folds,
)
from lesionuq.rundir import FoldSplit, RunDir, train_digest, unet_config, write_stamp

# through the module, not its names: tests replace train_segmenter there
from lesionuq.segmentation import train as segmentation_train

__all__ = ["stage_train", "train_fold", "train_run"]

logger = logging.getLogger(__name__)


def train_run(
    run: Path,
    folds: Sequence[int] | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> None:
    """The ``train`` command: preprocess what is missing, then train each fold's U-Net.

    Started by ``torchrun --nproc_per_node K -m lesionuq train ...``, the K processes
    train each fold together with DistributedDataParallel (:mod:`lesionuq.distributed`):
    rank 0 preprocesses and writes every file, ``cfg.train.batch_size`` is the global batch
    split over the K processes, and the weights equal a single process's up to float
    rounding (without dropout; with dropout, in distribution).

    Args:
        run: The run directory.
        folds: Only these folds (default all).
        progress: Show progress bars (rank 0 only).
        environ: Where to look for torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
            (default ``os.environ``); without them, one process trains as usual.
        workers: Without torchrun: train the folds side by side on a local Dask cluster
            of this many single-threaded processes (see :func:`stage_train`).

    Raises:
        ConfigError: Under torchrun, ``train.batch_size`` is not a multiple of the number
            of processes.
        InputError: ``workers`` under torchrun (each rank already trains every fold).
    """
    _refuse_training(RunDir(Path(run)))
    env = distributed.TorchrunEnv.from_environ(os.environ if environ is None else environ)
    if env is None:
        stage_preprocess(run, progress=progress, workers=workers)
        stage_train(run, folds, progress=progress, workers=workers)
        return
    if workers is not None:
        raise InputError("--workers cannot be combined with torchrun (use one or the other).")
    cfg, _, _ = RunDir(Path(run)).read_plan()
    distributed.local_items(cfg.train.batch_size, env.rank, env.world_size)  # refuse early
    main = env.rank == 0
    with distributed.process_group(env, cfg.device):
        if main:
            stage_preprocess(run, progress=progress)
        distributed.barrier()
        stage_train(run, folds, progress=progress and main)


@locked
def stage_train(
    run: Path,
    folds: Sequence[int] | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Train each fold's MC-dropout U-Net on its train cases (val cases pick the epoch).

    Inside a process group (see :func:`train_run`) every rank calls this; rank 0 alone
    removes stale checkpoints and writes the stamps.

    With a Dask ``scheduler`` or a local cluster of ``workers`` (and no process group),
    the folds train side by side, one task per fold on a single-threaded worker
    (:func:`~lesionuq.pipeline.stages.run_stale`); the progress bar then counts finished
    folds. On a small CPU this is the faster use of its cores: a 32^3-patch training step
    scales poorly over threads (``benchmarks/train_throughput.py`` on 2 AVX2 cores:
    11.1 patches/s on 1 thread, 15.2 on 2); in the demo on that machine two folds side
    by side trained ~14.3 patches/s against 10.5-13.3 for one fold on both threads
    (1.14x: the workers share memory bandwidth and caches). The weights
    are those of a one-process run up to float rounding (the summation order of a
    convolution depends on the thread count); every draw is seeded the same way.

    A fold whose U-Net did not learn to segment (best validation Dice below
    :data:`~lesionuq.segmentation.train.MIN_USABLE_DICE`) raises a
    :class:`~lesionuq.errors.TrainingWarning` on every call, trained now or before.
    """
    rd = RunDir(Path(run))
    _refuse_training(rd)
    cfg, _, splits = rd.read_plan()
    todo = [
        u for u in (_train_unit(rd, cfg, s) for s in select_folds(splits, folds)) if not u.current()
    ]
    parallel = scheduler is not None or workers is not None
    if parallel and distributed.world_size() == 1 and len(todo) > 1:
        run_stale(
            _train_fold_job,
            todo,
            what="fold",
            desc="training U-Nets (a fold per worker)",
            progress=progress,
            scheduler=scheduler,
            workers=workers,
        )
    else:
        for unit in todo:
            for job in unit.jobs.values():
                train_fold(job.run, job.fold, progress=progress)
    if distributed.is_main_process():
        _warn_failed_training(rd, cfg, select_folds(splits, folds))


def _warn_failed_training(rd: RunDir, cfg: ExperimentConfig, splits: Sequence[FoldSplit]) -> None:
    """A :class:`TrainingWarning` for each fold whose stamp shows a U-Net that did not learn."""
    for split in splits:
        problem = segmentation_train.training_problem_of(
            rd.fold(split.fold) / "stamp_train.json", cfg.train.max_epochs
        )
        if problem is not None:
            warnings.warn(
                TrainingWarning(
                    f"fold {split.fold}: the U-Net did not learn to segment ({problem}; "
                    f"below {segmentation_train.MIN_USABLE_DICE}), so its lesions and every "
                    "uncertainty measured on them are mostly wrong; train longer "
                    "(train.max_epochs, train.steps_per_epoch; the per-epoch history is in "
                    f"fold_{split.fold}/segmenter_last.pt) or check the masks."
                ),
                stacklevel=2,
            )


def _refuse_training(rd: RunDir) -> None:
    """One sentence for ``train`` on a run of the samples protocol (nothing to train)."""
    if rd.read_plan()[0].protocol == "samples":
        raise InputError(
            f"{rd.root}: this run scores the samples of your own segmenter (protocol "
            "samples): there is no U-Net to train; run `lesionuq sample --run` next."
        )


@dataclass(frozen=True)
class _TrainJob:
    """One fold of :func:`stage_train` on a worker."""

    run: Path
    fold: int


def _train_fold_job(job: _TrainJob) -> None:
    train_fold(job.run, job.fold, progress=False)


def _train_unit(rd: RunDir, cfg: ExperimentConfig, split: FoldSplit) -> Unit[_TrainJob]:
    """A fold's U-Net: done when its stamp matches the settings and the weights exist."""
    fold_dir = rd.fold(split.fold)
    return Unit(
        fold_dir / "stamp_train.json",
        train_digest(cfg, split),
        {f"fold_{split.fold}": _TrainJob(rd.root, split.fold)},
        requires=(fold_dir / "segmenter.pt",),
    )


def train_fold(run: Path, fold: int, progress: bool = True) -> None:
    """Train fold ``fold``'s U-Net (resuming its checkpoint), then stamp it.

    A fold whose stamp matches the settings is left alone; one trained with other
    settings starts again from scratch (its checkpoints are removed first).

    Args:
        run: The run directory.
        fold: The fold number.
        progress: Show the epoch progress bar (rank 0 only under a process group).
    """
    main = distributed.is_main_process()
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    split = select_folds(splits, [fold])[0]
    unit = _train_unit(rd, cfg, split)
    if unit.current():
        return
    fold_dir = rd.fold(split.fold)
    if main and unit.stamp.exists():  # settings changed: do not resume from the old checkpoint
        for name in ("segmenter.pt", "segmenter_last.pt", "stamp_train.json"):
            (fold_dir / name).unlink(missing_ok=True)
    distributed.barrier()  # no rank resumes from a checkpoint rank 0 is removing
    train = [_pair(run, c, cfg) for c in split.train]
    val = [_pair(run, c, cfg) for c in split.val]
    fold_dir.mkdir(parents=True, exist_ok=True)
    logger.info("fold %d: training the U-Net on %d cases", split.fold, len(train))
    result = segmentation_train.train_segmenter(
        train, val, unet_config(cfg), cfg.train, fold_dir, device=cfg.device, progress=progress
    )
    if main:
        # how it trained (not in the digest): a rerun on another thread count or CPU kind
        # trains another U-Net, and the stamp says which arithmetic made this one
        write_stamp(
            unit.stamp,
            unit.digest,
            best_dice=result.best_dice,
            best_epoch=result.best_epoch,
            epochs=result.epochs,
            **result.arithmetic,
        )


def _pair(run: Path, case_id: str, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """A training pair: image (C, X, Y, Z) float32, mask (X, Y, Z) uint8.

    The ignore region's voxels are ``IGNORE_LABEL`` in the mask (masked from the loss).
    """
    image, mask, _ = load_preprocessed(run, case_id, cfg.sequences)
    if mask is None:
        raise InputError(f"case {case_id}: no ground-truth mask, which training needs.")
    ignore = load_preprocessed_ignore(run, case_id)
    if ignore is not None:  # masked from the loss by train_segmenter
        mask = np.where(ignore, segmentation_train.IGNORE_LABEL, mask).astype(np.uint8)
    return image, mask
