"""How often `predict`'s shift warning fires, within a data family and across families.

The shift warning (:mod:`lesionuq.shift`) tells a user that a scan is unlike the scans a
model was validated on. On the cross-family bench (``benchmarks/families.py``; run it
first) the source family's lesion scorers rank another family's lesions worse than the
untrained baselines in most settings, so a useful warning fires on the other family's
scans and stays silent on the model's own family's test scans.

For every source fold (its ``fold_K/shift_reference.json`` as saved by ``lesionuq fit``,
and the same reference refitted with the min-max rule alone, ``alpha=None``, from the
fold's validation scans) and every family's test scans of fold K, the scans that warn are
counted. A test scan's profile is taken as ``fit`` and ``predict`` take it: the original
FLAIR and the mean brain entropy of its run's MC-dropout maps (each family's own U-Net,
the setting of ``benchmarks/families.py``).

``--val-scans N`` refits both rules from the first N validation scans of each fold
instead (the saved reference is then left out): how the rule does with a small
reference, as after ``lesionuq refit`` on a few labelled scans; ``--interval-min-scans
2`` uses the prediction interval from 2 scans on (the rule uses it from 5).

``--run PATH`` (repeatable) adds any other run: its own test scans against its folds'
references (within only; run ``lesionuq fit --run PATH`` first to save the references of
the current rule).

Prints one row per source fold and target family, then the totals within and across
families, and ``RESULT shift <within|across> <rule> <warned> <of>``.

Usage:
    python benchmarks/shift_warning.py [--out runs/families] [--families a,b,c]
        [--run runs/demo/run ...] [--val-scans N] [--interval-min-scans M]
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.io import read_manifest
from lesionuq.rundir import RunDir
from lesionuq.shift import (
    INTERVAL_MIN_SCANS,
    SHIFT_FILE,
    ScanProfile,
    ShiftReference,
    scan_profile,
)


def profiles(run: Path, fold: int, part: str) -> list[ScanProfile]:
    """The shift profiles of a run's ``part`` ("val" or "test") scans of ``fold``."""
    rd = RunDir(run)
    cfg, data, splits = rd.read_plan()
    cases = {c.case_id: c for c in read_manifest(data, cfg.sequences)}
    out = []
    for c in getattr(splits[fold], part):
        case_dir = rd.case_dir(fold, part, c)
        entropy = np.asarray(nib.load(case_dir / "entropy.nii.gz").dataobj, np.float32)
        brain = np.asarray(nib.load(case_dir / "image.nii.gz").dataobj) != 0
        native = nib.load(cases[c].images[0])
        out.append(
            scan_profile(native, entropy, brain, brain_threshold=cfg.preprocess.brain_threshold)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/families"))
    parser.add_argument("--families", default="a,b,c")
    parser.add_argument("--run", type=Path, action="append", default=[])
    parser.add_argument("--val-scans", type=int, default=None)
    parser.add_argument("--interval-min-scans", type=int, default=INTERVAL_MIN_SCANS)
    args = parser.parse_args()
    runs = {f.upper(): args.out / f"fam{f.upper()}" / "run" for f in args.families.split(",")}
    profile = cache(profiles)
    rows = []
    sources = list(runs.items()) + [(str(r), r) for r in args.run]
    for src, src_run in sources:
        _, _, splits = RunDir(src_run).read_plan()
        for split in splits:
            k = split.fold
            val = profile(src_run, k, "val")
            if args.val_scans is None:
                saved = ShiftReference.load(RunDir(src_run).fold(k) / SHIFT_FILE)
            else:  # the rule refitted on a small reference
                rule = ShiftReference(interval_min_scans=args.interval_min_scans)
                saved = rule.fit(val[: args.val_scans])
            minmax = ShiftReference(alpha=None).fit(val[: args.val_scans])
            targets = runs if src in runs else {src: src_run}
            for tgt, tgt_run in targets.items():
                test = profile(tgt_run, k, "test")
                rows.append(
                    {
                        "setting": f"{src}->{tgt}",
                        "fold": k,
                        "within": src == tgt,
                        "scans": len(test),
                        "warned_saved": sum(bool(saved.check(p)) for p in test),
                        "warned_minmax": sum(bool(minmax.check(p)) for p in test),
                        "val_scans": saved.n_,
                    }
                )
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    totals = table.groupby("within")[["scans", "warned_saved", "warned_minmax"]].sum()
    print(totals)
    for within, r in totals.iterrows():
        where = "within" if within else "across"
        print(f"RESULT shift {where} saved {r.warned_saved} {r.scans}")
        print(f"RESULT shift {where} minmax {r.warned_minmax} {r.scans}")


if __name__ == "__main__":
    main()
