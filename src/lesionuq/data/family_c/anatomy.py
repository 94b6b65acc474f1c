"""Family C's procedural brain: analytic shapes and seeded random fields, no template.

A subject lives in its own *reference* frame (RAS mm, roughly MNI-like); the output
(world) frame maps into it by a small affine and a smooth displacement field. The
structures, with their per-subject variation:

- cerebrum: a super-ellipsoid (power 2.3-2.8; taller above its centre than below,
  narrower in front), split by an interhemispheric fissure (1.5-3.5 mm of CSF, down to
  the corpus callosum between y = -38 and 28 mm, deepening to the poles over 20 mm);
- cortex: a grey-matter shell 2-4 mm thick under the CSF, whose inner boundary is
  folded by a band-pass random field (wavelengths ~10-40 mm): sulci are CSF sheets
  along the field's zero set (``|field| < 0.25``, up to ``sulcal_mm`` deep), and the
  grey-white boundary dips under a wider band (``|field| < 0.8``), so cortex lines
  each sulcus;
- lateral ventricles: two curved tubes (frontal horn, body, atrium, occipital and
  temporal horns) with a radius profile, scaled by the subject's atrophy (0.7-2.4);
  a third-ventricle slit and a small fourth ventricle;
- deep grey nuclei (thalamus, caudate head hugging the frontal horn, lentiform) as
  super-ellipsoids; hippocampi as curved tubes below the temporal horns;
- cerebellum: an ellipsoid under the occipital lobe behind a 2 mm tentorial gap, a white
  core (7 mm under the surface, +-3 mm by a random field) and striated folia (thin
  transverse CSF leaves fanning out in the sagittal plane, every 2.5-4 mm); a
  brainstem (midbrain, pons bulge, medulla) as a tapered tube.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lesionuq.data.family_c.fields import (
    LatticeField,
    Tubes,
    bandpass_field,
    box_index,
    curve,
    soft,
)

__all__ = ["BOX_MM", "CENTRE", "SubjectC", "draw_subject", "reference_points", "tissue_maps"]

BOX_MM = ((-78.0, 78.0), (-104.0, 80.0), (-76.0, 84.0))
"""World box (RAS mm per axis) that holds every family-C brain."""

CENTRE = np.array([(lo + hi) / 2.0 for lo, hi in BOX_MM])
"""Centre of :data:`BOX_MM` (the pivot of the subject's affine), mm."""

_FIELD_BOX = ((-90.0, 90.0), (-116.0, 92.0), (-88.0, 96.0))  # lattices cover the box + margin


@dataclass
class SubjectC:
    """One procedural subject (every shape parameter and field, in reference mm).

    Attributes:
        matrix: Reference-from-world linear map (3, 3) about :data:`CENTRE`.
        warp: Displacement fields (x, y, z components, mm) added after ``matrix``.
        cerebrum: ``centre`` (3,), ``axes`` (a, b, c_up, c_down) mm, ``power``, ``taper``.
        fissure_mm: Width of the interhemispheric fissure.
        callosum_z: Height (reference z, mm) of the fissure's floor above the callosum.
        cortex_mm: Cortical grey-matter thickness.
        sulcal_mm: Sulcal CSF depth per unit of the folding field above its threshold.
        fold: Band-pass folding field (unit variance).
        core: Field modulating the cerebellar white core depth.
        atrophy: Ventricle size scale.
        ventricles: Both lateral ventricles as tubes.
        third_mm: Width of the third-ventricle slit.
        fourth: Fourth ventricle ``(centre (3,), semi-axes (3,))``.
        nuclei: Deep grey nuclei, each ``(centre (3,), semi-axes (3,))``.
        hippocampi: Left and right hippocampus as tubes.
        cerebellum: ``(centre (3,), semi-axes (3,))``.
        folia_mm: Spacing of the cerebellar folia.
        stem: Brainstem axis ``(top (3,), bottom (3,))``.
    """

    matrix: np.ndarray
    warp: tuple[LatticeField, LatticeField, LatticeField]
    cerebrum: dict[str, np.ndarray | float]
    fissure_mm: float
    callosum_z: float
    cortex_mm: float
    sulcal_mm: float
    fold: LatticeField
    core: LatticeField
    atrophy: float
    ventricles: Tubes
    third_mm: float
    fourth: tuple[np.ndarray, np.ndarray]
    nuclei: list[tuple[np.ndarray, np.ndarray]]
    hippocampi: tuple[Tubes, Tubes]
    cerebellum: tuple[np.ndarray, np.ndarray]
    folia_mm: float
    stem: tuple[np.ndarray, np.ndarray]

    def summary(self) -> dict[str, Any]:
        """The scalar shape parameters (what ``phantom.json`` records)."""
        axes = np.asarray(self.cerebrum["axes"])
        return {
            "cerebrum_axes_mm": [round(float(a), 2) for a in axes],
            "cerebrum_power": round(float(self.cerebrum["power"]), 3),
            "fissure_mm": round(self.fissure_mm, 3),
            "cortex_mm": round(self.cortex_mm, 3),
            "sulcal_mm": round(self.sulcal_mm, 3),
            "atrophy": round(self.atrophy, 3),
            "folia_mm": round(self.folia_mm, 3),
        }


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) from three angles (radians) about x, y, z in turn."""
    out = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        out = rot @ out
    return out


def _ventricle_tubes(rng: np.random.Generator, atrophy: float) -> tuple[Tubes, np.ndarray]:
    """Both lateral ventricles (left drawn, right mirrored with its own jitter).

    Returns:
        The tubes and the temporal horn's nominal control points (4, 3), x > 0.
    """
    s = atrophy
    samples, radii = [], []
    temporal = np.zeros((4, 3))
    for side in (-1.0, 1.0):
        medial = 1.5 + 4.2 * s  # frontal horn axis: its medial wall ~1.5 mm off the midline
        main = np.array(
            [
                [medial, 30, 11],
                [medial, 19, 17],
                [medial + 0.5, 5, 20],
                [medial + 2.5, -11, 21],
                [medial + 6.5, -25, 18],
                [15 + 3.0 * s, -35, 11],
                [17 + 2.0 * s, -47, 7],
                [16 + 1.0 * s, -58, 5],
            ]
        )
        main_r = np.array([3.8, 4.4, 4.0, 3.4, 4.2, 5.8, 3.6, 1.6])
        temporal = np.array(
            [main[5], [24 + s, -31, 1], [28 + s, -22, -9], [29 + s, -10, -15]], dtype=np.float64
        )
        temporal_r = np.array([5.0, 3.2, 2.6, 1.8])
        for ctrl, rad in ((main, main_r), (temporal, temporal_r)):
            ctrl = ctrl.astype(np.float64).copy()
            ctrl[1:] += rng.normal(scale=1.2, size=(len(ctrl) - 1, 3))
            ctrl[:, 0] *= side
            pts, r = curve(ctrl, rad * s * rng.uniform(0.85, 1.15, size=len(rad)))
            samples.append(pts)
            radii.append(r)
    return Tubes.build(np.concatenate(samples), np.concatenate(radii)), temporal


def draw_subject(rng: np.random.Generator) -> SubjectC:
    """Draw one procedural subject.

    Args:
        rng: Random generator (advanced by the draw).

    Returns:
        The subject.
    """
    scale = rng.uniform(0.95, 1.015) * rng.uniform(0.99, 1.01, size=3)
    matrix = _rotation(np.deg2rad(rng.uniform(-5.0, 5.0, size=3))) / scale
    amp = rng.uniform(1.5, 3.5)
    warp = tuple(
        LatticeField(f.values * np.float32(amp), f.origin, f.step)
        for f in (bandpass_field(rng, _FIELD_BOX, 8.0, 18.0) for _ in range(3))
    )
    atrophy = float(np.clip(math.exp(rng.normal(math.log(1.2), 0.3)), 0.7, 2.4))
    axes = np.array([60.5, 78.0, 52.5, 36.8]) * rng.uniform(0.98, 1.02, size=4)
    cerebrum: dict[str, np.ndarray | float] = {
        "centre": np.array([0.0, -10.0, 12.0]) + rng.normal(scale=1.0, size=3) * [0, 1, 1],
        "axes": axes,
        "power": float(rng.uniform(2.3, 2.8)),
        "taper": float(rng.uniform(0.05, 0.15)),
    }
    ventricles, temporal = _ventricle_tubes(rng, atrophy)
    nuclei: list[tuple[np.ndarray, np.ndarray]] = []
    jitter = rng.normal(scale=1.0, size=(3, 3))
    medial = 1.5 + 4.2 * atrophy
    for (cx, cy, cz), semi in (
        ((11.0, -16.0, 6.0), (7.0, 13.0, 8.0)),  # thalamus
        ((medial + 4.0 * atrophy + 3.5, 14.0, 10.0), (4.0, 8.0, 8.0)),  # caudate head
        ((25.0, 2.0, 0.0), (5.5, 13.0, 8.0)),  # lentiform
    ):
        for side in (-1.0, 1.0):
            centre = np.array([side * cx, cy, cz]) + jitter[len(nuclei) // 2]
            nuclei.append((centre, np.array(semi) * rng.uniform(0.9, 1.1)))
    hippocampi = []
    for side in (-1.0, 1.0):
        # below and medial to the temporal horn, one step further forward
        ctrl = temporal[1:] + np.array([-3.0, -2.0, -5.0])
        ctrl = np.concatenate([ctrl, (ctrl[-1] + np.array([-1.0, 8.0, -2.0]))[None]])
        ctrl[:, 0] *= side
        pts, r = curve(ctrl, np.array([3.8, 4.2, 3.6, 2.8]) * rng.uniform(0.9, 1.1))
        hippocampi.append(Tubes.build(pts, r))
    cb_centre = np.array([0.0, -64.0, -30.0]) + rng.normal(scale=1.5, size=3) * [0, 1, 1]
    cb_axes = np.array([47.0, 25.0, 18.0]) * rng.uniform(0.92, 1.06, size=3)
    stem = (
        np.array([0.0, -22.0, -2.0]) + rng.normal(scale=1.0, size=3) * [0, 1, 1],
        np.array([0.0, -36.0, -74.0]) + rng.normal(scale=1.5, size=3) * [0, 1, 0],
    )
    fourth = (
        np.array([0.0, -41.0, -33.0]) + rng.normal(scale=0.8, size=3) * [0, 1, 1],
        np.array([5.0, 2.5, 7.0]) * math.sqrt(atrophy),
    )
    return SubjectC(
        matrix=matrix,
        warp=(warp[0], warp[1], warp[2]),
        cerebrum=cerebrum,
        fissure_mm=float(rng.uniform(1.5, 3.0) * math.sqrt(atrophy)),
        callosum_z=float(rng.uniform(26.0, 30.0)),
        cortex_mm=float(rng.uniform(2.0, 4.0)),
        sulcal_mm=float(rng.uniform(4.0, 7.0) * (0.7 + 0.25 * atrophy)),
        fold=bandpass_field(rng, _FIELD_BOX, 2.0, 2.5, 7.0),
        core=bandpass_field(rng, _FIELD_BOX, 4.0, 6.0),
        atrophy=atrophy,
        ventricles=ventricles,
        third_mm=float(rng.uniform(1.0, 2.0) * atrophy),
        fourth=fourth,
        nuclei=nuclei,
        hippocampi=(hippocampi[0], hippocampi[1]),
        cerebellum=(cb_centre, cb_axes),
        folia_mm=float(rng.uniform(2.5, 4.0)),
        stem=stem,
    )


def reference_points(subject: SubjectC, world: np.ndarray) -> np.ndarray:
    """Reference position of world points: affine about :data:`CENTRE` plus the warp.

    Args:
        subject: The subject.
        world: Points (N, 3), mm.

    Returns:
        Reference points (N, 3), float32.
    """
    world = np.asarray(world, dtype=np.float32)
    ref = (world - CENTRE.astype(np.float32)) @ subject.matrix.T.astype(np.float32)
    ref += CENTRE.astype(np.float32)
    for a in range(3):
        ref[:, a] += subject.warp[a](world)
    return ref


def world_points(subject: SubjectC, ref: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Invert :func:`reference_points` by fixed-point iteration (the warp is smooth).

    Args:
        subject: The subject.
        ref: Reference points (N, 3), mm.
        iterations: Fixed-point steps (the warp's gradient is small: ~1e-2 per step).

    Returns:
        World points (N, 3), float64.
    """
    ref = np.atleast_2d(np.asarray(ref, dtype=np.float64))
    inv = np.linalg.inv(subject.matrix)
    world = CENTRE + (ref - CENTRE) @ inv.T
    for _ in range(iterations):
        disp = np.stack([subject.warp[a](world) for a in range(3)], axis=1)
        world = CENTRE + (ref - disp - CENTRE) @ inv.T
    return world


