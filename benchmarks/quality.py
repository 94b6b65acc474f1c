"""Quality benchmark in the paper's regime: enough lesions for the learned scorers.

The bundled ``quality`` config (``src/lesionuq/configs/quality.yaml``) sizes the phantom
study so that each fold's validation set holds at least 400 predicted lesions and its test
set at least 600 (the paper: about 700 validation lesions per fold, 60 per scan), with
lesions large enough to form real graphs (1.5 mm grid) and a U-Net trained long enough
for a mean test Dice of at least 0.60. It takes about 2 hours on a 2-core CPU and resumes
where it stopped (every stage is stamped).

Prints Table 1, the regime (lesions per fold, median size), Table 2 with bootstrap 95 %
intervals over test cases (``lesionuq.evaluation.bootstrap``) and the per-fold AUCs, the
learning-curve table when ``RUN/results/learning_curve.csv`` exists (``lesionuq
learning-curve --run RUN``), and ends with

    RESULT gcnn_margin <points> ci <lo> <hi> val_lesions <n>

the AUC of ``gcnn_classif`` minus that of the best baseline (every method that is not a
GCNN; AUC percentage points, mean over folds), its paired bootstrap interval, and the
smallest number of validation lesions of a fold. The paper's bar: 87.3 against 83.9 (+3.4).

Usage:
    python benchmarks/quality.py [--out runs/quality] [--config FILE] [--cases N]
        [--stop-after train] [--workers 2]
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
from lesionuq.demo import bundled_config
from lesionuq.lesions.dataset import LesionSet
from lesionuq.pipeline.experiment import run_experiment
from lesionuq.rundir import RunDir


def regime(run: Path, folds: int) -> pd.DataFrame:
    """Per fold and split: lesions, FP, cases, lesions per case, median lesion size."""
    rows = []
    for k in range(folds):
        for split in ("val", "test"):
            t = LesionSet.load(RunDir(run).lesion_set(k, split)).table
            rows.append(
                {
                    "fold": k,
                    "split": split,
                    "cases": t["case_id"].nunique(),
                    "lesions": len(t),
                    "fp": int((~t["is_tp"].astype(bool)).sum()),
                    "per_case": len(t) / max(t["case_id"].nunique(), 1),
                    "median_voxels": float(np.median(t["n_voxels"])) if len(t) else 0.0,
                }
            )
    return pd.DataFrame(rows)


def margin_interval(table2: pd.DataFrame, best: str) -> tuple[float, float]:
    """Paired 95 % interval of AUC(gcnn_classif) - AUC(best) in points.

    ``table2.csv``'s ``diff_vs_gcnn_classif`` is AUC(method) - AUC(gcnn_classif), so the
    margin's interval is its negation.
    """
    row = table2.set_index("method").loc[best]
    return -100 * float(row["diff_hi"]), -100 * float(row["diff_lo"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None, help="phantom seed (config's)")
    parser.add_argument("--stop-after", default=None, help="stop after a stage (timing)")
    parser.add_argument(
        "--workers", type=int, default=None, help="Dask worker processes (per-scan stages, fit)"
    )
    args = parser.parse_args()

    cfg = ExperimentConfig.from_yaml(args.config) if args.config else bundled_config("quality")
    changes = {"n_cases": args.cases, "seed": args.seed}
    changes = {k: v for k, v in changes.items() if v is not None}
    cfg = cfg.replace(phantom=dataclasses.replace(cfg.phantom, **changes))
    t0 = time.perf_counter()
    data = args.out / "data"
    if not (data / "cases.csv").exists():
        make_dataset(data, cfg.phantom, preview=False)  # phantom.family picks the generator
    print(f"phantom: {time.perf_counter() - t0:.0f}s", flush=True)
    run = args.out / "run"
    result = run_experiment(
        data / "cases.csv", run, cfg, stop_after=args.stop_after, workers=args.workers
    )
    wall = time.perf_counter() - t0
    print(f"wall={wall:.0f}s", flush=True)
    if result is None:
        return

    pd.set_option("display.width", 160)
    print(f"\ncases={cfg.phantom.n_cases} folds={cfg.folds} wall={wall:.0f}s")
    print(result.table1.to_string(index=False))
    reg = regime(run, cfg.folds)
    print(reg.round(1).to_string(index=False))
    val_lesions = int(reg.loc[reg["split"] == "val", "lesions"].min())

    folds = result.table2_folds.pivot(index="method", columns="fold", values="auc") * 100
    folds.columns = [f"fold{c}" for c in folds.columns]
    baselines = [m for m in folds.index if not m.startswith("gcnn")]
    best = str(result.table2.set_index("method").loc[baselines, "auc"].idxmax())
    margin = float(
        100 * result.table2.set_index("method").loc["gcnn_classif", "auc"]
        - 100 * result.table2.set_index("method").loc[best, "auc"]
    )

    # table2 carries the case-bootstrap intervals (lesionuq.evaluation.bootstrap)
    boot = result.table2
    table = boot.set_index("method")
    for col in ("auc", "auc_lo", "auc_hi", "diff_vs_gcnn_classif", "diff_lo", "diff_hi"):
        table[col] = table[col] * 100
    table = table.join(folds).sort_values("auc", ascending=False)
    print(table.round(2).to_string())
    print("gcnn_classif minus best baseline, per fold (points):")
    print((folds.loc["gcnn_classif"] - folds.loc[best]).round(2).to_string())

    curve = run / "results" / "learning_curve.csv"
    if curve.is_file():
        lc = pd.read_csv(curve)
        print("learning curve, mean AUC (points) over folds and repeats:")
        print((lc.pivot_table(index="size", columns="method", values="auc") * 100).round(1))
    else:
        print(f"(no learning curve yet: lesionuq learning-curve --run {run})")

    lo, hi = margin_interval(boot, best)
    print(f"RESULT gcnn_margin {margin:.2f} ci {lo:.2f} {hi:.2f} val_lesions {val_lesions}")


if __name__ == "__main__":
    main()
