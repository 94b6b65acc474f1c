"""Family C's lesions (superlevel sets of smoothed random fields) and mimics.

A lesion is the superlevel set ``L > 0`` of ``L(v) = 1 - |Q v|^2 + roughness * g(v)``,
where ``v`` is the reference offset from its centre, ``Q`` an oriented ellipsoidal
metric of the lesion's volume and ``g`` a smoothed Gaussian random field of unit
variance (white noise on a 1 mm lattice, Gaussian kernel of 0.35 x the radius). Its
partial volume is the soft threshold ``clip(L r / (2 w) + 1/2, 0, 1)`` at voxel size
``w`` (``L`` falls by ~2/r per mm at the edge). The lesion replaces its kind's tissue:
cerebral white matter (periventricular, deep), white + cortical grey matter
(juxtacortical), brainstem and cerebellum (infratentorial).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from lesionuq.data.family_c.anatomy import (
    BOX_MM,
    SubjectC,
    reference_points,
    tissue_maps,
    world_points,
)
from lesionuq.data.family_c.fields import Tubes, curve, soft

__all__ = [
    "KINDS",
    "LesionC",
    "MimicC",
    "draw_lesion_count",
    "draw_lesions",
    "draw_mimics",
    "lesion_maps",
    "mimic_maps",
]

KINDS = {"periventricular": 0.4, "deep": 0.28, "juxtacortical": 0.2, "infratentorial": 0.12}
"""Lesion kind -> probability."""

COUNT_SHAPE = 2.5
"""Shape of the gamma-distributed per-subject lesion rate."""


@dataclass
class LesionC:
    """One ground-truth lesion (in the subject's reference frame).

    Attributes:
        kind: ``periventricular``, ``deep``, ``juxtacortical`` or ``infratentorial``.
        centre: Reference centre (3,), mm.
        world: World (output RAS) centre (3,), mm.
        volume_mm3: Nominal volume (the ellipsoid's).
        axes: Semi-axes (3,), mm.
        rotation: Columns are the axes' directions (3, 3).
        roughness: Weight of the random field in ``L``.
        noise: Smoothed unit-variance field (K, K, K) on a 1 mm lattice centred on the
            lesion.
        ratio: Signal relative to white matter.
        pattern: ``plain``, ``rim`` (a brighter edge) or ``core`` (a darker centre).
        factor: The rim's or core's signal factor (1 for ``plain``).
    """

    kind: str
    centre: np.ndarray
    world: np.ndarray
    volume_mm3: float
    axes: np.ndarray
    rotation: np.ndarray
    roughness: float
    noise: np.ndarray
    ratio: float
    pattern: str
    factor: float

    @property
    def reach(self) -> float:
        """Largest reference distance (mm) from the centre where ``L`` can be positive."""
        return float(self.axes.max() * math.sqrt(1.0 + 3.0 * self.roughness))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (the field itself is not stored: it comes from the seed)."""
        return {
            "kind": self.kind,
            "centre": np.round(self.world, 2).tolist(),
            "centre_ref": np.round(self.centre, 2).tolist(),
            "volume_mm3": round(self.volume_mm3, 2),
            "axes": np.round(self.axes, 3).tolist(),
            "roughness": round(self.roughness, 4),
            "ratio": round(self.ratio, 4),
            "pattern": self.pattern,
            "factor": round(self.factor, 4),
        }


@dataclass
class MimicC:
    """One hyperintense non-lesion (not in the ground truth).

    Attributes:
        kind: ``vessel`` (a tube in a sulcus), ``hippocampus`` (a bright one),
            ``septum`` (a bright septum pellucidum), ``inflow`` (a blob in the third or
            fourth ventricle).
        tubes: Its shape as tubes (reference mm); the septum's holds its slab's
            centre line.
        ratio: Signal relative to white matter.
        side: For ``hippocampus`` the side (0 left, 1 right), for ``septum`` the slab
            thickness in mm; otherwise 0.
    """

    kind: str
    tubes: Tubes
    ratio: float
    side: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record: kind, centre of its samples, length, radius, ratio."""
        return {
            "kind": self.kind,
            "centre": np.round(self.tubes.samples.mean(axis=0), 2).tolist(),
            "samples": len(self.tubes.samples),
            "radius": round(float(self.tubes.radii.mean()), 3),
            "ratio": round(self.ratio, 4),
            "side": round(self.side, 3),
        }


def draw_lesion_count(rng: np.random.Generator, max_lesions: int) -> int:
    """Poisson count with a gamma-distributed rate: mean ``0.35 max_lesions``, capped.

    The rate is Gamma(shape 2.5, scale 0.35 max_lesions / 2.5) per subject, so the
    count is overdispersed (variance ``m + m^2 / 2.5``); it is capped at ``max_lesions``.
    """
    if max_lesions <= 0:
        return 0
    rate = rng.gamma(COUNT_SHAPE, 0.35 * max_lesions / COUNT_SHAPE)
    return int(min(rng.poisson(rate), max_lesions))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _frame(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal columns (3, 3), the first along ``direction``."""
    first = direction / np.linalg.norm(direction)
    other = np.linalg.qr(np.column_stack([first, rng.normal(size=(3, 2))]))[0]
    other[:, 0] = first
    return other


def _candidates(rng: np.random.Generator, subject: SubjectC, n: int) -> tuple[np.ndarray, dict]:
    """``n`` uniform world points of the box, and the tissue at their reference points."""
    lo = np.array([b[0] for b in BOX_MM]) + 10.0
    hi = np.array([b[1] for b in BOX_MM]) - 10.0
    world = rng.uniform(lo, hi, size=(n, 3))
    ref = reference_points(subject, world)
    return world, tissue_maps(subject, ref, 1.0)


def _place(
    rng: np.random.Generator, subject: SubjectC, kind: str, radius: float
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A reference centre for a lesion of ``kind`` and its long-axis direction (or None)."""
    if kind == "periventricular":
        tubes = subject.ventricles
        for _ in range(20):
            i = int(rng.integers(len(tubes.samples)))
            out = _unit(rng)
            out[0] = abs(out[0]) * np.sign(tubes.samples[i, 0] or 1.0)
            centre = tubes.samples[i] + out * (tubes.radii[i] + 0.5 * radius + rng.uniform(0, 1.5))
            t = tissue_maps(subject, centre[None].astype(np.float32), 1.0)
            if t["wm"][0] > 0.6 and t["d_vent"][0] < 0.5 * radius + 3.0:
                return centre, out
        return None
    world, t = _candidates(rng, subject, 400)
    if kind == "deep":
        ok = (t["wm"] > 0.95) & (t["d_vent"] > 5.0 + radius) & (t["d_wm"] > 5.0 + radius)
    elif kind == "juxtacortical":
        ok = (t["wm"] > 0.5) & (t["d_wm"] > 0.3) & (t["d_wm"] < max(0.6 * radius, 1.5))
    else:
        ok = (t["stem"] + t["cb_wm"]) > 0.8
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    return reference_points(subject, world[i : i + 1])[0].astype(np.float64), None


def draw_lesions(rng: np.random.Generator, subject: SubjectC, count: int) -> list[LesionC]:
    """Draw ``count`` lesions (a placement that fails drops that lesion).

    Volumes are log-uniform in 10-3000 mm3; periventricular ones are elongated 1.5-3x
    along the outward direction from the ventricle wall (Dawson's fingers), the others
    1-1.8x along a random direction. Signal ratio to white matter ``1.05 + Gamma(2.5,
    0.18)`` (mean 1.5, at most 3); 30 % have a 15-35 % brighter rim, 25 % a 15-45 % darker
    core.

    Args:
        rng: Random generator.
        subject: The subject.
        count: Number of lesions to try.

    Returns:
        The lesions placed.
    """
    names = list(KINDS)
    kinds = rng.choice(names, size=count, p=[KINDS[k] for k in names])
    lesions: list[LesionC] = []
    for kind in kinds:
        volume = float(math.exp(rng.uniform(math.log(10.0), math.log(3000.0))))
        radius = (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
        placed = _place(rng, subject, str(kind), radius)
        if placed is None:
            continue
        centre, direction = placed
        if direction is None:
            elong = rng.uniform(1.0, 1.8)
            direction = _unit(rng)
        else:
            elong = rng.uniform(1.5, 3.0)
        axes = radius * np.array([elong ** (2 / 3), elong ** (-1 / 3), elong ** (-1 / 3)])
        roughness = float(rng.uniform(0.15, 0.5))
        reach = float(axes.max() * math.sqrt(1.0 + 3.0 * roughness))
        size = 2 * math.ceil(reach + 2.0) + 1
        noise = ndi.gaussian_filter(
            rng.standard_normal((size, size, size)).astype(np.float32),
            max(0.35 * radius, 0.8),
            mode="wrap",
        )
        noise = (noise - noise.mean()) / max(float(noise.std()), 1e-6)
        ratio = float(min(1.05 + rng.gamma(2.5, 0.18), 3.0))
        u = rng.random()
        pattern, factor = "plain", 1.0
        if u < 0.3:
            pattern, factor = "rim", float(rng.uniform(1.15, 1.35))
        elif u < 0.55:
            pattern, factor = "core", float(rng.uniform(0.55, 0.85))
        lesions.append(
            LesionC(
                kind=str(kind),
                centre=centre,
                world=world_points(subject, centre)[0],
                volume_mm3=volume,
                axes=axes,
                rotation=_frame(direction, rng),
                roughness=roughness,
                noise=noise.astype(np.float32),
                ratio=ratio,
                pattern=pattern,
                factor=factor,
            )
        )
    return lesions


def draw_mimics(
    rng: np.random.Generator, subject: SubjectC, lesions: list[LesionC]
) -> list[MimicC]:
    """Draw the mimics; a vessel or inflow blob within 1 mm of a lesion's reach is dropped.

    - vessels: Poisson(6) tubes of radius 0.6-1.3 mm along 8-25 mm random walks that
      stay in sulcal CSF, ratio 1.3-1.9;
    - bright hippocampus: each side with probability 0.35, ratio 1.2-1.5;
    - bright septum pellucidum: probability 0.6, a 1-2 mm slab at the midline between
      the frontal horns and bodies, ratio 1.2-1.5;
    - CSF inflow: in the third ventricle (prob. 0.4) and the fourth (prob. 0.4), a blob
      of radius 1.5-3 mm, ratio 1.3-2.0.

    Args:
        rng: Random generator.
        subject: The subject.
        lesions: The lesions (to keep away from).

    Returns:
        The mimics.
    """
    mimics: list[MimicC] = []
    for _ in range(int(rng.poisson(6))):
        world, t = _candidates(rng, subject, 300)
        ok = (t["csf"] > 0.8) & (t["d_wm"] > -8.0) & (t["d_wm"] < -1.5) & (t["vent"] < 0.1)
        if not ok.any():
            continue
        start = reference_points(subject, world[int(np.argmax(ok)) :][:1])[0].astype(np.float64)
        steps = int(rng.uniform(8.0, 25.0) / 1.5)
        direction, points = _unit(rng), [start]
        for _ in range(steps):
            trial = points[-1] + 1.5 * direction
            if tissue_maps(subject, trial[None].astype(np.float32), 1.0)["csf"][0] < 0.5:
                direction = _unit(rng)
                continue
            points.append(trial)
            direction = direction + 0.5 * _unit(rng)
            direction /= np.linalg.norm(direction)
        if len(points) < 3:
            continue
        pts, r = curve(np.array(points), np.full(len(points), rng.uniform(0.6, 1.3)))
        mimics.append(MimicC("vessel", Tubes.build(pts, r), float(rng.uniform(1.3, 1.9))))
    for side, tube in enumerate(subject.hippocampi):
        if rng.random() < 0.35:
            mimics.append(MimicC("hippocampus", tube, float(rng.uniform(1.2, 1.5)), float(side)))
    if rng.random() < 0.6:
        line = np.array([[0.0, 26.0, 14.0], [0.0, 10.0, 18.0], [0.0, -8.0, 18.0]])
        pts, r = curve(line, np.full(3, 5.0))
        thick = float(rng.uniform(1.0, 2.0))
        mimics.append(MimicC("septum", Tubes.build(pts, r), float(rng.uniform(1.2, 1.5)), thick))
    for where in ("third", "fourth"):
        if rng.random() < 0.4:
            if where == "third":
                c = np.array([0.0, rng.uniform(-18.0, 0.0), rng.uniform(-2.0, 10.0)])
            else:
                c = subject.fourth[0] + rng.normal(scale=1.0, size=3) * [0, 1, 1]
            radius = rng.uniform(1.5, 3.0)
            tube = Tubes.build(c[None], np.array([radius]))
            mimics.append(MimicC("inflow", tube, float(rng.uniform(1.3, 2.0))))

    def clear(m: MimicC) -> bool:
        if m.kind not in ("vessel", "inflow"):
            return True
        for les in lesions:
            d = np.linalg.norm(m.tubes.samples - les.centre, axis=1) - m.tubes.radii
            if np.any(d < les.reach + 1.0):
                return False
        return True

    return [m for m in mimics if clear(m)]


def lesion_maps(
    lesions: list[LesionC],
    u: np.ndarray,
    world_axes: list[np.ndarray],
    width: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise the lesions on a grid.

    Args:
        lesions: The lesions.
        u: Reference position of every grid voxel (X, Y, Z, 3), mm.
        world_axes: World coordinates of the grid along x, y, z (3 arrays), mm.
        width: Partial-volume edge width (the voxel size), mm.

    Returns:
        ``(fraction, factor, owner)`` (X, Y, Z): the largest lesion fraction per voxel,
        its signal relative to white matter (ratio x rim/core pattern), and the index
        of the lesion that gives it (-1 where none).
    """
    grid = u.shape[:3]
    frac = np.zeros(grid, dtype=np.float32)
    factor = np.ones(grid, dtype=np.float32)
    owner = np.full(grid, -1, dtype=np.int32)
    for n, les in enumerate(lesions):
        reach = les.reach * 1.15 + 4.0 + width
        box = []
        for a in range(3):
            lo = int(np.searchsorted(world_axes[a], les.world[a] - reach))
            hi = int(np.searchsorted(world_axes[a], les.world[a] + reach)) + 1
            box.append(slice(max(lo, 0), min(hi, grid[a])))
        if any(s.stop <= s.start for s in box):
            continue
        sl = (box[0], box[1], box[2])
        v = u[sl] - les.centre.astype(np.float32)
        q = (v @ les.rotation.astype(np.float32)) / les.axes.astype(np.float32)
        half = (les.noise.shape[0] - 1) / 2.0
        coords = np.moveaxis(v + np.float32(half), -1, 0)
        g = ndi.map_coordinates(les.noise, coords, order=1, mode="constant", cval=0.0)
        level = 1.0 - np.sum(q * q, axis=-1) + les.roughness * g
        r = float(np.prod(les.axes) ** (1.0 / 3.0))
        f = soft(level * (r / 2.0), width)
        if les.pattern == "rim":
            weight = np.clip(1.0 - level / 0.35, 0.0, 1.0)
        elif les.pattern == "core":
            weight = np.clip((level - 0.4) / 0.3, 0.0, 1.0)
        else:
            weight = np.zeros_like(level)
        sig = les.ratio * (1.0 + (les.factor - 1.0) * weight)
        better = f > frac[sl]
        frac[sl] = np.where(better, f, frac[sl])
        factor[sl] = np.where(better, sig, factor[sl])
        owner[sl] = np.where(better, n, owner[sl])
    return frac, factor, owner


def mimic_maps(
    mimics: list[MimicC], u: np.ndarray, tissue: dict[str, np.ndarray], width: float
) -> list[np.ndarray]:
    """Fraction (N,) of each mimic at reference points ``u`` (N, 3), given their tissue.

    Vessels fill CSF, inflow blobs the ventricle they sit in, a bright hippocampus its
    tissue, the septum the white matter it crosses within 4 mm of the ventricles.
    """
    out = []
    for m in mimics:
        if m.kind == "hippocampus":
            f = tissue["hippo_r" if m.side else "hippo_l"]
        elif m.kind == "septum":
            d_line = m.tubes.distance(u, cap=12.0)  # within 5 mm of the centre line
            slab = soft(np.float32(m.side / 2.0) - np.abs(u[:, 0]), width)
            f = slab * soft(-d_line, width) * soft(4.0 - tissue["d_vent"], width)
            f = f * np.clip(tissue["wm"] + tissue["vent"], 0.0, 1.0)
        elif m.kind == "inflow":
            f = soft(-m.tubes.distance(u), width) * tissue["vent"]
        else:
            f = soft(-m.tubes.distance(u), width) * tissue["csf"]
        out.append(f.astype(np.float32))
    return out
