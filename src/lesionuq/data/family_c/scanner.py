"""Family C's scanner: a k-space acquisition of the finely rendered object.

The object is rendered at a fine spacing (half the output spacing above 1 mm), then:

1. a coil-sensitivity bias multiplies it: the mean of 2-3 exponentials of smooth random
   fields (a few plane waves of 180-400 mm wavelength), normalised to mean 1 in the box;
2. FFT; k-space is cropped to the output grid (exact sinc resampling: output voxel i
   is fine voxel f i) and truncated to the acquired resolution: a box
   ``|k_a| <= 1 / (2 res_a)`` with 0.9-1.2 mm along the readout axis, x1.0-1.15 of it
   along the in-plane phase axis and 1-3 mm through the slab (axial 0.7, coronal
   0.15, sagittal 0.15): a hard edge, hence Gibbs ringing beside sharp edges;
3. complex Gaussian noise is added to the acquired k-space samples (per-scan SNR
   15-50 relative to white matter, per real and imaginary image component);
4. inverse FFT and magnitude (Rician statistics come out of the model), a mild
   intensity nonlinearity ``x^gamma`` (gamma 0.85-1.15) and a gain (500-1200).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft

from lesionuq.data.family_c.fields import LatticeField

__all__ = ["acquire", "bias_field", "draw_scanner"]


def draw_scanner(rng: np.random.Generator) -> dict[str, Any]:
    """Draw one scan's acquisition (JSON-able).

    Returns:
        ``resolution_mm`` (x, y, z), ``slab_axis``, ``readout_axis``, ``snr``, ``gamma``,
        ``gain``, ``bias`` (terms, each a list of plane waves: direction (3),
        wavelength mm, phase, amplitude), ``noise_seed``.
    """
    slab = int(rng.choice(3, p=[0.15, 0.15, 0.7]))
    others = [a for a in range(3) if a != slab]
    readout = int(rng.choice(others))
    phase = others[0] if others[1] == readout else others[1]
    res = [0.0, 0.0, 0.0]
    res[readout] = float(rng.uniform(0.9, 1.2))
    res[phase] = res[readout] * float(rng.uniform(1.0, 1.15))
    res[slab] = float(rng.uniform(1.0, 3.0))
    terms = []
    strength = rng.uniform(0.08, 0.25)
    for _ in range(int(rng.integers(2, 4))):
        waves = []
        for _ in range(3):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            wavelength = round(float(rng.uniform(180.0, 400.0)), 3)
            phase_0 = round(float(rng.uniform(0, 2 * math.pi)), 6)
            waves.append([*np.round(d, 6).tolist(), wavelength, phase_0, round(float(strength), 6)])
        terms.append(waves)
    return {
        "resolution_mm": [round(r, 4) for r in res],
        "slab_axis": slab,
        "readout_axis": readout,
        "snr": round(float(rng.uniform(15.0, 50.0)), 3),
        "gamma": round(float(rng.uniform(0.85, 1.15)), 4),
        "gain": round(float(rng.uniform(500.0, 1200.0)), 3),
        "bias": terms,
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }


def bias_field(terms: list[list[list[float]]], world: np.ndarray) -> np.ndarray:
    """The multiplicative bias ``mean_k exp(sum_waves a cos(2 pi d.x / lambda + phi))``.

    Args:
        terms: The scanner's ``bias`` terms.
        world: Points (N, 3), mm.

    Returns:
        Bias (N,), float32 (not normalised).
    """
    out = np.zeros(len(world), dtype=np.float64)
    for waves in terms:
        phi = np.zeros(len(world), dtype=np.float64)
        for w in waves:
            d, lam, ph, amp = np.asarray(w[:3]), w[3], w[4], w[5]
            phi += amp * np.cos(world @ d * (2.0 * math.pi / lam) + ph)
        out += np.exp(phi)
    return (out / len(terms)).astype(np.float32)


def bias_lattice(terms: list[list[list[float]]], box: Any, step: float = 8.0) -> LatticeField:
    """:func:`bias_field` sampled on a lattice over ``box`` and normalised to mean 1."""
    origin = np.array([lo for lo, _ in box], dtype=np.float64)
    shape = tuple(int(np.ceil((hi - lo) / step)) + 1 for lo, hi in box)
    axes = [origin[a] + step * np.arange(shape[a]) for a in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    values = bias_field(terms, pts).reshape(shape)
    return LatticeField((values / values.mean()).astype(np.float32), origin, step)


def acquire(
    image: np.ndarray,
    factor: int,
    spacing: float,
    resolution: list[float] | np.ndarray,
    noise_sigma: float,
    noise_seed: int,
) -> np.ndarray:
    """k-space acquisition of a finely rendered image onto the output grid.

    Args:
        image: The object (FX, FY, FZ) at spacing ``spacing / factor``; ``F* = factor x``
            the output grid.
        factor: Fine-to-output ratio (integer >= 1).
        spacing: Output spacing, mm.
        resolution: Acquired resolution per axis (3,), mm: k-space is kept where
            ``|k_a| <= 1 / (2 resolution_a)``.
        noise_sigma: Standard deviation of the noise per real and imaginary image
            component (0 for none).
        noise_seed: Seed of the noise.

    Returns:
        Magnitude image (X, Y, Z), float32, on the output grid (voxel i at fine f i).
    """
    out_shape = tuple(n // factor for n in image.shape)
    spec = scipy.fft.fftn(np.asarray(image, dtype=np.float32), workers=1)
    index, keep = [], []
    for a, n in enumerate(out_shape):
        k = np.fft.fftfreq(n, d=1.0 / n).astype(np.int64)  # integer frequencies
        index.append(k % image.shape[a])
        keep.append(np.abs(k / (n * spacing)) <= 1.0 / (2.0 * resolution[a]) + 1e-9)
    data = spec[np.ix_(*index)] / np.float32(factor**3)
    window = keep[0][:, None, None] & keep[1][None, :, None] & keep[2][None, None, :]
    data = np.where(window, data, 0).astype(np.complex64)
    n_out = math.prod(out_shape)
    n_kept = int(window.sum())
    if noise_sigma > 0 and n_kept:
        rng = np.random.default_rng(noise_seed)
        scale = noise_sigma * n_out / math.sqrt(n_kept)
        noise = rng.standard_normal((2, *out_shape), dtype=np.float32) * np.float32(scale)
        data = data + np.where(window, noise[0] + 1j * noise[1], 0).astype(np.complex64)
    return np.abs(scipy.fft.ifftn(data, workers=1)).astype(np.float32)
