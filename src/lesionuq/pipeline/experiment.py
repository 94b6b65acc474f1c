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

The stages live in :mod:`.preprocess`, :mod:`.train`, :mod:`.sample`, :mod:`.graphs`,
:mod:`.fit` and :mod:`.evaluate` (the helper they share in :mod:`.stages`); this module
plans a run (:func:`prepare_run`) and runs the stage list (:data:`STAGES`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.io import (
    InputError,
    atomic_write_text,
    csv_text,
    disk_full_guard,
    load_case,
    load_ignore,
    load_nifti,
    read_manifest,
)
from lesionuq.outputs import check_output_dir, run_lock, start_output
from lesionuq.parallel import check_parallel, check_scheduler
from lesionuq.pipeline.evaluate import ExperimentResult, stage_evaluate
from lesionuq.pipeline.fit import stage_fit
from lesionuq.pipeline.graphs import stage_graphs
from lesionuq.pipeline.preprocess import stage_preprocess
from lesionuq.pipeline.sample import stage_sample
from lesionuq.pipeline.train import stage_train
from lesionuq.rundir import FoldSplit, RunDir, make_folds
from lesionuq.samples import describe_source, load_samples_case, manifest_protocol

__all__ = ["STAGES", "prepare_run", "resolve_protocol", "run_experiment", "validate_run"]

STAGES = ("preprocess", "train", "sample", "graphs", "fit", "evaluate")


def validate_run(data: Path, out: Path, cfg: ExperimentConfig) -> list[FoldSplit]:
    """Check everything a run needs before anything is written.

    The output folder (new, empty or a run directory), the manifest and its case ids,
    every case's files (loaded and checked) and the fold split.

    Returns:
        The fold splits.

    Raises:
        InputError: The first problem found, as one sentence.
    """
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
    """Run the stages in order (``train`` left out in the samples protocol), timing each.

    The seconds per stage go to ``results/timings.csv`` and the result's ``timings``.
    """
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
    """``results/timings.csv``: stage, seconds (rounded to 0.01 s)."""
    rows = pd.DataFrame(
        {"stage": list(timings), "seconds": [round(v, 2) for v in timings.values()]}
    )
    atomic_write_text(RunDir(run).results / "timings.csv", csv_text(rows))
