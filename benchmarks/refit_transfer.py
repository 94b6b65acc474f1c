"""A whole model moved to another phantom family, before and after `lesionuq refit`.

The cross-family bench (``benchmarks/families.py``) moves only the lesion scorer: each
family keeps its own U-Net. Here the whole model folder moves, as it does for a user:
family X's ``fold_K`` (U-Net and scorers) finds and scores the lesions of family Y's test
scans of that fold, first as it is, then after :func:`lesionuq.predict.refit.refit_model`
on Y's validation scans of the fold (5 labelled scans). The lesions are the same in both
(the U-Net is kept); they are labelled with Y's masks for the AUC.

Per setting and fold: the AUC % of the folder's reported P(FP) (its default method) and of
``gcnn_classif``, before and after, and of the best untrained baseline (voxel aggregates
and size: an oracle choice on the test lesions), with the case-bootstrap interval of the
paired difference to it (B = 1000).

Usage (after ``benchmarks/families.py --families a,b,c``):
    python benchmarks/refit_transfer.py [--out runs/families] [--settings b-a,c-a,a-b]
        [--folds 0]

Prints ``RESULT refit <setting> fold <k> <row> auc <auc> diff_best <d> ci <lo> <hi>`` and
writes ``OUT/refit_transfer.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lesionuq.evaluation.bootstrap import bootstrap_auc
from lesionuq.io import read_manifest, write_manifest
from lesionuq.lesions.dataset import LesionSet
from lesionuq.predict import load_model
from lesionuq.predict.model import FittedModel
from lesionuq.predict.refit import labelled_lesions, refit_model
from lesionuq.rundir import RunDir
from lesionuq.scorers.site import SITE_BASELINES


def scored(model: FittedModel, lesions: LesionSet, prefix: str) -> dict[str, np.ndarray]:
    """The folder's reported P(FP) and gcnn_classif's score of ``lesions``."""
    default = model.p_fp_method
    return {
        f"{prefix}_default": model.scorers[default].score(lesions),
        f"{prefix}_gcnn": model.scorers["gcnn_classif"].score(lesions),
    }


def slim_folder(fold_dir: Path, out: Path) -> Path:
    """A copy of a bench run's model folder with the config's methods only.

    The cross-family bench fits a dozen extra scorers into its runs (location-reading ones
    among them); the model a user moves holds the config's methods, the two that
    ``predict`` needs and the folder's default method.
    """
    import json
    import shutil

    cfg, _, _ = RunDir(fold_dir.parent).read_plan()
    default = json.loads((fold_dir / "default_method.json").read_text())["method"]
    keep = {*cfg.methods, "gcnn_classif", "gcnn_reg", default}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("config.yaml", "segmenter.pt", "shift_reference.json", "default_method.json"):
        shutil.copy2(fold_dir / name, out / name)
    for method in keep:
        shutil.copytree(fold_dir / "scorers" / method, out / "scorers" / method)
    return out


def one_setting(root: Path, src: str, tgt: str, fold: int, work: Path) -> pd.DataFrame:
    """Rows of the table for ``src -> tgt`` in ``fold``."""
    t0 = time.perf_counter()
    src_run, tgt_run = root / f"fam{src.upper()}" / "run", root / f"fam{tgt.upper()}" / "run"
    _, data, splits = RunDir(tgt_run).read_plan()
    split = next(s for s in splits if s.fold == fold)
    cases = {c.case_id: c for c in read_manifest(data)}
    model = load_model(slim_folder(src_run / f"fold_{fold}", work / f"{src}_fold{fold}"))
    test = LesionSet.concat([labelled_lesions(model, cases[c])[0] for c in split.test])
    site = work / f"{src}-{tgt}_fold{fold}"
    site.mkdir(parents=True, exist_ok=True)
    write_manifest(site / "cases.csv", [cases[c] for c in split.val])
    result = refit_model(model, site / "cases.csv", site / "model", overwrite=True, progress=False)
    refitted = load_model(result.folder)
    frame = test.table[["case_id", "is_tp"]].copy()
    frame.insert(0, "fold", fold)
    columns = {**scored(model, test, "before"), **scored(refitted, test, "after")}
    for b in SITE_BASELINES:
        columns[b] = model.scorers[b].score(test)
    for name, u in columns.items():
        frame[name] = u
    rows = [c for c in columns if c not in SITE_BASELINES]
    boot = bootstrap_auc(frame, [*rows, *SITE_BASELINES], n_boot=1000, seed=0)
    point = dict(zip(boot.methods, 100 * boot.point, strict=True))
    best = max(SITE_BASELINES, key=lambda b: point[b])
    diff, lo, hi = (100 * v for v in boot.difference(best))
    out = []
    for r in rows:
        i = boot.methods.index(r)
        method = model.p_fp_method if r == "before_default" else refitted.p_fp_method
        out.append(
            {
                "setting": f"{src.upper()}->{tgt.upper()}",
                "fold": fold,
                "row": r,
                "method": method if r.endswith("default") else "gcnn_classif",
                "auc": point[r],
                "best_baseline": best,
                "best_auc": point[best],
                "diff_best": diff[i],
                "diff_lo": lo[i],
                "diff_hi": hi[i],
                "test_lesions": len(test),
                "refit_lesions": result.n_tp + result.n_fp,
                "refit_seconds": result.seconds,
            }
        )
    print(f"{src}->{tgt} fold {fold}: {time.perf_counter() - t0:.0f}s", flush=True)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/families"))
    parser.add_argument("--settings", default="b-a,c-a,a-b")
    parser.add_argument("--folds", default="0")
    args = parser.parse_args()
    frames = []
    for setting in args.settings.split(","):
        src, tgt = setting.split("-")
        for fold in (int(f) for f in args.folds.split(",")):
            frames.append(one_setting(args.out, src, tgt, fold, args.out / "refit_transfer"))
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.out / "refit_transfer.csv", index=False)
    pd.set_option("display.width", 200)
    print(table.round(2).to_string(index=False))
    for r in table.itertuples():
        print(
            f"RESULT refit {r.setting} fold {r.fold} {r.row} ({r.method}) auc {r.auc:.2f} "
            f"diff_best {r.diff_best:.2f} ci {r.diff_lo:.2f} {r.diff_hi:.2f} best "
            f"{r.best_baseline} {r.best_auc:.2f}"
        )


if __name__ == "__main__":
    main()