def _ellipsoid_depth(
    u: np.ndarray, centre: np.ndarray, axes: np.ndarray, power: float, cap: float | None = None
) -> np.ndarray:
    """Approximate depth (mm, positive inside) of points (N, 3) in a super-ellipsoid.

    With ``cap``, only points within ``cap`` mm of its bounding box are computed; the
    others get ``-cap``.
    """
    if cap is not None:
        out = np.full(len(u), -cap, dtype=np.float32)
        idx = box_index(u, centre - axes - cap, centre + axes + cap)
        out[idx] = np.maximum(_ellipsoid_depth(u[idx], centre, axes, power), -cap)
        return out
    rel = np.abs((u - centre.astype(np.float32)) / axes.astype(np.float32))
    level = np.sum(rel**power, axis=1) ** (1.0 / power)
    return ((1.0 - level) * float(np.min(axes))).astype(np.float32)


def _stem_depth(
    u: np.ndarray, top: np.ndarray, bottom: np.ndarray, cap: float | None = 20.0
) -> np.ndarray:
    """Depth (mm, positive inside) of points (N, 3) in the brainstem's tapered tube.

    With ``cap``, only points within ``cap`` mm of its bounding box are computed; the
    others get ``-cap``.
    """
    if cap is not None:
        out = np.full(len(u), -cap, dtype=np.float32)
        lo, hi = np.minimum(top, bottom) - 15.0 - cap, np.maximum(top, bottom) + 15.0 + cap
        idx = box_index(u, lo, hi)
        out[idx] = np.maximum(_stem_depth(u[idx], top, bottom, None), -cap)
        return out
    axis = (bottom - top).astype(np.float32)
    length = float(np.linalg.norm(axis))
    t = ((u - top.astype(np.float32)) @ axis) / np.float32(length**2)
    tc = np.clip(t, 0.0, 1.0)
    radial = np.linalg.norm(u - (top + tc[:, None] * axis), axis=1)
    radius = 10.0 + 4.5 * np.exp(-(((tc - 0.42) / 0.16) ** 2)) - 2.5 * tc
    return np.minimum(radius - radial, (1.0 - t) * length).astype(np.float32)


