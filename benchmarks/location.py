"""Lesion location on phantom scans: registration comparison and confusion matrix (issue 30).

Each phantom case records the kind each lesion was drawn as (periventricular,
juxtacortical, deep, infratentorial: ``info["lesions"][k]["kind"]``). The true lesions
(``info["lesion_labels"]``, every lesion rasterised to >= 1 voxel: the lesions a perfect
segmenter finds, i.e. the true positives) are classified through the registration of the
FLAIR to the MNI152 template, and the class is compared with the drawn kind.

Each scan is registered twice: as drawn (the phantom's anatomy is already near the template,
up to its random +-4 deg, +-5 % and 2.5 mm deformation) and deliberately misaligned: its
affine moved by a known rigid transform (rotation 12 deg about z and 6 deg about x about the
brain centre, shift (10, -15, 8) mm), so the registration must undo it. The misaligned
scan's MNI centroids are compared with the aligned scan's by the same method
(``mni_shift_mm``, mean distance: how well the known rotation and shift are undone; SimpleITK
only).

Registrations compared: SimpleITK (lesionuq's, rigid + affine, optional B-spline) and dipy
(affine by mutual information, then SyN with cross-correlation), on the same 2 mm images.

Run: ``PYTHONPATH=src python benchmarks/location.py [--dipy] [--bspline] [--seeds 1005 1009]``
(dipy is not a lesionuq dependency: ``pip install dipy`` for ``--dipy``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lesionuq.data.phantom import generate_case
from lesionuq.location.atlas import flair_like, load_regions
from lesionuq.location.classify import (
    classify_from_maps,
    classify_lesions,
    region_coverage,
    scan_distances,
)
from lesionuq.location.register import register_to_template

KINDS = ("periventricular", "juxtacortical", "infratentorial", "deep")
CACHE = Path("/tmp/lesionuq_location_cache")


def misalign(affine: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``affine`` moved by the known rigid transform (12 deg z, 6 deg x, (10, -15, 8) mm)."""

    def rot(axis: int, deg: float) -> np.ndarray:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    m = np.eye(4)
    m[:3, :3] = rot(2, 12.0) @ rot(0, 6.0)
    m[:3, 3] = centre - m[:3, :3] @ centre + np.array([10.0, -15.0, 8.0])
    return m @ affine


def load_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """FLAIR (X, Y, Z), affine, lesion labels (X, Y, Z) and drawn kinds (cached in /tmp)."""
    path = CACHE / f"{seed}.npz"
    if not path.exists():
        case = generate_case(seed, spacing=1.0)
        CACHE.mkdir(parents=True, exist_ok=True)
        kinds = [item["kind"] for item in case.info["lesions"]]
        np.savez_compressed(
            path,
            flair=np.asarray(case.flair.dataobj),
            affine=case.flair.affine,
            labels=case.info["lesion_labels"],
            kinds=np.array(kinds),
        )
    data = np.load(path)
    return data["flair"].astype(np.float32), data["affine"], data["labels"], list(data["kinds"])


