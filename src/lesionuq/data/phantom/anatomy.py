"""Anatomy: the MNI152 template's tissue maps, lesion seed regions and the output grid.

The template and its grey/white-matter probability maps ship inside nilearn
(``load_mni152_template``, ``load_mni152_gm_template``, ``load_mni152_wm_template``; no
download). CSF is the skull-stripped template's support minus GM minus WM; the lateral
ventricles are its two largest deep CSF components.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "Template",
    "gradient",
    "lateral_ventricles",
    "load_template",
    "output_grid",
    "tissue_maps_at",
]


@dataclass(frozen=True)
class Template:
    """MNI152 maps at 1 mm and what lesion placement needs (template voxel = mm).

    Attributes:
        gm: (197, 233, 189) float32 grey-matter fraction; ``wm``, ``csf`` alike.
        vdist: Same shape, float32 distance to the lateral ventricles (mm).
        origin: (3,) world mm of voxel 0.
        brain_lo: (3,) template index bounding box of the brain (``brain_hi`` exclusive).
        vent_lo: (3,) template index bounding box of the lateral ventricles (inclusive).
        seeds: Region name -> (N, 3) int32 template indices where items may be placed.
        tips: Per horn tip (frontal and occipital of each ventricle): its (3,) index and
            (3,) unit outward direction.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    vdist: np.ndarray
    origin: np.ndarray
    brain_lo: np.ndarray
    brain_hi: np.ndarray
    vent_lo: np.ndarray
    vent_hi: np.ndarray
    seeds: dict[str, np.ndarray]
    tips: tuple[tuple[np.ndarray, np.ndarray], ...]


def lateral_ventricles(
    csf: np.ndarray, depth: np.ndarray, xx: np.ndarray, yy: np.ndarray, zz: np.ndarray
) -> np.ndarray:
    """The lateral ventricles of the MNI152 template: deep CSF off the midline.

    The two largest connected components (scipy's default 6-connectivity) of
    CSF > 0.5 deeper than 15 mm inside the brain, within a generous anatomical box
    (3 <= |x| <= 38, -65 <= y <= 40, -5 <= z <= 40 mm).

    Args:
        csf: (X, Y, Z) CSF probability on the 1 mm template grid.
        depth: (X, Y, Z) distance to the outside of the brain, mm.
        xx: MNI x (mm) of the grid's first axis, shaped (X, 1, 1) (``np.ix_``).
        yy: MNI y (mm) of the second axis, (1, Y, 1).
        zz: MNI z (mm) of the third axis, (1, 1, Z).

    Returns:
        (X, Y, Z) bool.
    """
    lat_box = (np.abs(xx) >= 3) & (np.abs(xx) <= 38) & (yy >= -65) & (yy <= 40)
    lat_box = lat_box & (zz >= -5) & (zz <= 40)
    cand = (csf > 0.5) & (depth > 15) & lat_box
    lab, n = ndi.label(cand)
    sizes = ndi.sum_labels(cand, lab, np.arange(1, n + 1))
    return np.isin(lab, np.argsort(sizes)[::-1][:2] + 1)


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """The MNI152 2009 template with its derived maps (computed once per process)."""
    # lazy: nilearn.datasets takes 0.5-1.5 s to import (scikit-learn, its fetchers), and
    # the pipeline commands import this module (via lesionuq.location) without building it
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    inside = t1.get_fdata(dtype=np.float32) > 0
    origin = t1.affine[:3, 3].astype(np.float64)
    if not np.allclose(t1.affine[:3, :3], np.eye(3)):
        raise RuntimeError("unexpected MNI152 template affine (expected 1 mm RAS).")
    gm, wm = gm * inside, wm * inside
    csf = np.clip(inside.astype(np.float32) - gm - wm, 0.0, 1.0)

    box = ndi.find_objects(inside.astype(np.uint8))[0]
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    sub = tuple(box)
    depth = np.zeros(inside.shape, np.float32)
    depth[sub] = ndi.distance_transform_edt(np.pad(inside[sub], 1))[1:-1, 1:-1, 1:-1]

    # lateral ventricles: deep CSF, off the midline, in a generous anatomical box (mm)
    x, y, z = (np.arange(n) + o for n, o in zip(inside.shape, origin, strict=True))
    xx, yy, zz = np.ix_(x, y, z)
    vent = lateral_ventricles(csf, depth, xx, yy, zz)
    lab, n = ndi.label(vent)  # the two ventricles, larger first (as they were chosen)
    keep = np.argsort(ndi.sum_labels(vent, lab, np.arange(1, n + 1)))[::-1] + 1
    vdist = np.full(inside.shape, 100.0, np.float32)
    vdist[sub] = ndi.distance_transform_edt(~vent[sub])
    gmdist = np.zeros(inside.shape, np.float32)
    gmdist[sub] = ndi.distance_transform_edt(~(gm[sub] > 0.5))

    infra = (np.abs(xx) <= 30) & (yy >= -80) & (yy <= -15) & (zz <= -12)
    seeds = {
        "periventricular": (vdist > 0.5) & (vdist <= 2.0) & (wm > 0.5),
        "juxtacortical": (wm > 0.5)
        & (gmdist > 0)
        & (gmdist <= 2.0)
        & (vdist > 10)
        & ~infra
        & (depth > 4)
        & (depth <= 22),  # cortex, not the deep grey nuclei
        "deep": (wm > 0.85) & (vdist > 8) & (gmdist > 5) & ~infra,
        "infratentorial": (wm > 0.6) & (gmdist > 1.5) & infra,
        "cortical": (gm > 0.6) & (vdist > 10) & (depth > 2) & (depth <= 22),
        "artefact": (csf > 0.5) & (depth > 5),
    }
    seeds = {k: np.argwhere(v).astype(np.int32) for k, v in seeds.items()}

    tips = []
    for k in keep:
        idx = np.argwhere(lab == k)
        for end in (idx[:, 1].argmax(), idx[:, 1].argmin()):  # frontal and occipital horns
            p = idx[end].astype(np.float64)
            tips.append((p, gradient(vdist, p)))
    vidx = np.argwhere(vent)
    return Template(
        gm, wm, csf, vdist, origin, lo, hi, vidx.min(0), vidx.max(0), seeds, tuple(tips)
    )


