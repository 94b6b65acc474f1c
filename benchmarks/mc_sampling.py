"""MC-dropout sampling speed: the naive reference vs ``mc_sample``, same masks, same run.

One volume (default 160x192x160, one sequence), T = 20 samples, the default UNetConfig
(random weights, seeded). Both implementations get identical dropout masks
(``dropout_masks``), so their maps must agree to float32 rounding.

- naive: ``mc_sample_naive``: T separate batch-1 passes of the model's own forward, eval
  normalisation, inference mode, the dropout output multiplied by the mask.
- ours: ``mc_sample``: shared pre-dropout part, mask-linear convolutions, kept-channel
  slicing, composed up-convolutions, channels-last, fused norms (see sampling.py).
- optional (--ablate): the naive reference with the model in channels-last 3D layout
  (the cheapest trick a user could apply alone).

Columns: wall seconds, CPU seconds (all threads), peak RSS increase during the call
(polled from /proc/self/statm), multiply-accumulates (MACs; convolutions only, counted
with hooks / wrappers), achieved GFLOP/s (2 x executed MACs / wall seconds), max
|difference| of the four maps vs naive.

Usage:
    python benchmarks/mc_sampling.py                  # full size, T=20
    python benchmarks/mc_sampling.py --shape 80 96 80 --samples 8 --ablate
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lesionuq.config import SamplingConfig, UNetConfig
from lesionuq.segmentation import sampling
from lesionuq.segmentation.sampling import dropout_masks, mc_sample, mc_sample_naive
from lesionuq.segmentation.unet import UNet3D

MAPS = ("prob", "entropy", "variance", "pcs")


class PeakRSS:
    """Peak resident memory above the level at entry, polled every 5 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2**30


