"""Cross-family bench (issue 31): Table 2 on phantom families A, B (and C), and across them.

Runs the paper's protocol (``configs/families.yaml``, a reduced version of the quality
bench: 2 mm grid, 32 cases, 2 folds, 1,200 U-Net steps (300 before 2026-12-04), T = 10;
see the config's header)
once on family A (``lesionuq.data.phantom``, MNI152) and once on family B
(``lesionuq.data.family_b``, fsaverage5 and other generative rules), and with
``--families a,b,c`` on family C too (``lesionuq.data.family_c``, a procedural brain
without a template, a third set of rules), then scores every fold's test lesions of
each family with the scorers fitted on the *same* fold of every family:

    A -> A, B -> B, ...   the within-family Table 2;
    A -> B, B -> A, ...   the lesion scorers fitted on one family's validation lesions
                          score another family's test lesions (each family's own U-Net
                          and voxel maps: only the lesion scorer is moved).

Every setting gets the case-bootstrap intervals of ``lesionuq.evaluation.bootstrap``
(B = 1000 replicates of the target family's test cases, the same replicates for all
methods) and the paired difference of every method to the best baseline of that
setting (the method with the highest AUC among those that are not GCNNs: the voxel
aggregates, size and MetaSeg). The extra methods (``--extra``, default the robust
variants of ``lesionuq.scorers.robust`` and ``gcnn_stack_robust``) are fitted into each
run after the protocol (``lesionuq.pipeline.fit.stage_fit``).

Writes ``OUT/families.csv`` (one row per setting and method) and prints the tables and
one line per setting:

    RESULT families <setting> <method> auc <auc> diff_best <d> ci <lo> <hi> best <name>

and, for the variants of the paper's GCNN, the issue's rule (:func:`verdicts`). The
``default`` row is each source fold's default P(FP) method
(``fold_K/default_method.json``, :mod:`lesionuq.scorers.default_method`).

With ``--lofo`` (and ``--tables-only``), the leave-one-family-out settings instead
(:func:`lofo_scores`): each family's test lesions scored by the methods fitted on the
pooled validation lesions of the other families (``BC->A``, ...), written to
``OUT/families_lofo.csv``.

Usage:
    python benchmarks/families.py [--out runs/families] [--config FILE] [--workers 2]
        [--extra gcnn_nawm,gcnn_aug,gcnn_robust,gcnn_stack_robust] [--families a,b,c]
        [--tables-only [--plain-fit] [--lofo]] [--train-seed N]

``--train-seed N`` trains every family's U-Nets with ``train.seed`` N (weights, patches,
augmentation) and nothing else changed: another draw of the U-Net on the same data,
split and config, to see how far the tables move with the segmenter alone (docs/benchmarks.md, "A
second U-Net per family").
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.data.families import make_dataset
from lesionuq.evaluation.bootstrap import bootstrap_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import METHODS
from lesionuq.pipeline.experiment import run_experiment
from lesionuq.pipeline.fit import stage_fit
from lesionuq.rundir import RunDir
from lesionuq.scorers import load_scorer
from lesionuq.scorers.default_method import load_default_method

DEFAULT_EXTRA = ("gcnn_nawm", "gcnn_aug", "gcnn_robust", "gcnn_stack_robust")


def is_baseline(method: str) -> bool:
    """Whether a method is one of the paper's baselines: voxel aggregates, size, MetaSeg.

    The project's own extras (``metaseg_loc``, the GCNN variants) are not baselines.
    """
    return method in METHODS and not method.startswith("gcnn")


def fitted(run: Path, method: str) -> bool:
    """Whether ``method`` is fitted (stamped) in every fold of ``run``."""
    rd = RunDir(run)
    _, _, splits = rd.read_plan()
    return all((rd.scorer(s.fold, method) / "stamp.json").is_file() for s in splits)


def plain_fit(run: Path, methods: list[str]) -> None:
    """Fit each missing method once per fold on its validation lesions (no calibrator).

    A shortcut for a bench short of time: the cross-fitted calibrator of
    ``lesionuq.pipeline.fit.stage_fit`` changes no AUC (it is monotone), so a plain fit
    gives the same ranking at a quarter of the cost. The stamp says so
    (``"digest": "plain-fit"``); such a scorer takes no part in ``default_method.json``
    (it has no out-of-fold P(FP)).
    """
    from lesionuq.io import atomic_dir
    from lesionuq.lesions.dataset import load_lesion_set
    from lesionuq.rundir import write_stamp
    from lesionuq.scorers import make_scorer

    rd = RunDir(run)
    cfg, _, splits = rd.read_plan()
    for split in splits:
        val = load_lesion_set(rd.lesion_set(split.fold, "val"))
        for m in methods:
            folder = rd.scorer(split.fold, m)
            if (folder / "stamp.json").is_file():
                continue
            t0 = time.perf_counter()
            with atomic_dir(folder) as tmp:
                make_scorer(m, cfg).fit(val, progress=False).save(tmp)
                write_stamp(tmp / "stamp.json", "plain-fit", fit_seconds=time.perf_counter() - t0)
            print(f"plain fit {run} fold {split.fold} {m}: {time.perf_counter() - t0:.0f}s")


def cross_scores(source: Path, target: Path, methods: list[str]) -> pd.DataFrame:
    """Score the target run's test lesions of every fold with the source run's scorers.

    Args:
        source: Run whose ``fold_K/scorers/METHOD`` are used.
        target: Run whose ``fold_K/graphs/test`` lesions are scored (same folds).
        methods: Method names.

    Returns:
        One row per target test lesion: ``fold, case_id, is_tp`` and one column per method
        (raw scores; the calibrators are monotone, so the AUCs are those of P(FP)).
    """
    frames = []
    src, tgt = RunDir(source), RunDir(target)
    _, _, splits = tgt.read_plan()
    for split in splits:
        test = LesionSet.load(tgt.lesion_set(split.fold, "test"))
        frame = test.table[["case_id", "is_tp"]].copy()
        frame.insert(0, "fold", split.fold)
        for m in methods:
            scorer = load_scorer(m, src.scorer(split.fold, m))
            frame[m] = scorer.score(test) if len(test) else np.zeros(0)
        choice = load_default_method(src.fold(split.fold))
        if choice is not None and choice.method in frame:
            # the source fold's default P(FP) method (chosen on its validation lesions;
            # a baseline's Platt map is monotone, so its raw score ranks the same)
            frame["default"] = frame[choice.method]
            frame["default_is"] = choice.method
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def lofo_scores(
    runs: dict[str, Path], target: str, methods: list[str], cache: Path
) -> pd.DataFrame:
    """Score the target family's test lesions with scorers fitted on the *other* families.

    Leave-one-family-out, the usual protocol of domain generalisation: in every fold, the
    validation lesions of all the families in ``runs`` but ``target`` are pooled (case
    ids prefixed with the family, so that inner splits by case stay apart) and each method
    is fitted once on them (plain fit, as :func:`plain_fit`), then scores the target's
    test lesions of the same fold. Fitted scorers are kept in ``cache`` and reused.

    Args:
        runs: Family letter -> bench run (same folds).
        target: The held-out family's letter.
        methods: Method names.
        cache: Folder for the fitted scorers (``cache/to_<T>/fold_K/METHOD``).

    Returns:
        As :func:`cross_scores` (without the ``default`` column).
    """
    from lesionuq.io import atomic_dir
    from lesionuq.rundir import write_stamp
    from lesionuq.scorers import make_scorer

    tgt = RunDir(runs[target])
    cfg, _, splits = tgt.read_plan()
    frames = []
    for split in splits:
        parts = []
        for fam, run in runs.items():
            if fam == target:
                continue
            part = LesionSet.load(RunDir(run).lesion_set(split.fold, "val"))
            part.table["case_id"] = fam.upper() + ":" + part.table["case_id"].astype(str)
            parts.append(part)
        pooled = LesionSet.concat(parts)
        test = LesionSet.load(tgt.lesion_set(split.fold, "test"))
        frame = test.table[["case_id", "is_tp"]].copy()
        frame.insert(0, "fold", split.fold)
        for m in methods:
            folder = cache / f"to_{target.upper()}" / f"fold_{split.fold}" / m
            if not (folder / "stamp.json").is_file():
                t0 = time.perf_counter()
                with atomic_dir(folder) as tmp:
                    make_scorer(m, cfg).fit(pooled, progress=False).save(tmp)
                    write_stamp(
                        tmp / "stamp.json", "plain-fit", fit_seconds=time.perf_counter() - t0
                    )
                print(
                    f"lofo fit -> {target} fold {split.fold} {m} on {len(pooled)} lesions: "
                    f"{time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
            frame[m] = load_scorer(m, folder).score(test) if len(test) else np.zeros(0)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def setting_table(lesions: pd.DataFrame, methods: list[str], n_boot: int) -> pd.DataFrame:
    """AUC with its interval and the paired difference to the best baseline, per method."""
    boot = bootstrap_auc(lesions, methods, n_boot=n_boot, seed=0)
    lo, hi = boot.interval()
    base = [m for m in methods if is_baseline(m)]
    point = dict(zip(methods, boot.point, strict=True))
    best = max(base, key=lambda m: point[m])
    diff, dlo, dhi = boot.difference(best)
    pdiff, plo, phi = boot.difference("gcnn_classif")
    return pd.DataFrame(
        {
            "method": methods,
            "auc": 100 * boot.point,
            "auc_lo": 100 * lo,
            "auc_hi": 100 * hi,
            "best_baseline": best,
            "diff_best": 100 * diff,
            "diff_lo": 100 * dlo,
            "diff_hi": 100 * dhi,
            "diff_paper": 100 * pdiff,
            "paper_lo": 100 * plo,
            "paper_hi": 100 * phi,
        }
    )


def print_setting(table: pd.DataFrame, header: str, tag: str) -> None:
    """Print one setting's table and a ``RESULT <tag> ...`` line per method not a baseline."""
    print(f"\n{header}")
    print(table.drop(columns=["setting"]).round(2).to_string(index=False))
    for r in table.itertuples():
        if not is_baseline(str(r.method)):
            print(
                f"RESULT {tag} {r.setting} {r.method} auc {r.auc:.2f} diff_best "
                f"{r.diff_best:.2f} ci {r.diff_lo:.2f} {r.diff_hi:.2f} best {r.best_baseline}"
            )


