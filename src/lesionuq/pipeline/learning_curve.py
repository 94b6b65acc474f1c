"""Learning curve: test AUC of the learned scorers against the number of training lesions.

For each fold of a finished run, the learned scorers (both GCNNs, both MetaSeg
models and the GCNN ensemble) are refitted on subsamples of that fold's *validation*
lesions and score the same test lesions as Table 2. A subsample is

- **stratified**: its TP / FP shares are those of the whole validation set;
- **by case where possible**: cases are taken whole in a seeded random order, and only the
  last case needed for each class is split (its lesions in a seeded random order);
- **nested**: for one (fold, repeat), the smaller subsamples are contained in the larger
  ones (the same random order is cut at different lengths), so the curve is smooth;
- **seeded** by ``(cfg.seed, fold, repeat)``; repeat ``r`` also trains the GCNN with the
  seed ``cfg.gcnn.seed + r``, so the band shows both sources of variation.

It never touches a test lesion for fitting. The untrained baselines need no training, so
they are flat lines at their Table-2 AUC.

Outputs (``RUN/results``): ``learning_curve.csv`` (``fold, size, repeat, method, auc``
then ``n_tp, n_fp, full``; ``size`` is the number of training lesions, ``full`` marks the
whole validation set) and ``learning_curve.png`` (drawn by
:func:`lesionuq.evaluation.figures.plot_learning_curve`). Finished rows are kept when the
command is run again with the same settings, so a killed run resumes. It is a pipeline
step: it reads a run folder and fits scorers (the registry's factory), then refreshes the
run's report.

Example:
    >>> curve = learning_curve("runs/x", sizes=[25, 50, 100, "all"], repeats=5)
    >>> summarize_learning_curve(curve)  # evaluation.metrics: method, size, auc_mean, ...
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.evaluation.curves import ac_auc
from lesionuq.evaluation.figures import plot_learning_curve
from lesionuq.evaluation.metrics import table2
from lesionuq.evaluation.report import write_report
from lesionuq.io import InputError, atomic_write_text, read_csv_table
from lesionuq.lesions.dataset import LesionSet, load_lesion_set
from lesionuq.methods import learned_methods
from lesionuq.parallel import check_parallel, map_cases
from lesionuq.rundir import RunDir, digest_of, graphs_digest
from lesionuq.scorers.base import LesionScorer
from lesionuq.scorers.registry import make_scorer
from lesionuq.utils import remove_pyg_codegen_files, track

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_SIZES",
    "LEARNED_METHODS",
    "learning_curve",
    "parse_sizes",
    "stratified_case_subsample",
]

LEARNED_METHODS = learned_methods()
"""The catalogue's methods that learn from validation lesions (``learned``)."""
DEFAULT_SIZES: tuple[int | str, ...] = (25, 50, 100, 200, 400, "all")
CSV_COLUMNS = ("fold", "size", "repeat", "method", "auc", "n_tp", "n_fp", "full")
_KEY = ["fold", "size", "repeat", "method"]


def parse_sizes(text: str) -> list[int | str]:
    """Parse ``"25,50,100,all"`` into ``[25, 50, 100, "all"]``.

    Raises:
        InputError: An entry is neither a positive integer nor ``all``.
    """
    sizes: list[int | str] = []
    for part in str(text).split(","):
        item = part.strip().lower()
        if item == "all":
            sizes.append("all")
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise InputError(f"--sizes: {part.strip()!r} is not a positive integer or 'all'.")
    return list(dict.fromkeys(sizes))


