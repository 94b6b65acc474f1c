"""The ``graphs`` stage: lesions labelled, matched (IoU_adj, TP/FP) and turned into graphs.

Data flow per fold K (see docs/DESIGN.md for the files)::

    fold_K/{val,test}/CASE  --graphs-->  fold_K/{val,test}/CASE/lesions.nii.gz,
                                         fold_K/graphs/{val,test} (lesion set, cases.csv)
                                         registrations/CASE (graphs.location: the scan's
                                         MNI152 registration, shared by the folds)

One :class:`~lesionuq.pipeline.stages.Unit` per fold and split (its lesion set), whose
tasks are its cases (:func:`~lesionuq.pipeline.stages.run_stale`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.evaluation.metrics import dice
from lesionuq.io import atomic_dir, atomic_write_text, csv_text, save_nifti
from lesionuq.lesions.dataset import LesionSet
from lesionuq.lesions.graphs import case_lesions
from lesionuq.location.features import with_locations
from lesionuq.location.register import cached_registration
from lesionuq.parallel import CaseResults, check_parallel
from lesionuq.pipeline.stages import (
    Unit,
    load_preprocessed,
    load_preprocessed_ignore,
    locked,
    run_stale,
    select_folds,
)
from lesionuq.rundir import RunDir, graphs_digest, write_stamp
from lesionuq.uncertainty import VoxelMaps

__all__ = ["stage_graphs"]


@locked
def stage_graphs(
    run: Path,
    folds: Sequence[int] | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Label lesions, compute IoU_adj and TP/FP, build lesion graphs for val and test.

    One unit per fold and split (its lesion set, ``fold_K/graphs/SPLIT``), whose tasks
    are its cases (:func:`~lesionuq.pipeline.stages.run_stale`); each split is then
    saved by this process. A split with a failed case is not saved, and the failed cases
    are named in the :class:`~lesionuq.errors.CasesFailedError` raised once the others
    are done.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    units = []
    for split in select_folds(splits, folds):
        digest = graphs_digest(cfg, split)
        for s in ("val", "test"):
            jobs = {
                f"fold_{split.fold}/{s}/{c}": _GraphsJob(
                    rd.root, c, rd.case_dir(split.fold, s, c), cfg
                )
                for c in split.cases(s)
            }
            units.append(Unit(rd.lesion_set(split.fold, s) / "stamp.json", digest, jobs))
    run_stale(
        _graphs_case,
        units,
        what="case",
        desc="lesion graphs",
        progress=progress,
        scheduler=scheduler,
        workers=workers,
        gather=_save_lesion_sets,
    )


def _save_lesion_sets(
    stale: list[Unit[_GraphsJob]], done: CaseResults[tuple[LesionSet, dict[str, object]]]
) -> None:
    """Save each lesion set (and its cases.csv) whose cases all finished, stamp last."""
    for unit in stale:
        if any(k not in done.results for k in unit.jobs):
            continue
        parts = [done.results[k] for k in unit.jobs]
        with atomic_dir(unit.stamp.parent) as tmp:
            LesionSet.concat([lesions for lesions, _ in parts]).save(tmp)
            atomic_write_text(tmp / "cases.csv", csv_text(pd.DataFrame([r for _, r in parts])))
            write_stamp(tmp / unit.stamp.name, unit.digest)


@dataclass(frozen=True)
class _GraphsJob:
    """One case of :func:`stage_graphs`: the run, the case and its maps folder."""

    run: Path
    case_id: str
    case_dir: Path
    cfg: ExperimentConfig


def _graphs_case(job: _GraphsJob) -> tuple[LesionSet, dict[str, object]]:
    """One case's lesions (``lesions.nii.gz`` written) and its cases.csv row."""
    cfg, c = job.cfg, job.case_id
    image, mask, affine = load_preprocessed(job.run, c, cfg.sequences)
    maps = VoxelMaps.load(job.case_dir)
    ignore = load_preprocessed_ignore(job.run, c)
    labels, lesions = case_lesions(
        maps.seg, image, maps, mask, affine, cfg.graphs, c, ignore=ignore
    )
    if cfg.graphs.location:  # the lesion tables gain location + MNI centroid
        # one registration per scan and run (~10 s), reused by every fold and split
        reg = cached_registration(RunDir(job.run).registration(c), image[0], affine)
        lesions, _ = with_locations(lesions, image[0], affine, labels, registration=reg)
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
