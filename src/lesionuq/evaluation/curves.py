r"""Accuracy-confidence curves and their AUC (paper 3.3, docs/DESIGN.md "Definitions").

Test lesions are sorted by uncertainty and the most uncertain ones are set aside first.
For every fraction tau of lesions removed, the curve has the point

.. math::

    \left(\frac{\#FP_{kept}(\tau)}{\#FP_{kept}(0)},\;
           \frac{\#TP_{kept}(\tau)}{\#TP_{kept}(0)}\right)

from (1, 1) at tau = 0 (all lesions kept) to (0, 0) (all removed). Lesions with the same
uncertainty are removed together, so there is one point per distinct uncertainty value
(plus the start). The AUC is the trapezoid area under TP-kept over the FP-kept axis:
a perfect ranking (every FP more uncertain than every TP) gives 1, the reversed ranking 0,
an uninformative one 0.5. The area equals the Mann-Whitney probability

.. math::

    \mathrm{AUC} = P(u_{FP} > u_{TP}) + \tfrac{1}{2} P(u_{FP} = u_{TP})

for a random FP and a random TP lesion, which :func:`rank_probability` computes from
ranks; the two functions are tested against each other. Only the ranking of the
uncertainties matters, so methods with different ranges compare fairly.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "AccuracyConfidenceAUC",
    "ac_auc",
    "accuracy_confidence_curve",
    "curve_on_grid",
    "rank_probability",
    "within_fold_auc",
]


def _check(uncertainty: np.ndarray, is_tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the inputs to float64 (N,) and bool (N,)."""
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    t = np.asarray(is_tp).reshape(-1)
    if u.shape != t.shape:
        raise ValueError(
            f"uncertainty and is_tp must have the same length, got {u.size} and {t.size}."
        )
    if not np.all(np.isfinite(u)):
        raise ValueError("uncertainty contains NaN or infinite values; cannot rank lesions.")
    if t.dtype != bool:
        if t.size and not np.all(np.isin(t, (0, 1))):
            raise ValueError("is_tp must be boolean (or 0/1).")
        t = t.astype(bool)
    return u, t


def _degenerate(n_tp: int, n_fp: int, what: str) -> bool:
    """Warn and return True when the AUC is undefined (no FP or no TP lesion)."""
    if n_tp > 0 and n_fp > 0:
        return False
    if n_tp + n_fp > 0:
        missing = "FP" if n_fp == 0 else "TP"
        warnings.warn(
            f"{what} is undefined without any {missing} lesion ({n_tp} TP, {n_fp} FP); "
            "returning NaN.",
            RuntimeWarning,
            stacklevel=3,
        )
    return True


