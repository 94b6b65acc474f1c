"""MC-dropout sampling speed: the naive reference vs ``mc_sample``, same masks, same run.

One volume (default 160x192x160, one sequence), T = 20 samples, the default UNetConfig
(random weights, seeded). Both implementations get identical dropout masks
(``dropout_masks``), so their maps must agree to float32 rounding.

- naive: ``mc_sample_naive``: T separate batch-1 passes of the model's own forward, eval
  normalisation, inference mode, the dropout output multiplied by the mask.
- ours: ``mc_sample``: shared pre-dropout part, mask-linear convolutions, kept-channel
  slicing, composed up-convolutions, channels-last, fused norms (see sampling.py).
- ours bf16: ``mc_sample`` with ``precision="bf16"`` (run where the CPU has native bf16
  units, or with --bf16): its maps are compared with the fp32 naive ones (max |diff|) and
  the fraction of voxels whose segmentation (p > 0.5) differs is printed.
- optional (--ablate): the naive reference with the model in channels-last 3D layout
  (the cheapest trick a user could apply alone).

The machine's practical convolution peak is measured in the same run: one large oneDNN
``conv3d`` (64 -> 64 channels, 3x3x3, 48^3 voxels, channels-last), fp32 and bf16 (where
native); every method's GFLOP/s is printed as a fraction of the peak of its dtype. A
per-layer profile (``--profile-samples`` samples of ``mc_sample``, every convolution
timed) shows which convolutions run below the peak and how much time goes to the rest
(normalisation, activation, channel slicing, copies).

Columns: wall seconds, CPU seconds (all threads), peak RSS increase during the call
(polled from /proc/self/statm), multiply-accumulates (MACs; convolutions only, counted
with hooks / wrappers), achieved GFLOP/s (2 x executed MACs / wall seconds), max
|difference| of the four maps vs naive. "ratio" is naive wall / method wall, "CPU r" the
same in CPU seconds (steadier on a shared machine).

Usage:
    python benchmarks/mc_sampling.py                  # full size, T=20
    python benchmarks/mc_sampling.py --shape 80 96 80 --samples 8 --ablate
    python benchmarks/mc_sampling.py --shape 80 96 80 --repeat 2   # min of 2 timings
"""

from __future__ import annotations

import argparse
import collections
import math
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
from lesionuq.segmentation.sampling import bf16_native, dropout_masks, mc_sample, mc_sample_naive
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
        small_cfg = SamplingConfig(n_samples=int(masks[0].shape[0]), precision="fp32")
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


def timed(fn, repeat: int = 1):
    """Run ``fn`` ``repeat`` times; the fastest run's (output, seconds, CPU s, peak GiB)."""
    best = None
    for _ in range(repeat):
        with PeakRSS() as mem:
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            seconds, cpu = time.perf_counter() - t, time.process_time() - c
        if best is None or seconds < best[1]:
            best = (out, seconds, cpu, mem.gib)
    return best


