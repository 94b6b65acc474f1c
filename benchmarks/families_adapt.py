"""Site adaptation on the cross-family bench (issue 31): k labelled scans of the target.

For every setting ``X->Y`` of ``benchmarks/families.py`` (run that first) and fold, the
source family's fitted ``gcnn_classif`` is adapted to family Y with the labelled lesions
of k of the fold's 5 validation scans of Y (:func:`lesionuq.scorers.site.site_stack`:
the source GCNN frozen, stacked with the seven untrained baselines by a monotone
logistic fit), then scores Y's test lesions of that fold. Beside it, on the same draws:

- ``source``: the source GCNN as it is (no local labels);
- ``local_gcnn`` (``--local-gcnn``): the paper's GCNN fitted on the k local scans alone;
- the best baseline on the test lesions (an oracle: the reference of Table 2's rule).

k in ``--k`` (default 1,2,3,5); ``--repeats`` draws of the k scans per fold (seeded; k = 5
is the whole validation set, one draw). AUCs are fold-averaged (``bootstrap_auc``); the
table gives each method's difference to the best baseline, mean and minimum over the
draws, and for k = 5 the case-bootstrap interval (B = 1000). Within-family settings
(``X->X``) are left out: there the scorer already comes from the target's own scans.

Writes ``OUT/families_adapt.csv`` (one row per setting, k, draw and method) and prints

    RESULT adapt <setting> k <k> <method> diff_best <mean> min <min> [ci <lo> <hi>]

Usage:
    python benchmarks/families_adapt.py [--out runs/families] [--families a,b,c]
        [--k 1,2,3,5] [--repeats 5] [--local-gcnn]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lesionuq.evaluation.bootstrap import bootstrap_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.rundir import RunDir
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.site import SITE_BASELINES, site_stack

SOURCE = "gcnn_classif"


def draws(cases: list[str], k: int, repeats: int, fold: int) -> list[list[str]]:
    """The seeded draws of ``k`` of ``cases`` (one draw when k takes them all)."""
    if k >= len(cases):
        return [list(cases)]
    return [
        sorted(np.random.default_rng([fold, k, r]).choice(cases, size=k, replace=False))
        for r in range(repeats)
    ]


def adapt_setting(
    source: Path, target: Path, ks: list[int], repeats: int, local_gcnn: dict | None
) -> list[pd.DataFrame]:
    """One lesion frame per (k, draw): the target's test lesions of both folds, scored.

    ``local_gcnn`` caches the local GCNN's scores by (target, fold, draw) across sources;
    None leaves it out.
    """
    src, tgt = RunDir(source), RunDir(target)
    cfg, _, splits = tgt.read_plan()
    per_draw: dict[tuple[int, int], list[pd.DataFrame]] = {}
    for split in splits:
        val = LesionSet.load(tgt.lesion_set(split.fold, "val"))
        test = LesionSet.load(tgt.lesion_set(split.fold, "test"))
        frozen = load_scorer(SOURCE, src.scorer(split.fold, SOURCE))
        base = test.table[["case_id", "is_tp"]].copy()
        base.insert(0, "fold", split.fold)
        base["source"] = frozen.score(test)
        for b in SITE_BASELINES:
            base[b] = make_scorer(b, cfg).score(test)
        cases = sorted(val.table["case_id"].astype(str).unique())
        for k in ks:
            for r, pick in enumerate(draws(cases, k, repeats, split.fold)):
                local = val.subset(np.flatnonzero(val.table["case_id"].astype(str).isin(pick)))
                frame = base.copy()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # one scan: said in the README
                    frame["site_stack"] = site_stack(frozen).fit(local).score(test)
                if local_gcnn is not None:
                    key = (str(target), split.fold, tuple(pick))
                    if key not in local_gcnn:
                        fitted = make_scorer(SOURCE, cfg).fit(local, progress=False)
                        local_gcnn[key] = fitted.score(test)
                    frame["local_gcnn"] = local_gcnn[key]
                frame["k"], frame["draw"], frame["n_local"] = k, r, len(local)
                per_draw.setdefault((k, r), []).append(frame)
    return [pd.concat(frames, ignore_index=True) for frames in per_draw.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/families"))
    parser.add_argument("--families", default="a,b,c")
    parser.add_argument("--k", default="1,2,3,5")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--local-gcnn", action="store_true")
    args = parser.parse_args()
    fams = args.families.split(",")
    runs = {f: args.out / f"fam{f.upper()}" / "run" for f in fams}
    ks = [int(k) for k in args.k.split(",")]
    cache: dict | None = {} if args.local_gcnn else None
    rows = []
    for s in fams:
        for t in fams:
            if s == t:
                continue
            t0 = time.perf_counter()
            setting = f"{s.upper()}->{t.upper()}"
            for frame in adapt_setting(runs[s], runs[t], ks, args.repeats, cache):
                k, draw = int(frame["k"].iloc[0]), int(frame["draw"].iloc[0])
                methods = [m for m in ("source", "site_stack", "local_gcnn") if m in frame]
                single = k >= 5
                boot = bootstrap_auc(frame, [*methods, *SITE_BASELINES], 1000 if single else 1)
                point = dict(zip(boot.methods, 100 * boot.point, strict=True))
                best = max(SITE_BASELINES, key=lambda b: point[b])
                for m in methods:
                    d, lo, hi = (100 * v for v in boot.difference(best))
                    i = boot.methods.index(m)
                    rows.append(
                        {
                            "setting": setting,
                            "k": k,
                            "draw": draw,
                            "n_local": "/".join(
                                str(n) for n in frame.groupby("fold")["n_local"].first()
                            ),
                            "method": m,
                            "auc": point[m],
                            "best_baseline": best,
                            "best_auc": point[best],
                            "diff_best": d[i],
                            "diff_lo": lo[i] if single else np.nan,
                            "diff_hi": hi[i] if single else np.nan,
                        }
                    )
            print(f"{setting}: {time.perf_counter() - t0:.0f}s", flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "families_adapt.csv", index=False)
    summary = table.groupby(["setting", "k", "method"], sort=False).agg(
        diff_best=("diff_best", "mean"),
        min=("diff_best", "min"),
        lo=("diff_lo", "first"),
        hi=("diff_hi", "first"),
        draws=("draw", "nunique"),
        n_local=("n_local", "first"),
    )
    pd.set_option("display.width", 200)
    print(summary.round(2).to_string())
    for (setting, k, m), r in summary.iterrows():
        ci = f" ci {r['lo']:.2f} {r['hi']:.2f}" if np.isfinite(r["lo"]) else ""
        print(
            f"RESULT adapt {setting} k {k} {m} diff_best {r['diff_best']:.2f} "
            f"min {r['min']:.2f}{ci}"
        )
    print(f"wrote {args.out / 'families_adapt.csv'}")


if __name__ == "__main__":
    main()