def accuracy_confidence_curve(
    uncertainty: np.ndarray, is_tp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The accuracy-confidence curve: normalised FP and TP counts kept as tau grows.

    Lesions are removed most uncertain first; lesions with equal uncertainty are removed
    together (one point per distinct value). Point 0 is tau = 0 (everything kept, (1, 1));
    the last point has every lesion removed, (0, 0). Both coordinates are non-increasing.

    Args:
        uncertainty: (N,) float, higher = less trusted.
        is_tp: (N,) bool, True for a TP lesion (IoU_adj >= 0.1), False for an FP.

    Returns:
        ``(fp_kept, tp_kept)``, each (K,) float64 with K = (number of distinct
        uncertainty values) + 1: the FP (resp. TP) lesions kept divided by their count at
        tau = 0. When there is no FP (resp. no TP) lesion that coordinate is NaN
        everywhere (0 / 0, with a RuntimeWarning); for N = 0 both are ``[nan]``.
    """
    u, t = _check(uncertainty, is_tp)
    n_tp, n_fp = int(t.sum()), int((~t).sum())
    if u.size and (n_tp == 0 or n_fp == 0):
        _degenerate(n_tp, n_fp, "the accuracy-confidence curve")
    # distinct values in descending order, and how many TP / FP each group removes
    values, inverse = np.unique(-u, return_inverse=True)
    tp_removed = np.bincount(inverse, weights=t, minlength=values.size)
    fp_removed = np.bincount(inverse, weights=~t, minlength=values.size)
    tp_kept = n_tp - np.concatenate([[0.0], np.cumsum(tp_removed)])
    fp_kept = n_fp - np.concatenate([[0.0], np.cumsum(fp_removed)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return fp_kept / n_fp, tp_kept / n_tp


def ac_auc(uncertainty: np.ndarray, is_tp: np.ndarray) -> float:
    r"""Area under the accuracy-confidence curve (trapezoid rule over the FP-kept axis).

    .. math::

        \mathrm{AUC} = \sum_k (f_k - f_{k+1}) \frac{t_k + t_{k+1}}{2}

    with (f_k, t_k) the points of :func:`accuracy_confidence_curve`. Perfect ranking = 1,
    reversed = 0, all uncertainties tied = 0.5.

    Args:
        uncertainty: (N,) float, higher = less trusted.
        is_tp: (N,) bool.

    Returns:
        The AUC in [0, 1] (a fraction, not %). NaN when there is no FP or no TP lesion
        (the curve cannot be normalised; a RuntimeWarning says which is missing) or
        when N = 0.
    """
    u, t = _check(uncertainty, is_tp)
    if _degenerate(int(t.sum()), int((~t).sum()), "the accuracy-confidence AUC"):
        return float("nan")
    fp, tp = accuracy_confidence_curve(u, t)
    return float(np.sum((fp[:-1] - fp[1:]) * (tp[:-1] + tp[1:])) / 2.0)


def rank_probability(uncertainty: np.ndarray, is_tp: np.ndarray) -> float:
    """P(a random FP lesion is more uncertain than a random TP lesion), ties counting 1/2.

    Computed from mid-ranks (Mann-Whitney U of the FP group):
    ``U = sum(rank(u_FP)) - n_FP (n_FP + 1) / 2`` and ``P = U / (n_FP n_TP)``.
    It equals :func:`ac_auc` exactly.

    Args:
        uncertainty: (N,) float.
        is_tp: (N,) bool.

    Returns:
        The probability in [0, 1]; NaN (with a RuntimeWarning) when there is no FP or
        no TP lesion, NaN when N = 0.
    """
    u, t = _check(uncertainty, is_tp)
    n_tp, n_fp = int(t.sum()), int((~t).sum())
    if _degenerate(n_tp, n_fp, "the rank probability"):
        return float("nan")
    ranks = rankdata(u)  # average ranks for ties
    u_fp = ranks[~t].sum() - n_fp * (n_fp + 1) / 2.0
    return float(u_fp / (n_fp * n_tp))


def within_fold_auc(uncertainty: np.ndarray, is_tp: np.ndarray, fold: np.ndarray) -> float:
    r"""The rank probability over the FP-TP pairs that lie in the same inner fold.

    Out-of-fold scores come from K models, one per inner fold. Pooling them into one AUC
    also compares lesions scored by *different* models, whose score levels differ by
    chance; the single model refitted on all lesions has no such offsets, so the pooled
    AUC underrates it (Forman & Scholz 2010; Airola et al. 2011). Counting only the pairs
    scored by the same model removes that bias:

    .. math::

        \mathrm{AUC}_w = \frac{\sum_k n^{FP}_k n^{TP}_k \mathrm{AUC}_k}
                               {\sum_k n^{FP}_k n^{TP}_k}

    with :math:`\mathrm{AUC}_k` the :func:`rank_probability` of inner fold k (folds with
    one class only have no pairs). With one fold it is :func:`rank_probability` itself.
    An untrained score compared on the same pairs gets the same treatment, so candidates
    compare fairly.

    Args:
        uncertainty: (N,) float, higher = less trusted.
        is_tp: (N,) bool.
        fold: (N,) int inner fold of each lesion.

    Returns:
        The AUC in [0, 1]; NaN when no fold holds both an FP and a TP lesion.
    """
    u, t = _check(uncertainty, is_tp)
    f = np.asarray(fold).ravel()
    if f.shape != t.shape:
        raise ValueError(f"fold {f.shape} and is_tp {t.shape} differ.")
    num = den = 0.0
    for k in np.unique(f):
        m = f == k
        n_tp, n_fp = int(t[m].sum()), int((~t[m]).sum())
        if n_tp == 0 or n_fp == 0:
            continue
        num += rank_probability(u[m], t[m]) * n_fp * n_tp
        den += n_fp * n_tp
    return float(num / den) if den else float("nan")


def curve_on_grid(fp_kept: np.ndarray, tp_kept: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TP-kept of a curve at given FP-kept values (linear between points).

    Used to average the curves of several folds on a common FP grid ("vertical"
    averaging). Where the curve has a vertical segment (lesions removed at the same FP
    level), the value at exactly that FP level is the top of the segment (right limit);
    the area under the interpolated curve tends to :func:`ac_auc` as the grid gets finer.

    Args:
        fp_kept: (K,) non-increasing, from :func:`accuracy_confidence_curve`.
        tp_kept: (K,) non-increasing.
        grid: (G,) FP-kept values in [0, 1].

    Returns:
        (G,) float64 TP-kept values.
    """
    x = np.asarray(fp_kept, dtype=np.float64)[::-1]
    y = np.asarray(tp_kept, dtype=np.float64)[::-1]
    g = np.asarray(grid, dtype=np.float64)
    if x.size < 2 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        return np.full(g.shape, np.nan)
    j = np.clip(np.searchsorted(x, g, side="right") - 1, 0, x.size - 2)
    x0, x1, y0, y1 = x[j], x[j + 1], y[j], y[j + 1]
    dx = x1 - x0
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(dx > 0, (g - x0) / dx, 1.0)
    return y0 + np.clip(frac, 0.0, 1.0) * (y1 - y0)


class AccuracyConfidenceAUC:
    """Accumulate the accuracy-confidence AUC of several folds and aggregate them.

    Like MONAI's cumulative metrics: call once per fold, then :meth:`aggregate`.

    Example:
        >>> metric = AccuracyConfidenceAUC()
        >>> for u, tp in folds:
        ...     metric(u, tp)
        >>> mean, std = metric.aggregate()
    """

    def __init__(self) -> None:
        self.values_: list[float] = []

    def __call__(self, uncertainty: np.ndarray, is_tp: np.ndarray) -> float:
        """Compute one fold's AUC (see :func:`ac_auc`), store it and return it."""
        value = ac_auc(uncertainty, is_tp)
        self.values_.append(value)
        return value

    def aggregate(self) -> tuple[float, float]:
        """Mean and population standard deviation over the folds, NaN folds skipped.

        Returns:
            ``(mean, std)``; both NaN when no fold has a defined AUC.
        """
        v = np.asarray(self.values_, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float("nan"), float("nan")
        return float(v.mean()), float(v.std())

    def reset(self) -> None:
        """Forget the accumulated folds."""
        self.values_.clear()
