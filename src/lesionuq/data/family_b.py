"""Phantom family B: a second synthetic MS FLAIR data set, independent of family A.

Family A (:mod:`lesionuq.data.phantom`, the default) deforms the MNI152 2009 template and
its tissue probability maps. Family B is written separately, with other generative rules
at every step, so that a scorer that learned family A's own rules can be caught:

=====================  ======================================  ==============================
step                   family A                                family B (this module)
=====================  ======================================  ==============================
anatomy                MNI152 2009 T1 + GM/WM/CSF maps          FreeSurfer's fsaverage5 white
                       (nilearn); cerebellum, brainstem         and pial surfaces (nilearn),
                                                               voxelised; cerebrum only;
                                                               synthetic ventricles (tubes)
                                                               whose size varies per subject
                                                               (atrophy x0.8-1.9) and deep
                                                               grey nuclei (ellipsoids)
deformation            affine + Gaussian radial-basis field     affine + cubic B-spline free
                                                               form (16 mm control grid)
lesion shapes          harmonic-modulated ellipsoids, erf edge  unions of spheres with a
                                                               linear partial-volume edge:
                                                               tapered Dawson fingers from
                                                               the ventricle wall, tubes
                                                               along random walks in white
                                                               matter, irregular clusters
lesion count / size    max_lesions x Beta(1.3, 2.2);            negative binomial, mean 0.35
                       log-normal volumes                      max_lesions; Pareto sizes
                                                               (heavy tail of large ones)
lesion contrast        signal equation; ratio U(1.1, 2.0)       direct tissue ratios; lesion/
                                                               WM 1 + logN(ln 0.45, 0.45)
                                                               (1.08-2.6) with a smooth
                                                               internal texture (+-10 %)
mimics                 horn caps, rim, cortical spots, flow     punctate small-vessel dots,
                       blobs, dirty-appearing white matter      choroid plexus, ependymal
                                                               band, cortical ribbon
                                                               segments, a ghost of the
                                                               image along phase encoding
contrast / scanner     inversion-recovery equation; isotropic   tissue ratios drawn per scan;
                       blur, thick slices with prob. 0.3;       2-D multi-slice acquisition
                       radial-basis bias; Rician noise          always (slices 2-4 mm);
                                                               polynomial bias (10-30 %);
                                                               non-central chi noise from
                                                               1, 4 or 8 coils
=====================  ======================================  ==============================

The file contract is family A's: ``case_XXX/flair.nii.gz`` (int16, 0 outside the brain,
>= 1 inside), ``case_XXX/mask.nii.gz`` (uint8, lesion fraction > 0.5), ``cases.csv``
written last, and ``phantom.json`` with the config and every case's draw. All random
draws are made in millimetres before rendering, so one seed gives the same subject at
any spacing.

Example:
    >>> draw = draw_case_b(0)
    >>> case = render_case_b(draw, spacing=3.0)
    >>> case.flair.shape
    (51, 63, 48)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from lesionuq.data.phantom.dataset import write_drawn_dataset

if TYPE_CHECKING:
    from lesionuq.config import PhantomConfig

__all__ = [
    "BOX_MM",
    "AnatomyB",
    "CaseDrawB",
    "PhantomCaseB",
    "draw_case_b",
    "inside_mesh",
    "load_anatomy_b",
    "make_family_b_dataset",
    "render_case_b",
]

BOX_MM = ((-76.0, 76.0), (-112.0, 76.0), (-56.0, 88.0))
"""World box (RAS mm, per axis) holding the fsaverage cerebrum with a margin."""

# Synthetic lateral ventricle of the left hemisphere (x < 0) as a chain of spheres:
# (x, y, z, radius) in mm, frontal horn -> body -> atrium -> occipital horn, plus the
# temporal horn from the atrium; the right one is its mirror image.
_VENTRICLE_LEFT = np.array(
    [
        [-10, 28, 8, 4.5],
        [-11, 22, 12, 5.5],
        [-12, 14, 15, 5.0],
        [-13, 5, 18, 4.5],
        [-14, -5, 19, 4.0],
        [-16, -15, 19, 4.0],
        [-19, -25, 17, 4.5],
        [-23, -33, 13, 6.0],
        [-24, -42, 10, 5.0],
        [-22, -51, 7, 3.5],
        [-20, -59, 5, 2.5],
        [-27, -30, 4, 3.5],
        [-30, -24, -4, 3.0],
        [-31, -16, -12, 2.5],
        [-30, -8, -18, 2.0],
    ],
    dtype=np.float64,
)
_ATRIUM = 7  # index of the atrium sphere in the chain (choroid plexus)
_BODY = slice(2, 7)  # spheres of the ventricle body (ependymal band)

# Deep grey nuclei of the left hemisphere as ellipsoids: centre (mm), radii (mm).
_DEEP_GM_LEFT = (
    ((-11.0, -18.0, 6.0), (8.0, 13.0, 8.0)),  # thalamus
    ((-25.0, 2.0, 0.0), (5.0, 13.0, 8.0)),  # putamen
    ((-14.0, 13.0, 9.0), (4.5, 7.0, 7.0)),  # caudate head
)

_CONTROL_MM = 16.0  # B-spline control grid spacing of the deformation


def inside_mesh(
    verts: np.ndarray, faces: np.ndarray, origin: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Voxels of a 1 mm grid inside a closed triangle mesh (ray parity along z).

    Args:
        verts: Vertices (V, 3) in mm.
        faces: Triangles (F, 3) of vertex indices.
        origin: World position (3,) of voxel (0, 0, 0); voxel (i, j, k) is at
            ``origin + (i, j, k)`` mm.
        shape: Grid shape (X, Y, Z).

    Returns:
        Boolean array of ``shape``: True inside the mesh.
    """
    v = np.asarray(verts, dtype=np.float64) - np.asarray(origin, dtype=np.float64)
    v[:, 0] += 1.234567e-4  # keep ray columns off vertices and edges
    v[:, 1] += 2.345678e-4
    tri = v[np.asarray(faces)]  # (F, 3 corners, 3)
    lo = np.ceil(tri[:, :, :2].min(axis=1)).astype(np.int64)  # (F, 2)
    hi = np.floor(tri[:, :, :2].max(axis=1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(shape[:2]) - 1)
    nx = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    ny = np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    count = nx * ny
    tid = np.repeat(np.arange(len(tri)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    ci = lo[tid, 0] + local // np.maximum(ny[tid], 1)
    cj = lo[tid, 1] + local % np.maximum(ny[tid], 1)
    a, b, c = tri[tid, 0], tri[tid, 1], tri[tid, 2]
    px, py = ci.astype(np.float64), cj.astype(np.float64)
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    w1 = ((b[:, 0] - px) * (c[:, 1] - py) - (c[:, 0] - px) * (b[:, 1] - py)) / det
    w2 = ((c[:, 0] - px) * (a[:, 1] - py) - (a[:, 0] - px) * (c[:, 1] - py)) / det
    w3 = 1.0 - w1 - w2
    hit = ok & (w1 >= 0) & (w2 >= 0) & (w3 >= 0)
    z = w1 * a[:, 2] + w2 * b[:, 2] + w3 * c[:, 2]
    k = np.clip(np.ceil(z[hit]).astype(np.int64), 0, shape[2])
    cross = np.zeros((shape[0], shape[1], shape[2] + 1), dtype=np.int32)
    np.add.at(cross, (ci[hit], cj[hit], k), 1)
    return (np.cumsum(cross[:, :, : shape[2]], axis=2) % 2).astype(bool)


@dataclass(frozen=True)
class AnatomyB:
    """Family B's reference anatomy on a 1 mm grid over :data:`BOX_MM`.

    Attributes:
        wm: White-matter fraction (X, Y, Z), inside the white surfaces (with the
            subcortical space the surfaces enclose).
        gm: Cortical grey-matter fraction (X, Y, Z), between white and pial surfaces.
        brain: Brain envelope fraction (X, Y, Z): the pial interior closed and dilated by
            2 mm (cortex, white matter and the CSF around and inside them).
        origin: World position (3,) of voxel (0, 0, 0), mm.
    """

    wm: np.ndarray
    gm: np.ndarray
    brain: np.ndarray
    origin: np.ndarray


@functools.lru_cache(maxsize=1)
def load_anatomy_b() -> AnatomyB:
    """Voxelise fsaverage5's white and pial surfaces shipped inside nilearn (cached).

    Returns:
        The reference anatomy (partial volume from a 0.5 mm Gaussian).
    """
    folder = resources.files("nilearn.datasets") / "data" / "fsaverage5"
    origin = np.array([lo for lo, _ in BOX_MM])
    shape = tuple(int(hi - lo) + 1 for lo, hi in BOX_MM)
    assert len(shape) == 3
    grid = (shape[0], shape[1], shape[2])

    def solid(name: str) -> np.ndarray:
        out = np.zeros(grid, dtype=bool)
        for side in ("left", "right"):
            gii = nib.load(str(folder / f"{name}_{side}.gii.gz"))
            verts, faces = gii.agg_data()  # type: ignore[attr-defined]
            out |= inside_mesh(verts, faces, origin, grid)
        return out

    white = solid("white")
    pial = solid("pial") | white
    ball = ndi.generate_binary_structure(3, 1)
    envelope = ndi.binary_dilation(ndi.binary_closing(pial, ball, iterations=3), ball, 2)
    envelope = ndi.binary_fill_holes(envelope)

    def soft(m: np.ndarray) -> np.ndarray:
        return np.clip(ndi.gaussian_filter(m.astype(np.float32), 0.5), 0.0, 1.0)

    wm = soft(white)
    gm = np.clip(soft(pial) - wm, 0.0, 1.0)
    return AnatomyB(wm=wm, gm=gm, brain=soft(envelope), origin=origin)


# ----------------------------------------------------------------------------- draws


@dataclass
class Spheres:
    """A shape drawn as a union of spheres (a lesion or a discrete mimic).

    Attributes:
        kind: Shape kind (``finger``, ``tract``, ``cluster``; mimics: ``svd_dot``,
            ``choroid``, ``cortical``).
        centres: Sphere centres (S, 3) in reference mm.
        radii: Sphere radii (S,) in mm.
        ratio: Signal relative to white matter (lesions, dots) or to the tissue it
            replaces (cortical segments, choroid plexus: relative to white matter).
    """

    kind: str
    centres: np.ndarray
    radii: np.ndarray
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (centres and radii rounded to 0.01 mm)."""
        return {
            "kind": self.kind,
            "centres": np.round(self.centres, 2).tolist(),
            "radii": np.round(self.radii, 2).tolist(),
            "ratio": round(float(self.ratio), 4),
        }

    @property
    def volume_mm3(self) -> float:
        """Nominal volume: the sum of the sphere volumes (an upper bound of the union)."""
        return float(np.sum(4.0 / 3.0 * np.pi * self.radii**3))


@dataclass
class CaseDrawB:
    """Every random choice of one family-B case (rendering is deterministic given it).

    Attributes:
        seed: The case's seed.
        matrix: Reference-from-output linear map (3, 3) about the box centre.
        control: B-spline control displacements (3, CX, CY, CZ) in mm.
        atrophy: Ventricle radius scale.
        tissue: Signal of ``gm``, ``deep_gm``, ``csf`` relative to white matter.
        lesions: The ground-truth lesions.
        mimics: Discrete mimics (not in the ground truth).
        band: Ependymal band ``(thickness_mm, ratio, side)`` or None.
        ghost: Ghost ``(shift_mm, amplitude)`` along y, or None.
        texture: Lesion texture plane waves (W, 5): direction (3), wavelength mm, phase.
        scanner: Acquisition: ``slice_mm``, ``slice_axis``, ``inplane_fwhm``, ``coils``,
            ``noise``, ``gain``, ``bias`` (polynomial coefficients, 20).
    """

    seed: int
    matrix: np.ndarray
    control: np.ndarray
    atrophy: float
    tissue: dict[str, float]
    lesions: list[Spheres]
    mimics: list[Spheres]
    band: tuple[float, float, int] | None
    ghost: tuple[float, float] | None
    texture: np.ndarray
    scanner: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the draw (what ``phantom.json`` stores per case)."""
        return {
            "seed": self.seed,
            "matrix": np.round(self.matrix, 6).tolist(),
            "control_std_mm": round(float(self.control.std()), 3),
            "atrophy": round(self.atrophy, 4),
            "tissue": {k: round(v, 4) for k, v in self.tissue.items()},
            "lesions": [s.to_dict() for s in self.lesions],
            "mimics": [s.to_dict() for s in self.mimics],
            "band": self.band,
            "ghost": self.ghost,
            "scanner": self.scanner,
        }


_VENTRICLE_PATHS = (tuple(range(11)), (_ATRIUM, 11, 12, 13, 14))


def _densify(
    chain: np.ndarray, paths: tuple[tuple[int, ...], ...] = _VENTRICLE_PATHS, step: float = 1.5
) -> np.ndarray:
    """Spheres every ``step`` mm along paths through a chain (S0, 4), radii interpolated.

    Returns:
        The dense chain (S, 4): x, y, z, radius.
    """
    out = []
    for path in paths:
        for a, b in itertools.pairwise(path):
            n = max(int(np.ceil(np.linalg.norm(chain[b, :3] - chain[a, :3]) / step)), 1)
            t = np.arange(n)[:, None] / n
            out.append(chain[a] * (1 - t) + chain[b] * t)
        out.append(chain[path[-1]][None])
    return np.concatenate(out)


def _ventricle(atrophy: float) -> tuple[np.ndarray, np.ndarray]:
    """Both ventricles as dense sphere chains: centres (2S, 3), radii (2S,) at this atrophy.

    The radii scale with ``atrophy`` and the centres move away from the midline by
    ``(atrophy - 1) * 4`` mm (wider ventricles push their lateral walls out).
    """
    left = _densify(_VENTRICLE_LEFT)
    left[:, 0] -= (atrophy - 1.0) * 4.0
    right = left * np.array([-1.0, 1.0, 1.0, 1.0])
    both = np.concatenate([left, right])
    return both[:, :3], both[:, 3] * atrophy


def _lookup(volume: np.ndarray, anatomy: AnatomyB, points: np.ndarray) -> np.ndarray:
    """Nearest-voxel value of a reference map at points (N, 3) mm (0 outside the box)."""
    idx = np.rint(points - anatomy.origin).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array(volume.shape)), axis=1)
    out = np.zeros(len(points), dtype=np.float64)
    out[ok] = volume[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
    return out


def _unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lesion_volume(rng: np.random.Generator) -> float:
    """Pareto volume (mm3): minimum 30, tail index 1.2, clipped at 4000."""
    return float(min(30.0 * (1.0 - rng.random()) ** (-1.0 / 1.2), 4000.0))


def _draw_finger(
    rng: np.random.Generator,
    anatomy: AnatomyB,
    vent_c: np.ndarray,
    vent_r: np.ndarray,
    volume: float,
) -> Spheres | None:
    """A tapered chain of spheres leaving the ventricle wall outwards (Dawson finger)."""
    i = int(rng.integers(0, len(vent_c)))
    out = _unit(rng)[0]
    out[0] = abs(out[0]) * np.sign(vent_c[i, 0])  # away from the midline
    start = vent_c[i] + (vent_r[i] + 0.5) * out
    r0 = (3.0 * volume / (4.0 * np.pi) / 2.5) ** (1.0 / 3.0)
    n = int(rng.integers(4, 8))
    taper = np.linspace(1.0, 0.5, n)
    radii = r0 * taper
    steps = np.concatenate([[0.0], np.cumsum(0.6 * radii[:-1])])
    centres = start + (steps[:, None] + r0) * out
    if _lookup(anatomy.wm, anatomy, centres).mean() < 0.6:
        return None
    return Spheres("finger", centres, radii, 0.0)


def _draw_tract(rng: np.random.Generator, anatomy: AnatomyB, volume: float) -> Spheres | None:
    """A tube along a persistent random walk inside white matter."""
    start = _random_point(rng, anatomy, lambda wm, gm: wm > 0.95)
    if start is None:
        return None
    radius = float(np.clip((volume / 60.0) ** 0.5, 1.0, 3.0))
    length = float(np.clip(volume / (np.pi * radius**2), 4.0, 45.0))
    direction = _unit(rng)[0]
    points = [start]
    for _ in range(int(length / 1.5)):
        direction = direction + 0.35 * _unit(rng)[0]
        direction /= np.linalg.norm(direction)
        nxt = points[-1] + 1.5 * direction
        if _lookup(anatomy.wm, anatomy, nxt[None])[0] < 0.8:
            direction = -direction
            continue
        points.append(nxt)
    if len(points) < 3:
        return None
    centres = np.array(points)
    radii = radius * rng.uniform(0.8, 1.2, size=len(centres))
    return Spheres("tract", centres, radii, 0.0)


def _draw_cluster(
    rng: np.random.Generator, anatomy: AnatomyB, volume: float, juxtacortical: bool
) -> Spheres | None:
    """An irregular cluster of 3-10 spheres in deep or juxtacortical white matter."""

    def deep(wm: np.ndarray, gm: np.ndarray) -> np.ndarray:
        return wm > 0.95

    def juxta(wm: np.ndarray, gm: np.ndarray) -> np.ndarray:
        return (wm > 0.55) & (wm < 0.9) & (gm > 0.1)

    centre = _random_point(rng, anatomy, juxta if juxtacortical else deep)
    if centre is None:
        return None
    r_eff = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
    n = int(rng.integers(3, 11))
    centres = centre + rng.normal(scale=0.4 * r_eff, size=(n, 3))
    radii = r_eff * rng.uniform(0.5, 0.9, size=n)
    if _lookup(anatomy.wm + anatomy.gm, anatomy, centres).mean() < 0.7:
        return None
    return Spheres("cluster", centres, radii, 0.0)


def _random_point(
    rng: np.random.Generator,
    anatomy: AnatomyB,
    rule: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tries: int = 200,
) -> np.ndarray | None:
    """A uniform point of the box whose reference tissue satisfies ``rule(wm, gm)``."""
    lo = np.array([b[0] for b in BOX_MM])
    hi = np.array([b[1] for b in BOX_MM])
    pts = rng.uniform(lo, hi, size=(tries, 3))
    ok = rule(_lookup(anatomy.wm, anatomy, pts), _lookup(anatomy.gm, anatomy, pts))
    return pts[int(np.argmax(ok))] if ok.any() else None


def _lesion_ratio(rng: np.random.Generator) -> float:
    """Lesion / white-matter signal: 1 + log-normal(ln 0.45, 0.45), clipped to 1.08-2.6."""
    return float(np.clip(1.0 + math.exp(rng.normal(math.log(0.45), 0.45)), 1.08, 2.6))


def _apart(shape: Spheres, others: list[Spheres], gap: float) -> bool:
    """No sphere of ``shape`` within ``gap`` mm of a sphere of ``others``."""
    for o in others:
        d = np.linalg.norm(shape.centres[:, None, :] - o.centres[None, :, :], axis=2)
        if np.any(d < shape.radii[:, None] + o.radii[None, :] + gap):
            return False
    return True


def draw_case_b(seed: int, max_lesions: int = 40) -> CaseDrawB:
    """Draw every random choice of one family-B case (in mm, independent of spacing).

    Args:
        seed: Case seed.
        max_lesions: Lesion-load scale: the count is negative binomial with mean
            ``0.35 * max_lesions`` (dispersion 2), capped at ``max_lesions``.

    Returns:
        The draw.
    """
    rng = np.random.default_rng(seed)
    anatomy = load_anatomy_b()
    angles = np.deg2rad(rng.uniform(-6.0, 6.0, size=3))
    matrix = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        rot = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        matrix = matrix @ rot
    matrix = matrix @ np.diag(rng.uniform(0.9, 1.1, size=3))
    n_ctrl = [math.ceil((hi - lo) / _CONTROL_MM) + 1 for lo, hi in BOX_MM]
    control = rng.normal(scale=rng.uniform(1.0, 3.0), size=(3, *n_ctrl))
    atrophy = float(rng.uniform(0.8, 1.9))
    tissue = {
        "gm": float(rng.uniform(1.12, 1.35)),
        "deep_gm": float(rng.uniform(1.0, 1.2)),
        "csf": float(rng.uniform(0.04, 0.25)),
    }
    vent_c, vent_r = _ventricle(atrophy)

    mean = 0.35 * max_lesions
    count = 0 if mean <= 0 else int(min(rng.negative_binomial(2, 2.0 / (2.0 + mean)), max_lesions))
    kinds = rng.choice(["finger", "tract", "deep", "juxta"], size=count, p=[0.35, 0.2, 0.25, 0.2])
    lesions: list[Spheres] = []
    for kind in kinds:
        volume = _lesion_volume(rng)
        shape: Spheres | None
        if kind == "finger":
            shape = _draw_finger(rng, anatomy, vent_c, vent_r, volume)
        elif kind == "tract":
            shape = _draw_tract(rng, anatomy, volume)
        else:
            shape = _draw_cluster(rng, anatomy, volume, juxtacortical=kind == "juxta")
        if shape is not None:
            shape.ratio = _lesion_ratio(rng)
            lesions.append(shape)

    mimics: list[Spheres] = []
    for _ in range(int(rng.poisson(8))):  # punctate small-vessel hyperintensities
        p = _random_point(rng, anatomy, lambda wm, gm: wm > 0.95)
        if p is not None:
            mimics.append(
                Spheres(
                    "svd_dot", p[None], np.array([rng.uniform(0.9, 1.8)]), rng.uniform(1.2, 1.7)
                )
            )
    for sign in (1.0, -1.0):  # choroid plexus in each atrium
        if rng.random() < 0.8:
            atrium = _VENTRICLE_LEFT[_ATRIUM, :3] * np.array([sign, 1.0, 1.0])
            atrium[0] -= sign * (atrophy - 1.0) * 4.0
            c = atrium + rng.normal(scale=1.0, size=3)
            r = np.array([rng.uniform(2.0, 3.5) * min(atrophy, 1.3)])
            mimics.append(Spheres("choroid", c[None], r, rng.uniform(0.8, 1.3)))
    for _ in range(int(rng.poisson(3))):  # bright cortical ribbon segments
        p = _random_point(rng, anatomy, lambda wm, gm: gm > 0.6)
        if p is not None:
            centres = p + rng.normal(scale=2.0, size=(3, 3))
            mimics.append(
                Spheres("cortical", centres, rng.uniform(2.0, 4.0, size=3), rng.uniform(1.15, 1.4))
            )
    mimics = [m for m in mimics if _apart(m, lesions, 1.0)]
    band = None
    if rng.random() < 0.6:
        band = (
            float(rng.uniform(1.0, 2.0)),
            float(rng.uniform(1.1, 1.35)),
            int(rng.integers(0, 3)),
        )
    ghost = None
    if rng.random() < 0.5:
        ghost = (float(rng.uniform(20.0, 60.0)), float(rng.uniform(0.03, 0.08)))
    waves = np.concatenate(
        [_unit(rng, 12), rng.uniform(3.0, 8.0, size=(12, 1)), rng.uniform(0, 2 * np.pi, (12, 1))],
        axis=1,
    )
    coils = int(rng.choice([1, 4, 8]))
    scanner = {
        "slice_mm": round(float(rng.uniform(2.0, 4.0)), 4),
        "slice_axis": int(rng.choice([2, 1], p=[0.8, 0.2])),
        "inplane_fwhm": round(float(rng.uniform(0.7, 1.2)), 4),
        "coils": coils,
        "noise": round(float(rng.uniform(0.015, 0.06)), 5),
        "gain": round(float(800.0 * rng.uniform(0.7, 1.5)), 3),
        "bias_max": round(float(rng.uniform(0.1, 0.3)), 4),
        "bias": np.round(rng.normal(size=20), 6).tolist(),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }
    return CaseDrawB(
        seed=int(seed),
        matrix=matrix,
        control=control,
        atrophy=atrophy,
        tissue=tissue,
        lesions=lesions,
        mimics=mimics,
        band=band,
        ghost=ghost,
        texture=waves,
        scanner=scanner,
    )


# ----------------------------------------------------------------------------- render


@dataclass
class PhantomCaseB:
    """One rendered family-B case.

    Attributes:
        flair: FLAIR image (X, Y, Z), int16 values, RAS affine.
        mask: Ground truth (X, Y, Z), uint8 (lesion fraction > 0.5).
        info: Summary: ``lesions`` (connected components of the mask), ``mimics``
            (count per kind), ``scanner``.
    """

    flair: nib.Nifti1Image
    mask: nib.Nifti1Image
    info: dict[str, Any]


def _sphere_fraction(
    shapes: list[Spheres], ref: np.ndarray, fwd: np.ndarray, spacing: float, origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Soft union of sphere shapes on the output grid, and which shape wins per voxel.

    Args:
        shapes: The shapes, in reference mm.
        ref: Reference position of every output voxel (X, Y, Z, 3), mm.
        fwd: Output-from-reference linear map (3, 3) about the box centre (ignoring the
            B-spline part, covered by a 12 mm margin).
        spacing: Output voxel size, mm (the partial-volume ramp width).
        origin: World position of output voxel 0.

    Returns:
        ``(fraction, owner)``: the max over shapes of the spheres' linear ramps
        ``clip((r - d) / spacing + 1/2, 0, 1)`` (X, Y, Z), and the index of the shape
        giving it (-1 where the fraction is 0).
    """
    grid = ref.shape[:3]
    frac = np.zeros(grid, dtype=np.float32)
    owner = np.full(grid, -1, dtype=np.int32)
    centre = np.array([(lo + hi) / 2 for lo, hi in BOX_MM])
    for n, shape in enumerate(shapes):
        for c, r in zip(shape.centres, shape.radii, strict=True):
            q = centre + fwd @ (c - centre)
            margin = r + 12.0 + spacing
            lo = np.maximum(np.floor((q - margin - origin) / spacing).astype(int), 0)
            hi = np.minimum(np.ceil((q + margin - origin) / spacing).astype(int) + 1, grid)
            if np.any(hi <= lo):
                continue
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            d = np.linalg.norm(ref[box] - c, axis=-1)
            f = np.clip((r - d) / spacing + 0.5, 0.0, 1.0).astype(np.float32)
            better = f > frac[box]
            frac[box] = np.where(better, f, frac[box])
            owner[box] = np.where(better, n, owner[box])
    return frac, owner


def _chain_distance(
    centres: np.ndarray,
    radii: np.ndarray,
    ref: np.ndarray,
    fwd: np.ndarray,
    spacing: float,
    origin: np.ndarray,
    cap: float = 8.0,
) -> np.ndarray:
    """Signed distance (mm) to a union of spheres, capped: min(cap, min_s |p - c_s| - r_s).

    Each sphere is evaluated only in its box on the output grid (as in
    :func:`_sphere_fraction`), so farther voxels keep ``cap``.
    """
    grid = ref.shape[:3]
    out = np.full(grid, cap, dtype=np.float32)
    centre = np.array([(lo + hi) / 2 for lo, hi in BOX_MM])
    for c, r in zip(centres, radii, strict=True):
        q = centre + fwd @ (c - centre)
        margin = r + cap + 12.0 + spacing
        lo = np.maximum(np.floor((q - margin - origin) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((q + margin - origin) / spacing).astype(int) + 1, grid)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.minimum(out[box], np.linalg.norm(ref[box] - c, axis=-1) - r, out=out[box])
    return out


def render_case_b(
    draw: CaseDrawB, spacing: float = 1.0, shape: tuple[int, int, int] | None = None
) -> PhantomCaseB:
    """Render a family-B draw on an isotropic output grid (deterministic).

    Args:
        draw: The case's draw (:func:`draw_case_b`).
        spacing: Output voxel size (mm).
        shape: Output grid (X, Y, Z), centred on the box; None for the whole box.

    Returns:
        The case.
    """
    anatomy = load_anatomy_b()
    box_lo = np.array([lo for lo, _ in BOX_MM])
    box_hi = np.array([hi for _, hi in BOX_MM])
    centre = (box_lo + box_hi) / 2.0
    full = np.floor((box_hi - box_lo) / spacing + 0.5).astype(int)
    grid = full if shape is None else np.array(shape, dtype=int)
    origin = centre - (grid - 1) / 2.0 * spacing
    axes = [origin[a] + spacing * np.arange(grid[a]) for a in range(3)]
    world = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3)

    # reference position of every output voxel: affine + cubic B-spline displacement
    # the cubic B-spline is evaluated on a 4 mm grid, then linearly interpolated
    coarse_axes = [np.arange(lo, hi + 4.0, 4.0) for lo, hi in BOX_MM]
    coarse = np.stack(np.meshgrid(*coarse_axes, indexing="ij"), axis=0)
    ctrl_pos = (coarse - box_lo[:, None, None, None]) / _CONTROL_MM
    fine_pos = np.moveaxis((world - box_lo) / 4.0, -1, 0)
    disp = np.stack(
        [
            ndi.map_coordinates(
                ndi.map_coordinates(draw.control[a], ctrl_pos, order=3, mode="nearest"),
                fine_pos,
                order=1,
                mode="nearest",
            )
            for a in range(3)
        ],
        axis=-1,
    )
    ref = centre + (world - centre) @ draw.matrix.T + disp
    fwd = np.linalg.inv(draw.matrix)

    coords = np.moveaxis(ref - anatomy.origin, -1, 0)

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0).astype(
            np.float32
        )

    wm, gm, brain = sample(anatomy.wm), sample(anatomy.gm), sample(anatomy.brain)
    deep = np.zeros_like(wm)
    for (cx, cy, cz), radii in _DEEP_GM_LEFT:
        for x in (cx, -cx):
            rel = (ref - np.array([x, cy, cz])) / np.array(radii)
            d = (np.linalg.norm(rel, axis=-1) - 1.0) * min(radii)
            deep = np.maximum(deep, np.clip(0.5 - d / spacing, 0.0, 1.0))
    deep = deep * wm
    wm = wm - deep
    vent_c, vent_r = _ventricle(draw.atrophy)
    vdist = _chain_distance(vent_c, vent_r, ref, fwd, spacing, origin)
    vent = np.clip(0.5 - vdist / spacing, 0.0, 1.0) * np.clip(wm + deep + gm, 0.0, 1.0)
    keep = 1.0 - vent
    wm, gm, deep = wm * keep, gm * keep, deep * keep
    parenchyma = np.clip(wm + gm + deep, 0.0, 1.0)
    csf = np.clip(brain - parenchyma, 0.0, 1.0)

    t = draw.tissue
    tissue_signal = wm + t["gm"] * gm + t["deep_gm"] * deep
    # ependymal band: a bright shell around part of the ventricle body
    if draw.band is not None:
        thick, ratio, side = draw.band
        body = _densify(_VENTRICLE_LEFT, (tuple(range(_BODY.start or 0, _BODY.stop or 0)),))
        body[:, 0] -= (draw.atrophy - 1.0) * 4.0
        right = body * np.array([-1.0, 1.0, 1.0, 1.0])
        chosen = (body, right, np.concatenate([body, right]))[side]
        bd = _chain_distance(chosen[:, :3], chosen[:, 3] * draw.atrophy, ref, fwd, spacing, origin)
        shell = np.clip(1.0 - np.abs(bd - thick / 2.0) / (thick / 2.0 + spacing / 2.0), 0.0, 1.0)
        tissue_signal = tissue_signal * (1.0 + (ratio - 1.0) * shell * (wm > 0.3))
    # cortical ribbon segments and small-vessel dots modulate the tissue in place
    for m in draw.mimics:
        f, _ = _sphere_fraction([m], ref, fwd, spacing, origin)
        if m.kind == "cortical":
            tissue_signal = tissue_signal + (m.ratio - 1.0) * t["gm"] * gm * f
        elif m.kind == "svd_dot":
            tissue_signal = tissue_signal * (1.0 - f) + m.ratio * f * parenchyma
    signal = tissue_signal + t["csf"] * csf
    for m in draw.mimics:
        if m.kind == "choroid":
            f, _ = _sphere_fraction([m], ref, fwd, spacing, origin)
            f = f * csf
            signal = signal * (1.0 - f) + m.ratio * f

    # lesions: replace the parenchyma fraction with the lesion's textured signal
    lfrac, owner = _sphere_fraction(draw.lesions, ref, fwd, spacing, origin)
    lfrac = lfrac * parenchyma
    ratios = np.array([les.ratio for les in draw.lesions] + [1.0], dtype=np.float32)
    w = draw.texture
    phase = (ref @ w[:, :3].T) * (2.0 * np.pi / w[:, 3]) + w[:, 4]
    texture = 1.0 + 0.1 * np.cos(phase).mean(axis=-1) * math.sqrt(2.0 * len(w)) / 3.0
    les_signal = ratios[owner] * texture.astype(np.float32)
    signal = signal * (1.0 - lfrac) + les_signal * lfrac
    mask = (lfrac > 0.5).astype(np.uint8)

    # acquisition: 2-D multi-slice point spread, ghost, bias, coil noise, gain
    sc = draw.scanner
    sigmas = [sc["inplane_fwhm"] / 2.3548 / spacing] * 3
    sigmas[sc["slice_axis"]] = sc["slice_mm"] / 2.3548 / spacing
    image = ndi.gaussian_filter(signal.astype(np.float32), sigmas, mode="constant")
    if draw.ghost is not None:
        shift, amp = draw.ghost
        image = image + amp * ndi.shift(image, (0.0, shift / spacing, 0.0), order=1, mode="wrap")
    u = ((world - centre) / ((box_hi - box_lo) / 2.0)).astype(np.float32)
    terms = _poly_terms(u)
    poly = np.tensordot(terms, np.asarray(sc["bias"], dtype=np.float32), axes=([-1], [0]))
    inside = brain > 0.5
    scale = np.abs(poly[inside]).max() if inside.any() else 1.0
    bias = np.exp(poly / max(scale, 1e-9) * math.log(1.0 + sc["bias_max"]))
    image = image * bias
    noise_rng = np.random.default_rng(sc["noise_seed"])
    coils = int(sc["coils"])
    per_coil = image / math.sqrt(coils)
    power = np.zeros_like(image, dtype=np.float64)
    for _ in range(coils):
        real = per_coil + noise_rng.normal(scale=sc["noise"], size=image.shape)
        imag = noise_rng.normal(scale=sc["noise"], size=image.shape)
        power += real**2 + imag**2
    image = np.sqrt(power) * sc["gain"]
    image = np.where(inside, np.maximum(image, 1.0), 0.0)
    mask = mask * inside

    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    flair = nib.Nifti1Image(np.rint(np.clip(image, 0, 32767)).astype(np.int16), affine)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    n_components = int(ndi.label(mask, structure=np.ones((3, 3, 3)))[1])
    kinds: dict[str, int] = {}
    for m in draw.mimics:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    info = {
        "lesions": n_components,
        "drawn_lesions": len(draw.lesions),
        "mimics": kinds,
        "scanner": {k: v for k, v in sc.items() if k not in ("bias", "noise_seed")},
    }
    return PhantomCaseB(flair=flair, mask=mask_img, info=info)


def _poly_terms(u: np.ndarray) -> np.ndarray:
    """The 20 monomials of degree <= 3 in three variables: (..., 3) -> (..., 20)."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    one = np.ones_like(x)
    terms = [one, x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    terms += [x**3, y**3, z**3, x * x * y, x * x * z, y * y * x, y * y * z, z * z * x, z * z * y]
    terms += [x * y * z]
    return np.stack(terms, axis=-1)


# ----------------------------------------------------------------------------- data set


def make_family_b_dataset(
    out_dir: Path,
    cfg: PhantomConfig,
    preview: bool = False,
    progress: bool = True,
    memory_limit_gib: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``cfg.n_cases`` family-B cases under ``out_dir``, the same files as family A.

    Case ``i`` is ``case_{i:03d}`` with seed ``case_seed(cfg.seed, i)`` (family A's seed
    rule, so a master seed names a data set in either family). ``out_dir`` follows the
    output-folder rule as family A's (:func:`~lesionuq.data.phantom.make_phantom_dataset`):
    new, empty, or a phantom data set lesionuq wrote; the data set is built in a
    temporary folder and moved into place when complete: the case folders,
    ``phantom.json`` (config and every draw) and ``cases.csv``.

    Args:
        out_dir: Output folder.
        cfg: The data set config (``params`` must be empty: family B has no overrides).
        preview: Also write ``preview.png``.
        progress: Show a progress bar.
        memory_limit_gib: Refuse when one case needs more memory (GiB); default half of
            the available memory.
        overwrite: Replace an earlier phantom data set made with other settings.

    Returns:
        The manifest path ``out_dir/cases.csv``.

    Raises:
        InputError: ``out_dir`` is refused by the output-folder rule (nothing written).
        ConfigError: ``cfg.params`` is set (they are family A's parameters), or the
            config is invalid (:func:`~lesionuq.data.phantom.check_phantom_config`).
    """

    def make_case(seed: int) -> tuple[PhantomCaseB, dict[str, Any]]:
        draw = draw_case_b(seed, cfg.max_lesions)
        return render_case_b(draw, cfg.spacing, cfg.shape), draw.to_dict()

    return write_drawn_dataset(
        Path(out_dir),
        cfg,
        "b",
        make_case,
        preview=preview,
        progress=progress,
        memory_limit_gib=memory_limit_gib,
        overwrite=overwrite,
    )
