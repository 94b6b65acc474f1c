"""Quality benchmark: the whole experiment on a phantom set larger than the demo's.

Prints Table 2 with the per-fold AUCs and the margin of ``gcnn_classif`` over the best
baseline (every method that is not a GCNN), fold by fold and on average, and ends with
``RESULT gcnn_margin <points>`` (AUC percentage points, mean over folds).

The paper's bar: GCNN classification 87.3 AUC against 83.9 for the best baseline (+3.4).

Usage:
    python benchmarks/quality.py [--cases N] [--out runs/quality] [--config configs/quality.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.data.phantom import make_phantom_dataset
from lesionuq.demo import bundled_config
from lesionuq.experiment import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None, help="default: the config's")
    args = parser.parse_args()

    cfg = ExperimentConfig.from_yaml(args.config) if args.config else bundled_config("quality")
    changes = {"n_cases": args.cases, "seed": args.seed}
    changes = {k: v for k, v in changes.items() if v is not None}
    cfg = cfg.replace(phantom=dataclasses.replace(cfg.phantom, **changes))
    t0 = time.perf_counter()
    data = args.out / "data"
    if not (data / "cases.csv").exists():
        make_phantom_dataset(data, cfg.phantom, preview=True)
    result = run_experiment(data / "cases.csv", args.out / "run", cfg)
    assert result is not None
    wall = time.perf_counter() - t0

    folds = result.table2_folds.pivot(index="method", columns="fold", values="auc") * 100
    folds.columns = [f"fold{c}" for c in folds.columns]
    table = result.table2.set_index("method")
    table["auc"] = table["auc"] * 100
    table = table.join(folds).sort_values("auc", ascending=False)
    baselines = [m for m in table.index if not m.startswith("gcnn")]
    per_fold_margin = folds.loc["gcnn_classif"] - folds.loc[baselines].max()
    margin = float(table.loc["gcnn_classif", "auc"] - table.loc[baselines, "auc"].max())

    pd.set_option("display.width", 160)
    print(f"\ncases={cfg.phantom.n_cases} folds={cfg.folds} wall={wall:.0f}s")
    print(result.table1.to_string(index=False))
    print(table.round(2).to_string())
    print("gcnn_classif minus best baseline, per fold (points):")
    print(per_fold_margin.round(2).to_string())
    print(f"RESULT gcnn_margin {margin:.2f}")


if __name__ == "__main__":
    main()