def stratified_case_subsample(
    case_id: Sequence[str] | np.ndarray,
    is_tp: Sequence[bool] | np.ndarray,
    size: int,
    seed: int | Sequence[int],
) -> np.ndarray:
    """Indices of a stratified, seeded subsample of lesions, drawn by case where possible.

    The cases are put in a random order, and the lesions in that case order (random order
    inside a case). The subsample is the first ``n_tp`` TP and the first ``n_fp`` FP
    lesions of that order, with ``n_tp = round(size * TP share)`` (at least one of each
    class when both exist and ``size >= 2``) and ``n_fp = size - n_tp``. So whole cases
    are taken first, at most one case per class is split, and for one seed a smaller
    ``size`` gives a subset of a larger one.

    Args:
        case_id: (N,) case of each lesion.
        is_tp: (N,) bool.
        size: Number of lesions wanted (>= 1); ``size >= N`` returns all of them.
        seed: Seed (an int or a sequence of ints, e.g. ``(seed, fold, repeat)``).

    Returns:
        (min(size, N),) int64 indices into the inputs, ascending.
    """
    cases = np.asarray(case_id).astype(str)
    t = np.asarray(is_tp, dtype=bool)
    if cases.shape != t.shape:
        raise ValueError(f"case_id ({cases.size}) and is_tp ({t.size}) lengths differ.")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}.")
    n = t.size
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(list(np.atleast_1d(seed)))
    names, codes = np.unique(cases, return_inverse=True)
    case_rank = np.empty(names.size, dtype=np.int64)
    case_rank[rng.permutation(names.size)] = np.arange(names.size)
    order = np.lexsort((rng.random(n), case_rank[codes]))  # by case, then random within
    n_tp_all, n_fp_all = int(t.sum()), int((~t).sum())
    both = n_tp_all > 0 and n_fp_all > 0 and size >= 2
    lo = max(size - n_fp_all, 1 if both else 0)
    hi = min(n_tp_all, size - (1 if both else 0))
    n_tp = int(np.clip(round(size * n_tp_all / n), lo, hi))
    chosen = np.concatenate([order[t[order]][:n_tp], order[~t[order]][: size - n_tp]])
    return np.sort(chosen).astype(np.int64)


def _fit_scorer(method: str, cfg: ExperimentConfig, lesions: LesionSet) -> LesionScorer:
    """The one place that builds and fits a scorer (the registry's factory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-class subsamples: constant
        return make_scorer(method, cfg).fit(lesions, progress=False)


def _auc(u: np.ndarray, is_tp: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ac_auc(u, is_tp)


def _read_rows(csv: Path, stamp: Path, digest: str) -> pd.DataFrame:
    """Rows of an earlier call with the same settings (else none)."""
    try:
        same = json.loads(stamp.read_text()).get("digest") == digest
    except (OSError, ValueError):
        same = False
    if same and csv.is_file():
        return pd.read_csv(csv)[list(CSV_COLUMNS)]
    return pd.DataFrame(columns=list(CSV_COLUMNS))


def learning_curve(
    run: str | Path,
    sizes: Sequence[int | str] | str = DEFAULT_SIZES,
    repeats: int = 5,
    methods: Sequence[str] | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Refit the learned scorers on subsamples of each fold's validation lesions.

    For every fold, size and repeat, a :func:`stratified_case_subsample` of the fold's
    validation lesions trains each method, which then scores the fold's test lesions.
    Sizes at or above the fold's number of validation lesions are skipped there (``all``
    covers them). Writes ``RUN/results/learning_curve.csv`` after every subsample,
    ``learning_curve.png`` at the end, and refreshes ``report.html``.

    Args:
        run: A run directory whose ``evaluate`` stage has finished.
        sizes: Training-set sizes (lesions) and/or ``"all"``; or their text
            ``"25,50,all"``.
        repeats: Subsamples per size (>= 1).
        methods: Learned methods to refit (default: those of :data:`LEARNED_METHODS`
            in the run's config).
        progress: Show a progress bar.
        scheduler: Fit the subsamples on this running Dask scheduler, one task per
            (fold, size, repeat) (:func:`lesionuq.parallel.map_cases`).
        workers: Or on a local Dask cluster of this many single-threaded processes.
            Every fit is seeded, so the rows are the same wherever they run; with Dask
            the CSV is written when all tasks are done (in-process, after each).

    Returns:
        The learning-curve table (all rows, also those of an earlier call).

    Raises:
        InputError: Not an evaluated run, a method that is not learned, bad sizes.
    """
    check_parallel(scheduler, workers)
    rd = RunDir(Path(run))
    cfg, _, splits = rd.read_plan()
    if isinstance(sizes, str):
        sizes = parse_sizes(sizes)
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}.")
    methods = list(methods or [m for m in cfg.methods if m in LEARNED_METHODS])
    bad = [m for m in methods if m not in LEARNED_METHODS]
    if bad or not methods:
        raise InputError(
            f"the learning curve refits learned methods only ({', '.join(LEARNED_METHODS)}); "
            f"got {', '.join(bad) or 'none'}."
        )
    lesions_csv = rd.results / "lesions.csv"
    if not lesions_csv.is_file():
        raise InputError(f"{lesions_csv}: file not found; run `lesionuq evaluate` first.")

    csv, png = rd.results / "learning_curve.csv", rd.results / "learning_curve.png"
    stamp = rd.results / "learning_curve.json"
    digest = digest_of([graphs_digest(cfg, s) for s in splits], cfg.gcnn, cfg.seed)
    done = _read_rows(csv, stamp, digest)
    atomic_write_text(stamp, json.dumps({"digest": digest}) + "\n")
    finished = set(map(tuple, done[_KEY].itertuples(index=False)))

    rows = [done] if len(done) else []
    jobs: dict[str, _CurveJob] = {}
    for split in splits:
        # the table alone gives the count (the graphs are read by the tasks)
        n_val = len(pd.read_csv(rd.lesion_set(split.fold, "val") / "lesions.csv", usecols=[0]))
        for label in sizes:
            for repeat in range(repeats):
                full = label == "all"
                size = n_val if full else int(label)
                if size < 1 or (size >= n_val and not full):
                    continue
                todo = tuple(m for m in methods if (split.fold, size, repeat, m) not in finished)
                if todo:
                    jobs[f"fold_{split.fold}/size_{size}/repeat_{repeat}"] = _CurveJob(
                        rd.lesion_set(split.fold, "val"),
                        rd.lesion_set(split.fold, "test"),
                        split.fold,
                        size,
                        repeat,
                        full,
                        todo,
                        cfg,
                    )
    if scheduler is None and workers is None:  # in-process: the CSV grows after each task
        for job in track(list(jobs.values()), "learning curve", enabled=progress):
            rows.append(pd.DataFrame(_curve_task(job), columns=list(CSV_COLUMNS)))
            _write_csv(pd.concat(rows, ignore_index=True), csv)
    else:
        gathered = map_cases(
            _curve_task,
            jobs,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            desc="learning curve",
        )
        rows += [pd.DataFrame(r, columns=list(CSV_COLUMNS)) for r in gathered.results.values()]
        if rows:
            _write_csv(pd.concat(rows, ignore_index=True), csv)
        gathered.raise_failed("subsample")

    empty = pd.DataFrame(columns=list(CSV_COLUMNS))
    curve = _write_csv(pd.concat(rows, ignore_index=True) if rows else empty, csv)
    lesions = read_csv_table(lesions_csv)
    plot_learning_curve(curve, _baseline_aucs(lesions, cfg.methods), png)
    write_report(rd.root)
    return curve


