"""The paper's protocol end to end: k folds of train -> sample -> graphs -> fit -> evaluate.

Each stage is a public function on a run directory, so the CLI's stage commands, the
tests and :func:`run_experiment` call the same code. A stage skips every unit of work
(a case, a fold, a scorer) whose stamp matches the current settings, so a killed run
resumes where it stopped.

Data flow per fold K (see docs/DESIGN.md for the files)::

    preprocessed/CASE  --train-->  fold_K/segmenter.pt
                       --sample--> fold_K/{val,test}/CASE/{prob,seg,entropy,variance,pcs,gt,image}
                       --graphs--> fold_K/{val,test}/CASE/lesions.nii.gz, fold_K/graphs/{val,test}
                       --fit-----> fold_K/scorers/METHOD
    all folds          --evaluate-> results/{lesions,table1,table2}.csv, figure2.png, report.html
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq import distributed
from lesionuq.config import ExperimentConfig
from lesionuq.errors import did_you_mean
from lesionuq.evaluation.calibration_metrics import calibration_table
from lesionuq.evaluation.figures import plot_calibration
from lesionuq.io import (
    Case,
    InputError,
    atomic_dir,
    atomic_write_text,
    csv_text,
    disk_full_guard,
    load_case,
    load_ignore,
    load_nifti,
    read_csv_table,
    read_manifest,
    save_nifti,
)
from lesionuq.methods import CATALOGUE, fit_cost, is_learned, method_spec
from lesionuq.outputs import (
    check_output_dir,
    read_marker,
    run_lock,
    start_output,
)
from lesionuq.parallel import check_parallel, check_scheduler, map_cases
from lesionuq.pipeline.evaluate import calibrate_fold, detection_cases, score_fold
from lesionuq.rundir import (
    FoldSplit,
    RunDir,
    digest_of,
    graphs_digest,
    make_folds,
    sample_digest,
    stamp_ok,
    train_digest,
    unet_config,
    write_stamp,
)
from lesionuq.samples import maps_from_stack  # re-exported (its home before issue 26)
from lesionuq.scorers.default_method import fit_default_method
from lesionuq.uncertainty import VoxelMaps
from lesionuq.utils import remove_pyg_codegen_files, track

if TYPE_CHECKING:
    from lesionuq.lesions.dataset import LesionSet

__all__ = [
    "ExperimentResult",
    "calibrate_fold",
    "calibration_table",
    "detection_cases",
    "is_calibrated",
    "maps_from_stack",
    "plot_calibration",
    "prepare_run",
    "resolve_protocol",
    "run_experiment",
    "score_fold",
    "stage_evaluate",
    "stage_fit",
    "stage_graphs",
    "stage_preprocess",
    "stage_sample",
    "stage_train",
    "train_fold",
    "train_run",
    "validate_run",
]

logger = logging.getLogger(__name__)

STAGES = ("preprocess", "train", "sample", "graphs", "fit", "evaluate")


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


# --------------------------------------------------------------------------- plan


def _locked(stage: Callable) -> Callable:
    """Run a stage under the run's lock (:func:`lesionuq.outputs.run_lock`).

    In a ``torchrun`` job rank 0 holds the lock for the job; the other ranks write nothing.
    """

    @functools.wraps(stage)
    def wrapper(run: Path, *args, **kwargs):
        marker = read_marker(run) if Path(run).is_dir() else None
        if marker is None or marker.kind != "run":
            raise InputError(
                f"{run}: not a run directory (it has no lesionuq run marker); start it with "
                "`lesionuq experiment`."
            )
        if not distributed.is_main_process():
            return stage(run, *args, **kwargs)
        with run_lock(run):
            return stage(run, *args, **kwargs)

    return wrapper


def validate_run(data: Path, out: Path, cfg: ExperimentConfig) -> list[FoldSplit]:
    """Check everything a run needs before anything is written.

    The output folder (new, empty or a run directory), the manifest and its case ids,
    every case's files (loaded and checked) and the fold split.

    Returns:
        The fold splits.

    Raises:
        InputError: The first problem found, as one sentence.
    """
    from lesionuq.samples import load_samples_case

    cfg = resolve_protocol(data, cfg)
    cases = read_manifest(data, cfg.sequences, require_mask=True)
    inputs = [Path(data), *(p for c in cases for p in c.images)]
    inputs += [c.samples for c in cases if c.samples is not None]
    check_output_dir(out, "run", inputs=inputs)
    ids = [c.case_id for c in cases]
    fixed = cfg.protocol == "samples"
    folds = make_folds(ids, cfg.folds, cfg.val_fraction, cfg.seed, fixed_segmenter=fixed)
    for case in cases:
        if fixed:
            load_samples_case(case, cfg.preprocess.brain_threshold)
            load_ignore(case, load_nifti(case.images[0], read_data=False))
        else:
            images, _ = load_case(case)
            load_ignore(case, images[0])
    return folds


def resolve_protocol(data: Path, cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with ``protocol`` and ``samples_source`` set from the manifest.

    ``"samples"`` when every case has a ``samples`` column (the user's segmenter: no
    U-Net is trained; see :mod:`lesionuq.samples`), ``"unet"`` when none has.

    Raises:
        InputError: A mixed manifest (some cases with samples, some without).
    """
    from lesionuq.samples import describe_source, manifest_protocol

    cases = read_manifest(data, cfg.sequences, require_mask=True)
    protocol = manifest_protocol(cases, data)
    source = describe_source(cases, data) if protocol == "samples" else ""
    return cfg.replace(protocol=protocol, samples_source=source)


