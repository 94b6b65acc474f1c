"""Scans per minute of ``predict --cases``: in-process loop vs Dask with 1 and 2 workers.

Setup (not timed): a phantom data set at the demo's 2 mm grid (80 x 96 x 80 after
preprocessing) trains fold 0's demo-config U-Net for ``--train-steps`` steps (default
100 of 8 patches; far fewer leave hundreds of false-positive "lesions" per scan, which
makes the lesion graphs, not the MC sampling, the cost) and fits the two GCNNs through
the experiment's own stages; ``RUN/fold_0`` is the model folder. ``--scans`` other
phantom scans (another seed) are then predicted three times into fresh folders:

- ``in-process``: :func:`lesionuq.predict.predict_manifest` in this process, torch with
  1 thread;
- ``dask 1 worker`` / ``dask 2 workers``: the same call with ``scheduler=`` the address of
  a ``distributed.LocalCluster(n_workers=K, threads_per_worker=1, processes=True)``
  (what ``--workers K`` builds). The cluster is started and every worker imports the
  prediction stack before the clock starts (start-up, printed apart: the in-process mode
  has those modules imported already); each worker loads the model once, inside the
  timing, as the in-process mode does.

Every mode's combined ``lesions.csv`` is compared with the in-process one (byte for byte).
The table: scans, seconds, scans per minute, speed-up vs the in-process loop. The last
line is ``RESULT dask_speedup <seconds with 1 worker / seconds with 2 workers>``.

Usage:
    python benchmarks/scale.py                          # 16 scans, T = 20 (about 15 min)
    python benchmarks/scale.py --scans 2 --samples 2 --train-steps 10  # does it run?
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lesionuq.config import PhantomConfig
from lesionuq.data.families import make_dataset
from lesionuq.demo import bundled_config
from lesionuq.pipeline.experiment import prepare_run
from lesionuq.pipeline.fit import stage_fit
from lesionuq.pipeline.graphs import stage_graphs
from lesionuq.pipeline.preprocess import stage_preprocess
from lesionuq.pipeline.sample import stage_sample
from lesionuq.pipeline.train import stage_train
from lesionuq.predict import load_model, predict_manifest


def build_model(root: Path, n_train: int, samples: int, steps: int) -> Path:
    """Fold 0 of a demo-config run: the U-Net trained ``steps`` steps, the two GCNNs fitted.

    Only the fold used as the model folder is trained, and only the two scorers a model
    folder needs are fitted (timing only; the quality is the demo's business).
    """
    cfg = bundled_config("demo")
    cfg = cfg.replace(
        folds=2,
        device="cpu",
        methods=("gcnn_classif", "gcnn_reg"),
        phantom=dataclasses.replace(cfg.phantom, n_cases=n_train, seed=0),
        train=dataclasses.replace(cfg.train, max_epochs=1, steps_per_epoch=steps),
        sampling=dataclasses.replace(cfg.sampling, n_samples=samples),
        gcnn=dataclasses.replace(cfg.gcnn, epochs=10),
        calibration=dataclasses.replace(cfg.calibration, n_inner=2),
    )
    csv = make_dataset(root / "train", cfg.phantom, progress=False)
    run = root / "run"
    prepare_run(csv, run, cfg)
    stage_preprocess(run, progress=False)
    for stage in (stage_train, stage_sample, stage_graphs, stage_fit):
        stage(run, [0], progress=False)
    return run / "fold_0"


def warm_worker() -> None:
    """Import the prediction stack on a worker, as the in-process mode already has it.

    Run on every worker before the clock starts (its seconds count as start-up): a cold
    worker otherwise spends its first task importing torch, PyTorch Geometric, MONAI and
    lesionuq, which is a one-off cost of a worker's life, not a per-scan cost.
    """
    import torch_geometric  # noqa: F401

    import lesionuq.predict  # noqa: F401


def time_mode(model: Path, csv: Path, out: Path, workers: int | None) -> tuple[float, float]:
    """(cluster start-up seconds, prediction seconds) of one mode."""
    if workers is None:
        t0 = time.perf_counter()
        predict_manifest(load_model(model), csv, out, progress=False)
        return 0.0, time.perf_counter() - t0
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        client.run(warm_worker)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        predict_manifest(model, csv, out, progress=False, scheduler=cluster.scheduler_address)
        return startup, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=16, help="scans to predict")
    parser.add_argument("--samples", type=int, default=20, help="MC-dropout samples T")
    parser.add_argument("--train-cases", type=int, default=8, help="phantoms for the model")
    parser.add_argument("--train-steps", type=int, default=100, help="U-Net training steps")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="lesionuq-scale-") as tmp:
        root = args.out or Path(tmp)
        t0 = time.perf_counter()
        model = build_model(root, args.train_cases, args.samples, args.train_steps)
        scans = PhantomConfig(n_cases=args.scans, seed=1, spacing=2.0)
        csv = make_dataset(root / "scans", scans, progress=False)
        print(
            f"setup (phantoms, a few training steps, GCNN fits): {time.perf_counter() - t0:.0f} s"
        )
        print(f"{args.scans} scans at 2 mm, T = {args.samples}, torch threads per process: 1")
        modes = {"in-process": None, "dask 1 worker": 1, "dask 2 workers": 2}
        seconds, reference = {}, None
        header = (
            f"{'mode':<16}{'scans':>6}{'start-up s':>12}{'seconds':>10}{'scans/min':>11}"
            f"{'speed-up':>10}  same lesions.csv"
        )
        rows = []
        for name, workers in modes.items():
            out = root / f"pred_{name.replace(' ', '_')}"
            shutil.rmtree(out, ignore_errors=True)  # a kept --out folder would be reused
            startup, sec = time_mode(model, csv, out, workers)
            table = (out / "lesions.csv").read_bytes()
            reference = table if reference is None else reference
            seconds[name] = sec
            rows.append((name, startup, sec, table == reference))
        print(header)
        for name, startup, sec, same in rows:
            print(
                f"{name:<16}{args.scans:>6}{startup:>12.1f}{sec:>10.1f}"
                f"{60 * args.scans / sec:>11.2f}{seconds['in-process'] / sec:>10.2f}  "
                f"{'yes' if same else 'NO'}"
            )
    print(f"RESULT dask_speedup {seconds['dask 1 worker'] / seconds['dask 2 workers']:.3f}")


if __name__ == "__main__":
    main()
