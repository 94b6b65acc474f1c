"""GCNN ablation on an existing run: which part of the lesion GCNN earns its place?

For every fold of a finished run (``lesionuq experiment`` / ``lesionuq demo``), every
variant is fitted on the fold's validation lesions and scores the fold's test lesions.
Prints one table: variant x fold accuracy-confidence AUC (points), the mean over folds,
the paired difference to the best baseline (mean of the per-fold differences, and the
number of folds where the variant wins), and the AUC pooled over all test lesions.

Variants change one thing at a time, either from the paper's model (``paper``: the
registered ``gcnn_classif``) or from its re-implementation in ``HybridLesionGCN``
(``plain``), up to the registered ``gcnn_ens`` (hybrid head + weight decay + dropout +
5-member ensemble). Graph variants (dilation, node position) rebuild the lesion graphs
from the run's saved maps. The row ``inner-cv`` picks, per fold, among ``metaseg_classif``,
``paper`` and ``gcnn_ens`` by leave-cases-out cross-validation INSIDE the validation
lesions; test lesions never choose anything.

The "best baseline" is the untrained or linear method (``config.METHODS`` minus the GCNNs)
with the best mean test AUC over folds: an oracle choice that favours the baselines.

Usage:
    python benchmarks/gcnn_ablation.py --run runs/demo/run [--variants paper,gcnn_ens]
        [--folds 0,1] [--inner 3] [--csv ablation.csv] [--workers 2]

With ``--workers N`` the folds run side by side on a local Dask cluster of N
single-threaded processes (the results are the same: every fit is seeded).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesionuq.config import METHODS, ExperimentConfig
from lesionuq.evaluation.curves import ac_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.rundir import RunDir
from lesionuq.scorers import LesionScorer, make_scorer
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.gcnn_ens import GCNNEnsConfig, GCNNEnsembleScorer, make_gcnn_ens

Factory = Callable[[], LesionScorer]
# A variant: a scorer factory and the lesion-set transform it needs ("" = the run's graphs).
Variant = tuple[Factory, str]


def plain_config(cfg: ExperimentConfig, **changes: object) -> GCNNEnsConfig:
    """The paper's model in :class:`HybridLesionGCN` form, with ``changes`` applied."""
    # the registered gcnn_ens settings (training from cfg.gcnn), reduced to one plain GCN
    base = dataclasses.replace(
        make_gcnn_ens(cfg).cfg,
        n_models=1,
        layers=2,
        readout=cfg.gcnn.readout,
        lesion_features=False,
        dropout=0.0,
        weight_decay=0.0,
    )
    return dataclasses.replace(base, **changes)


def variants(cfg: ExperimentConfig) -> dict[str, Variant]:
    """Every ablation variant: name -> (scorer factory, lesion transform)."""
    g = cfg.gcnn

    def paper(**changes: object) -> Factory:
        return lambda: GCNNScorer("classif", dataclasses.replace(g, **changes))

    def ens(**changes: object) -> Factory:
        return lambda: GCNNEnsembleScorer(plain_config(cfg, **changes))

    full = {"n_models": 5, "readout": "meanmax", "lesion_features": True, "dropout": 0.2}
    full["weight_decay"] = 1e-3
    return {
        "paper": (paper(), ""),
        "paper: no class weights": (paper(class_weight=False), ""),
        "paper: last epoch": (paper(val_fraction=0.0), ""),
        "paper: readout max": (paper(readout="max"), ""),
        "paper: readout sum": (paper(readout="sum"), ""),
        "paper: h=16": (paper(hidden=16), ""),
        "paper: h=128": (paper(hidden=128), ""),
        "paper: nodes w/o intensity": (paper(), "no_intensity"),
        "paper: nodes uncertainty only": (paper(), "uncertainty_only"),
        "paper: + node position": (paper(), "position"),
        "paper: dilation 0": (paper(), "dilation0"),
        "paper: dilation 2": (paper(), "dilation2"),
        "plain (paper re-impl.)": (ens(), ""),
        "plain: 1 layer": (ens(layers=1), ""),
        "plain: 3 layers": (ens(layers=3), ""),
        "plain: no standardisation": (ens(standardize=False), ""),
        "plain: epoch by val AUC": (ens(select="auc"), ""),
        "plain: meanmax readout": (ens(readout="meanmax"), ""),
        "plain: wd 1e-3 + dropout 0.2": (ens(weight_decay=1e-3, dropout=0.2), ""),
        "plain: ensemble of 5": (ens(n_models=5), ""),
        "plain: hybrid head": (ens(lesion_features=True), ""),
        "gcnn_ens (hybrid+reg+ens5)": (ens(**full), ""),
        "gcnn_ens: + lesion position": (ens(**full, position=True), ""),
        "gcnn_ens: no hybrid head": (ens(**{**full, "lesion_features": False}), ""),
    }