def prepare_run(data: Path, out: Path, cfg: ExperimentConfig) -> list[FoldSplit]:
    """Validate everything (:func:`validate_run`), then write config.yaml and folds.json.

    An existing run directory is reused (its finished stages are kept) when its folds
    are the same; a run whose config differs is updated and the stages whose settings
    changed are redone by their stamps. Nothing is written when validation fails.

    Returns:
        The fold splits.
    """
    cfg = resolve_protocol(Path(data), cfg)
    folds = validate_run(Path(data), Path(out), cfg)
    _write_plan(Path(data), Path(out), cfg, folds)
    return folds


def _write_plan(data: Path, out: Path, cfg: ExperimentConfig, folds: list[FoldSplit]) -> None:
    with disk_full_guard(out.parent):
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        start_output(out, "run")
        RunDir(out).write_plan(cfg, data, folds)


def _cases_by_id(data: Path, cfg: ExperimentConfig) -> dict[str, Case]:
    return {c.case_id: c for c in read_manifest(data, cfg.sequences, require_mask=True)}


# --------------------------------------------------------------------------- stages


@_locked
def stage_preprocess(
    run: Path,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Bring every case of the run onto the common grid (``RUN/preprocessed/CASE``).

    Writes one NIfTI per sequence, ``mask.nii.gz`` and ``transform.json`` (the map back to
    the original grid). One task per case (:func:`lesionuq.parallel.map_cases`: here, or on
    a Dask ``scheduler`` / a local cluster of ``workers``); a case that fails is named in
    the :class:`~lesionuq.errors.CasesFailedError` raised once the others are done.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, data, _ = rd.read_plan()
    jobs: dict[str, _PreprocessJob] = {}
    for case in _cases_by_id(data, cfg).values():
        paths = [str(p) for p in (*case.images, *([case.ignore] if case.ignore else []))]
        if cfg.protocol == "samples":
            paths.append(f"samples={case.samples}")
        digest = digest_of(cfg.preprocess, list(cfg.sequences), paths)
        folder = rd.preprocessed / case.case_id
        if not stamp_ok(folder / "stamp.json", digest):
            jobs[case.case_id] = _PreprocessJob(case, folder, digest, cfg)
    map_cases(
        _preprocess_case,
        jobs,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        desc="preprocess" if cfg.protocol == "unet" else "images onto the samples' grid, maps",
    ).raise_failed("case")
    if cfg.protocol == "samples":
        _write_samples_table(rd)


def _write_samples_table(rd: RunDir) -> None:
    """``RUN/samples.csv``: each case's samples and T (gathered from the preprocess stage)."""
    rows = [json.loads(p.read_text()) for p in sorted(rd.preprocessed.glob("*/samples.json"))]
    atomic_write_text(rd.root / "samples.csv", csv_text(pd.DataFrame(rows)))


@dataclass(frozen=True)
class _PreprocessJob:
    """One case of :func:`stage_preprocess`: the case, its folder, stamp digest, config."""

    case: Case
    folder: Path
    digest: str
    cfg: ExperimentConfig


def _preprocess_case(job: _PreprocessJob) -> None:
    """Preprocess one case into its folder, atomically, stamp last (a map_cases task)."""
    from lesionuq.data.preprocess import mask_to_grid, preprocess
    from lesionuq.samples import samples_onto_grid, samples_table

    cfg = job.cfg
    maps = None
    if cfg.protocol == "samples":  # onto the samples' grid; the maps from the samples
        pre, maps, info = samples_onto_grid(job.case, cfg.preprocess)
        ignore = load_ignore(job.case, load_nifti(job.case.images[0], read_data=False))
    else:
        images, mask = load_case(job.case)
        ignore = load_ignore(job.case, images[0])
        pre = preprocess(images, mask, cfg.preprocess)
    with atomic_dir(job.folder) as tmp:
        for i, seq in enumerate(cfg.sequences):
            save_nifti(tmp / f"{seq}.nii.gz", pre.image[i], pre.affine)
        if pre.mask is not None:
            save_nifti(tmp / "mask.nii.gz", pre.mask.astype(np.uint8), pre.affine)
        if ignore is not None:  # the ignore region, on the grid of the mask
            region = mask_to_grid(ignore, pre.affine, pre.image.shape[1:])
            save_nifti(tmp / "ignore.nii.gz", region, pre.affine)
        atomic_write_text(tmp / "transform.json", json.dumps(pre.transform.to_dict()))
        if maps is not None:
            for name, value in maps.items():
                save_nifti(tmp / f"{name}.nii.gz", value, pre.affine)
            row = samples_table([(job.case.case_id, info)]).iloc[0].to_dict()
            atomic_write_text(tmp / "samples.json", json.dumps(row, default=int) + "\n")
        write_stamp(tmp / "stamp.json", job.digest)


def load_preprocessed(
    run: Path, case_id: str, sequences: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A preprocessed case.

    Returns:
        image (C, X, Y, Z) float32, mask (X, Y, Z) uint8 or None, affine (4, 4).
    """
    folder = RunDir(Path(run)).preprocessed / case_id
    imgs = [_nii(folder / f"{s}.nii.gz") for s in sequences]
    image = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs])
    mask_path = folder / "mask.nii.gz"
    mask = np.asarray(_nii(mask_path).dataobj, dtype=np.uint8) if mask_path.exists() else None
    return image, mask, imgs[0].affine


def load_preprocessed_ignore(run: Path, case_id: str) -> np.ndarray | None:
    """A preprocessed case's ignore region, (X, Y, Z) bool, or None when it has none."""
    path = RunDir(Path(run)).preprocessed / case_id / "ignore.nii.gz"
    return np.asarray(_nii(path).dataobj) > 0 if path.exists() else None


def _nii(path: Path) -> nib.Nifti1Image:
    """``nib.load`` of a NIfTI file of the run directory (data loaded lazily)."""
    return cast(nib.Nifti1Image, nib.load(str(path)))


def _folds(folds: list[FoldSplit], only: Sequence[int] | None) -> list[FoldSplit]:
    if only is None:
        return folds
    known = {f.fold for f in folds}
    bad = [k for k in only if k not in known]
    if bad:
        raise InputError(f"fold {bad[0]} does not exist (folds: {sorted(known)}).")
    return [f for f in folds if f.fold in set(only)]


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


@_locked
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
    (:func:`lesionuq.parallel.map_cases`); the progress bar then counts finished folds.
    On a small CPU this is the faster use of its cores: a 32^3-patch training step
    scales poorly over threads (``benchmarks/train_throughput.py`` on 2 AVX2 cores:
    11.1 patches/s on 1 thread, 15.2 on 2); in the demo on that machine two folds side
    by side trained ~14.3 patches/s against 10.5-13.3 for one fold on both threads
    (1.14x: the workers share memory bandwidth and caches). The weights
    are those of a one-process run up to float rounding (the summation order of a
    convolution depends on the thread count); every draw is seeded the same way.
    """
    rd = RunDir(Path(run))
    _refuse_training(rd)
    cfg, _, splits = rd.read_plan()
    todo = [s.fold for s in _folds(splits, folds) if not _fold_trained(rd, cfg, s)]
    parallel = scheduler is not None or workers is not None
    if parallel and distributed.world_size() == 1 and len(todo) > 1:
        jobs = {f"fold_{k}": _TrainJob(Path(run), k) for k in todo}
        map_cases(
            _train_fold_job,
            jobs,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            desc="training U-Nets (a fold per worker)",
        ).raise_failed("fold")
        return
    for fold in todo:
        train_fold(Path(run), fold, progress=progress)


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


def train_fold(run: Path, fold: int, progress: bool = True) -> None:
    """Train fold ``fold``'s U-Net (resuming its checkpoint), then stamp it.

    A fold whose stamp matches the settings is left alone; one trained with other
    settings starts again from scratch (its checkpoints are removed first).

    Args:
        run: The run directory.
        fold: The fold number.
        progress: Show the epoch progress bar (rank 0 only under a process group).
    """
    from lesionuq.segmentation.train import train_segmenter

    main = distributed.is_main_process()
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    split = _folds(splits, [fold])[0]
    if _fold_trained(rd, cfg, split):
        return
    fold_dir = rd.fold(split.fold)
    digest = train_digest(cfg, split)
    stale = fold_dir / "stamp_train.json"
    if main and stale.exists():  # settings changed: do not resume from the old checkpoint
        for name in ("segmenter.pt", "segmenter_last.pt", "stamp_train.json"):
            (fold_dir / name).unlink(missing_ok=True)
    distributed.barrier()  # no rank resumes from a checkpoint rank 0 is removing
    train = [_pair(run, c, cfg) for c in split.train]
    val = [_pair(run, c, cfg) for c in split.val]
    fold_dir.mkdir(parents=True, exist_ok=True)
    logger.info("fold %d: training the U-Net on %d cases", split.fold, len(train))
    result = train_segmenter(
        train, val, unet_config(cfg), cfg.train, fold_dir, device=cfg.device, progress=progress
    )
    if main:
        write_stamp(fold_dir / "stamp_train.json", digest, best_dice=result.best_dice)


def _fold_trained(rd: RunDir, cfg: ExperimentConfig, split: FoldSplit) -> bool:
    """Whether the fold's U-Net exists and its stamp matches the current settings."""
    fold_dir = rd.fold(split.fold)
    digest = train_digest(cfg, split)
    return stamp_ok(fold_dir / "stamp_train.json", digest) and (fold_dir / "segmenter.pt").exists()


def _pair(run: Path, case_id: str, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    from lesionuq.segmentation.train import IGNORE_LABEL

    image, mask, _ = load_preprocessed(run, case_id, cfg.sequences)
    if mask is None:
        raise InputError(f"case {case_id}: no ground-truth mask, which training needs.")
    ignore = load_preprocessed_ignore(run, case_id)
    if ignore is not None:  # masked from the loss by train_segmenter
        mask = np.where(ignore, IGNORE_LABEL, mask).astype(np.uint8)
    return image, mask


@_locked
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

    One task per case and fold (:func:`lesionuq.parallel.map_cases`: here, or on a Dask
    ``scheduler`` / a local cluster of ``workers``, each loading a fold's U-Net once);
    a case that fails is named in the :class:`~lesionuq.errors.CasesFailedError` raised
    once the others are done.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    jobs: dict[str, _SampleJob] = {}
    for split in _folds(splits, folds):
        digest = sample_digest(cfg, split)
        unet = cfg.protocol == "unet"
        checkpoint = rd.fold(split.fold) / "segmenter.pt" if unet else None
        n_jobs = len(jobs)
        for s in ("val", "test"):
            for c in split.cases(s):
                case_dir = rd.case_dir(split.fold, s, c)
                if not stamp_ok(case_dir / "stamp.json", digest):
                    jobs[f"fold_{split.fold}/{s}/{c}"] = _SampleJob(
                        rd.root, c, case_dir, checkpoint, digest, cfg
                    )
        if len(jobs) > n_jobs and checkpoint is not None and not checkpoint.is_file():
            raise InputError(f"{checkpoint}: file not found (train fold {split.fold} first).")
    map_cases(
        _sample_case,
        jobs,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        desc=f"MC sampling (T={cfg.sampling.n_samples})" if unet else "maps per fold",
    ).raise_failed("case")


@dataclass(frozen=True)
class _SampleJob:
    """One case of :func:`stage_sample`: run, case, its folder, the fold's U-Net, digest.

    ``checkpoint`` is None in the samples protocol (the preprocess stage's maps are copied).
    """

    run: Path
    case_id: str
    case_dir: Path
    checkpoint: Path | None
    digest: str
    cfg: ExperimentConfig


def _sample_case(job: _SampleJob) -> None:
    """MC-dropout maps of one case, written atomically, stamp last (a map_cases task)."""
    from lesionuq.segmentation.sampling import mc_sample

    cfg = job.cfg
    image, mask, affine = load_preprocessed(job.run, job.case_id, cfg.sequences)
    if job.checkpoint is None:
        maps = VoxelMaps.load(RunDir(job.run).preprocessed / job.case_id)
    else:
        model = _segmenter(job.checkpoint, cfg.device)
        maps = mc_sample(model, image, cfg.sampling, device=cfg.device)
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
    from lesionuq.segmentation.train import load_segmenter

    del size, mtime_ns  # part of the cache key only
    return load_segmenter(path, device=device)


@_locked
def stage_graphs(
    run: Path,
    folds: Sequence[int] | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Label lesions, compute IoU_adj and TP/FP, build lesion graphs for val and test.

    One task per case and fold (:func:`lesionuq.parallel.map_cases`: here, or on a Dask
    ``scheduler`` / a local cluster of ``workers``); each fold's split is then saved by
    this process. A split with a failed case is not saved, and the failed cases are
    named in the :class:`~lesionuq.errors.CasesFailedError` raised once the others are
    done.
    """
    from lesionuq.lesions.dataset import LesionSet

    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    todo: list[tuple[FoldSplit, str, str]] = []
    jobs: dict[str, _GraphsJob] = {}
    for split in _folds(splits, folds):
        digest = graphs_digest(cfg, split)
        for s in ("val", "test"):
            if stamp_ok(rd.lesion_set(split.fold, s) / "stamp.json", digest):
                continue
            todo.append((split, s, digest))
            for c in split.cases(s):
                case_dir = rd.case_dir(split.fold, s, c)
                jobs[f"fold_{split.fold}/{s}/{c}"] = _GraphsJob(rd.root, c, case_dir, cfg)
    done = map_cases(
        _graphs_case,
        jobs,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        desc="lesion graphs",
    )
    for split, s, digest in todo:
        keys = [f"fold_{split.fold}/{s}/{c}" for c in split.cases(s)]
        if any(k not in done.results for k in keys):
            continue
        parts = [done.results[k] for k in keys]
        with atomic_dir(rd.lesion_set(split.fold, s)) as tmp:
            LesionSet.concat([lesions for lesions, _ in parts]).save(tmp)
            atomic_write_text(tmp / "cases.csv", csv_text(pd.DataFrame([r for _, r in parts])))
            write_stamp(tmp / "stamp.json", digest)
    done.raise_failed("case")


@dataclass(frozen=True)
class _GraphsJob:
    """One case of :func:`stage_graphs`: the run, the case and its maps folder."""

    run: Path
    case_id: str
    case_dir: Path
    cfg: ExperimentConfig


def _graphs_case(job: _GraphsJob) -> tuple[LesionSet, dict[str, object]]:
    """One case's lesions (``lesions.nii.gz`` written) and its cases.csv row."""
    from lesionuq.evaluation.metrics import dice
    from lesionuq.lesions.graphs import case_lesions
    from lesionuq.location.features import with_locations

    cfg, c = job.cfg, job.case_id
    image, mask, affine = load_preprocessed(job.run, c, cfg.sequences)
    maps = VoxelMaps.load(job.case_dir)
    ignore = load_preprocessed_ignore(job.run, c)
    labels, lesions = case_lesions(
        maps.seg, image, maps, mask, affine, cfg.graphs, c, ignore=ignore
    )
    if cfg.graphs.location:  # the lesion tables gain location + MNI centroid (~10 s)
        lesions, _ = with_locations(lesions, image[0], affine, labels)
    save_nifti(job.case_dir / "lesions.nii.gz", labels.astype(np.int32), affine)
    ignored = lesions.table["in_ignore"].to_numpy(dtype=bool)
    # lesions mostly in the ignore region are neither TP nor FP: not fitted, not evaluated
    lesions = lesions.subset(np.flatnonzero(~ignored))
    is_tp = lesions.is_tp
    row = {
        "case_id": c,
        "dice": dice(maps.seg, mask > 0, ignore) if mask is not None else float("nan"),
        "n_lesions": len(lesions),
        "n_tp": int(is_tp.sum()),
        "n_fp": int((~is_tp).sum()),
        "n_ignored": int(ignored.sum()),
    }
    return lesions, row


def is_calibrated(method: str, cfg: ExperimentConfig) -> bool:
    """Whether ``method`` is a learned scorer (GCNNs, MetaSeg, ...) that gets a P(FP) calibrator.

    Every scorer that learns from the validation lesions (the catalogue's ``learned``) is
    cross-fitted and calibrated; the fixed voxel aggregates and ``size`` are not.
    """
    return is_learned(method)


def _fit_digest(graphs: str, method: str, cfg: ExperimentConfig) -> str:
    """Digest of a fitted scorer (and, for learned ones, its calibrator).

    The review target is not part of it: a new target only re-chooses the operating
    point from the stored out-of-fold P(FP) (:func:`lesionuq.calibration.update_operating_point`).
    """
    learned = cfg.gcnn if "gcnn" in method_spec(method).sections else None
    if not is_calibrated(method, cfg):
        return digest_of(graphs, learned, method)
    cal = {"method": cfg.calibration.method, "n_inner": cfg.calibration.n_inner, "seed": cfg.seed}
    return digest_of(graphs, learned, method, cal)


def _fit_shift_reference(rd: RunDir, cfg: ExperimentConfig, split: FoldSplit, data: Path) -> None:
    """Profile the fold's validation scans and save ``fold_K/shift_reference.json``.

    Each profile uses the original first-sequence image (voxel size, intensity
    histogram) and the MC-dropout entropy over the brain on the preprocessed grid.
    """
    from lesionuq.shift import SHIFT_FILE, ShiftReference, scan_profile

    fold_dir = rd.fold(split.fold)
    digest = digest_of(sample_digest(cfg, split), "shift", cfg.preprocess.brain_threshold)
    if stamp_ok(fold_dir / "stamp_shift.json", digest) and (fold_dir / SHIFT_FILE).is_file():
        return
    cases = _cases_by_id(data, cfg)
    profiles = []
    for c in split.val:
        case_dir = rd.case_dir(split.fold, "val", c)
        entropy = np.asarray(_nii(case_dir / "entropy.nii.gz").dataobj, np.float32)
        brain = np.asarray(_nii(case_dir / "image.nii.gz").dataobj) != 0
        native = load_nifti(cases[c].images[0])
        profiles.append(
            scan_profile(native, entropy, brain, brain_threshold=cfg.preprocess.brain_threshold)
        )
    ShiftReference().fit(profiles).save(fold_dir / SHIFT_FILE)
    write_stamp(fold_dir / "stamp_shift.json", digest, n_scans=len(profiles))


@_locked
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
    lesions. The fold's validation scans also give the shift reference
    (``fold_K/shift_reference.json``).

    One task per fold and method (:func:`lesionuq.parallel.map_cases`: here, or on a
    Dask ``scheduler`` / a local cluster of ``workers`` single-threaded processes; the
    slowest methods are submitted first). Every fit is seeded, so the scorers are the
    same wherever they run.
    """
    from lesionuq.calibration import update_operating_point

    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, data, splits = rd.read_plan()
    _check_methods(methods)
    chosen = _folds(splits, folds)
    jobs: list[tuple[str, _FitJob]] = []
    for split in chosen:
        fold_graphs = graphs_digest(cfg, split)
        for method in methods or cfg.methods:
            digest = _fit_digest(fold_graphs, method, cfg)
            folder = rd.scorer(split.fold, method)
            if stamp_ok(folder / "stamp.json", digest):
                update_operating_point(folder, cfg.calibration.review_target)
                continue
            job = _FitJob(rd.lesion_set(split.fold, "val"), split.fold, method, folder, digest, cfg)
            jobs.append((f"fold_{split.fold}/{method}", job))
    parallel = scheduler is not None or workers is not None
    jobs.sort(key=lambda kv: -fit_cost(kv[1].method))  # long fits first
    for _, job in jobs:
        job.progress = progress and not parallel
    map_cases(
        _fit_method,
        dict(jobs),
        scheduler=scheduler,
        workers=workers,
        progress=progress and parallel,
        desc="fitting scorers",
    ).raise_failed("scorer")
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


def _fit_default_method(rd: RunDir, cfg: ExperimentConfig, split: FoldSplit) -> None:
    """Choose the fold's default P(FP) method (``lesionuq.scorers.default_method``)."""
    from lesionuq.lesions.dataset import load_lesion_set

    val = load_lesion_set(rd.lesion_set(split.fold, "val"))
    fit_default_method(rd.fold(split.fold), val, cfg.calibration.review_target)


@dataclass
class _FitJob:
    """One scorer of :func:`stage_fit`: the fold's val lesion set, method, folder, digest."""

    val: Path
    fold: int
    method: str
    folder: Path
    digest: str
    cfg: ExperimentConfig
    progress: bool = False


def _fit_method(job: _FitJob) -> None:
    """Fit (and calibrate) one scorer into its folder, atomically, stamp last."""
    from lesionuq.calibration import fit_calibrated_scorer
    from lesionuq.lesions.dataset import load_lesion_set
    from lesionuq.scorers import make_scorer

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


@_locked
def stage_evaluate(run: Path, progress: bool = True) -> ExperimentResult:
    """Score the test lesions of every fold and write the results (tables, figures, report).

    Besides the paper's files (``lesions.csv`` with calibrated P(FP) in the learned
    classifiers' columns, ``table1.csv`` extended with the lesion-level detection
    metrics, ``table2.csv``, ``figure2.png``) it writes ``calibration.csv`` and
    ``calibration.png`` (before / after calibration), ``operating_point.csv`` (what the
    stored review threshold does on the test lesions) and ``retention.csv`` (area of the
    lesion-F1 retention curve per fold and method).
    """
    from lesionuq.evaluation.bootstrap import auc_intervals
    from lesionuq.evaluation.detection import fold_detection_rows, retention_rows
    from lesionuq.evaluation.metrics import table1, table2
    from lesionuq.evaluation.report import plot_accuracy_confidence, write_report

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
    plot_accuracy_confidence(lesions, methods, res / "figure2.png")
    report = write_report(rd.root)
    return ExperimentResult(rd.root, t1, t2, t2_folds, report)


# --------------------------------------------------------------------------- whole run


def run_experiment(
    data: Path,
    out: Path,
    cfg: ExperimentConfig,
    progress: bool = True,
    stop_after: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> ExperimentResult | None:
    """Run (or resume) the paper's k-fold protocol on a ``cases.csv`` data set.

    Args:
        data: The manifest.
        out: The run directory: new, empty or an earlier run (which resumes); anything
            else is refused before any work. Held under :func:`~lesionuq.outputs.run_lock`.
        cfg: The full config (written to ``out/config.yaml``).
        progress: Show progress bars.
        stop_after: Stop after this stage (one of ``STAGES``), for inspection.
        scheduler: Run the per-case stages (preprocess, sample, graphs), the folds'
            U-Net training and the scorer fits on this running Dask scheduler
            (:func:`lesionuq.parallel.map_cases`).
        workers: Or on a local Dask cluster of this many single-threaded processes.

    Returns:
        The result, or None when stopped before ``evaluate``.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}.")
    check_parallel(scheduler, workers)
    data, out = Path(data), Path(out)
    cfg = resolve_protocol(data, cfg)
    folds = validate_run(data, out, cfg)
    check_scheduler(scheduler)  # an unreachable scheduler leaves nothing behind
    with disk_full_guard(out.parent):
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):  # held from the plan to the last stage
        _write_plan(data, out, cfg, folds)
        return _run_stages(out, progress, stop_after, {"scheduler": scheduler, "workers": workers})


def _run_stages(
    out: Path, progress: bool, stop_after: str | None, parallel: dict[str, Any]
) -> ExperimentResult | None:
    timings: dict[str, float] = {}
    steps: dict[str, Callable[..., Any]] = {
        "preprocess": functools.partial(stage_preprocess, **parallel),
        "train": functools.partial(stage_train, **parallel),
        "sample": functools.partial(stage_sample, **parallel),
        "graphs": functools.partial(stage_graphs, **parallel),
        "fit": functools.partial(stage_fit, **parallel),
    }
    if RunDir(Path(out)).read_plan()[0].protocol == "samples":
        del steps["train"]  # the user's segmenter: nothing to train
        stop_after = "preprocess" if stop_after == "train" else stop_after
    for name, fn in steps.items():
        t0 = time.perf_counter()
        fn(Path(out), progress=progress)
        timings[name] = time.perf_counter() - t0
        if stop_after == name:
            _write_timings(Path(out), timings)
            return None
    t0 = time.perf_counter()
    result = stage_evaluate(Path(out), progress=progress)
    timings["evaluate"] = time.perf_counter() - t0
    result.timings = timings
    _write_timings(Path(out), timings)
    return result


def _write_timings(run: Path, timings: dict[str, float]) -> None:
    rows = pd.DataFrame(
        {"stage": list(timings), "seconds": [round(v, 2) for v in timings.values()]}
    )
    atomic_write_text(RunDir(run).results / "timings.csv", csv_text(rows))