def conv_peak(dtype: torch.dtype, channels: int = 64, size: int = 48, reps: int = 3) -> float:
    """GFLOP/s of one large oneDNN 3x3x3 conv3d (channels-last), best of ``reps``."""
    cl = torch.channels_last_3d
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(1, channels, size, size, size, generator=g)
        .to(dtype)
        .contiguous(memory_format=cl)
    )
    w = torch.randn(channels, channels, 3, 3, 3, generator=g).to(dtype).contiguous(memory_format=cl)
    flops = 2.0 * channels * channels * 27 * size**3
    best = math.inf
    with torch.inference_mode():
        torch.ops.aten.mkldnn_convolution(x, w, None, [1] * 3, [1] * 3, [1] * 3, 1)  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            torch.ops.aten.mkldnn_convolution(x, w, None, [1] * 3, [1] * 3, [1] * 3, 1)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def layer_profile(model, image, cfg, masks, peak: float) -> list[str]:
    """Time every convolution of ``mc_sample`` (grouped by shape) and the rest.

    Returns the printed lines: per group calls, seconds, GFLOP/s, fraction of ``peak``.
    """
    groups: dict[tuple, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0, 0])
    conv3d, convt = sampling._conv3d, F.conv_transpose3d

    def record(key, flops, c_in, c_out, fn):
        t = time.perf_counter()
        out = fn()
        g = groups[key]
        g[0] += 1
        g[1] += time.perf_counter() - t
        g[2] += flops
        g[3] += int(c_in)
        g[4] += int(c_out)
        return out

    def timed_conv(x, w, b=None, padding=0):
        n = x.shape[2] * x.shape[3] * x.shape[4]
        key = ("conv", int(w.shape[-1]), tuple(x.shape[2:]))
        flops = 2.0 * n * w.shape[0] * w.shape[1] * int(np.prod(w.shape[2:]))
        return record(key, flops, w.shape[1], w.shape[0], lambda: conv3d(x, w, b, padding))

    def timed_convt(x, w, *args, **kw):
        key = ("up-conv", int(w.shape[-1]), tuple(x.shape[2:]))
        flops = 2.0 * x.numel() * w.shape[1] * int(np.prod(w.shape[2:]))
        return record(key, flops, w.shape[0], w.shape[1], lambda: convt(x, w, *args, **kw))

    sampling._conv3d, F.conv_transpose3d = timed_conv, timed_convt
    try:
        mc_sample(model, image, cfg, "cpu", masks=masks)  # warm-up (weights cast, pages)
        groups.clear()
        t = time.perf_counter()
        mc_sample(model, image, cfg, "cpu", masks=masks)
        total = time.perf_counter() - t
    finally:
        sampling._conv3d, F.conv_transpose3d = conv3d, convt
    lines = [
        f"{'layer (kind kernel, input grid, mean C_in -> C_out)':52s} {'calls':>5s} "
        f"{'seconds':>8s} {'share':>6s} {'GFLOP/s':>8s} {'of peak':>7s}"
    ]
    conv_s = 0.0
    for key, (calls, secs, flops, cin, cout) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        conv_s += secs
        grid = "x".join(map(str, key[2]))
        name = f"{key[0]} {key[1]}^3, {grid}, {cin / calls:.0f} -> {cout / calls:.0f}"
        lines.append(
            f"{name:52s} {calls:5d} {secs:8.2f} {secs / total:6.1%} {flops / secs / 1e9:8.1f} "
            f"{flops / secs / 1e9 / peak:7.1%}"
        )
    rest = total - conv_s
    lines.append(
        f"{'rest (norm, LeakyReLU, slicing, copies, moments)':52s} {'':5s} {rest:8.2f} "
        f"{rest / total:6.1%}"
    )
    lines.append(f"{'total':52s} {'':5s} {total:8.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(160, 192, 160))
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ablate", action="store_true", help="also time naive + channels-last")
    ap.add_argument("--bf16", action="store_true", help="time the bf16 path even if emulated")
    ap.add_argument("--repeat", type=int, default=1, help="time the fast paths N times (min)")
    ap.add_argument("--profile-samples", type=int, default=4, help="T of the layer profile")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    model = UNet3D(UNetConfig()).eval()
    image = make_image(tuple(args.shape), args.seed)
    cfg = SamplingConfig(n_samples=args.samples, seed=args.seed, precision="fp32")
    native = bf16_native()
    run_bf16 = args.device == "cpu" and (native or args.bf16)
    masks = dropout_masks(model, args.samples, args.seed)
    t = args.samples

    print(f"volume {tuple(args.shape)}, T={t}, UNetConfig() channels {UNetConfig().channels}")
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"cpu {platform.processor() or platform.machine()}, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}, native bf16 (AVX512-BF16/AMX) {native}"
    )
    peak = {"fp32": conv_peak(torch.float32)}
    if run_bf16:
        peak["bf16"] = conv_peak(torch.bfloat16)
    print(
        "conv3d peak (oneDNN, 64->64, 3^3, 48^3, channels-last): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items())
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
        lambda: mc_sample(model, image, cfg, args.device, masks=masks), args.repeat
    )
    rows.append(("ours (mc_sample fp32)", t_ours, c_ours, m_ours, macs_ours, ours))
    if run_bf16:
        cfg16 = SamplingConfig(n_samples=t, seed=args.seed, precision="bf16")
        bf, t_bf, c_bf, m_bf = timed(
            lambda: mc_sample(model, image, cfg16, args.device, masks=masks), args.repeat
        )
        rows.append(("ours bf16", t_bf, c_bf, m_bf, macs_ours, bf))

    head = f"{'method':28s} {'seconds':>9s} {'CPU s':>8s} {'peak GiB':>9s} {'ratio':>6s} "
    head += f"{'CPU r':>6s} "
    head += f"{'GMACs':>9s} {'GFLOP/s':>8s} {'of peak':>7s} {'max|diff|':>10s} {'seg diff':>9s}"
    print()
    print(head)
    print("-" * len(head))
    for name, secs, cpu, mem, macs, maps in rows:
        diff = max(float(np.abs(getattr(maps, k) - getattr(ref, k)).max()) for k in MAPS)
        seg = float(((maps.prob > 0.5) != (ref.prob > 0.5)).mean())
        gflops = 2 * macs / secs / 1e9
        frac = gflops / peak["bf16" if "bf16" in name else "fp32"]
        print(
            f"{name:28s} {secs:9.2f} {cpu:8.1f} {mem:9.2f} {t_ref / secs:6.2f} {c_ref / cpu:6.2f} "
            f"{macs / 1e9:9.1f} "
            f"{gflops:8.1f} {frac:7.1%} {diff:10.2e} {seg:9.2e}"
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
    if run_bf16:
        print(f"RESULT bf16_vs_fp32_fast {t_ours / t_bf:.2f} (CPU seconds {c_ours / c_bf:.2f})")
        print(f"RESULT bf16_seg_diff {float(((bf.prob > 0.5) != (ours.prob > 0.5)).mean()):.2e}")
    if args.device == "cpu" and args.profile_samples > 0:
        tp = args.profile_samples
        sub = [m[:tp] for m in masks]
        for prec in ["fp32", "bf16"] if run_bf16 else ["fp32"]:
            pcfg = SamplingConfig(n_samples=tp, seed=args.seed, precision=prec)
            print()
            print(f"per-layer profile, {prec}, T={tp} (peak {peak[prec]:.1f} GFLOP/s):")
            print("\n".join(layer_profile(model, image, pcfg, sub, peak[prec])))


if __name__ == "__main__":
    main()
