"""Family C's building blocks: seeded random fields on millimetre lattices, edges, tubes.

Everything here is defined in millimetres, so a field or a tube gives the same values
at any rendering grid; only the points it is evaluated at change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

__all__ = ["LatticeField", "Tubes", "bandpass_field", "box_index", "curve", "soft"]

Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class LatticeField:
    """A scalar field sampled on a regular lattice in mm, trilinear anywhere.

    Attributes:
        values: Samples (I, J, K), float32.
        origin: Position (3,) of sample (0, 0, 0), mm.
        step: Lattice step, mm.
    """

    values: np.ndarray
    origin: np.ndarray
    step: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field values at ``points`` (N, 3) mm -> (N,) float32 (edge values outside)."""
        rel = (np.asarray(points, dtype=np.float32) - self.origin.astype(np.float32)) / np.float32(
            self.step
        )
        out = ndi.map_coordinates(self.values, rel.T, order=1, mode="nearest")
        return np.asarray(out, dtype=np.float32)


def bandpass_field(
    rng: np.random.Generator,
    box: Box,
    step: float,
    fine_mm: float,
    coarse_mm: float | None = None,
) -> LatticeField:
    """A unit-variance Gaussian random field: white noise through a difference of Gaussians.

    Args:
        rng: Random generator (the lattice's white noise is drawn from it).
        box: ``((x0, x1), (y0, y1), (z0, z1))`` mm covered by the lattice.
        step: Lattice step, mm.
        fine_mm: Sigma (mm) of the smoothing Gaussian (removes wavelengths below ~4x it).
        coarse_mm: Sigma (mm) of the Gaussian subtracted (removes wavelengths above
            ~4x it: a band-pass field); None for a low-pass field.

    Returns:
        The field (standardised to mean 0, standard deviation 1 on its lattice).
    """
    origin = np.array([lo for lo, _ in box], dtype=np.float64)
    shape = tuple(int(np.ceil((hi - lo) / step)) + 1 for lo, hi in box)
    noise = rng.standard_normal(shape).astype(np.float32)
    field = ndi.gaussian_filter(noise, fine_mm / step, mode="wrap")
    if coarse_mm is not None:
        field = field - ndi.gaussian_filter(noise, coarse_mm / step, mode="wrap")
    field = (field - field.mean()) / max(float(field.std()), 1e-12)
    return LatticeField(field.astype(np.float32), origin, float(step))


def soft(depth: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction from a signed depth (mm, positive inside).

    Args:
        depth: Signed depth (any shape), mm.
        width: Edge width (the voxel size), mm.

    Returns:
        ``clip(depth / width + 1/2, 0, 1)``, float32, the shape of ``depth``.
    """
    return np.clip(depth / np.float32(width) + np.float32(0.5), 0.0, 1.0).astype(np.float32)


def curve(
    control: np.ndarray, radii: np.ndarray, step: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Dense samples of a smooth curve through control points (natural cubic spline).

    Args:
        control: Control points (K, 3), mm, K >= 2.
        radii: Radius (K,) at each control point, mm (interpolated linearly).
        step: Sample spacing along the curve, mm.

    Returns:
        ``(samples, radii)``: points (S, 3) and radii (S,).
    """
    control = np.asarray(control, dtype=np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
    t = np.linspace(0.0, chord[-1], max(int(np.ceil(chord[-1] / step)) + 1, 2))
    if len(control) == 2:
        samples = control[0] + (control[1] - control[0]) * (t / max(chord[-1], 1e-9))[:, None]
    else:
        samples = CubicSpline(chord, control, bc_type="natural")(t)
    return samples, np.interp(t, chord, np.asarray(radii, dtype=np.float64))


def box_index(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Indices of the points (N, 3) inside the box ``[lo, hi]`` (narrowed axis by axis).

    Returns:
        Sorted indices (M,), int64.
    """
    idx = np.flatnonzero((points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0]))
    for a in (1, 2):
        col = points[idx, a]
        idx = idx[(col >= lo[a]) & (col <= hi[a])]
    return idx


@dataclass(frozen=True)
class Tubes:
    """A union of tubes given by dense centreline samples with radii (KD-tree search).

    Attributes:
        samples: Centreline points (S, 3), mm.
        radii: Radius (S,) at each point, mm.
        tree: KD-tree of ``samples``.
    """

    samples: np.ndarray
    radii: np.ndarray
    tree: cKDTree

    @classmethod
    def build(cls, samples: np.ndarray, radii: np.ndarray) -> Tubes:
        """Tubes through ``samples`` (S, 3) with ``radii`` (S,)."""
        samples = np.asarray(samples, dtype=np.float64)
        return cls(samples, np.asarray(radii, dtype=np.float64), cKDTree(samples))

    def distance(self, points: np.ndarray, cap: float = 12.0) -> np.ndarray:
        """Signed distance to the tubes' surface (mm, negative inside), capped at ``cap``.

        The distance is ``min_k |p - c_k| - r_k`` over the 4 nearest centreline samples,
        computed only for points in the tubes' bounding box widened by ``cap``.

        Args:
            points: Points (N, 3), mm.
            cap: Largest distance reported, mm.

        Returns:
            Distances (N,), float32.
        """
        points = np.asarray(points)
        out = np.full(len(points), cap, dtype=np.float32)
        reach = float(self.radii.max()) + cap
        inbox = box_index(
            points, self.samples.min(axis=0) - reach, self.samples.max(axis=0) + reach
        )
        if not len(inbox):
            return out
        k = min(4, len(self.samples))
        dist, idx = self.tree.query(points[inbox], k=k, distance_upper_bound=reach)
        dist, idx = dist.reshape(-1, k), idx.reshape(-1, k)
        radii = np.append(self.radii, 0.0)  # index S: no neighbour within reach
        value = np.where(np.isfinite(dist), dist - radii[idx], cap).min(axis=1)
        out[inbox] = np.minimum(value, cap)
        return out
