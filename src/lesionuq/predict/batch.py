"""Predict every case of a ``cases.csv``, resuming an interrupted batch.

Each case is predicted by :func:`lesionuq.predict.scan.predict_scan` into ``OUT/CASE``;
a hidden ``OUT/CASE/.batch_digest`` (model identity, image files, options) marks a
finished case, so a rerun of the same batch reuses it instead of recomputing it.
``OUT/lesions.csv`` gathers all cases' lesions with a leading ``case_id`` column; with
``location``, ``OUT/dis.csv`` holds each case's dissemination-in-space verdicts.

Example:
    >>> res = predict_manifest("runs/demo/fold_0", "new_cases.csv", "pred/")
    >>> print(res.summary())
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lesionuq.config import config_digest
from lesionuq.export.bids import check_bids_out, scan_entities
from lesionuq.io import (
    Case,
    InputError,
    atomic_write_text,
    check_threshold,
    csv_text,
    load_case,
    load_ignore,
    load_nifti,
    read_csv_table,
    read_manifest,
)
from lesionuq.outputs import add_written, check_output_dir, locked_output, start_output
from lesionuq.parallel import check_parallel, check_scheduler, map_cases
from lesionuq.predict.model import FittedModel, load_model, load_model_cached
from lesionuq.predict.scan import LOCATION_COLUMNS, PredictResult, empty_table, predict_scan
from lesionuq.samples import load_samples_case
from lesionuq.shift import is_shift_warning
from lesionuq.utils import track

__all__ = ["DIS_COLUMNS", "BatchResult", "predict_manifest"]

_DIGEST = ".batch_digest"
#: The table of all cases' lesions, ``OUT/lesions.csv`` (so no case may be named so).
_TABLE = "lesions.csv"
#: Each case's DIS verdicts with ``location``, ``OUT/dis.csv`` (so no case may be named so).
_DIS = "dis.csv"
#: The columns of ``dis.csv``: ``regions`` are the DIS regions holding a lesion (``;``
#: between them); the next four are the ``location.dis`` fields of the case's
#: ``lesions.json`` and ``registration_ok`` its ``location.registration.ok``.
DIS_COLUMNS = (
    "case_id",
    "regions",
    "verdict",
    "verdict_without_review",
    "probability",
    "n_review",
    "registration_ok",
)


@dataclass
class BatchResult:
    """What :func:`predict_manifest` wrote.

    Attributes:
        out: The output folder (one sub-folder per case and ``lesions.csv``).
        table: All cases' lesions with a leading ``case_id`` column.
        results: One :class:`PredictResult` per case (None for a case reused from an
            earlier identical run).
        dis: With ``location``: ``dis.csv``, one row per case (:data:`DIS_COLUMNS`);
            None without.
        warnings: Case id -> its warnings (a reused case's from its ``prediction.json``).
    """

    out: Path
    table: pd.DataFrame
    results: dict[str, PredictResult | None] = field(default_factory=dict)
    dis: pd.DataFrame | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def shifted(self) -> list[str]:
        """The cases whose scan is unlike the model's validation scans (shift warning)."""
        return [c for c, ws in self.warnings.items() if any(is_shift_warning(w) for w in ws)]

    def summary(self) -> str:
        """One line: cases, lesions, lesions to review and cases with a shift warning."""
        n_review = int(self.table["review"].sum()) if len(self.table) else 0
        k = len(self.shifted)
        shifted = f", {k} unlike the model's validation scans" if k else ""
        return (
            f"{len(self.results)} case(s){shifted}, {len(self.table)} lesion(s), {n_review} "
            f"to review; wrote {self.out}."
        )

    def cohort_warning(self) -> str | None:
        """One sentence when at least half the cases (and 2) carry the shift warning.

        A cohort from another site or protocol warns on every scan; this says it once,
        and what to do about it. None otherwise.
        """
        k, n = len(self.shifted), len(self.results)
        if k < 2 or 2 * k < n:
            return None
        return (
            f"{k} of {n} scans are unlike the scans this model was validated on: P(FP) may "
            "be unreliable for this cohort; `lesionuq refit` on 3-5 labelled scans of it "
            "adapts the model (docs/benchmarks.md: the cross-family bench)."
        )


def predict_manifest(
    model: str | Path | FittedModel,
    cases_csv: str | Path,
    out: str | Path,
    threshold: float | None = None,
    save_maps: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    bids_out: str | Path | None = None,
    review_target: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    location: bool = False,
) -> BatchResult:
    """Predict every case of a ``cases.csv`` (the ``mask`` column is optional and unused).

    A case with a ``samples`` column is segmented from those samples (the user's own
    segmenter, see :func:`predict_scan`); a model folder without a U-Net needs them for
    every case.

    Every case's files are checked before anything is written, the model is loaded once
    (once per worker on Dask), and each case is written atomically to ``out/CASE`` (see
    :func:`predict_scan`); a case whose folder holds a prediction with the same model,
    images and options is reused, so an interrupted batch resumes. ``out/lesions.csv``
    (all lesions, with a leading ``case_id`` column) is written last, by this process,
    once every case succeeded, and with ``location`` ``out/dis.csv`` (one row per case,
    :data:`DIS_COLUMNS`, from each case's ``lesions.json``).

    Args:
        model: A model folder or a :class:`FittedModel`.
        cases_csv: The manifest (``case_id`` and one column per model sequence).
        out: Output folder.
        threshold: ``review`` is ``p_fp >= threshold``; overrides ``review_target``.
        save_maps: Also write the voxel maps of every case.
        progress: Show a progress bar over the cases.
        overwrite: Replace an earlier batch made with other settings (see
            :mod:`lesionuq.outputs`); the same settings resume without it. Also replaces
            scans already in ``bids_out``.
        bids_out: A BIDS-derivatives folder to add every case to (new, empty, or one
            lesionuq wrote), e.g. for a manifest of ``lesionuq manifest --layout bids``;
            each case's first image must have a BIDS file name.
        review_target: Choose the threshold for this target on the validation lesions
            (see :meth:`FittedModel.review_rule`); default the stored operating point.
        scheduler: Predict on this running Dask scheduler (one task per case; each
            worker loads the model once), see :func:`lesionuq.parallel.map_cases`.
        workers: Or predict on a local Dask cluster of this many single-threaded
            worker processes. Default (neither): one case after the other here.
        location: Also locate every case's lesions (see :func:`predict_scan`):
            ``lesions.csv`` gains the :data:`LOCATION_COLUMNS` and ``dis.csv`` is
            written. A batch made with the other setting is not reused (it needs
            ``overwrite``, and its cases are recomputed).

    Returns:
        The batch result.

    Raises:
        InputError: A bad manifest, case file, model folder, output folder or parallel
            option (checked before any prediction).
        CasesFailedError: Some cases failed (named, with the first error); the others
            were written, and ``out/lesions.csv`` was not. A rerun redoes only those.
    """
    check_parallel(scheduler, workers)
    if bids_out is not None and (scheduler is not None or workers is not None):
        raise InputError(
            "--bids-out is written by one process: run it without --workers / --scheduler "
            "(a finished batch is reused, so only the BIDS export is redone)."
        )
    if threshold is not None:
        threshold = check_threshold(threshold)
    if not isinstance(model, FittedModel):
        model = load_model(model)
    given = threshold
    threshold = model.review_rule(threshold, review_target).threshold
    cases = read_manifest(cases_csv, model.sequences, require_mask=False)
    inputs = [Path(cases_csv), *(p for c in cases for p in c.images)]
    inputs += [c.samples for c in cases if c.samples is not None]
    no_samples = [c.case_id for c in cases if c.samples is None]
    if model.segmenter is None and no_samples:
        raise InputError(
            f"{cases_csv}: case {no_samples[0]!r} has no samples path but {model.folder} has no "
            "U-Net; give every case a samples column (your segmenter's T probability maps)."
        )
    out = Path(out)
    model_digest = model.digest()
    settings: list[object] = [model_digest, str(Path(cases_csv).resolve()), threshold, save_maps]
    if location:  # absent otherwise: keys of batches without location are unchanged
        settings.append({"location": True})
    key = config_digest(settings)
    writes = [_TABLE, _DIS] if location else [_TABLE]
    _check_reserved(cases_csv, cases, writes)
    check_output_dir(out, "batch", overwrite=overwrite, inputs=inputs, key=key, writes=writes)
    for case in track(cases, "checking inputs", enabled=progress):
        if case.samples is not None:
            load_samples_case(case, model.cfg.preprocess.brain_threshold)
            load_ignore(case, load_nifti(case.images[0], read_data=False))
        else:
            images, _ = load_case(Case(case.case_id, case.images))
            load_ignore(case, images[0])
    if bids_out is not None:
        _check_bids(
            bids_out, out, cases, inputs, model_digest, threshold, save_maps, overwrite, location
        )
    check_scheduler(scheduler)  # before anything is written
    with locked_output(out):  # a second batch into ``out`` is refused meanwhile
        check_output_dir(out, "batch", overwrite=overwrite, inputs=inputs, key=key, writes=writes)
        return _run_batch(
            model, cases, out, key, model_digest, given, threshold, save_maps, review_target,
            bids_out, scheduler, workers, progress, location,
        )  # fmt: skip


def _check_reserved(cases_csv: str | Path, cases: list[Case], writes: list[str]) -> None:
    """Refuse a case id that is the name of a file the batch writes in its folder."""
    for case in cases:
        for name in writes:
            if case.case_id.casefold() == name.casefold():
                raise InputError(
                    f"{cases_csv}: case_id {case.case_id!r} is the name of the batch's own "
                    f"table ({name}); rename the case."
                )


def _run_batch(
    model: FittedModel,
    cases: list[Case],
    out: Path,
    key: str,
    model_digest: str,
    given: float | None,
    threshold: float,
    save_maps: bool,
    review_target: str | None,
    bids_out: str | Path | None,
    scheduler: str | None,
    workers: int | None,
    progress: bool,
    location: bool = False,
) -> BatchResult:
    """The checked batch, under the folder's lock (see :func:`predict_manifest`)."""
    start_output(out, "batch", key, dirs=[c.case_id for c in cases])
    reused = {
        c.case_id: table
        for c in cases
        if (
            table := _previous(
                out / c.case_id, model_digest, c, threshold, save_maps, bids_out, location
            )
        )
        is not None
    }
    on_cluster = scheduler is not None or workers is not None
    where: FittedModel | tuple[Path, str] = (model.folder, model.device) if on_cluster else model
    jobs = {
        c.case_id: _CaseJob(
            where,
            c,
            out / c.case_id,
            given,
            save_maps,
            review_target,
            model_digest,
            threshold,
            bids_out,
            location,
        )
        for c in cases
        if c.case_id not in reused
    }
    done = map_cases(
        _predict_case, jobs, scheduler=scheduler, workers=workers, progress=progress, desc="predict"
    )
    done.raise_failed("scan")
    results: dict[str, PredictResult | None] = {}
    warned: dict[str, list[str]] = {}
    tables = []
    for case in cases:
        if case.case_id in reused:
            results[case.case_id] = None
            table = reused[case.case_id]
            warned[case.case_id] = _saved_warnings(out / case.case_id)
        else:
            res = done.results[case.case_id]
            results[case.case_id] = res
            table = res.table
            warned[case.case_id] = list(res.warnings)
        table = table.copy()
        table.insert(0, "case_id", case.case_id)
        tables.append(table)
    table = _batch_table(tables, location)
    atomic_write_text(out / _TABLE, csv_text(table))
    add_written(out, [_TABLE])
    dis = None
    if location:
        dis = _dis_table(
            {c.case_id: _location_entry(out / c.case_id, results[c.case_id]) for c in cases}
        )
        atomic_write_text(out / _DIS, csv_text(dis))
        add_written(out, [_DIS])
    return BatchResult(out, table, results, dis, warned)


def _saved_warnings(folder: Path) -> list[str]:
    """A reused case's warnings, from its ``prediction.json`` (none when unreadable)."""
    try:
        meta = json.loads((folder / "prediction.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    found = meta.get("warnings") if isinstance(meta, dict) else None
    return [str(w) for w in found] if isinstance(found, list) else []


def _batch_table(tables: list[pd.DataFrame], location: bool) -> pd.DataFrame:
    """All cases' lesions (each table with its leading ``case_id``), in the cases' order.

    Cases without lesions add no rows; when no case has one, the table has the columns
    of :func:`empty_table` (and the :data:`LOCATION_COLUMNS` with ``location``).
    """
    frames = [t for t in tables if len(t)]
    if frames:
        return pd.concat(frames, ignore_index=True)
    table = empty_table()
    if location:
        table["location"] = pd.Series(dtype=object)
        for name in LOCATION_COLUMNS[1:]:
            table[name] = pd.Series(dtype="float64")
    table.insert(0, "case_id", pd.Series(dtype=str))
    return table


def _location_entry(folder: Path, result: PredictResult | None) -> dict[str, Any]:
    """The ``location`` entry of a case's ``lesions.json`` (its result's, when computed)."""
    if result is not None and result.location is not None:
        return result.location
    entry = json.loads((folder / "lesions.json").read_text()).get("location")
    if not isinstance(entry, dict):
        raise InputError(
            f"{folder / 'lesions.json'}: has no location entry; rerun with --overwrite."
        )
    return entry


def _dis_table(entries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``dis.csv``: one row per case (:data:`DIS_COLUMNS`) from its ``location`` entry.

    Args:
        entries: Case id -> the ``location`` entry of its ``lesions.json`` (the
            ``dis`` of :func:`lesionuq.location.dis_summary` and the ``registration``).

    Returns:
        One row per case, in the order given; ``regions`` joins the DIS regions with
        ``n_lesions > 0`` (in the entry's order) with ``;`` (empty when none).
    """
    rows = []
    for case_id, entry in entries.items():
        dis, reg = entry["dis"], entry["registration"]
        rows.append(
            {
                "case_id": case_id,
                "regions": ";".join(r for r, v in dis["regions"].items() if v["n_lesions"] > 0),
                "verdict": dis["verdict"],
                "verdict_without_review": dis["verdict_without_review"],
                "probability": dis["probability"],
                "n_review": dis["n_review"],
                "registration_ok": reg["ok"],
            }
        )
    return pd.DataFrame(rows, columns=list(DIS_COLUMNS))


@dataclass(frozen=True)
class _CaseJob:
    """One case's prediction task (small: sent to a Dask worker as it is).

    Attributes:
        model: The loaded model (in this process), or ``(folder, device)`` for a worker
            to load once (:func:`load_model_cached`).
        case: The case.
        folder: Its output folder ``out/CASE``.
        threshold: The ``threshold`` argument given (None: the review rule's).
        save_maps: Write the voxel maps too.
        review_target: As :func:`predict_manifest`.
        model_digest: The model's identity, for the case's batch digest.
        rule_threshold: The threshold in force, for the case's batch digest.
        bids_out: As :func:`predict_manifest` (only in this process).
        location: As :func:`predict_manifest`.
    """

    model: FittedModel | tuple[Path, str]
    case: Case
    folder: Path
    threshold: float | None
    save_maps: bool
    review_target: str | None
    model_digest: str
    rule_threshold: float
    bids_out: str | Path | None = None
    location: bool = False


def _predict_case(job: _CaseJob) -> PredictResult:
    """Predict one case into ``job.folder`` and mark it done (a :func:`map_cases` task)."""
    model = job.model if isinstance(job.model, FittedModel) else load_model_cached(*job.model)
    res = predict_scan(
        model,
        job.case.images,
        job.folder,
        job.threshold,
        job.save_maps,
        False,
        job.case.case_id,
        True,
        review_target=job.review_target,
        bids_out=job.bids_out,
        ignore=job.case.ignore,
        samples=job.case.samples,
        location=job.location,
    )
    _mark(
        job.folder,
        job.model_digest,
        job.case,
        job.rule_threshold,
        job.save_maps,
        job.bids_out,
        job.location,
    )
    return res


def _check_bids(
    bids_out: str | Path,
    out: Path,
    cases: list[Case],
    inputs: list[Path],
    model_digest: str,
    threshold: float,
    save_maps: bool,
    overwrite: bool,
    location: bool = False,
) -> None:
    """Check ``bids_out`` for the cases to compute (reused cases are already there)."""
    deriv, target = Path(bids_out).resolve(), out.resolve()
    if deriv == target or target in deriv.parents or deriv in target.parents:
        raise InputError(
            f"{bids_out}: the --bids-out folder must be apart from the --out folder {out}."
        )
    entities = [scan_entities(c.images[0]) for c in cases]
    todo = [
        e
        for c, e in zip(cases, entities, strict=True)
        if _previous(out / c.case_id, model_digest, c, threshold, save_maps, bids_out, location)
        is None
    ]
    check_bids_out(bids_out, entities, overwrite=True, inputs=inputs)  # folder, duplicates
    check_bids_out(bids_out, todo, overwrite=overwrite, inputs=inputs)


def _batch_digest(
    model_digest: str,
    case: Case,
    threshold: float,
    save_maps: bool,
    bids_out: str | Path | None = None,
    location: bool = False,
) -> str:
    """The digest of one case's prediction settings (``OUT/CASE/.batch_digest``)."""
    payload: dict[str, object] = {
        "model": model_digest,
        "images": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in case.images],
        **_samples_key(case),
        "threshold": float(threshold),
        "save_maps": bool(save_maps),
    }
    if bids_out is not None:  # absent key: digests of batches without BIDS are unchanged
        payload["bids_out"] = str(Path(bids_out).resolve())
    if location:  # absent key: digests of batches without location are unchanged
        payload["location"] = True
    return config_digest(payload)


def _samples_key(case: Case) -> dict[str, object]:
    """The batch-digest entry of a case's samples (none without: old digests unchanged)."""
    if case.samples is None:
        return {}
    p = case.samples
    return {"samples": [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]}


def _mark(
    folder: Path,
    model_digest: str,
    case: Case,
    threshold: float,
    save_maps: bool,
    bids_out: str | Path | None = None,
    location: bool = False,
) -> None:
    digest = _batch_digest(model_digest, case, threshold, save_maps, bids_out, location)
    atomic_write_text(folder / _DIGEST, digest + "\n")
    add_written(folder, [_DIGEST])


def _previous(
    folder: Path,
    model_digest: str,
    case: Case,
    threshold: float,
    save_maps: bool,
    bids_out: str | Path | None = None,
    location: bool = False,
) -> pd.DataFrame | None:
    """The table of an identical earlier prediction in ``folder``, else None."""
    try:
        stored = (folder / _DIGEST).read_text().strip()
        digest = _batch_digest(model_digest, case, threshold, save_maps, bids_out, location)
        if stored != digest:
            return None
        return read_csv_table(folder / "lesions.csv")
    except (OSError, ValueError):
        return None
