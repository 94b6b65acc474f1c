"""GPU check: the paper configuration, MC sampling in float16 and a small run, on CUDA.

One prepared script for a machine with a CUDA GPU (under 8 minutes on one recent GPU):

(a) trains the paper's configuration (1 mm phantoms of 160x192x160, the default
    ``UNetConfig``, patches 160x192x32, batch 5, AMP) for ``--steps`` steps with
    ``train_segmenter`` and reports steps/s, patches/s and the peak GPU memory;
(b) runs MC sampling (T = ``--samples``) on one 160x192x160 phantom with the model of (a):
    batched float16 on the GPU vs the float32 CPU path with the same dropout masks
    (max |diff| of the four maps, fraction of voxels whose segmentation differs);
(c) runs a whole small experiment (the demo protocol and training on 12 phantoms,
    2 folds) on the GPU end to end and checks that Table 1 and Table 2 are complete.

It prints one table and ends with ``RESULT gpu_ok <0|1>`` (1: CUDA present, every check
passed and the whole script ran in under 8 minutes). It installs nothing.

Without CUDA it says so in one line, runs (b)'s CPU half on a tiny size (the fast float32
path against the naive reference, same masks), prints ``RESULT gpu_ok 0`` and exits 0.
``--dry-run`` runs all three parts on the CPU at tiny sizes, to test the script itself
(the "GPU" half of (b) is then the CPU's default precision: bf16 where native).

Usage:
    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --dry-run       # tiny, CPU only: checks the script
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lesionuq.config import SamplingConfig, TrainConfig, UNetConfig
from lesionuq.data.phantom import generate_case
from lesionuq.segmentation.sampling import dropout_masks, mc_sample, mc_sample_naive
from lesionuq.segmentation.train import load_segmenter, train_segmenter
from lesionuq.segmentation.unet import UNet3D

MAPS = ("prob", "entropy", "variance", "pcs")
#: Whole-script limit for gpu_ok (seconds).
LIMIT_S = 480.0
#: (b): largest allowed |p_gpu - p_cpu| and fraction of voxels with another segmentation.
MAX_PROB_DIFF = 0.05
MAX_SEG_DIFF = 1e-3


@dataclass
class Row:
    """One line of the table: part, quantity, value, and whether its check passed."""

    part: str
    name: str
    value: str
    ok: bool | None = None  # None: reported only


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode (full GPU check or the CPU dry run)."""

    spacing: float
    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    batch: int
    n_cases: int
    unet: UNetConfig


FULL = Sizes(1.0, (160, 192, 160), (160, 192, 32), 5, 2, UNetConfig())
TINY = Sizes(4.0, (40, 48, 40), (40, 48, 16), 2, 2, UNetConfig(channels=(4, 8, 16)))


