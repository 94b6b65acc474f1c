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

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.config import ExperimentConfig, UNetConfig
from lesionuq.io import (
    Case,
    InputError,
    atomic_dir,
    atomic_write_text,
    csv_text,
    disk_full_guard,
    load_case,
    load_nifti,
    read_manifest,
    save_nifti,
)
from lesionuq.outputs import (
    check_output_dir,
    output_dir,
    read_marker,
    run_lock,
    start_output,
)
from lesionuq.rundir import FoldSplit, RunDir, digest_of, make_folds, stamp_ok, write_stamp
from lesionuq.uncertainty import VoxelMaps
from lesionuq.utils import remove_pyg_codegen_files, track

__all__ = [
    "ExperimentResult",
    "maps_from_stack",
    "prepare_run",
    "run_experiment",
    "stage_evaluate",
    "stage_fit",
    "stage_graphs",
    "stage_preprocess",
    "stage_sample",
    "stage_train",
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
    """Run a stage under the run's lock (:func:`lesionuq.outputs.run_lock`)."""

    @functools.wraps(stage)
    def wrapper(run: Path, *args, **kwargs):
        marker = read_marker(run) if Path(run).is_dir() else None
        if marker is None or marker.kind != "run":  # not a run: read_plan says so
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
    cases = read_manifest(data, cfg.sequences, require_mask=True)
    inputs = [Path(data), *(p for c in cases for p in c.images)]
    check_output_dir(out, "run", inputs=inputs)
    folds = make_folds([c.case_id for c in cases], cfg.folds, cfg.val_fraction, cfg.seed)
    for case in cases:
        load_case(case)
    return folds


def prepare_run(data: Path, out: Path, cfg: ExperimentConfig) -> list[FoldSplit]:
    """Validate everything (:func:`validate_run`), then write config.yaml and folds.json.

    An existing run directory is reused (its finished stages are kept) when its folds
    are the same; a run whose config differs is updated and the stages whose settings
    changed are redone by their stamps. Nothing is written when validation fails.

    Returns:
        The fold splits.
    """
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


def _unet_cfg(cfg: ExperimentConfig) -> UNetConfig:
    return dataclasses.replace(cfg.unet, in_channels=len(cfg.sequences))


# --------------------------------------------------------------------------- stages


@_locked
def stage_preprocess(run: Path, progress: bool = True) -> None:
    """Bring every case of the run onto the common grid (``RUN/preprocessed/CASE``).

    Writes one NIfTI per sequence, ``mask.nii.gz`` and ``transform.json`` (the map back to
    the original grid).
    """
    from lesionuq.data.preprocess import preprocess

    rd = RunDir(Path(run))
    cfg, data, _ = rd.read_plan()
    cases = list(_cases_by_id(data, cfg).values())
    for case in track(cases, "preprocess", enabled=progress):
        digest = digest_of(cfg.preprocess, list(cfg.sequences), [str(p) for p in case.images])
        folder = rd.preprocessed / case.case_id
        if stamp_ok(folder / "stamp.json", digest):
            continue
        images, mask = load_case(case)
        pre = preprocess(images, mask, cfg.preprocess)
        with atomic_dir(folder) as tmp:
            for i, seq in enumerate(cfg.sequences):
                save_nifti(tmp / f"{seq}.nii.gz", pre.image[i], pre.affine)
            if pre.mask is not None:
                save_nifti(tmp / "mask.nii.gz", pre.mask.astype(np.uint8), pre.affine)
            atomic_write_text(tmp / "transform.json", json.dumps(pre.transform.to_dict()))
            write_stamp(tmp / "stamp.json", digest)


def load_preprocessed(
    run: Path, case_id: str, sequences: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A preprocessed case.

    Returns:
        image (C, X, Y, Z) float32, mask (X, Y, Z) uint8 or None, affine (4, 4).
    """
    folder = RunDir(Path(run)).preprocessed / case_id
    imgs = [nib.load(str(folder / f"{s}.nii.gz")) for s in sequences]
    image = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs])
    mask_path = folder / "mask.nii.gz"
    mask = (
        np.asarray(nib.load(str(mask_path)).dataobj, dtype=np.uint8) if mask_path.exists() else None
    )
    return image, mask, imgs[0].affine


def _train_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of everything a fold's U-Net depends on."""
    return digest_of(cfg.preprocess, _unet_cfg(cfg), cfg.train, list(split.train), list(split.val))


def _sample_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of everything a fold's voxel maps depend on."""
    return digest_of(_train_digest(cfg, split), cfg.sampling)


def _graphs_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of everything a fold's lesion tables and graphs depend on."""
    return digest_of(_sample_digest(cfg, split), cfg.graphs)


def _folds(folds: list[FoldSplit], only: Sequence[int] | None) -> list[FoldSplit]:
    if only is None:
        return folds
    known = {f.fold for f in folds}
    bad = [k for k in only if k not in known]
    if bad:
        raise InputError(f"fold {bad[0]} does not exist (folds: {sorted(known)}).")
    return [f for f in folds if f.fold in set(only)]


@_locked
def stage_train(run: Path, folds: Sequence[int] | None = None, progress: bool = True) -> None:
    """Train each fold's MC-dropout U-Net on its train cases (val cases pick the epoch)."""
    from lesionuq.segmentation.train import train_segmenter

    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    for split in _folds(splits, folds):
        fold_dir = rd.fold(split.fold)
        digest = _train_digest(cfg, split)
        if stamp_ok(fold_dir / "stamp_train.json", digest) and (fold_dir / "segmenter.pt").exists():
            continue
        stale = fold_dir / "stamp_train.json"
        if stale.exists():  # settings changed: do not resume from the old checkpoint
            for name in ("segmenter.pt", "segmenter_last.pt", "stamp_train.json"):
                (fold_dir / name).unlink(missing_ok=True)
        train = [_pair(run, c, cfg) for c in split.train]
        val = [_pair(run, c, cfg) for c in split.val]
        fold_dir.mkdir(parents=True, exist_ok=True)
        logger.info("fold %d: training the U-Net on %d cases", split.fold, len(train))
        result = train_segmenter(
            train, val, _unet_cfg(cfg), cfg.train, fold_dir, device=cfg.device, progress=progress
        )
        write_stamp(fold_dir / "stamp_train.json", digest, best_dice=result.best_dice)


def _pair(run: Path, case_id: str, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    image, mask, _ = load_preprocessed(run, case_id, cfg.sequences)
    if mask is None:
        raise InputError(f"case {case_id}: no ground-truth mask, which training needs.")
    return image, mask


@_locked
def stage_sample(run: Path, folds: Sequence[int] | None = None, progress: bool = True) -> None:
    """MC-dropout sampling of each fold's val and test cases (voxel uncertainty maps)."""
    from lesionuq.segmentation.sampling import mc_sample
    from lesionuq.segmentation.train import load_segmenter

    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    for split in _folds(splits, folds):
        digest = _sample_digest(cfg, split)
        todo = [
            (s, c)
            for s in ("val", "test")
            for c in split.cases(s)
            if not stamp_ok(rd.case_dir(split.fold, s, c) / "stamp.json", digest)
        ]
        if not todo:
            continue
        model = load_segmenter(rd.fold(split.fold) / "segmenter.pt", device=cfg.device)
        desc = f"fold {split.fold}: MC sampling (T={cfg.sampling.n_samples})"
        for s, c in track(todo, desc, enabled=progress):
            image, mask, affine = load_preprocessed(run, c, cfg.sequences)
            maps = mc_sample(model, image, cfg.sampling, device=cfg.device)
            with atomic_dir(rd.case_dir(split.fold, s, c)) as tmp:
                for name, value in maps.items():
                    save_nifti(tmp / f"{name}.nii.gz", value, affine)
                save_nifti(tmp / "image.nii.gz", image[0], affine)
                if mask is not None:
                    save_nifti(tmp / "gt.nii.gz", mask, affine)
                write_stamp(tmp / "stamp.json", digest)


def load_maps(case_dir: Path) -> VoxelMaps:
    """The voxel maps written by :func:`stage_sample` for one case."""

    def read(name: str) -> np.ndarray:
        return np.asarray(nib.load(str(case_dir / f"{name}.nii.gz")).dataobj, dtype=np.float32)

    return VoxelMaps(
        prob=read("prob"), entropy=read("entropy"), variance=read("variance"), pcs=read("pcs")
    )


@_locked
def stage_graphs(run: Path, folds: Sequence[int] | None = None, progress: bool = True) -> None:
    """Label lesions, compute IoU_adj and TP/FP, build lesion graphs for val and test."""
    from lesionuq.evaluation.metrics import dice
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.lesions.graphs import case_lesions

    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    for split in _folds(splits, folds):
        digest = _graphs_digest(cfg, split)
        for s in ("val", "test"):
            out = rd.lesion_set(split.fold, s)
            if stamp_ok(out / "stamp.json", digest):
                continue
            sets, rows = [], []
            desc = f"fold {split.fold}: lesion graphs ({s})"
            for c in track(split.cases(s), desc, enabled=progress):
                case_dir = rd.case_dir(split.fold, s, c)
                image, mask, affine = load_preprocessed(run, c, cfg.sequences)
                maps = load_maps(case_dir)
                labels, lesions = case_lesions(maps.seg, image, maps, mask, affine, cfg.graphs, c)
                save_nifti(case_dir / "lesions.nii.gz", labels.astype(np.int32), affine)
                sets.append(lesions)
                is_tp = lesions.is_tp
                rows.append(
                    {
                        "case_id": c,
                        "dice": dice(maps.seg, mask > 0) if mask is not None else float("nan"),
                        "n_lesions": len(lesions),
                        "n_tp": int(is_tp.sum()),
                        "n_fp": int((~is_tp).sum()),
                    }
                )
            with atomic_dir(out) as tmp:
                LesionSet.concat(sets).save(tmp)
                atomic_write_text(tmp / "cases.csv", csv_text(pd.DataFrame(rows)))
                write_stamp(tmp / "stamp.json", digest)


@_locked
def stage_fit(
    run: Path,
    folds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    progress: bool = True,
) -> None:
    """Fit every scorer on each fold's validation lesions (``fold_K/scorers/METHOD``)."""
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.scorers import make_scorer

    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    for split in _folds(splits, folds):
        graphs_digest = _graphs_digest(cfg, split)
        val = None
        for method in methods or cfg.methods:
            learned = cfg.gcnn if method.startswith("gcnn") else None
            digest = digest_of(graphs_digest, learned, method)
            folder = rd.scorer(split.fold, method)
            if stamp_ok(folder / "stamp.json", digest):
                continue
            if val is None:
                val = LesionSet.load(rd.lesion_set(split.fold, "val"))
            logger.info(
                "fold %d: fitting %s on %d validation lesions", split.fold, method, len(val)
            )
            t0 = time.perf_counter()
            scorer = make_scorer(method, cfg).fit(val, progress=progress)
            with atomic_dir(folder) as tmp:
                scorer.save(tmp)
                write_stamp(tmp / "stamp.json", digest, fit_seconds=time.perf_counter() - t0)
            remove_pyg_codegen_files()
        cfg.to_yaml(rd.fold(split.fold) / "config.yaml")


def score_fold(run: Path, split: FoldSplit, methods: Sequence[str]) -> pd.DataFrame:
    """One row per test lesion of a fold with every method's uncertainty."""
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.scorers import load_scorer

    rd = RunDir(Path(run))
    test = LesionSet.load(rd.lesion_set(split.fold, "test"))
    frame = test.table[["case_id", "lesion_id", "n_voxels", "iou_adj", "is_tp"]].copy()
    frame.insert(0, "fold", split.fold)
    for method in methods:
        scorer = load_scorer(method, rd.scorer(split.fold, method))
        frame[method] = scorer.score(test) if len(test) else np.zeros(0)
    remove_pyg_codegen_files()
    return frame


@_locked
def stage_evaluate(run: Path, progress: bool = True) -> ExperimentResult:
    """Score the test lesions of every fold and write the results (tables, figure, report)."""
    from lesionuq.evaluation.bootstrap import auc_intervals
    from lesionuq.evaluation.metrics import table1, table2
    from lesionuq.evaluation.report import plot_accuracy_confidence, write_report

    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    methods = list(cfg.methods)
    frames, cases = [], []
    for split in track(splits, "scoring test lesions", enabled=progress):
        frames.append(score_fold(run, split, methods))
        per_case = pd.read_csv(
            rd.lesion_set(split.fold, "test") / "cases.csv", dtype={"case_id": str}
        )
        per_case.insert(0, "fold", split.fold)
        cases.append(per_case)
    lesions = pd.concat(frames, ignore_index=True)
    case_table = pd.concat(cases, ignore_index=True)
    t1 = table1(case_table)
    t2, t2_folds = table2(lesions, methods)
    t2 = t2.merge(auc_intervals(lesions, methods, seed=cfg.seed), on="method", how="left")
    res = rd.results
    res.mkdir(parents=True, exist_ok=True)
    atomic_write_text(res / "lesions.csv", csv_text(lesions))
    atomic_write_text(res / "cases.csv", csv_text(case_table))
    atomic_write_text(res / "table1.csv", csv_text(t1))
    atomic_write_text(res / "table2.csv", csv_text(t2))
    atomic_write_text(res / "table2_folds.csv", csv_text(t2_folds))
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
) -> ExperimentResult | None:
    """Run (or resume) the paper's k-fold protocol on a ``cases.csv`` data set.

    Args:
        data: The manifest.
        out: The run directory: new, empty or an earlier run (which resumes); anything
            else is refused before any work. Held under :func:`~lesionuq.outputs.run_lock`.
        cfg: The full config (written to ``out/config.yaml``).
        progress: Show progress bars.
        stop_after: Stop after this stage (one of ``STAGES``), for inspection.

    Returns:
        The result, or None when stopped before ``evaluate``.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}.")
    data, out = Path(data), Path(out)
    folds = validate_run(data, out, cfg)
    with disk_full_guard(out.parent):
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):  # held from the plan to the last stage
        _write_plan(data, out, cfg, folds)
        return _run_stages(out, progress, stop_after)


def _run_stages(out: Path, progress: bool, stop_after: str | None) -> ExperimentResult | None:
    timings: dict[str, float] = {}
    steps = {
        "preprocess": stage_preprocess,
        "train": stage_train,
        "sample": stage_sample,
        "graphs": stage_graphs,
        "fit": stage_fit,
    }
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


def maps_from_stack(stack: Path, out: Path, overwrite: bool = False) -> Path:
    """Voxel maps from T probability maps made elsewhere (bring your own model).

    Args:
        stack: A folder of NIfTI foreground-probability maps (one per sample, any order
            of names, read sorted) or one 4-D NIfTI whose last axis is the sample.
        out: Folder for ``prob``, ``seg``, ``entropy``, ``variance`` and ``pcs`` NIfTI files,
            written on the stack's grid (its affine); see :mod:`lesionuq.outputs`.

        overwrite: Replace an earlier set of maps in ``out`` (only the files lesionuq
            wrote there); without it such a folder is refused, as is any other
            non-empty folder.

    Returns:
        ``out``.
    """
    from lesionuq.uncertainty import load_sample_stack, maps_from_samples

    stack = Path(stack)
    check_output_dir(out, "maps", overwrite=overwrite, inputs=[stack])
    samples = load_sample_stack(stack)  # checks the path and the folder listing
    first = _first_nifti(stack) if stack.is_dir() else stack
    affine = load_nifti(first).affine
    maps = maps_from_samples(samples)
    with output_dir(Path(out), "maps") as tmp:
        for name, value in maps.items():
            save_nifti(tmp / f"{name}.nii.gz", value, affine)
    return Path(out)


def _first_nifti(folder: Path) -> Path:
    from lesionuq.uncertainty import nifti_files

    return nifti_files(folder)[0]
