"""The monotone logistic fit shared by Platt scaling and ``gcnn_stack``, and input checks.

:func:`fit_monotone_logistic` fits ``P(FP) = sigmoid(z @ a + b)`` with every slope
``a_k >= min_slope > 0``: one column is :class:`~lesionuq.calibration.PlattCalibrator`,
several are the monotone stacking of :class:`lesionuq.scorers.select.StackedScorer`.
:func:`as_scores` and :func:`as_labels` check the (N,) scores and 0/1 labels that every
calibrator is fitted on.

Example:
    >>> (a,), b = fit_monotone_logistic(clipped_logit(p)[:, None], is_fp)  # p: (N,)
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

__all__ = ["as_labels", "as_scores", "clipped_logit", "fit_monotone_logistic"]

_EPS = 1e-12  # clip of scores before the logit


def as_scores(values: np.ndarray, name: str) -> np.ndarray:
    """(N,) float64 copy of finite scores of any shape.

    Raises:
        ValueError: NaN or inf (the message names ``name``).
    """
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf.")
    return a


def as_labels(is_fp: np.ndarray, n: int) -> np.ndarray:
    """(N,) float64 0/1 of ``n`` binary labels (bool or 0/1).

    Raises:
        ValueError: Not ``n`` labels, or not binary.
    """
    y = np.asarray(is_fp).reshape(-1)
    if y.shape != (n,):
        raise ValueError(f"is_fp has {y.size} entries for {n} scores.")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("is_fp must be binary (0/1 or bool).")
    return y.astype(np.float64)


def clipped_logit(p: np.ndarray) -> np.ndarray:
    """``logit(p)`` of probabilities clipped to ``[1e-12, 1 - 1e-12]`` (finite everywhere).

    Args:
        p: (N,) scores in [0, 1].

    Returns:
        (N,) float64.
    """
    return special.logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS))


def fit_monotone_logistic(
    z: np.ndarray, is_fp: np.ndarray, min_slope: float = 1e-6
) -> tuple[np.ndarray, float]:
    """Logistic regression ``P(FP) = sigmoid(z @ a + b)`` with every slope ``a_k >= min_slope``.

    Maximum likelihood with Platt's (1999) smoothed targets ``(N+ + 1) / (N+ + 2)`` for FP
    and ``1 / (N- + 2)`` for TP lesions, so separable data do not drive the slopes to
    infinity. The lower bound keeps the fit strictly increasing in every column: one
    column is :class:`~lesionuq.calibration.PlattCalibrator`; several are a monotone
    stacking of scorers (:class:`lesionuq.scorers.select.StackedScorer`), where a column
    that adds nothing gets the slope ``min_slope`` instead of a negative weight.

    Args:
        z: (N, K) scores (higher = less trusted), finite.
        is_fp: (N,) bool or 0/1, 1 = false positive lesion.
        min_slope: Lower bound of every slope (> 0).

    Returns:
        ((K,) slopes ``a``, intercept ``b``).

    Raises:
        ValueError: No lesions, NaN scores, non-binary labels or ``min_slope <= 0``.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or not np.all(np.isfinite(z)):
        raise ValueError(f"z must be a finite (N, K) array, got shape {z.shape}.")
    y = as_labels(is_fp, z.shape[0])
    if z.shape[0] == 0:
        raise ValueError("cannot calibrate on zero lesions.")
    if not min_slope > 0:
        raise ValueError(f"min_slope must be > 0, got {min_slope}.")
    n_pos = y.sum()
    n_neg = y.size - n_pos
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    mu, sd = z.mean(axis=0), z.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    zs = (z - mu) / sd  # standardised for a well-conditioned optimisation
    k = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        f = zs @ theta[:k] + theta[k]
        # cross-entropy with soft targets: softplus(f) - t * f
        val = float(np.sum(np.logaddexp(0.0, f) - t * f))
        r = special.expit(f) - t
        return val, np.append(r @ zs, r.sum())

    b0 = float(special.logit((n_pos + 1.0) / (y.size + 2.0)))
    res = optimize.minimize(
        loss,
        np.append(np.full(k, 1.0 / k), b0),
        jac=True,
        method="L-BFGS-B",
        bounds=[(min_slope * float(s), None) for s in sd] + [(None, None)],
    )
    a = np.maximum(res.x[:k] / sd, min_slope)
    return a, float(res.x[k] - a @ mu)
