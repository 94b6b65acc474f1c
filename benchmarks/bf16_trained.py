"""bf16 vs fp32 MC sampling on TRAINED U-Nets of a finished run (same dropout masks).

For each fold's test cases: max |diff| of the mean foreground probability, the fraction
of voxels whose segmentation differs, and the lesion-level AUC of the voxel-mean
baselines recomputed from both (via the run's own graph stage is not repeated here: the
lesion count and Dice against the ground truth are compared instead).

Usage:
    python benchmarks/bf16_trained.py --run demo/run [--folds 0 1] [--cases 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from lesionuq.evaluation.metrics import dice
from lesionuq.lesions.components import label_lesions
from lesionuq.pipeline.stages import load_preprocessed
from lesionuq.rundir import RunDir
from lesionuq.segmentation.sampling import bf16_native, mc_sample
from lesionuq.segmentation.train import load_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="*", default=None)
    parser.add_argument("--cases", type=int, default=2, help="test cases per fold")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rd = RunDir(args.run)
    cfg, _, folds = rd.read_plan()
    print(f"bf16 native on this CPU: {bf16_native()}")
    print(
        f"{'fold':>4} {'case':>10} {'fp32 s':>7} {'bf16 s':>7} {'max|dp|':>9} "
        f"{'seg diff %':>10} {'dice fp32':>9} {'dice bf16':>9} {'lesions':>9}"
    )
    rows = []
    for split in folds:
        if args.folds is not None and split.fold not in args.folds:
            continue
        model = load_segmenter(rd.fold(split.fold) / "segmenter.pt", device="cpu")
        for case_id in split.cases("test")[: args.cases]:
            image, mask, _ = load_preprocessed(args.run, case_id, cfg.sequences)
            out = {}
            for precision in ("fp32", "bf16"):
                scfg = dataclasses.replace(cfg.sampling, precision=precision)
                t0 = time.perf_counter()
                out[precision] = (mc_sample(model, image, scfg, "cpu"), time.perf_counter() - t0)
            (a, ta), (b, tb) = out["fp32"], out["bf16"]
            dp = float(np.abs(a.prob - b.prob).max())
            seg_diff = float((a.seg != b.seg).mean())
            da = dice(a.seg, mask) if mask is not None else float("nan")
            db = dice(b.seg, mask) if mask is not None else float("nan")
            na, nb = label_lesions(a.seg)[1], label_lesions(b.seg)[1]
            rows.append((seg_diff, abs(da - db)))
            print(
                f"{split.fold:>4} {case_id:>10} {ta:7.1f} {tb:7.1f} {dp:9.2e} "
                f"{100 * seg_diff:10.4f} {da:9.4f} {db:9.4f} {na:>4}/{nb:<4}"
            )
    seg = np.array([r[0] for r in rows])
    print(f"RESULT bf16_seg_diff_percent_max {100 * seg.max():.4f}")


if __name__ == "__main__":
    main()
