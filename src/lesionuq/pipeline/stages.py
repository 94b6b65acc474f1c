"""What every stage of a run shares: the "stale units -> map_cases -> raise" helper.

Every stage repeats one pattern, written once here as :func:`run_stale`: list the
stage's units of work (:class:`Unit`: a stamp file, the digest it must hold and the
tasks that redo it), keep those whose stamp is missing or stale, run their tasks with
:func:`lesionuq.parallel.map_cases` (here, or on a Dask ``scheduler`` / a local cluster
of ``workers``, behind a progress bar), then raise
:class:`~lesionuq.errors.CasesFailedError` naming the failed ones once the others are
done. A task writes its outputs atomically and its stamp last, so a killed run resumes
where it stopped.

The stages that use it, one module each: :mod:`.preprocess` (a unit per case),
:mod:`.sample` (per fold and case), :mod:`.graphs` (per fold and split, whose tasks are
its cases; the lesion set is saved between the tasks and the raise), :mod:`.fit` (per
fold and scorer; a current scorer has its operating point re-chosen) and :mod:`.train`
(per fold; through the helper only on Dask, in this process, possibly as one rank of
``torchrun``, otherwise). Besides it, the run-folder helpers the stages share:
:func:`locked`, :func:`select_folds`, :func:`cases_by_id` and the readers of
``RUN/preprocessed``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import nibabel as nib
import numpy as np

from lesionuq import distributed
from lesionuq.config import ExperimentConfig
from lesionuq.io import Case, InputError, read_manifest
from lesionuq.outputs import read_marker, run_lock
from lesionuq.parallel import CaseResults, map_cases
from lesionuq.rundir import FoldSplit, RunDir, stamp_ok

__all__ = [
    "Unit",
    "cases_by_id",
    "load_preprocessed",
    "load_preprocessed_ignore",
    "locked",
    "run_nifti",
    "run_stale",
    "select_folds",
]

JobT = TypeVar("JobT")
T = TypeVar("T")
StageT = TypeVar("StageT", bound=Callable[..., Any])


# --------------------------------------------------------------------------- the pattern


@dataclass(frozen=True)
class Unit(Generic[JobT]):
    """One unit of a stage's work, done when its stamp holds the current digest.

    Attributes:
        stamp: The stamp file the unit's task writes last.
        digest: The digest of the settings its outputs depend on (:mod:`lesionuq.rundir`).
        jobs: The tasks that redo the unit, by id: one for most stages, a lesion set's
            cases for ``graphs``.
        requires: Files that must exist besides a current stamp (a fold's U-Net).
    """

    stamp: Path
    digest: str
    jobs: Mapping[str, JobT] = field(default_factory=dict)
    requires: tuple[Path, ...] = ()

    def current(self) -> bool:
        """Whether the stamp holds the digest and every required file exists."""
        return stamp_ok(self.stamp, self.digest) and all(p.is_file() for p in self.requires)


def run_stale(
    task: Callable[[JobT], T],
    units: Iterable[Unit[JobT]],
    *,
    what: str,
    desc: str,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    check: Callable[[list[Unit[JobT]]], None] | None = None,
    on_current: Callable[[Unit[JobT]], None] | None = None,
    gather: Callable[[list[Unit[JobT]], CaseResults[T]], None] | None = None,
) -> CaseResults[T]:
    """Redo the units whose stamp is missing or stale; raise for the failed tasks at the end.

    The units are looked at in order; the tasks of the stale ones run in that order
    (:func:`lesionuq.parallel.map_cases`).

    Args:
        task: The map_cases task (a module-level function of one job).
        units: The stage's units of work.
        what: What one task is in the failure message (``"case"``, ``"fold"``).
        desc: Title of the progress bar.
        progress: Show the progress bar.
        scheduler: Address of a running Dask scheduler.
        workers: Or the number of processes of a local Dask cluster.
        check: Called with the stale units before any task runs (e.g. the sample stage
            refuses a fold whose U-Net is missing).
        on_current: Called with each unit found current (e.g. the fit stage re-chooses
            a stored operating point).
        gather: Called with the stale units and the results before the failures are
            raised (e.g. the graphs stage saves each lesion set whose cases all finished).

    Returns:
        The results of the tasks that ran, by id.

    Raises:
        CasesFailedError: A task failed (after every other one finished).
    """
    stale: list[Unit[JobT]] = []
    for unit in units:
        if not unit.current():
            stale.append(unit)
        elif on_current is not None:
            on_current(unit)
    if check is not None:
        check(stale)
    jobs = {key: job for unit in stale for key, job in unit.jobs.items()}
    done = map_cases(task, jobs, scheduler=scheduler, workers=workers, progress=progress, desc=desc)
    if gather is not None:
        gather(stale, done)
    done.raise_failed(what)
    return done


# --------------------------------------------------------------------------- run folder


def locked(stage: StageT) -> StageT:
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

    return cast(StageT, wrapper)


def select_folds(folds: list[FoldSplit], only: Sequence[int] | None) -> list[FoldSplit]:
    """The folds numbered ``only`` (all when None).

    Raises:
        InputError: A fold number the run does not have.
    """
    if only is None:
        return folds
    known = {f.fold for f in folds}
    bad = [k for k in only if k not in known]
    if bad:
        raise InputError(f"fold {bad[0]} does not exist (folds: {sorted(known)}).")
    return [f for f in folds if f.fold in set(only)]


def cases_by_id(data: Path, cfg: ExperimentConfig) -> dict[str, Case]:
    """The run's manifest, by case id."""
    return {c.case_id: c for c in read_manifest(data, cfg.sequences, require_mask=True)}


def run_nifti(path: Path) -> nib.Nifti1Image:
    """``nib.load`` of a NIfTI file of the run directory (data loaded lazily)."""
    return cast(nib.Nifti1Image, nib.load(str(path)))


def load_preprocessed(
    run: Path, case_id: str, sequences: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A preprocessed case.

    Returns:
        image (C, X, Y, Z) float32, mask (X, Y, Z) uint8 or None, affine (4, 4).
    """
    folder = RunDir(Path(run)).preprocessed / case_id
    imgs = [run_nifti(folder / f"{s}.nii.gz") for s in sequences]
    image = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs])
    mask_path = folder / "mask.nii.gz"
    mask = np.asarray(run_nifti(mask_path).dataobj, dtype=np.uint8) if mask_path.exists() else None
    return image, mask, imgs[0].affine


def load_preprocessed_ignore(run: Path, case_id: str) -> np.ndarray | None:
    """A preprocessed case's ignore region, (X, Y, Z) bool, or None when it has none."""
    path = RunDir(Path(run)).preprocessed / case_id / "ignore.nii.gz"
    return np.asarray(run_nifti(path).dataobj) > 0 if path.exists() else None
