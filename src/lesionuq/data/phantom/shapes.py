"""Shapes: smooth random fields and irregular soft ellipsoids ("blobs")."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erfc

__all__ = ["Blob", "fibonacci_sphere", "make_blob", "rbf_field"]


def rbf_field(
    rng: np.random.Generator,
    axes: Sequence[np.ndarray],
    bounds: Sequence[tuple[float, float]],
    length: float,
    n_fields: int = 1,
) -> list[np.ndarray]:
    """Smooth random fields of unit variance, evaluated on a separable grid.

    ``f(x) = sum_j c_j prod_a B_a(x_a - p_ja)`` with Gaussian bumps ``B`` of width
    ``length`` on control points every ``length`` mm over ``bounds`` and ``c_j ~ N(0, 1)``;
    each row of the per-axis bases is normalised so that Var f(x) = 1. The coefficients
    depend only on ``bounds`` and ``length``, not on the evaluation grid.

    Args:
        rng: Generator.
        axes: Three 1-D arrays of positions (mm) along x, y, z.
        bounds: (lo, hi) mm per axis over which the control points lie.
        length: Correlation length (mm).
        n_fields: Number of independent fields.

    Returns:
        ``n_fields`` arrays of shape (len(x), len(y), len(z)) float32.
    """
    bases = []
    for pos, (lo, hi) in zip(axes, bounds, strict=True):
        ctrl = np.arange(lo - 2 * length, hi + 2 * length + 1e-6, length)
        b = np.exp(-0.5 * ((pos[:, None] - ctrl[None]) / length) ** 2)
        bases.append(b / np.linalg.norm(b, axis=1, keepdims=True))
    shape = tuple(b.shape[1] for b in bases)
    out = []
    for _ in range(n_fields):
        c = rng.standard_normal(shape)
        f = np.einsum("ia,abc->ibc", bases[0], c)
        f = np.einsum("jb,ibc->ijc", bases[1], f)
        f = np.einsum("kc,ijc->ijk", bases[2], f)
        out.append(f.astype(np.float32))
    return out


@functools.lru_cache(maxsize=4)
def fibonacci_sphere(n: int = 256) -> np.ndarray:
    """``n`` nearly uniform unit vectors on the sphere (Fibonacci lattice), shape (n, 3)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


@dataclass
class Blob:
    """An irregular soft ellipsoid in template space (mm).

    The surface radius along unit direction u (blob frame) is
    ``R(u) = (1 + g(u)) / sqrt(sum_i (u_i / a_i)^2)`` with
    ``g(u) = sum_k alpha_k cos(f_k w_k . u + phi_k)``; the fraction at a point at distance
    r along u is ``Phi((R(u) - r) / sigma)``.

    Attributes:
        centre: (3,) template index (= mm).
        rot: (3, 3) rotation, columns the principal axes.
        axes: (3,) semi-axes (mm).
        edge: Intrinsic edge std (mm).
        w: (K, 3) unit wave directions of the radius perturbation.
        f: (K,) wave frequencies.
        phi: (K,) wave phases.
        alpha: (K,) wave amplitudes.
    """

    centre: np.ndarray
    rot: np.ndarray
    axes: np.ndarray
    edge: float
    w: np.ndarray
    f: np.ndarray
    phi: np.ndarray
    alpha: np.ndarray

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface radius (mm) along unit directions ``u`` (..., 3) in the blob frame."""
        base = 1.0 / np.sqrt(np.sum((u / self.axes) ** 2, axis=-1))
        g = np.cos(u @ (self.w * self.f[:, None]).T + self.phi) @ self.alpha
        return base * (1.0 + g)

    @property
    def extent(self) -> float:
        """Radius (mm) of a ball around the centre that holds every fraction > 0.5."""
        return float(self.axes.max() * (1.0 + self.alpha.sum()))

    def fraction(self, d: np.ndarray, sigma: float) -> np.ndarray:
        """Volume fraction at offsets ``d`` (3, ...) float32 mm from the centre."""
        q = np.tensordot(self.rot.T.astype(np.float32), d, axes=1)
        q[0] += np.float32(1e-4)  # no point exactly at the centre (direction undefined)
        r = np.sqrt(np.sum(q * q, axis=0))
        u = np.moveaxis(q / r, 0, -1)
        dist = self.radius(u).astype(np.float32) - r
        return (0.5 * erfc(-dist / np.float32(sigma * math.sqrt(2.0)))).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (arrays as nested lists; floats round-trip exactly)."""
        return {
            k: (v.tolist() if isinstance(v, np.ndarray) else float(v))
            for k, v in vars(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Blob:
        """Inverse of :meth:`to_dict`."""
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in data.items() if k != "edge"}
        return cls(edge=float(data["edge"]), **arrays)


def make_blob(
    rng: np.random.Generator,
    centre: np.ndarray,
    volume: float,
    elongation: float,
    axis: np.ndarray | None,
    edge: float,
    irregularity: float,
    flat: bool = False,
) -> Blob:
    """Draw a blob of the given volume (mm3 of its 0.5 level set).

    Args:
        rng: Generator.
        centre: (3,) template index.
        volume: Target volume in mm3.
        elongation: Ratio of the long axis to the others (``flat``: of the others to it).
        axis: Direction of the long (``flat``: short) axis, or None for random.
        edge: Edge std in mm.
        irregularity: Total amplitude of the radius perturbation.
        flat: Make an oblate blob (short axis along ``axis``), e.g. a cap.
    """
    if axis is None:
        axis = rng.standard_normal(3)
    axis = axis / np.linalg.norm(axis)
    rot, _ = np.linalg.qr(np.column_stack([axis, rng.standard_normal((3, 2))]))
    rot[:, 0] = axis  # qr may flip the sign
    minor = rng.uniform(0.8, 1.0)
    axes = (
        np.array([elongation, 1.0, minor])
        if not flat
        else np.array([1.0, elongation, minor * elongation])
    )
    k = 4
    w = rng.standard_normal((k, 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    f = rng.uniform(1.5, 4.0, k)
    phi = rng.uniform(0, 2 * math.pi, k)
    alpha = rng.dirichlet(np.ones(k)) * irregularity * rng.uniform(0.5, 1.0)
    blob = Blob(centre.astype(np.float64), rot, axes, edge, w, f, phi, alpha)
    v_unit = 4.0 * math.pi / 3.0 * float(np.mean(blob.radius(fibonacci_sphere()) ** 3))
    blob.axes = axes * (volume / v_unit) ** (1.0 / 3.0)
    return blob
