"""The paper's protocol end to end: k folds of train -> sample -> graphs -> fit -> evaluate.

Each stage is a public function on a run directory, so the CLI's stage commands, the
tests and :func:`run_experiment` call the same code. A stage skips every unit of work
(a case, a fold, a scorer) whose stamp matches the current settings, so a killed run
resumes where it stopped.

Data flow per fold K (see DESIGN.md for the files)::

    preprocessed/CASE  --train-->  fold_K/segmenter.pt
                       --sample--> fold_K/{val,test}/CASE/{prob,seg,entropy,variance,pcs,gt,image}
                       --graphs--> fold_K/{val,test}/CASE/lesions.nii.gz, fold_K/graphs/{val,test}
                       --fit-----> fold_K/scorers/METHOD
    all folds          --evaluate-> results/{lesions,table1,table2}.csv, figure2.png, report.html
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
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
    load_case,
    read_manifest,
    save_nifti,
)
from lesionuq.rundir import FoldSplit, RunDir, digest_of, make_folds, stamp_ok, write_stamp
from lesionuq.uncertainty import VoxelMaps
from lesionuq.utils import track

__all__ = [
    "ExperimentResult",
    "prepare_run",
    "run_experiment",
    "stage_evaluate",
    "stage_fit",
    "stage_graphs",
    "stage_preprocess",
    "stage_sample",
    "stage_train",
]

MAP_NAMES = ("prob", "seg", "entropy", "variance", "pcs")
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


def prepare_run(data: Path, out: Path, cfg: ExperimentConfig) -> list[FoldSplit]:
    """Validate the manifest, split the cases into folds, write config.yaml and folds.json.

    An existing run directory is reused (its finished stages are kept) when its folds
    are the same; a run whose config differs is updated and the stages whose settings
    changed are redone by their stamps.

    Returns:
        The fold splits.
    """
    cases = read_manifest(data, cfg.sequences, require_mask=True)
    folds = make_folds([c.case_id for c in cases], cfg.folds, cfg.val_fraction, cfg.seed)
    RunDir(Path(out)).write_plan(cfg, Path(data), folds)
    return folds


def _cases_by_id(data: Path, cfg: ExperimentConfig) -> dict[str, Case]:
    return {c.case_id: c for c in read_manifest(data, cfg.sequences, require_mask=True)}


def _unet_cfg(cfg: ExperimentConfig) -> UNetConfig:
    return dataclasses.replace(cfg.unet, in_channels=len(cfg.sequences))


# --------------------------------------------------------------------------- stages


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
        if progress:
            print(f"fold {split.fold}: training the U-Net on {len(train)} cases")
        result = train_segmenter(
            train, val, _unet_cfg(cfg), cfg.train, fold_dir, device=cfg.device, progress=progress
        )
        write_stamp(fold_dir / "stamp_train.json", digest, best_dice=result.best_dice)


def _pair(run: Path, case_id: str, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    image, mask, _ = load_preprocessed(run, case_id, cfg.sequences)
    if mask is None:
        raise InputError(f"case {case_id}: no ground-truth mask, which training needs.")
    return image, mask


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
                save_nifti(tmp / "prob.nii.gz", maps.prob, affine)
                save_nifti(tmp / "seg.nii.gz", maps.seg.astype(np.uint8), affine)
                save_nifti(tmp / "entropy.nii.gz", maps.entropy, affine)
                save_nifti(tmp / "variance.nii.gz", maps.variance, affine)
                save_nifti(tmp / "pcs.nii.gz", maps.pcs, affine)
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
                atomic_write_text(tmp / "cases.csv", pd.DataFrame(rows).to_csv(index=False))
                write_stamp(tmp / "stamp.json", digest)


def stage_fit(
    run: Path,
    folds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    progress: bool = True,
) -> None:
    """Fit every scorer on each fold's validation lesions (``fold_K/scorers/METHOD``)."""
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.scorers.base import make_scorer

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
            if progress:
                print(f"fold {split.fold}: fitting {method} on {len(val)} validation lesions")
            t0 = time.perf_counter()
            scorer = make_scorer(method, cfg).fit(val, progress=progress)
            with atomic_dir(folder) as tmp:
                scorer.save(tmp)
                write_stamp(tmp / "stamp.json", digest, fit_seconds=time.perf_counter() - t0)
        cfg.to_yaml(rd.fold(split.fold) / "config.yaml")


def score_fold(run: Path, split: FoldSplit, methods: Sequence[str]) -> pd.DataFrame:
    """One row per test lesion of a fold with every method's uncertainty."""
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.scorers.base import load_scorer

    rd = RunDir(Path(run))
    test = LesionSet.load(rd.lesion_set(split.fold, "test"))
    frame = test.table[["case_id", "lesion_id", "n_voxels", "iou_adj", "is_tp"]].copy()
    frame.insert(0, "fold", split.fold)
    for method in methods:
        scorer = load_scorer(method, rd.scorer(split.fold, method))
        frame[method] = scorer.score(test) if len(test) else np.zeros(0)
    return frame


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
    atomic_write_text(res / "lesions.csv", lesions.to_csv(index=False))
    atomic_write_text(res / "cases.csv", case_table.to_csv(index=False))
    atomic_write_text(res / "table1.csv", t1.to_csv(index=False))
    atomic_write_text(res / "table2.csv", t2.to_csv(index=False))
    atomic_write_text(res / "table2_folds.csv", t2_folds.to_csv(index=False))
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
        out: The run directory (created; an existing run resumes).
        cfg: The full config (written to ``out/config.yaml``).
        progress: Show progress bars.
        stop_after: Stop after this stage (one of ``STAGES``), for inspection.

    Returns:
        The result, or None when stopped before ``evaluate``.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}.")
    prepare_run(Path(data), Path(out), cfg)
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
    atomic_write_text(RunDir(run).results / "timings.csv", rows.to_csv(index=False))


def maps_from_stack(stack: Path, out: Path) -> Path:
    """Voxel maps from T probability maps made elsewhere (bring your own model).

    Args:
        stack: A folder of NIfTI foreground-probability maps (one per sample, any order
            of names, read sorted) or one 4-D NIfTI whose last axis is the sample.
        out: Folder for ``prob``, ``seg``, ``entropy``, ``variance`` and ``pcs`` NIfTI files,
            written on the stack's grid (its affine).

    Returns:
        ``out``.
    """
    from lesionuq.io import load_nifti
    from lesionuq.uncertainty import load_sample_stack, maps_from_samples

    stack = Path(stack)
    first = sorted(stack.glob("*.nii*"))[0] if stack.is_dir() else stack
    affine = load_nifti(first).affine
    maps = maps_from_samples(load_sample_stack(stack))
    with atomic_dir(Path(out)) as tmp:
        for name in MAP_NAMES:
            value = getattr(maps, name)
            save_nifti(
                tmp / f"{name}.nii.gz", value.astype(np.uint8) if name == "seg" else value, affine
            )
    return Path(out)