def gradient(vol: np.ndarray, p: np.ndarray, h: int = 2) -> np.ndarray:
    """Unit gradient of ``vol`` at index ``p`` by central differences of step ``h``."""
    i = np.clip(np.rint(p).astype(int), h, np.array(vol.shape) - h - 1)
    g = np.zeros(3)
    for a in range(3):
        e = np.zeros(3, int)
        e[a] = h
        g[a] = float(vol[tuple(i + e)]) - float(vol[tuple(i - e)])
    norm = np.linalg.norm(g)
    return g / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


@functools.lru_cache(maxsize=4)
def tissue_maps_at(spacing: float, sharpen: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSF, GM, WM fractions at 1 mm for rendering at ``spacing``.

    The population-average probability maps are blurrier than one subject's anatomy, so
    they are sharpened, ``p_t^g / sum_s p_s^g`` within the brain (g = ``sharpen``). A voxel
    of side s averages the continuous map over a box of std s/sqrt(12); the 1 mm maps
    already have 1/sqrt(12), so the maps are then smoothed by the remaining Gaussian std
    sqrt(s^2 - 1)/sqrt(12) mm.
    """
    t = load_template()
    maps = np.stack([t.csf, t.gm, t.wm])
    if sharpen != 1.0:
        total = maps.sum(axis=0)
        powered = maps**sharpen
        norm = powered.sum(axis=0)
        maps = np.where(norm > 0, powered * (total / np.maximum(norm, 1e-12)), 0.0)
        maps = maps.astype(np.float32)
    if spacing > 1.0:
        sigma = math.sqrt(spacing**2 - 1.0) / math.sqrt(12.0)
        maps = np.stack([ndi.gaussian_filter(m, sigma, mode="constant") for m in maps])
    return maps[0], maps[1], maps[2]


def output_grid(
    spacing: float, shape: tuple[int, int, int] | None = None
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The output grid: isotropic ``spacing`` mm, centred on the template's field of view.

    Args:
        spacing: Voxel size (mm).
        shape: Grid shape (X, Y, Z); None covers the template's field of view.

    Returns:
        The shape and the 4x4 voxel-to-world (RAS mm) affine.
    """
    t = load_template()
    n_t = np.array(t.gm.shape)
    centre = t.origin + (n_t - 1) / 2.0
    if shape is None:
        nx, ny, nz = (math.floor(n / spacing + 0.5) for n in n_t)
    else:
        nx, ny, nz = shape
    shape = (int(nx), int(ny), int(nz))
    affine = np.eye(4)
    affine[:3, :3] *= spacing
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2.0
    return shape, affine