def lofo_tables(runs: dict[str, Path], methods: list[str], out: Path, n_boot: int) -> None:
    """Print and write the leave-one-family-out settings (``BC->A``, ...).

    One setting per held-out family, its Table 2 and paired differences as in
    :func:`setting_table`: the rows to set beside the single-source settings (``B->A``,
    ``C->A``) of ``families.csv``.
    """
    rows = []
    for target in runs:
        sources = "".join(f.upper() for f in runs if f != target)
        setting = f"{sources}->{target.upper()}"
        lesions = lofo_scores(runs, target, methods, out / "lofo")
        table = setting_table(lesions, methods, n_boot)
        table.insert(0, "setting", setting)
        table["test_lesions"] = len(lesions)
        rows.append(table)
        header = (
            f"{setting}: fitted on the pooled validation lesions of {sources}, "
            f"{len(lesions)} test lesions of family {target.upper()}"
        )
        print_setting(table, header, "lofo")
    table = pd.concat(rows, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "families_lofo.csv", index=False)
    print(f"wrote {out / 'families_lofo.csv'}")


def verdicts(table: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """The issue's rule for each variant of the paper's GCNN, from every setting present.

    A variant *counts* when it loses at most 0.5 AUC points to ``gcnn_classif`` within
    each family (the settings ``X->X``: A->A, B->B, C->C, ...) and gains over it
    (difference > 0) on every cross-family setting present (``X->Y``, X != Y). Fixed
    before any result was seen; with families a and b these are the four settings of
    the first bench.
    """
    settings = list(dict.fromkeys(table["setting"]))
    within = [s for s in settings if s.split("->")[0] == s.split("->")[1]]
    cross = [s for s in settings if s not in within]
    rows = []
    d = table.set_index(["setting", "method"])["diff_paper"]
    for v in variants:
        keep = all((s, v) in d.index and d[(s, v)] >= -0.5 for s in within)
        gain = all((s, v) in d.index and d[(s, v)] > 0 for s in cross)
        rows.append(
            {
                "variant": v,
                **{f"vs_paper {s}": d.get((s, v), np.nan) for s in within + cross},
                "counts": bool(within) and bool(cross) and keep and gain,
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/families"))
    parser.add_argument("--config", type=Path, default=Path("configs/families.yaml"))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--extra", default=",".join(DEFAULT_EXTRA))
    parser.add_argument("--families", default="a,b")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument(
        "--train-seed", type=int, default=None, help="train.seed of every U-Net (another draw)"
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="only score and tabulate the existing runs (the methods fitted in every fold)",
    )
    parser.add_argument(
        "--lofo",
        action="store_true",
        help="leave one family out: fit on the others' pooled validation lesions, "
        "score the held-out family (writes OUT/families_lofo.csv)",
    )
    parser.add_argument(
        "--plain-fit",
        action="store_true",
        help="with --tables-only: fit the missing extra methods once per fold, uncalibrated",
    )
    args = parser.parse_args()

    base_cfg = ExperimentConfig.from_yaml(args.config)
    if args.train_seed is not None:
        base_cfg = base_cfg.replace(train=dataclasses.replace(base_cfg.train, seed=args.train_seed))
    extra = [m for m in args.extra.split(",") if m]
    runs: dict[str, Path] = {}
    for fam in args.families.split(","):
        t0 = time.perf_counter()
        cfg = base_cfg.replace(phantom=dataclasses.replace(base_cfg.phantom, family=fam))
        data = args.out / f"fam{fam.upper()}" / "data"
        run = args.out / f"fam{fam.upper()}" / "run"
        runs[fam] = run
        if args.tables_only:
            if args.plain_fit:
                plain_fit(run, extra)
            continue
        if not (data / "cases.csv").exists():
            make_dataset(data, cfg.phantom)
        run_experiment(data / "cases.csv", run, cfg, workers=args.workers)
        if extra:
            stage_fit(run, methods=extra, workers=args.workers)
        print(f"family {fam}: {time.perf_counter() - t0:.0f}s", flush=True)

    methods = list(base_cfg.methods) + [m for m in extra if m not in base_cfg.methods]
    methods = [m for m in methods if all(fitted(run, m) for run in runs.values())]
    pd.set_option("display.width", 200)
    if args.lofo:
        lofo_tables(runs, methods, args.out, args.n_boot)
        return
    rows = []
    for src, tgt in [(s, t) for s in runs for t in runs]:
        setting = f"{src.upper()}->{tgt.upper()}"
        lesions = cross_scores(runs[src], runs[tgt], methods)
        cols = methods + (["default"] if "default" in lesions else [])
        table = setting_table(lesions, cols, args.n_boot)
        if "default" in lesions:
            chosen = lesions.groupby("fold")["default_is"].first()
            print(f"default P(FP) method per fold ({setting}): {chosen.to_dict()}")
        table.insert(0, "setting", setting)
        n_val = [
            len(LesionSet.load(RunDir(runs[src]).lesion_set(k, "val")).table)
            for k in sorted(lesions["fold"].unique())
        ]
        table["val_lesions"] = "/".join(str(n) for n in n_val)
        table["test_lesions"] = len(lesions)
        rows.append(table)
        header = (
            f"{setting}: scorers fitted on family {src} (validation lesions per fold "
            f"{table['val_lesions'].iloc[0]}), {len(lesions)} test lesions of family {tgt}"
        )
        print_setting(table, header, "families")
    out = pd.concat(rows, ignore_index=True)
    variants = [m for m in out["method"].unique() if m.startswith("gcnn") and m != "gcnn_classif"]
    print("\nvariants of the paper's GCNN, AUC difference to gcnn_classif (points):")
    print(verdicts(out, variants).round(2).to_string(index=False))
    args.out.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out / "families.csv", index=False)
    print(f"wrote {args.out / 'families.csv'}")


if __name__ == "__main__":
    main()