def tissue_maps(subject: SubjectC, u: np.ndarray, width: float) -> dict[str, np.ndarray]:
    """Tissue fractions and distances at reference points.

    The outer surfaces are evaluated everywhere; the inner structures only where the
    brain envelope can reach.

    Args:
        subject: The subject.
        u: Reference points (N, 3), mm (:func:`reference_points`).
        width: Partial-volume edge width (the voxel size), mm.

    Returns:
        Arrays (N,), float32: fractions ``wm``, ``gm`` (cortex), ``deep`` (nuclei),
        ``hippo_l``, ``hippo_r``, ``stem``, ``cb_wm``, ``cb_gm``, ``csf`` (everything
        else inside ``envelope``), ``vent`` (lateral, third, fourth), ``third``,
        ``fourth``, ``envelope`` (the brain mask region); distances ``d_vent`` (to the
        lateral ventricles' surface, capped at 12 mm; 12 outside the brain), ``d_wm``
        (depth under the grey-white boundary, mm; -50 outside the brain).
    """
    u = np.asarray(u, dtype=np.float32)
    cer = subject.cerebrum
    centre = np.asarray(cer["centre"], dtype=np.float32)
    a, b, c_up, c_down = (float(v) for v in np.asarray(cer["axes"]))
    rel = u - centre
    a_eff = a * (1.0 - float(cer["taper"]) * np.clip(rel[:, 1] / b, -1.0, 1.0))
    c_eff = np.where(rel[:, 2] > 0, np.float32(c_up), np.float32(c_down))
    p = float(cer["power"])
    level = (
        np.abs(rel[:, 0] / a_eff) ** p + np.abs(rel[:, 1] / b) ** p + np.abs(rel[:, 2] / c_eff) ** p
    ) ** (1.0 / p)
    del rel, a_eff, c_eff
    d_cer = ((1.0 - level) * c_down).astype(np.float32)  # outer surface depth
    cb_centre, cb_axes = subject.cerebellum
    d_cb = _ellipsoid_depth(u, cb_centre, cb_axes, 2.0, cap=40.0)
    d_stem = _stem_depth(u, *subject.stem)
    depth = np.maximum.reduce([d_cer, d_cb, d_stem])
    idx = np.flatnonzero(depth > -1.5 - width)
    inner = _inner_maps(subject, u[idx], width, d_cer[idx], d_cb[idx], d_stem[idx])
    out = {"envelope": soft(depth + 1.5, width)}
    for key, value in inner.items():
        fill = {"d_vent": 12.0, "d_wm": -50.0}.get(key, 0.0)
        full = np.full(len(u), fill, dtype=np.float32)
        full[idx] = value
        out[key] = full
    return out


