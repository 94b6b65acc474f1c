"""The ``preprocess`` stage: every case of a run on the common grid (``RUN/preprocessed/CASE``).

Data flow (see docs/DESIGN.md for the files)::

    cases.csv  --preprocess-->  preprocessed/CASE/{SEQ,mask,ignore}.nii.gz, transform.json
                                (samples protocol: also the maps and samples.json; RUN/samples.csv)

One :class:`~lesionuq.pipeline.stages.Unit` per case
(:func:`~lesionuq.pipeline.stages.run_stale`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.data.preprocess import mask_to_grid, preprocess
from lesionuq.io import (
    Case,
    atomic_dir,
    atomic_write_text,
    csv_text,
    load_case,
    load_ignore,
    load_nifti,
    save_nifti,
)
from lesionuq.parallel import check_parallel
from lesionuq.pipeline.stages import Unit, cases_by_id, locked, run_stale
from lesionuq.rundir import RunDir, preprocess_digest, write_stamp
from lesionuq.samples import samples_onto_grid, samples_table

__all__ = ["stage_preprocess"]


@locked
def stage_preprocess(
    run: Path,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Bring every case of the run onto the common grid (``RUN/preprocessed/CASE``).

    Writes one NIfTI per sequence, ``mask.nii.gz`` and ``transform.json`` (the map back to
    the original grid). One unit per case (:func:`~lesionuq.pipeline.stages.run_stale`);
    in the samples protocol ``RUN/samples.csv`` is then gathered from the cases'
    ``samples.json``.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, data, _ = rd.read_plan()
    units = []
    for case in cases_by_id(data, cfg).values():
        digest = preprocess_digest(cfg, case)
        folder = rd.preprocessed / case.case_id
        job = _PreprocessJob(case, folder, digest, cfg)
        units.append(Unit(folder / "stamp.json", digest, {case.case_id: job}))
    run_stale(
        _preprocess_case,
        units,
        what="case",
        desc="preprocess" if cfg.protocol == "unet" else "images onto the samples' grid, maps",
        progress=progress,
        scheduler=scheduler,
        workers=workers,
    )
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