def phantom_pairs(sizes: Sizes, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``sizes.n_cases`` phantoms as (z-scored FLAIR (1, X, Y, Z) float32, mask (X, Y, Z))."""
    pairs = []
    for i in range(sizes.n_cases):
        case = generate_case(seed + i, sizes.spacing, sizes.shape)
        img = np.asarray(case.flair.dataobj, dtype=np.float32)
        brain = img > 0
        img = (img - img[brain].mean()) / (img[brain].std() + 1e-6) * brain
        pairs.append((img[None].astype(np.float32), np.asarray(case.mask.dataobj, np.uint8)))
    return pairs


def part_a(
    pairs: list, sizes: Sizes, steps: int, device: str, work: Path
) -> tuple[list[Row], UNet3D]:
    """Train the paper configuration for ``steps`` steps; throughput and peak memory."""
    cfg = TrainConfig(
        patch_size=sizes.patch,
        batch_size=sizes.batch,
        max_epochs=1,
        steps_per_epoch=steps,
        amp=True,
        lr=1e-4,
    )
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train_segmenter(pairs, [], sizes.unet, cfg, work / "a", device, progress=False)
    seconds = time.perf_counter() - t0
    loss = result.history[-1]["loss"]
    rows = [
        Row("a", "train steps (batch x patch)", f"{steps} ({sizes.batch} x {sizes.patch})"),
        Row("a", "train seconds", f"{seconds:.1f}"),
        Row("a", "steps/s", f"{steps / seconds:.2f}"),
        Row("a", "patches/s", f"{steps * sizes.batch / seconds:.2f}"),
        Row("a", "mean loss finite", f"{loss:.4f}", math.isfinite(loss)),
    ]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append(Row("a", "peak GPU memory allocated (GiB)", f"{peak:.2f}"))
    return rows, load_segmenter(result.checkpoint, "cpu")


def part_b(model: UNet3D, image: np.ndarray, samples: int, device: str, label: str) -> list[Row]:
    """MC sampling on ``device`` (default precision) vs the fp32 CPU path, same masks."""
    masks = dropout_masks(model, samples, seed=0)
    cfg = SamplingConfig(n_samples=samples, batch_size=4)
    t0 = time.perf_counter()
    ref = mc_sample(copy.deepcopy(model), image, replace(cfg, precision="fp32"), "cpu", masks=masks)
    t_cpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = mc_sample(copy.deepcopy(model), image, cfg, device, masks=masks)
    if device == "cuda":
        torch.cuda.synchronize()
    t_dev = time.perf_counter() - t0
    return _compare_rows("b", ref, got, f"{label} vs fp32 CPU", t_cpu, t_dev, samples)


def _compare_rows(part, ref, got, what, t_ref, t_got, samples) -> list[Row]:
    diff = {k: float(np.abs(getattr(got, k) - getattr(ref, k)).max()) for k in MAPS}
    changed = (got.prob > 0.5) != (ref.prob > 0.5)
    seg = float(changed.mean())
    far = np.abs(ref.prob - 0.5) > 0.05
    seg_far, near = float((changed & far).mean()), float((~far).mean())
    return [
        Row(part, f"T = {samples}, volume", str(tuple(ref.prob.shape))),
        Row(part, "seconds reference / compared", f"{t_ref:.1f} / {t_got:.1f}"),
        Row(part, f"max |diff| prob ({what})", f"{diff['prob']:.2e}", diff["prob"] < MAX_PROB_DIFF),
        Row(part, "max |diff| entropy, variance, pcs", ", ".join(
            f"{diff[k]:.1e}" for k in MAPS[1:])),
        Row(part, "voxels with another segmentation", f"{seg:.2e}", seg < MAX_SEG_DIFF),
        Row(part, "  of those, voxels with |p_ref - 0.5| > 0.05", f"{seg_far:.2e}"),
        Row(part, "voxels with |p_ref - 0.5| <= 0.05", f"{near:.2e}"),
        Row(part, "lesion voxels (reference / compared)",
            f"{int((ref.prob > 0.5).sum())} / {int((got.prob > 0.5).sum())}"),
    ]  # fmt: skip


def part_b_cpu_only() -> list[Row]:
    """Without CUDA: the fp32 CPU half of (b), the fast path vs the naive reference."""
    torch.manual_seed(0)
    model = UNet3D(TINY.unet).eval()
    image = np.random.default_rng(0).normal(size=(1, 32, 32, 32)).astype(np.float32)
    cfg = SamplingConfig(n_samples=4, precision="fp32")
    masks = dropout_masks(model, 4, seed=0)
    t0 = time.perf_counter()
    ref = mc_sample_naive(model, image, cfg, "cpu", masks=masks)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = mc_sample(model, image, cfg, "cpu", masks=masks)
    t_got = time.perf_counter() - t0
    return _compare_rows("b-cpu", ref, got, "fp32 fast vs naive", t_ref, t_got, 4)


def part_c(device: str, work: Path, dry_run: bool) -> list[Row]:
    """A whole small experiment (demo protocol) on ``device``, end to end."""
    from lesionuq.config import GCNNConfig, PhantomConfig, PreprocessConfig
    from lesionuq.demo import bundled_config, run_demo

    cfg = bundled_config("demo")
    cfg = replace(
        cfg,
        device=device,
        folds=2,
        phantom=replace(cfg.phantom, n_cases=12),
    )
    if dry_run:
        cfg = replace(
            cfg,
            preprocess=PreprocessConfig(spacing=(4.0, 4.0, 4.0), shape=(40, 48, 40)),
            phantom=PhantomConfig(n_cases=6, seed=5, spacing=4.0),
            unet=UNetConfig(channels=(4, 8)),
            train=TrainConfig(patch_size=(40, 48, 16), batch_size=2, lr=1e-2, max_epochs=2,
                              steps_per_epoch=2),
            sampling=SamplingConfig(n_samples=3, batch_size=3),
            gcnn=GCNNConfig(epochs=2),
        )  # fmt: skip
    t0 = time.perf_counter()
    result = run_demo(work / "c", cfg, progress=False, workers=None, full=True)
    seconds = time.perf_counter() - t0
    t1, t2 = result.table1, result.table2
    t1_ok = len(t1) == cfg.folds and bool((t1["dice"] > 0).all())
    t2_ok = set(t2["method"]) == set(cfg.methods)
    stages = ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items())
    return [
        Row("c", "experiment seconds", f"{seconds:.1f}"),
        Row("c", "stage seconds", stages),
        Row(
            "c", "table1: folds, mean Dice (each > 0)", f"{len(t1)}, {t1['dice'].mean():.3f}", t1_ok
        ),
        Row(
            "c",
            "table2: methods (all), with finite AUC",
            f"{len(t2)}, {int(np.isfinite(t2['auc']).sum())}",
            t2_ok,
        ),
    ]


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"{'part':6s} {'quantity':{width}s}  {'value':30s} check")
    print("-" * (width + 46))
    for r in rows:
        check = "" if r.ok is None else ("ok" if r.ok else "FAIL")
        print(f"{r.part:6s} {r.name:{width}s}  {r.value:30s} {check}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps in (a)")
    ap.add_argument("--samples", type=int, default=20, help="T in (b)")
    ap.add_argument("--dry-run", action="store_true", help="all parts on CPU, tiny sizes")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = ap.parse_args()

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CPU ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    if not cuda and not args.dry_run:
        print(
            "no CUDA device: only (b)'s CPU half ran, on a tiny size; nothing was checked on a GPU."
        )
        rows = part_b_cpu_only()
        print_table(rows)
        print("RESULT gpu_ok 0")
        return 0
    if cuda:
        print(f"GPU {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    device = "cuda" if cuda and not args.dry_run else "cpu"
    sizes = TINY if args.dry_run else FULL
    steps = min(args.steps, 3) if args.dry_run else args.steps
    samples = min(args.samples, 3) if args.dry_run else args.samples
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pairs = phantom_pairs(sizes)
        rows.append(Row("a", f"phantoms {sizes.n_cases} x {sizes.shape} seconds",
                        f"{time.perf_counter() - t0:.1f}"))  # fmt: skip
        rows_a, model = part_a(pairs, sizes, steps, device, work)
        rows += rows_a
        label = "fp16 GPU" if device == "cuda" else "CPU default precision"
        rows += part_b(model, pairs[0][0], samples, device, label)
        rows += part_c(device, work, args.dry_run)
    total = time.perf_counter() - start
    rows.append(Row("all", "total seconds", f"{total:.1f}", total < LIMIT_S))
    print_table(rows)
    ok = cuda and not args.dry_run and all(r.ok is not False for r in rows)
    print(f"RESULT gpu_ok {int(ok)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