def transform(run: Path, fold: int, split: str, kind: str, cache: dict) -> LesionSet:
    """The fold's lesion set under a transform (cached)."""
    key = (fold, split, kind)
    if key in cache:
        return cache[key]
    rd = RunDir(run)
    if kind in ("", "no_intensity", "uncertainty_only"):
        base = cache.get((fold, split, "")) or LesionSet.load(rd.lesion_set(fold, split))
        cache[(fold, split, "")] = base
        if kind == "":
            return base
        n_seq = base.graphs[0].x.shape[1] - 4 if base.graphs else 1
        keep = list(range(n_seq, n_seq + 4)) if kind == "no_intensity" else [-3, -2, -1]
        graphs = [
            g.__class__(x=g.x[:, keep], edge_index=g.edge_index, y_fp=g.y_fp, y_iou=g.y_iou)
            for g in base.graphs
        ]
        out = LesionSet(base.table, graphs)
    else:
        out = regraph(run, fold, split, kind)
    cache[key] = out
    return out


def regraph(run: Path, fold: int, split: str, kind: str) -> LesionSet:
    """Rebuild a split's lesion graphs from the run's maps with another graph config."""
    from lesionuq.lesions.graphs import case_lesions
    from lesionuq.pipeline.stages import load_preprocessed
    from lesionuq.uncertainty import VoxelMaps

    rd = RunDir(run)
    cfg, _, splits = rd.read_plan()
    gcfg = cfg.graphs
    if kind == "position":
        gcfg = dataclasses.replace(gcfg, extra_features=(*gcfg.extra_features, "position"))
    elif kind.startswith("dilation"):
        gcfg = dataclasses.replace(gcfg, dilation=int(kind.removeprefix("dilation")))
    else:
        raise ValueError(f"unknown lesion transform {kind!r}.")
    sets = []
    for case in splits[fold].cases(split):
        image, mask, affine = load_preprocessed(run, case, cfg.sequences)
        maps = VoxelMaps.load(rd.case_dir(fold, split, case))
        sets.append(case_lesions(maps.seg, image, maps, mask, affine, gcfg, case)[1])
    return LesionSet.concat(sets)


def inner_cv_auc(factory: Factory, lesions: LesionSet, k: int, seed: int) -> float:
    """AUC of out-of-fold scores, folds made of whole validation cases (seeded)."""
    cases = np.array(sorted(lesions.table["case_id"].astype(str).unique()))
    rng = np.random.default_rng(seed)
    group = {c: i % k for i, c in enumerate(rng.permutation(cases))}
    fold_of = lesions.table["case_id"].astype(str).map(group).to_numpy()
    scores = np.full(len(lesions), np.nan)
    for f in range(min(k, len(cases))):
        inner_test = np.flatnonzero(fold_of == f)
        inner_train = np.flatnonzero(fold_of != f)
        if len(inner_test) == 0:
            continue
        scorer = factory().fit(lesions.subset(inner_train), progress=False)
        # out-of-fold scores from different models: rank within the inner fold
        u = scorer.score(lesions.subset(inner_test))
        scores[inner_test] = pd.Series(u).rank(pct=True).to_numpy()
    ok = np.isfinite(scores)
    return ac_auc(scores[ok], lesions.is_tp[ok])


@dataclasses.dataclass(frozen=True)
class FoldJob:
    """One fold of the ablation (a task of :func:`lesionuq.parallel.map_cases`)."""

    run: Path
    fold: int
    variants: tuple[str, ...] | None
    inner: int


