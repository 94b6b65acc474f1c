"""The default P(FP) method under other candidate sets, on existing runs (issue 31).

``predict`` reports each model folder's default P(FP) method, chosen on the folder's
validation lesions by :mod:`lesionuq.scorers.default_method` among the learned scorers it
holds. This bench asks what a change of that candidate set does, without refitting: per
setting ``SRC->TGT`` and fold K, each named set's default is chosen on SRC's fold K
(:func:`~lesionuq.scorers.default_method.read_candidates`, restricted to the set's learned
scorers, the baselines all), and SRC's scorer of that method ranks TGT's fold-K test
lesions (a baseline's Platt map and a learned scorer's calibrator are monotone, so the raw
score ranks as the reported P(FP) does). ``SRC == TGT`` is the quality bench's own
setting; ``SRC != TGT`` needs runs of the same fold plan (the family bench's).

Printed and written to ``OUT/default_candidates.csv``, per setting, for each set's default
and each ``--method``: the AUC (95 % case-bootstrap interval over TGT's test scans, B =
``--n-boot``, paired across every column), its difference to the best baseline on TGT's
test lesions (in hindsight: the voxel aggregates, size and MetaSeg), to ``gcnn_classif``
(when it is a ``--method``) and, for a default, to the first set's default; and the
method each set chose in each fold.

Usage:
    python benchmarks/default_candidates.py --run q2c=runs/q2c/run \\
        --set before=gcnn_classif,metaseg_classif,gcnn_stack \\
        --set R=gcnn_classif,metaseg_classif,gcnn_stack,gcnn_reg,metaseg_reg [--cross]

``--run NAME=RUN`` (repeatable) names a run; ``--cross`` adds every ``SRC->TGT`` pair of
the named runs; ``--method M`` (repeatable) adds SRC's scorer M as a column; ``--set
NAME=m1,m2`` (repeatable, the first is the reference) names the learned scorers a set
may choose; a learned scorer the folder does not hold is skipped. The IoU regressors are
admitted when a set names them (``read_candidates(..., regressors=True)``); the package's
rule does not admit them. A regressor is judged by its extrapolated AUC only where its
``calibration.json`` holds half-size fits: the measurement of docs/benchmarks.md ("The
regression GCNN as a default candidate") fitted them at commit 15d0ea8; the package fits
them for the classifiers only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lesionuq.evaluation.bootstrap import bootstrap_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import METHODS
from lesionuq.rundir import RunDir
from lesionuq.scorers import load_scorer
from lesionuq.scorers.default_method import read_candidates


def is_baseline(method: str) -> bool:
    """The paper's baselines: the voxel aggregates, size and MetaSeg (as families.py)."""
    return method in METHODS and not method.startswith("gcnn")


def _named(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"--{what} takes NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


class _Scores(dict):
    """Method -> (N,) scores of ``lesions`` by the run's fold-K scorer, each loaded once."""

    def __init__(self, run: RunDir, fold: int, lesions: LesionSet) -> None:
        super().__init__()
        self.run, self.fold, self.lesions = run, fold, lesions

    def __missing__(self, method: str) -> np.ndarray:
        scorer = load_scorer(method, self.run.scorer(self.fold, method))
        self[method] = np.asarray(scorer.score(self.lesions), dtype=np.float64)
        return self[method]


def setting_scores(
    source: Path, target: Path, sets: dict[str, list[str]], methods: list[str], seed: int
) -> tuple[pd.DataFrame, dict[str, dict[int, str]]]:
    """TGT's test lesions scored by SRC's baselines, ``methods`` and each set's default.

    Returns:
        One row per test lesion (``fold, case_id, is_tp``, one column per baseline and per
        method, and ``default:SET`` per set), and the chosen method per set and fold.
    """
    src, tgt = RunDir(source), RunDir(target)
    frames, chosen = [], {name: {} for name in sets}
    for split in tgt.read_plan()[2]:
        val = LesionSet.load(src.lesion_set(split.fold, "val"))
        test = LesionSet.load(tgt.lesion_set(split.fold, "test"))
        found = read_candidates(src.fold(split.fold), val, seed, regressors=True)
        frame = test.table[["case_id", "is_tp"]].copy()
        frame.insert(0, "fold", split.fold)
        scores = _Scores(src, split.fold, test)
        for m in METHODS:  # the baselines the folder holds: voxel aggregates, size, MetaSeg
            if is_baseline(m) and src.scorer(split.fold, m).is_dir():
                frame[m] = scores[m]
        for m in methods:
            frame[m] = scores[m]
        for name, learned in sets.items():
            choice = found.only(learned).choose(np.asarray(val.is_tp, dtype=bool))
            chosen[name][split.fold] = choice.method
            frame[f"default:{name}"] = scores[choice.method]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), chosen


