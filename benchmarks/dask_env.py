"""What Dask's default worker environment costs a U-Net training step, and lesionuq's fix.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting that
variable (to any value) switches off glibc's dynamic mmap threshold, so every allocation
above 128 KiB (every activation and gradient of a 3-D U-Net) is ``mmap``-ed, page-faulted
and unmapped afresh. :func:`lesionuq.parallel.map_cases` starts its local workers with
the variable unset. This script times the same single-threaded training step (the demo's
U-Net, 8 patches of 32^3, Adam, DiceCE) in three places, same run:

- this process (the reference: no Dask);
- a worker of lesionuq's own local cluster (``lesionuq.parallel._client``);
- a ``LocalCluster`` worker with Dask's default environment.

Usage:
    python benchmarks/dask_env.py [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import time


def train_steps(steps: int) -> tuple[float, float, str | None]:
    """(ms per step wall, ms per step CPU, MALLOC_TRIM_THRESHOLD_) of ``steps`` timed steps."""
    import torch
    from monai.losses import DiceCELoss

    from lesionuq.config import UNetConfig
    from lesionuq.segmentation.unet import UNet3D

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(channels=(8, 16, 32, 64), dropout=0.2))
    net = net.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    x = torch.randn(8, 1, 32, 32, 32).to(memory_format=torch.channels_last_3d)
    y = (torch.rand(8, 1, 32, 32, 32) > 0.9).long()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            wall, cpu = time.perf_counter(), time.thread_time()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    ms = (time.perf_counter() - wall) * 1e3 / steps, (time.thread_time() - cpu) * 1e3 / steps
    return ms[0], ms[1], os.environ.get("MALLOC_TRIM_THRESHOLD_")


def main() -> None:
    import logging

    from distributed import Client, LocalCluster

    from lesionuq.parallel import _client

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    rows = [("this process (reference)", train_steps(args.steps))]
    # lesionuq's cluster first: Dask's nanny writes its default into this process's
    # os.environ, which every later worker process would inherit
    with _client(None, 1) as client:
        rows.append(("lesionuq local cluster", client.submit(train_steps, args.steps).result()))
    kw = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    with LocalCluster(**kw, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        result = client.submit(train_steps, args.steps).result()
        rows.append(("Dask LocalCluster, default env", result))
    ref = rows[0][1][0]
    print(f"U-Net training step, 8 x 32^3, 1 thread, {args.steps} steps")
    print(f"{'where':34s} {'ms/step':>8s} {'CPU ms':>8s} {'x ref':>6s}  MALLOC_TRIM_THRESHOLD_")
    for name, (wall, cpu, env) in rows:
        print(f"{name:34s} {wall:8.0f} {cpu:8.0f} {wall / ref:6.2f}  {env}")


if __name__ == "__main__":
    main()
