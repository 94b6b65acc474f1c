"""The ``sample`` stage: MC-dropout voxel maps of each fold's val and test cases.

Data flow per fold K (see docs/DESIGN.md for the files)::

    preprocessed/CASE, fold_K/segmenter.pt
        --sample-->  fold_K/{val,test}/CASE/{prob,seg,entropy,variance,pcs,gt,image}.nii.gz

One :class:`~lesionuq.pipeline.stages.Unit` per fold and case
(:func:`~lesionuq.pipeline.stages.run_stale`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lesionuq.config import ExperimentConfig
from lesionuq.io import InputError, atomic_dir, save_nifti
from lesionuq.parallel import check_parallel
from lesionuq.pipeline.stages import Unit, load_preprocessed, locked, run_stale, select_folds
from lesionuq.rundir import RunDir, sample_digest, write_stamp

# through the module, not its names: tests replace mc_sample and load_segmenter there
from lesionuq.segmentation import sampling
from lesionuq.segmentation import train as segmentation_train
from lesionuq.uncertainty import VoxelMaps

__all__ = ["stage_sample"]


@locked
def stage_sample(
    run: Path,
    folds: Sequence[int] | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """MC-dropout sampling of each fold's val and test cases (voxel uncertainty maps).

    In the samples protocol the maps made from the user's samples by the preprocess
    stage are copied into each fold's case folders instead (no U-Net).

    One unit per case and fold (:func:`~lesionuq.pipeline.stages.run_stale`; a worker
    loads a fold's U-Net once). A fold with a stale case and no ``segmenter.pt`` is
    refused before any work.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    unet = cfg.protocol == "unet"
    units = []
    for split in select_folds(splits, folds):
        digest = sample_digest(cfg, split)
        checkpoint = rd.fold(split.fold) / "segmenter.pt" if unet else None
        for s in ("val", "test"):
            for c in split.cases(s):
                case_dir = rd.case_dir(split.fold, s, c)
                job = _SampleJob(rd.root, split.fold, c, case_dir, checkpoint, digest, cfg)
                units.append(
                    Unit(case_dir / "stamp.json", digest, {f"fold_{split.fold}/{s}/{c}": job})
                )
    run_stale(
        _sample_case,
        units,
        what="case",
        desc=f"MC sampling (T={cfg.sampling.n_samples})" if unet else "maps per fold",
        progress=progress,
        scheduler=scheduler,
        workers=workers,
        check=_check_checkpoints,
    )


def _check_checkpoints(stale: list[Unit[_SampleJob]]) -> None:
    """Refuse, in one sentence, to sample a fold whose U-Net has not been trained."""
    for unit in stale:
        for job in unit.jobs.values():
            if job.checkpoint is not None and not job.checkpoint.is_file():
                raise InputError(f"{job.checkpoint}: file not found (train fold {job.fold} first).")


@dataclass(frozen=True)
class _SampleJob:
    """One case of :func:`stage_sample`: run, fold, case, its folder, the fold's U-Net, digest.

    ``checkpoint`` is None in the samples protocol (the preprocess stage's maps are copied).
    """

    run: Path
    fold: int
    case_id: str
    case_dir: Path
    checkpoint: Path | None
    digest: str
    cfg: ExperimentConfig


def _sample_case(job: _SampleJob) -> None:
    """MC-dropout maps of one case, written atomically, stamp last (a map_cases task)."""
    cfg = job.cfg
    image, mask, affine = load_preprocessed(job.run, job.case_id, cfg.sequences)
    if job.checkpoint is None:
        maps = VoxelMaps.load(RunDir(job.run).preprocessed / job.case_id)
    else:
        model = _segmenter(job.checkpoint, cfg.device)
        maps = sampling.mc_sample(model, image, cfg.sampling, device=cfg.device)
    with atomic_dir(job.case_dir) as tmp:
        for name, value in maps.items():
            save_nifti(tmp / f"{name}.nii.gz", value, affine)
        save_nifti(tmp / "image.nii.gz", image[0], affine)
        if mask is not None:
            save_nifti(tmp / "gt.nii.gz", mask, affine)
        write_stamp(tmp / "stamp.json", job.digest)


def _segmenter(checkpoint: Path, device: str):
    """The fold's U-Net, loaded once per process while the checkpoint is unchanged."""
    st = Path(checkpoint).stat()
    return _load_segmenter_once(str(Path(checkpoint).resolve()), device, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_segmenter_once(path: str, device: str, size: int, mtime_ns: int):
    del size, mtime_ns  # part of the cache key only
    return segmentation_train.load_segmenter(path, device=device)