@dataclass(frozen=True)
class _CurveJob:
    """One (fold, size, repeat) of :func:`learning_curve`: lesion-set paths and methods."""

    val: Path
    test: Path
    fold: int
    size: int
    repeat: int
    full: bool
    methods: tuple[str, ...]
    cfg: ExperimentConfig


def _curve_task(job: _CurveJob) -> list[tuple[Any, ...]]:
    """Fit each method on the job's subsample; one CSV row per method (a map_cases task)."""
    cfg = job.cfg
    val, test = load_lesion_set(job.val), load_lesion_set(job.test)
    index = stratified_case_subsample(
        val.table["case_id"], val.is_tp, job.size, (cfg.seed, job.fold, job.repeat)
    )
    train = val.subset(index)
    n_tp = int(train.is_tp.sum())
    run_cfg = cfg.replace(gcnn=dataclasses.replace(cfg.gcnn, seed=cfg.gcnn.seed + job.repeat))
    rows = []
    for method in job.methods:
        u = _fit_scorer(method, run_cfg, train).score(test) if len(test) else np.zeros(0)
        auc = _auc(u, test.is_tp)
        rows.append(
            (job.fold, job.size, job.repeat, method, auc, n_tp, len(train) - n_tp, job.full)
        )
    remove_pyg_codegen_files()
    return rows


def _write_csv(curve: pd.DataFrame, path: Path) -> pd.DataFrame:
    curve = curve.astype({"fold": int, "size": int, "repeat": int, "n_tp": int, "n_fp": int})
    curve["full"] = curve["full"].astype(bool)
    curve = curve.sort_values(_KEY, kind="stable").reset_index(drop=True)
    atomic_write_text(path, curve.to_csv(index=False))
    return curve


def _baseline_aucs(lesions: pd.DataFrame, methods: Sequence[str]) -> dict[str, float]:
    """Table-2 AUC (mean over folds) of the untrained methods present in ``lesions``."""
    present = [m for m in methods if m in lesions.columns and m not in LEARNED_METHODS]
    if not present:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t2, _ = table2(lesions, present)
    return dict(zip(t2["method"], t2["auc"], strict=True))
