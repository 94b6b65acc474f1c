"""Phantom generator benchmark: speed at 1 mm and 2 mm, and what the data set contains.

Measures, in one run:

- the one-off template preparation (nilearn import, MNI152 maps, distance maps);
- seconds per case at 1 mm and at 2 mm (generation, then writing the two NIfTI files);
- a reference for the 2 mm speed: generating at 1 mm and downsampling to 2 mm (what the
  generator would cost without doing its heavy work at the output spacing), and the ratio;
- over N cases at 2 mm (default 20, the demo's size): lesion count distribution, lesion
  size distribution (drawn mm3, rasterised voxels), lesion/WM contrast (drawn signal ratio
  and measured image ratio), mimic counts.

Usage: ``python benchmarks/phantom.py [--cases 20] [--cases-1mm 3] [--seed 0]``.
Ends with ``RESULT phantom_seconds_per_case_1mm <s>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lesionuq.data.phantom import case_seed, generate_case, load_template
from lesionuq.io import save_nifti


def _timed_case(seed: int, spacing: float, out: Path) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    case = generate_case(seed, spacing)
    t1 = time.perf_counter()
    save_nifti(out / "flair.nii.gz", case.flair.dataobj, case.flair.affine, dtype=np.int16)
    save_nifti(out / "mask.nii.gz", case.mask.dataobj, case.mask.affine, dtype=np.uint8)
    return t1 - t0, time.perf_counter() - t1, case


def _pct(values, qs=(0, 10, 25, 50, 75, 90, 100)) -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return "(none)"
    return "  ".join(f"p{q}={np.percentile(v, q):.4g}" for q in qs)


def _measured_ratios(case) -> tuple[float, list[float]]:
    """Image lesion/WM ratio: per case (all mask voxels) and per visible lesion."""
    info = case.info
    flair = np.asarray(case.flair.dataobj, dtype=np.float64)
    normal = (info["lesion_fraction"] < 0.01) & (info["mimic_fraction"] < 0.01)
    wm = flair[(info["tissue"]["wm"] > 0.9) & normal].mean()
    labels = info["lesion_labels"]
    n = len(info["lesions"])
    if n == 0 or not labels.any():
        return float("nan"), []
    sums = ndi.sum_labels(flair, labels, np.arange(1, n + 1))
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    per = [s / c / wm for s, c in zip(sums, counts, strict=True) if c > 0]
    return float(flair[labels > 0].mean() / wm), per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20, help="cases at 2 mm for statistics")
    parser.add_argument("--cases-1mm", type=int, default=3, help="cases timed at 1 mm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    load_template()
    t_template = time.perf_counter() - t0
    generate_case(case_seed(args.seed, 999), 2.0)  # warm the 2 mm tissue-map cache
    generate_case(case_seed(args.seed, 998), 1.0)  # and the 1 mm one

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen1, io1, ref, vox1, mm3_1 = [], [], [], [], []
        for i in range(args.cases_1mm):
            g, w, case = _timed_case(case_seed(args.seed, i), 1.0, tmp / f"r1_{i}")
            gen1.append(g)
            io1.append(w)
            vox1 += [les["n_voxels"] for les in case.info["lesions"]]
            mm3_1 += [les["volume_mm3"] for les in case.info["lesions"]]
            t0 = time.perf_counter()  # reference: downsample the 1 mm case to 2 mm
            flair = ndi.zoom(np.asarray(case.flair.dataobj, np.float32), 0.5, order=1)
            _ = ndi.zoom(np.asarray(case.mask.dataobj), 0.5, order=0), flair
            ref.append(g + time.perf_counter() - t0)

        gen2, io2, cases = [], [], []
        for i in range(args.cases):
            g, w, case = _timed_case(case_seed(args.seed, i), 2.0, tmp / f"r2_{i}")
            gen2.append(g)
            io2.append(w)
            info = case.info
            cases.append(
                {
                    "lesions": info["lesions"],
                    "mimics": info["mimics"],
                    "mask": int(np.asarray(case.mask.dataobj).sum()),
                    "ratios": _measured_ratios(case),
                }
            )
            del case

    s1, s2 = float(np.mean(gen1)), float(np.mean(gen2))
    rows.append(("template preparation (once per process)", f"{t_template:.2f} s", ""))
    rows.append(("generate, 1 mm (197x233x189)", f"{s1:.2f} s/case", f"n={len(gen1)}"))
    rows.append(("write NIfTI, 1 mm", f"{np.mean(io1):.2f} s/case", ""))
    rows.append(("generate, 2 mm (99x117x95)", f"{s2:.2f} s/case", f"n={len(gen2)}"))
    rows.append(("write NIfTI, 2 mm", f"{np.mean(io2):.2f} s/case", ""))
    r = float(np.mean(ref))
    rows.append(("reference: 1 mm + downsample to 2 mm", f"{r:.2f} s/case", f"ratio {r / s2:.1f}x"))
    width = max(len(a) for a, _, _ in rows)
    print(f"{'timing':<{width}}  {'value':>12}  note")
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>12}  {c}")

    counts = [len(c["lesions"]) for c in cases]
    lesions = [les for c in cases for les in c["lesions"]]
    vols = [les["volume_mm3"] for les in lesions]
    vox2 = [les["n_voxels"] for les in lesions]
    drawn = [les["ratio"] for les in lesions]
    per_case = [c["ratios"][0] for c in cases if np.isfinite(c["ratios"][0])]
    per_lesion = [x for c in cases for x in c["ratios"][1]]
    kinds = Counter(les["kind"] for les in lesions)
    print(f"\nover {len(cases)} cases at 2 mm (seed {args.seed})")
    print(f"lesions per case       {_pct(counts)}  mean={np.mean(counts):.1f}")
    print(f"  counts               {sorted(counts)}")
    print(
        "  placement            "
        + "  ".join(f"{k}={v / len(lesions):.2f}" for k, v in kinds.items())
    )
    print(f"  confluent (>1 blob)  {sum(les['n_blobs'] > 1 for les in lesions)} of {len(lesions)}")
    print(f"lesion volume mm3      {_pct(vols)}")
    print(f"  < 1000 mm3           {np.mean(np.array(vols) < 1000):.3f}")
    print(f"lesion voxels at 2 mm  {_pct(vox2)}  (0 voxels: {np.mean(np.array(vox2) == 0):.2f})")
    below = np.mean(np.array(vox1) < 1000)
    print(f"lesion voxels at 1 mm  {_pct(vox1)}  (n={len(vox1)}, < 1000: {below:.3f})")
    print(f"mask voxels per case   {_pct([c['mask'] for c in cases])}")
    print(f"lesion/WM drawn ratio  {_pct(drawn)}")
    print(f"lesion/WM image ratio  per lesion: {_pct(per_lesion)}")
    print(f"                       per case (all mask voxels): {_pct(per_case)}")
    mk = Counter(m["kind"] for c in cases for m in c["mimics"] if m["kind"] != "rim")
    vis = Counter(m["kind"] for c in cases for m in c["mimics"] if m.get("n_voxels", 0) > 0)
    mvox = Counter()
    for c in cases:
        for m in c["mimics"]:
            mvox[m["kind"]] += m.get("n_voxels", 0)
    print("mimics (not in the ground truth), per case: drawn / with >= 1 voxel > 0.5 / voxels")
    for k in sorted(mk):
        n = len(cases)
        print(f"  {k:<10} {mk[k] / n:5.2f} / {vis[k] / n:5.2f} / {mvox[k] / n:6.1f}")
    print("  rim        1 per case (continuous periventricular band)")
    print(f"  lesion voxels per case for comparison: {np.mean([c['mask'] for c in cases]):.1f}")
    print(f"RESULT phantom_seconds_per_case_1mm {s1:.3f}")


if __name__ == "__main__":
    main()
