r"""The scan's own tissue classes, from its intensities and the registered template's priors.

An affine registration brings the template's grey matter, white matter and CSF
probabilities onto the scan, but another brain's ventricles are larger, smaller or
shifted by a few millimetres: the template's maps alone put a periventricular lesion's
ventricle wall in the wrong place. The scan itself shows where its CSF is (dark on FLAIR
and T1). :func:`atlas_em` combines the two as atlas-guided tissue classification does
(Van Leemput et al. 1999; Ashburner & Friston 2005, without bias or deformation terms):
one Gaussian intensity model per class, the registered template's probabilities as each
voxel's prior, and expectation-maximisation of the class means and variances

.. math::
    p(k \mid v) = \frac{\pi_{v,k}\, \mathcal{N}(I_v; \mu_k, \sigma_k^2)}
                        {\sum_j \pi_{v,j}\, \mathcal{N}(I_v; \mu_j, \sigma_j^2)}.

The priors are smoothed first (:data:`PRIOR_SIGMA_MM`) because an affine registration
leaves a few millimetres of residual misalignment; the intensities then decide within
that reach. Lesion voxels (:func:`tissue_posteriors`' ``exclude``) do not enter the fit:
bright lesions would pull the grey-matter class.

:func:`scan_ventricles` keeps the CSF components that reach the template's lateral
ventricles: the scan's own ventricles, whatever their size, but not the sulci.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "FIT_VOXELS",
    "PRIOR_SIGMA_MM",
    "atlas_em",
    "scan_ventricles",
    "tissue_posteriors",
]

PRIOR_SIGMA_MM = 3.0
"""Gaussian SD (mm) of the smoothing of the registered template priors."""
FIT_VOXELS = 200_000
"""At most this many brain voxels, evenly spaced, fit the class means and variances (six
numbers; a 1 mm brain has about 1.8 million voxels)."""


def atlas_em(
    values: np.ndarray, priors: np.ndarray, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expectation-maximisation of a Gaussian mixture with a prior per sample.

    Args:
        values: (N,) intensities.
        priors: (N, K) class probabilities of each sample (rows need not sum to 1; they
            are normalised, and each gets a floor of 1e-6 so that no class is impossible).
        iterations: EM iterations (the means move by < 1e-3 SD after about 10 on a scan).

    Returns:
        ((N, K) posteriors, (K,) means, (K,) standard deviations).

    Raises:
        ValueError: Fewer samples than classes, or mismatched shapes.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    prior = np.asarray(priors, dtype=np.float64)
    if prior.ndim != 2 or prior.shape[0] != v.size:
        raise ValueError(f"priors {prior.shape} do not match {v.size} values.")
    if v.size < prior.shape[1]:
        raise ValueError(f"{v.size} values cannot fit {prior.shape[1]} classes.")
    prior = np.clip(prior, 0.0, None) + 1e-6
    prior /= prior.sum(axis=1, keepdims=True)
    post = prior
    mean = std = np.zeros(prior.shape[1])
    floor = 1e-3 * (float(v.std()) or 1.0)
    for _ in range(iterations):
        weight = post.sum(axis=0) + 1e-12
        mean = (post * v[:, None]).sum(axis=0) / weight
        std = np.sqrt((post * (v[:, None] - mean) ** 2).sum(axis=0) / weight) + floor
        post = _posteriors(v, prior, mean, std)
    return post, mean, std


def _posteriors(v: np.ndarray, prior: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, K) class posteriors of values (N,) under priors (N, K) and K Gaussians."""
    z = (v[:, None] - mean) / std
    log = np.log(prior) - 0.5 * z**2 - np.log(std)
    log -= log.max(axis=1, keepdims=True)
    post = np.exp(log)
    return np.asarray(post / post.sum(axis=1, keepdims=True))


def tissue_posteriors(
    image: np.ndarray,
    brain: np.ndarray,
    priors: Sequence[np.ndarray],
    spacing: Sequence[float] | np.ndarray,
    exclude: np.ndarray | None = None,
    prior_sigma_mm: float = PRIOR_SIGMA_MM,
) -> np.ndarray:
    """Each brain voxel's tissue posteriors (:func:`atlas_em` over the scan).

    Args:
        image: (X, Y, Z) scan intensities.
        brain: (X, Y, Z) bool brain support.
        priors: K maps (X, Y, Z) of the registered template's class probabilities.
        spacing: (3,) voxel size (mm).
        exclude: (X, Y, Z) bool voxels left out of the fit (the lesions), or None; they
            still get posteriors. At most :data:`FIT_VOXELS` of the others, evenly
            spaced, fit the classes.
        prior_sigma_mm: SD (mm) of the priors' Gaussian smoothing (0: none).

    Returns:
        (K, X, Y, Z) float32 posteriors, 0 outside the brain; all 0 when the brain has
        fewer voxels than classes.
    """
    k = len(priors)
    out = np.zeros((k, *image.shape), dtype=np.float32)
    fit = brain if exclude is None else brain & ~exclude
    if int(fit.sum()) < max(k, 1):
        return out
    sigma = prior_sigma_mm / np.asarray(spacing, dtype=np.float64)
    smooth = [
        ndi.gaussian_filter(np.asarray(p, np.float32), sigma) if prior_sigma_mm > 0 else p
        for p in priors
    ]
    prior = np.stack([p[brain] for p in smooth], axis=1)
    inside = fit[brain]
    values = np.asarray(image, np.float64)[brain]
    fit_idx = np.flatnonzero(inside)
    if fit_idx.size > FIT_VOXELS:
        fit_idx = fit_idx[np.linspace(0, fit_idx.size - 1, FIT_VOXELS).astype(np.int64)]
    _, mean, std = atlas_em(values[fit_idx], prior[fit_idx])
    norm = np.clip(prior, 0.0, None) + 1e-6
    post = _posteriors(values, norm / norm.sum(axis=1, keepdims=True), mean, std)
    for c in range(k):
        out[c][brain] = post[:, c]
    return out


def scan_ventricles(
    csf: np.ndarray,
    template_vdist: np.ndarray,
    seed_mm: float = 4.0,
    reach_mm: float = 15.0,
) -> np.ndarray:
    """The scan's lateral ventricles: its CSF components that reach the template's.

    Args:
        csf: (X, Y, Z) CSF posterior (:func:`tissue_posteriors`); > 0.5 is CSF.
        template_vdist: (X, Y, Z) distance to the registered template's lateral
            ventricles on the scan (mm).
        seed_mm: A CSF component is ventricle when it comes this close to the template's
            ventricles.
        reach_mm: Its voxels further than this from them are not (sulcal CSF joined to
            the ventricles through a partial-volume bridge).

    Returns:
        (X, Y, Z) bool ventricles (empty when no component reaches the template's).
    """
    mask = csf > 0.5
    labels, _ = ndi.label(mask)
    keep = np.unique(labels[mask & (template_vdist <= seed_mm)])
    keep = keep[keep > 0]
    return np.asarray(np.isin(labels, keep) & (template_vdist <= reach_mm))
