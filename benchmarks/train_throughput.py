"""U-Net training throughput on CPU: patches/s and where a step's time goes.

Replays ``lesionuq.segmentation.train``'s step (the same ``_PatchSampler``, MONAI
``augmentation``, ``DiceCELoss``, Adam, and the autocast dtype of
:func:`~lesionuq.segmentation.train.training_dtype`) on phantoms at 2 mm (the demo's grid)
and times each phase of a step with ``time.perf_counter`` (CPU operators return when
their threads are done, so no further synchronisation is needed): patch drawing (sampling
and copy), augmentation, forward (with the float32 loss), backward, optimiser step.
Variants, same run, same seeds:

- fp32 contiguous: the plain float32 step (the reference layout);
- fp32 channels-last: model and batch in ``torch.channels_last_3d``; this is what
  ``train_segmenter`` does on a CPU with ``precision: fp32`` (the library default);
- bf16 contiguous / bf16 channels-last: forward under ``torch.autocast("cpu",
  torch.bfloat16)``, loss in float32; the latter is ``train_segmenter`` with
  ``precision: auto`` (the demo's setting) on a CPU with native bf16 units. Run where
  the CPU has them, or with --bf16 (emulated: slow).

Then ``train_segmenter`` itself with ``precision`` fp32 and auto (its second epoch of the
same number of steps, as timed in its history), so the numbers above are checked against
the real code path.

The augmentation runs on one thread (see :func:`~lesionuq.segmentation.train.augmentation`).
Then the expected augmentation cost per patch of each transform (its cost when applied
times its probability), which says what a cheaper ordering could save.

Usage:
    python benchmarks/train_throughput.py                       # demo settings
    python benchmarks/train_throughput.py --steps 4 --batch 4   # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from lesionuq.config import TrainConfig, UNetConfig
from lesionuq.data.phantom import generate_case
from lesionuq.segmentation.sampling import bf16_native
from lesionuq.segmentation.train import (
    _PatchSampler,
    _plain,
    augmentation,
    train_segmenter,
    training_dtype,
)
from lesionuq.segmentation.unet import UNet3D
from lesionuq.utils import torch_threads

PHASES = ("draw", "augment", "forward", "backward", "optimizer")


def phantoms(n: int, spacing: float, shape: tuple[int, int, int]) -> list:
    """``n`` phantom (z-scored image (1, X, Y, Z), mask (X, Y, Z)) pairs."""
    pairs = []
    for i in range(n):
        case = generate_case(i, spacing, shape)
        img = np.asarray(case.flair.dataobj, dtype=np.float32)
        brain = img > 0
        img = (img - img[brain].mean()) / (img[brain].std() + 1e-6) * brain
        pairs.append((img[None].astype(np.float32), np.asarray(case.mask.dataobj, np.uint8)))
    return pairs


def run_variant(pairs, unet: UNetConfig, patch, batch, steps, cl: bool, dtype: torch.dtype) -> dict:
    """Time ``steps`` training steps (after one warm-up step); seconds per phase."""
    torch.manual_seed(0)
    model = UNet3D(unet)
    if cl:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    sampler = _PatchSampler(pairs, patch, 0.5)
    rng = np.random.default_rng(0)
    aug = augmentation(0)
    model.train()
    amp = dtype != torch.float32
    ctx = torch.autocast("cpu", dtype=dtype) if amp else contextlib.nullcontext()
    totals = dict.fromkeys(PHASES, 0.0)
    cpu = 0.0
    losses = []
    for step in range(steps + 1):
        c0 = time.process_time()
        t0 = time.perf_counter()
        items = []
        for _ in range(batch):
            image, mask = sampler.sample(rng)
            items.append(
                {
                    "image": torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32)),
                    "label": torch.as_tensor(np.ascontiguousarray(mask, dtype=np.float32))[None],
                }
            )
        t1 = time.perf_counter()
        items = [aug(it) for it in items]
        x = torch.stack([_plain(it["image"]) for it in items])
        y = torch.stack([_plain(it["label"]).round() for it in items])
        if cl:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            logits = model(x)
        loss = loss_fn(logits.float(), y)  # as in train._train_epoch
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        if step:  # step 0 warms up (allocations, oneDNN kernels)
            marks = (t0, t1, t2, t3, t4, t5)
            for k, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True):
                totals[k] += b - a
            cpu += time.process_time() - c0
            losses.append(float(loss.detach()))
    totals["cpu"] = cpu
    totals["loss"] = float(np.mean(losses))
    return totals


def end_to_end(pairs, unet: UNetConfig, patch, batch, steps, precision: str) -> float:
    """Patches/s of ``train_segmenter`` itself: its second epoch of ``steps`` steps (the
    first warms up), as timed in its history (no validation set)."""
    cfg = TrainConfig(
        patch_size=patch,
        batch_size=batch,
        lr=3e-3,
        max_epochs=2,
        steps_per_epoch=steps,
        precision=precision,  # type: ignore[arg-type]
    )
    with tempfile.TemporaryDirectory() as out:
        res = train_segmenter(pairs, [], unet, cfg, Path(out), device="cpu", progress=False)
    return steps * batch / res.history[1]["seconds"]


def augmentation_costs(pairs, patch, reps: int = 8) -> list[tuple[str, float, float, float]]:
    """(transform, seconds when applied on 1 thread (as ``augmentation`` runs it), the same on
    the process's threads, probability) for each augmentation transform."""
    sampler = _PatchSampler(pairs, patch, 0.5)
    rng = np.random.default_rng(1)
    items = []
    for _ in range(reps):
        image, mask = sampler.sample(rng)
        items.append(
            {
                "image": torch.as_tensor(image.copy()),
                "label": torch.as_tensor(mask[None].astype(np.float32)),
            }
        )
    out = []
    for t in augmentation(0).transforms:
        prob = float(t.prob)
        always = copy.deepcopy(t)
        always.prob = 1.0
        secs = []
        for n in (1, torch.get_num_threads()):
            with torch_threads(n):
                start = time.perf_counter()
                for it in items:
                    always(dict(it))
                secs.append((time.perf_counter() - start) / reps)
        out.append((type(t).__name__, secs[0], secs[1], prob))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, nargs=3, default=(32, 32, 32))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--channels", type=int, nargs="+", default=(8, 16, 32, 64))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="time bf16 autocast even if emulated")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    native = bf16_native()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}, native bf16 {native}"
    )
    pairs = phantoms(args.cases, 2.0, (80, 96, 80))
    unet = UNetConfig(channels=tuple(args.channels))
    patch, batch = tuple(args.patch), args.batch
    print(f"U-Net channels {unet.channels}, patch {patch}, batch {batch}, {args.steps} steps")
    fp32, bf16 = torch.float32, torch.bfloat16
    variants = [("fp32 contiguous", False, fp32), ("fp32 channels-last [fp32]", True, fp32)]
    if native or args.bf16:
        variants += [("bf16 contiguous", False, bf16)]
        precision = "bf16" if args.bf16 and not native else "auto"
        dtype = training_dtype(precision, "cpu")
        variants += [(f"bf16 channels-last [{precision}]", True, dtype)]
    head = f"{'variant':28s} {'patches/s':>9s} {'CPU r':>6s} " + " ".join(
        f"{k + ' ms':>12s}" for k in PHASES
    )
    head += f" {'mean loss':>9s}"
    rows = [
        (name, run_variant(pairs, unet, patch, batch, args.steps, cl, bf))
        for name, cl, bf in variants
    ]
    print()
    print("ms per step; [fp32]/[auto]: train_segmenter's step with that precision;")
    print("CPU r: fp32 contiguous's CPU seconds / the variant's (robust to other load)")
    print(head)
    print("-" * len(head))
    ref = rows[0][1]
    for name, r in rows:
        wall = sum(r[k] for k in PHASES)
        print(
            f"{name:28s} {args.steps * batch / wall:9.2f} {ref['cpu'] / r['cpu']:6.2f} "
            + " ".join(f"{1e3 * r[k] / args.steps:12.1f}" for k in PHASES)
            + f" {r['loss']:9.4f}"
        )
    print()
    print("train_segmenter itself (its 2nd epoch of the same steps), patches/s:")
    for precision in ("fp32", "auto"):
        rate = end_to_end(pairs, unet, patch, batch, args.steps, precision)
        print(f"  precision={precision:5s} {rate:9.2f}")
    print()
    n = torch.get_num_threads()
    print(f"augmentation, ms per patch (train runs it on 1 thread; {n} threads for comparison):")
    print(
        f"{'transform':28s} {'if applied':>13s} {f'({n} threads)':>13s} {'prob':>5s} "
        f"{'expected':>11s} {f'({n} threads)':>11s}"
    )
    total = total_n = 0.0
    for name, secs, secs_n, prob in augmentation_costs(pairs, patch):
        total += secs * prob
        total_n += secs_n * prob
        print(
            f"{name:28s} {1e3 * secs:13.2f} {1e3 * secs_n:13.2f} {prob:5.2f} "
            f"{1e3 * secs * prob:11.2f} {1e3 * secs_n * prob:11.2f}"
        )
    blank = " " * (13 + 1 + 13 + 1 + 5)
    print(f"{'total expected':28s} {blank} {1e3 * total:11.2f} {1e3 * total_n:11.2f}")


if __name__ == "__main__":
    main()