def count_grid(shape: tuple[int, ...], divisor: int) -> tuple[tuple[int, ...], float]:
    """Grid to count MACs on, and the voxel ratio to scale counts back (exact: counts are
    linear in the voxel count). A quarter per axis when that stays a multiple of 2x the
    divisor (>= 2 voxels at the bottleneck), else the shape itself."""
    quarter = tuple(s // 4 for s in shape)
    if all(s % 4 == 0 and q % (2 * divisor) == 0 for s, q in zip(shape, quarter, strict=True)):
        return quarter, 64.0
    return tuple(shape), 1.0


def conv_macs_per_pass(model: UNet3D, image: np.ndarray) -> int:
    """MACs of the convolutions of one plain forward pass (hooks on Conv3d/ConvTranspose3d)."""
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = int(np.prod(m.kernel_size))
        if isinstance(m, nn.ConvTranspose3d):
            total += inp[0].numel() * m.out_channels * k // m.groups
        else:
            total += out.numel() * (m.in_channels // m.groups) * k

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    small, scale = count_grid(image.shape[1:], model.divisor)
    with torch.inference_mode():
        model.eval()(torch.zeros(1, image.shape[0], *small))
    for h in hs:
        h.remove()
    return round(total * scale)


def fast_macs(model: UNet3D, image: np.ndarray, masks: list[torch.Tensor]) -> int:
    """MACs executed by mc_sample with these masks (convolution wrappers, exact count).

    Counted on a grid 4x smaller per axis and scaled: every count is linear in voxels.
    """
    total = 0
    conv3d, convt = sampling._conv3d, F.conv_transpose3d

    def count_conv(x, w, b=None, padding=0):
        nonlocal total
        out = conv3d(x, w, b, padding)
        total += out.numel() * w.shape[1] * int(np.prod(w.shape[2:]))
        return out

    def count_convt(x, w, *args, **kw):
        nonlocal total
        total += x.numel() * w.shape[1] * int(np.prod(w.shape[2:]))
        return convt(x, w, *args, **kw)

    small, scale = count_grid(image.shape[1:], model.divisor)
    sampling._conv3d, F.conv_transpose3d = count_conv, count_convt
    try:
        small_image = np.zeros((image.shape[0], *small), np.float32)
        small_cfg = SamplingConfig(n_samples=int(masks[0].shape[0]))
        mc_sample(model, small_image, small_cfg, "cpu", masks=masks)
    finally:
        sampling._conv3d, F.conv_transpose3d = conv3d, convt
    return round(total * scale)


def make_image(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth random 'brain' with bright blobs, z-scored, (1, X, Y, Z) float32."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    img = np.exp(-2 * (grid**2).sum(0)) + 0.1 * rng.standard_normal(shape)
    for _ in range(20):
        c = rng.uniform(-0.6, 0.6, 3)
        img += np.exp(-((grid - c[:, None, None, None]) ** 2).sum(0) / 0.002)
    img = (img - img.mean()) / img.std()
    return img[None].astype(np.float32)


def timed(fn):
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    return out, seconds, cpu, mem.gib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(160, 192, 160))
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ablate", action="store_true", help="also time naive + channels-last")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    model = UNet3D(UNetConfig()).eval()
    image = make_image(tuple(args.shape), args.seed)
    cfg = SamplingConfig(n_samples=args.samples, seed=args.seed)
    masks = dropout_masks(model, args.samples, args.seed)
    t = args.samples

    print(f"volume {tuple(args.shape)}, T={t}, UNetConfig() channels {UNetConfig().channels}")
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"cpu {platform.processor() or platform.machine()}, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}"
    )
    macs_pass = conv_macs_per_pass(model, image)
    macs_ours = fast_macs(model, image, masks) if args.device == "cpu" else float("nan")

    rows = []
    ref, t_ref, c_ref, m_ref = timed(lambda: mc_sample_naive(model, image, cfg, args.device, masks))
    rows.append(("naive (batch 1, recompute)", t_ref, c_ref, m_ref, macs_pass * t, ref))
    if args.ablate:
        cl = UNet3D(UNetConfig()).eval()
        cl.load_state_dict(model.state_dict())
        cl = cl.to(memory_format=torch.channels_last_3d)
        out, secs, cpu, mem = timed(lambda: mc_sample_naive(cl, image, cfg, args.device, masks))
        rows.append(("naive + channels_last_3d", secs, cpu, mem, macs_pass * t, out))
    ours, t_ours, c_ours, m_ours = timed(
        lambda: mc_sample(model, image, cfg, args.device, masks=masks)
    )
    rows.append(("ours (mc_sample)", t_ours, c_ours, m_ours, macs_ours, ours))

    head = f"{'method':28s} {'seconds':>9s} {'CPU s':>8s} {'peak GiB':>9s} {'ratio':>6s} "
    head += f"{'GMACs':>9s} {'GFLOP/s':>8s} {'max|diff|':>10s}"
    print()
    print(head)
    print("-" * len(head))
    for name, secs, cpu, mem, macs, maps in rows:
        diff = max(float(np.abs(getattr(maps, k) - getattr(ref, k)).max()) for k in MAPS)
        print(
            f"{name:28s} {secs:9.2f} {cpu:8.1f} {mem:9.2f} {t_ref / secs:6.2f} {macs / 1e9:9.1f} "
            f"{2 * macs / secs / 1e9:8.1f} {diff:10.2e}"
        )
    print()
    print(f"MACs per naive pass (convolutions): {macs_pass / 1e9:.2f} G")
    fewer = macs_pass * t / macs_ours
    print(
        f"MACs executed by ours for all {t} samples: {macs_ours / 1e9:.2f} G ({fewer:.2f}x fewer)"
    )
    print(
        "max |diff| per map: "
        + ", ".join(
            f"{k} {float(np.abs(getattr(ours, k) - getattr(ref, k)).max()):.1e}" for k in MAPS
        )
    )
    print(f"RESULT mc_speedup {t_ref / t_ours:.2f}")


if __name__ == "__main__":
    main()