def dense_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 1..N over the lesions present; (N,) their original ids."""
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels], ids


def dipy_maps(
    flair: np.ndarray, affine: np.ndarray, syn: bool
) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """dipy registration (affine MI, then SyN CC); returns template-map -> scan-grid resampler."""
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D

    t0 = time.perf_counter()
    regions = load_regions()
    moving = flair_like(regions).get_fdata(dtype=np.float32)
    # both at 2 mm
    static = ndi.zoom(ndi.gaussian_filter(flair, 0.7), 0.5, order=1)
    s_aff = affine.copy()
    s_aff[:3, :3] = affine[:3, :3] * 2.0
    s_aff[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, 0.5)
    mov = ndi.zoom(ndi.gaussian_filter(moving, 0.7), 0.5, order=1)
    m_aff = regions.affine.copy()
    m_aff[:3, :3] *= 2.0
    m_aff[:3, 3] = regions.affine[:3, 3] + 0.5
    c_of_mass = transform_centers_of_mass(static, s_aff, mov, m_aff)
    areg = AffineRegistration(
        metric=MutualInformationMetric(nbins=32, sampling_proportion=0.1),
        level_iters=[100, 50], sigmas=[1.0, 0.0], factors=[2, 1], verbosity=0,
    )  # fmt: skip
    rigid = areg.optimize(static, mov, RigidTransform3D(), None, s_aff, m_aff,
                          starting_affine=c_of_mass.affine)  # fmt: skip
    aff = areg.optimize(static, mov, AffineTransform3D(), None, s_aff, m_aff,
                        starting_affine=rigid.affine)  # fmt: skip
    if not syn:
        seconds = time.perf_counter() - t0

        def res_a(vol: np.ndarray) -> np.ndarray:
            return aff.transform(vol, "linear", regions.affine, flair.shape, affine)

        return res_a, seconds
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[20, 10, 5])
    mapping = sdr.optimize(static, mov, s_aff, m_aff, aff.affine)
    seconds = time.perf_counter() - t0

    def res_s(vol: np.ndarray) -> np.ndarray:
        return mapping.transform(
            vol, "linear", image_world2grid=np.linalg.inv(regions.affine),
            out_shape=flair.shape, out_grid2world=affine,
        )  # fmt: skip

    return res_s, seconds


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A pipe table of ``df`` (no tabulate needed)."""
    if index:
        df = df.reset_index()
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def main() -> None:
    """Register, classify, print the tables (markdown)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1005, 1009, 1016])
    ap.add_argument("--dipy", action="store_true", help="also dipy affine and SyN")
    ap.add_argument("--bspline", action="store_true", help="also SimpleITK + B-spline")
    args = ap.parse_args()
    regions = load_regions()
    rows, timing = [], []
    for seed in args.seeds:
        flair, affine, labels, kinds = load_case(seed)
        lab, ids = dense_labels(labels)
        truth = [kinds[i - 1] for i in ids]
        centre = affine[:3, :3] @ (np.array(flair.shape) / 2.0) + affine[:3, 3]
        variants = {"aligned": affine, "misaligned": misalign(affine, centre)}
        mni_aligned: dict[str, np.ndarray] = {}
        for variant, aff in variants.items():
            methods = ["sitk-affine"] + (["sitk-bspline"] if args.bspline else [])
            if args.dipy:
                methods += ["dipy-affine", "dipy-syn"]
            for method in methods:
                if method.startswith("sitk"):
                    reg = register_to_template(flair, aff, deformable=method == "sitk-bspline")
                    loc = classify_lesions(lab, aff, reg, image=flair)
                    pred, seconds, quality = list(loc.location), reg.seconds, reg.brain_dice
                    mni = loc.mni
                    if variant == "aligned":
                        mni_aligned[method] = mni
                    err = (
                        float(np.linalg.norm(mni - mni_aligned[method], axis=1).mean())
                        if method in mni_aligned and variant == "misaligned"
                        else float("nan")
                    )
                else:
                    resample, seconds = dipy_maps(flair, aff, syn=method == "dipy-syn")
                    vd = resample(regions.vdist)
                    priors = (resample(regions.gm), resample(regions.wm), resample(regions.csf))
                    cx = resample(regions.cortex.astype(np.float32))
                    vd, cd = scan_distances(  # as classify_lesions does
                        flair, lab, np.ones(3), priors, vd, cx, resample(regions.cdist)
                    )
                    inf = resample(regions.infratentorial.astype(np.float32))
                    brain = resample(regions.brain.astype(np.float32)) > 0.5
                    m = flair > 0
                    quality = 2.0 * float((brain & m).sum()) / float(brain.sum() + m.sum())
                    pred = list(classify_from_maps(lab, vd, cd, inf)[0])
                    err = float("nan")
                agree = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
                timing.append(
                    {"seed": seed, "scan": variant, "method": method, "seconds": round(seconds, 1),
                     "brain_dice": round(quality, 3), "agreement": round(agree, 3),
                     "mni_shift_mm": round(err, 2), "n_lesions": len(truth)}
                )  # fmt: skip
                print(timing[-1], flush=True)
                for p, t in zip(pred, truth, strict=True):
                    rows.append({"method": method, "scan": variant, "drawn": t, "predicted": p})
    # a scan that covers part of the brain: everything below z = -5 mm (world) removed
    flair, affine, labels, _ = load_case(args.seeds[0])
    z = (affine[:3, :3] @ np.indices(flair.shape).reshape(3, -1) + affine[:3, 3:])[2]
    cut = np.where(z.reshape(flair.shape) >= -5.0, flair, 0.0).astype(np.float32)
    reg = register_to_template(cut, affine)
    cov = region_coverage(reg, cut > 0)
    print(f"\n## Partial scan (seed {args.seeds[0]}, z >= -5 mm only)\n")
    print(f"registration: {reg.to_dict()}")
    print("coverage: " + ", ".join(f"{k} {v:.3f}" for k, v in cov.items()))
    table = pd.DataFrame(rows)
    print("\n## Registrations\n")
    print(markdown(pd.DataFrame(timing)))
    for method in table["method"].unique():
        sub = table[table["method"] == method]
        for variant in ("aligned", "misaligned"):
            part = sub[sub["scan"] == variant]
            cm = pd.crosstab(part["drawn"], part["predicted"]).reindex(index=list(KINDS))
            agree = float((part["drawn"] == part["predicted"]).mean())
            print(f"\n## {method}, {variant} scans: agreement {agree:.3f} ({len(part)} lesions)\n")
            print(markdown(cm.fillna(0).astype(int), index=True))


if __name__ == "__main__":
    main()