def _inner_maps(
    subject: SubjectC,
    u: np.ndarray,
    width: float,
    d_cer: np.ndarray,
    d_cb_raw: np.ndarray,
    d_stem: np.ndarray,
) -> dict[str, np.ndarray]:
    """:func:`tissue_maps` (but ``envelope``) at points (M, 3) given the outer depths (M,)."""
    # tentorium: the cerebrum keeps 2 mm off the cerebellum
    d_out = np.minimum(d_cer, -d_cb_raw - 2.0)
    z_floor = (
        subject.callosum_z
        - 90.0 * np.clip((u[:, 1] - 28.0) / 20.0, 0.0, 1.0)
        - 90.0 * np.clip((-38.0 - u[:, 1]) / 20.0, 0.0, 1.0)
    )
    d_fis = np.maximum(np.abs(u[:, 0]) - subject.fissure_mm / 2.0, z_floor - u[:, 2])
    e0 = np.minimum(d_out, d_fis)
    # sulci: CSF sheets along the zero set of the folding field, lined by cortex
    fold = np.abs(subject.fold(u))
    b_csf = 0.8 + subject.sulcal_mm * np.clip(1.0 - fold / 0.25, 0.0, None)
    b_wm = np.maximum(
        subject.cortex_mm + subject.sulcal_mm * np.clip(1.0 - fold / 0.8, 0.0, None),
        b_csf + subject.cortex_mm,
    )
    par = soft(e0 - b_csf, width)
    wm = soft(e0 - b_wm, width)
    gm = par - wm

    cb_centre, cb_axes = subject.cerebellum
    d_cb = np.minimum(d_cb_raw, -d_stem - 1.5)
    cb = soft(d_cb, width)
    icb = np.flatnonzero(cb > 0)
    cb_core = np.zeros_like(cb)
    gaps = np.zeros_like(cb)
    if len(icb):
        uc = u[icb]
        core = subject.core(uc)
        cb_core[icb] = cb[icb] * soft(d_cb[icb] - (7.0 + 3.0 * core), width)
        rel = uc - cb_centre.astype(np.float32)
        angle = np.arctan2(rel[:, 2], rel[:, 1])  # in the sagittal plane
        # folia: thin transverse CSF leaves fanning out from the core (bent by the core
        # field), faded where the grid cannot resolve them
        arc = angle * float(np.mean(cb_axes[1:])) + 1.5 * core
        phase = arc * (2.0 * np.pi / subject.folia_mm)
        fade = math.exp(-((width / subject.folia_mm) ** 2) * 2.0)
        gaps[icb] = np.clip((np.cos(phase) - 0.55) / 0.45, 0.0, 1.0) * fade
    cb_gm = (cb - cb_core) * (1.0 - gaps)
    stem = soft(d_stem, width) * (1.0 - par)

    d_vent = subject.ventricles.distance(u)
    d_third = np.minimum.reduce(
        [
            subject.third_mm / 2.0 - np.abs(u[:, 0]),
            u[:, 1] + 22.0,
            4.0 - u[:, 1],
            u[:, 2] + 6.0,
            14.0 - u[:, 2],
        ]
    )
    third = soft(d_third, width)
    fourth = soft(_ellipsoid_depth(u, *subject.fourth, 2.0, cap=4.0), width)
    vent = np.maximum.reduce([soft(-d_vent, width), third, fourth])
    keep = 1.0 - vent
    wm, gm = wm * keep, gm * keep
    deep = np.zeros_like(wm)
    for nc, semi in subject.nuclei:
        deep = np.maximum(deep, soft(_ellipsoid_depth(u, nc, semi, 2.2, cap=4.0), width))
    deep = deep * wm
    wm = wm - deep
    hippo = []
    for tube in subject.hippocampi:
        h = soft(-tube.distance(u, cap=4.0), width)
        hw, hg = h * wm, h * gm
        wm, gm = wm - hw, gm - hg
        hippo.append(hw + hg)
    stem, cb_core, cb_gm = stem * keep, cb_core * keep, cb_gm * keep
    parenchyma = wm + gm + deep + hippo[0] + hippo[1] + stem + cb_core + cb_gm
    envelope = soft(np.maximum.reduce([d_cer, d_cb_raw, d_stem]) + 1.5, width)
    csf = np.clip(envelope - parenchyma, 0.0, 1.0)
    return {
        "wm": wm,
        "gm": gm,
        "deep": deep,
        "hippo_l": hippo[0],
        "hippo_r": hippo[1],
        "stem": stem,
        "cb_wm": cb_core,
        "cb_gm": cb_gm,
        "csf": csf,
        "vent": vent,
        "third": third,
        "fourth": fourth,
        "d_vent": d_vent,
        "d_wm": (e0 - b_wm).astype(np.float32),
    }