def run_fold(job: FoldJob) -> tuple[list[dict], dict[str, np.ndarray], np.ndarray]:
    """Every variant (and the baselines, and the inner-CV choice) on one fold.

    Returns:
        (rows: variant, fold, auc (points), seconds[, choice]; per-variant test scores
        ranked within the fold, for the pooled AUC; the fold's test ``is_tp``).
    """
    torch.set_num_threads(1)
    cfg, _, _ = RunDir(job.run).read_plan()
    fold = job.fold
    table = variants(cfg)
    if job.variants:
        table = {k: v for k, v in table.items() if k in job.variants}
    cache: dict = {}
    rows: list[dict] = []
    ranks: dict[str, np.ndarray] = {}
    val, test = (transform(job.run, fold, s, "", cache) for s in ("val", "test"))
    is_tp = test.is_tp
    print(f"fold {fold}: {len(val)} val lesions ({int((~val.is_tp).sum())} FP), {len(test)} test")

    def record(name: str, u: np.ndarray, seconds: float) -> None:
        rows.append({"variant": name, "fold": fold, "auc": 100 * ac_auc(u, is_tp)})
        rows[-1]["seconds"] = seconds
        ranks[name] = pd.Series(u).rank(pct=True).to_numpy()

    for m in BASELINES:
        record(m, make_scorer(m, cfg).fit(val, progress=False).score(test), 0.0)
    for name, (factory, kind) in table.items():
        t0 = time.perf_counter()
        v, t = (transform(job.run, fold, s, kind, cache) for s in ("val", "test"))
        record(name, factory().fit(v, progress=False).score(t), time.perf_counter() - t0)
        print(f"  fold {fold} {name:32s} {rows[-1]['auc']:6.1f}  ({rows[-1]['seconds']:.0f}s)")
    if job.inner:
        t0 = time.perf_counter()
        cands = {
            "metaseg_classif": lambda: make_scorer("metaseg_classif", cfg),
            "paper": variants(cfg)["paper"][0],
            "gcnn_ens": variants(cfg)["gcnn_ens (hybrid+reg+ens5)"][0],
        }
        inner = {n: inner_cv_auc(f, val, job.inner, cfg.seed) for n, f in cands.items()}
        best = max(inner, key=inner.get)
        u = cands[best]().fit(val, progress=False).score(test)
        record("inner-cv choice", u, time.perf_counter() - t0)
        rows[-1]["choice"] = best
        text = ", ".join(f"{n} {100 * a:.1f}" for n, a in inner.items())
        print(f"  fold {fold} inner CV AUC: {text} -> {best} (test {rows[-1]['auc']:.1f})")
    return rows, ranks, is_tp


BASELINES = [m for m in METHODS if not m.startswith("gcnn")]


def main() -> None:
    from lesionuq.parallel import map_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="RUN folder (config.yaml)")
    parser.add_argument("--folds", default=None, help="e.g. 0,1 (default: all)")
    parser.add_argument("--variants", default=None, help="comma list of names (default: all)")
    parser.add_argument("--inner", type=int, default=3, help="inner CV folds (0: skip)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the long table")
    parser.add_argument("--workers", type=int, default=None, help="folds side by side (Dask)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg, _, splits = RunDir(args.run).read_plan()
    folds = [int(f) for f in args.folds.split(",")] if args.folds else range(len(splits))
    names = tuple(args.variants.split(",")) if args.variants else None
    table = {k: v for k, v in variants(cfg).items() if names is None or k in names}
    jobs = {f"fold_{k}": FoldJob(args.run, k, names, args.inner) for k in folds}
    done = map_cases(run_fold, jobs, workers=args.workers, desc="ablation folds")
    done.raise_failed("fold")
    rows = [r for fold_rows, _, _ in done.results.values() for r in fold_rows]
    pooled: dict[str, list[np.ndarray]] = {"is_tp": []}
    for _, ranks, is_tp in done.results.values():
        pooled["is_tp"].append(is_tp)
        for name, r in ranks.items():
            pooled.setdefault(name, []).append(r)
    baselines = BASELINES

    long = pd.DataFrame(rows)
    wide = long.pivot(index="variant", columns="fold", values="auc")
    wide.columns = [f"fold{c}" for c in wide.columns]
    wide["mean"] = wide.mean(axis=1)
    best_base = wide.loc[baselines, "mean"].idxmax()
    diffs = wide[[c for c in wide.columns if c.startswith("fold")]].sub(
        wide.loc[best_base, [c for c in wide.columns if c.startswith("fold")]]
    )
    wide["diff"] = diffs.mean(axis=1)
    wide["wins"] = (diffs > 0).sum(axis=1).astype(str) + f"/{len(diffs.columns)}"
    y = ~np.concatenate(pooled.pop("is_tp"))
    wide["pooled"] = pd.Series({n: 100 * ac_auc(np.concatenate(u), ~y) for n, u in pooled.items()})
    order = [*table, "inner-cv choice", *baselines]
    wide = wide.reindex([n for n in order if n in wide.index])
    pd.set_option("display.width", 200)
    print(f"\nAUC (points) per fold; diff = mean paired difference to {best_base}")
    print(wide.round(1).to_string())
    if "choice" in long:
        print(
            "inner-cv choices:",
            long.dropna(subset=["choice"])[["fold", "choice"]].to_dict("records"),
        )
    if args.csv:
        long.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