def setting_rows(lesions: pd.DataFrame, sets: list[str], n_boot: int) -> pd.DataFrame:
    """Per method and set default: AUC and paired differences (points, 95 % intervals).

    To the best baseline (in hindsight), to ``gcnn_classif`` (when scored) and, for a
    set's default, to the first set's default.
    """
    base = [c for c in lesions.columns if is_baseline(c)]
    rest = [c for c in lesions.columns if c not in (*base, "fold", "case_id", "is_tp")]
    cols = base + rest
    boot = bootstrap_auc(lesions, cols, n_boot=n_boot, seed=0)
    lo, hi = boot.interval()
    point = dict(zip(cols, boot.point, strict=True))
    best = max(base, key=lambda m: point[m])
    refs = {"best": best, "paper": "gcnn_classif", "first": f"default:{sets[0]}"}
    diffs = {k: [100 * v for v in boot.difference(c)] for k, c in refs.items() if c in cols}
    rows = []
    for c in rest:
        i = cols.index(c)
        row = {"column": c, "auc": 100 * point[c], "auc_lo": 100 * lo[i], "auc_hi": 100 * hi[i]}
        row |= {"best_baseline": best, "best_auc": 100 * point[best]}
        for k, (d, dlo, dhi) in diffs.items():
            if k != "first" or c.startswith("default:"):
                row |= {f"diff_{k}": d[i], f"{k}_lo": dlo[i], f"{k}_hi": dhi[i]}
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN")
    parser.add_argument("--set", action="append", required=True, help="NAME=m1,m2,...")
    parser.add_argument("--method", action="append", default=[], help="also this method")
    parser.add_argument("--cross", action="store_true", help="also every SRC->TGT pair")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/default_candidates"))
    args = parser.parse_args()
    runs = {k: Path(v) for k, v in _named(args.run, "run").items()}
    sets = {k: v.split(",") for k, v in _named(args.set, "set").items()}
    pairs = [(s, t) for s in runs for t in runs if s == t or args.cross]
    rows = []
    for s, t in pairs:
        t0 = time.perf_counter()
        cfg = RunDir(runs[s]).read_plan()[0]
        lesions, chosen = setting_scores(runs[s], runs[t], sets, args.method, cfg.seed)
        table = setting_rows(lesions, list(sets), args.n_boot)
        table.insert(0, "setting", f"{s}->{t}")
        picks = {f"default:{n}": " / ".join(chosen[n][k] for k in sorted(chosen[n])) for n in sets}
        table["chosen"] = table["column"].map(picks).fillna("")
        rows.append(table)
        print(f"\n{s}->{t} ({len(lesions)} test lesions, {time.perf_counter() - t0:.0f} s)")
        print(table.drop(columns=["setting"]).round(2).to_string(index=False))
        for r in table.to_dict("records"):
            text = " ".join(
                f"{k} {r[f'diff_{k}']:.2f} ({r[f'{k}_lo']:.2f}, {r[f'{k}_hi']:.2f})"
                for k in ("best", "paper", "first")
                if f"diff_{k}" in r and pd.notna(r[f"diff_{k}"])
            )
            head = f"RESULT default {r['setting']} {r['column']} auc {r['auc']:.2f}"
            print(f"{head} {text} {r['chosen']}")
    out = pd.concat(rows, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out / "default_candidates.csv", index=False)
    print(f"wrote {args.out / 'default_candidates.csv'}")


if __name__ == "__main__":
    main()
