r"""Bootstrap confidence intervals of Table 2's AUC, resampling test *cases* per fold.

Lesions of one scan are not independent (they share the scan's contrast, noise and
U-Net errors), so a replicate resamples the test cases of each fold with replacement and
keeps all the lesions of every drawn case. A case drawn k times gives each of its
lesions the weight k, and the accuracy-confidence AUC of the replicate is the weighted
Mann-Whitney probability

.. math::

    \mathrm{AUC}_b = \frac{\sum_{i \in FP} \sum_{j \in TP} w_{bi} w_{bj}
        \left([u_i > u_j] + \tfrac12 [u_i = u_j]\right)}{W_{b,FP}\, W_{b,TP}},

which equals :func:`lesionuq.evaluation.curves.ac_auc` on the explicitly duplicated
lesions (tested). It is computed for all B replicates at once from one sort per method:
with the lesions sorted by uncertainty and ``C`` the running sum of TP weights, the TP
weight below an FP lesion plus half the TP weight tied with it is
``(C[start] + C[end]) / 2`` of its group of tied values.

A replicate's Table-2 value is the mean of its fold AUCs, folds with an undefined AUC
(no FP or no TP lesion drawn) left out, as :func:`lesionuq.evaluation.metrics.table2`
does. All methods share the same resamples, so the difference of two methods' replicate
values is a *paired* bootstrap of their difference. Intervals are percentile intervals.

Example:
    >>> boot = bootstrap_auc(lesions, METHODS, n_boot=1000, seed=0)
    >>> ci = auc_intervals(lesions, METHODS, seed=0)  # method, auc_lo, ..., diff_hi
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionuq.evaluation.metrics import as_bool

__all__ = [
    "BootstrapAUC",
    "auc_intervals",
    "bootstrap_auc",
    "case_weights",
    "weighted_auc",
]


def case_weights(
    case_index: np.ndarray, n_cases: int, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Lesion weights of ``n_boot`` case-resampling bootstrap replicates.

    Each replicate draws ``n_cases`` cases with replacement (multinomial counts); a lesion
    gets the count of its case.

    Args:
        case_index: (N,) int in ``[0, n_cases)``, the case of each lesion.
        n_cases: Number of cases of the fold (cases without lesions count too: they
            can be drawn and then contribute nothing).
        n_boot: Number of replicates B.
        rng: Random generator (consumed).

    Returns:
        (B, N) float64 weights, non-negative integers.
    """
    counts = rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_boot)
    return counts[:, np.asarray(case_index, dtype=np.int64)].astype(np.float64)


def weighted_auc(uncertainty: np.ndarray, is_tp: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy-confidence AUC under B sets of lesion weights (weighted Mann-Whitney).

    Args:
        uncertainty: (N,) float, higher = less trusted.
        is_tp: (N,) bool.
        weights: (B, N) non-negative lesion weights (bootstrap counts).

    Returns:
        (B,) float64 AUC in [0, 1]; NaN where the weighted FP or TP total is 0.
    """
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    t = np.asarray(is_tp, dtype=bool).reshape(-1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != u.size or t.size != u.size:
        raise ValueError(
            f"uncertainty ({u.size}), is_tp ({t.size}) and weights {w.shape} do not match."
        )
    order = np.argsort(u, kind="stable")
    us, ts, ws = u[order], t[order], w[:, order]
    # groups of tied values: [start, end) in sorted order
    _, start, counts = np.unique(us, return_index=True, return_counts=True)
    group = np.repeat(np.arange(start.size), counts)
    lo, hi = start[group], (start + counts)[group]
    cum_tp = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(ws * ts, axis=1)], axis=1)
    below_half_tied = 0.5 * (cum_tp[:, lo] + cum_tp[:, hi])  # (B, N)
    fp = ~ts
    numerator = np.sum(ws[:, fp] * below_half_tied[:, fp], axis=1)
    total = cum_tp[:, -1] * ws[:, fp].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, numerator / total, np.nan)


@dataclass
class BootstrapAUC:
    """Bootstrap replicates of Table 2's AUC.

    Attributes:
        methods: The M methods, in column order.
        point: (M,) the mean over folds of the fold AUCs on the original lesions.
        folds: (F,) fold ids, ascending.
        fold_replicates: (B, F, M) fold AUCs of each replicate (NaN where undefined).
        replicates: (B, M) mean over folds of ``fold_replicates`` (NaN folds left out).
    """

    methods: list[str]
    point: np.ndarray
    folds: np.ndarray
    fold_replicates: np.ndarray
    replicates: np.ndarray

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of each method's AUC.

        Returns:
            ``(lo, hi)``, each (M,).
        """
        return _percentiles(self.replicates, level)

    def difference(
        self, reference: str, level: float = 0.95
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Paired difference ``AUC(method) - AUC(reference)`` and its percentile interval.

        Returns:
            ``(diff, lo, hi)``, each (M,); the reference's own row is 0.
        """
        j = self.methods.index(reference)
        diff = self.point - self.point[j]
        lo, hi = _percentiles(self.replicates - self.replicates[:, j : j + 1], level)
        return diff, lo, hi


def _percentiles(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        lo, hi = np.nanpercentile(values, q, axis=0)
    return lo, hi


def bootstrap_auc(
    lesions: pd.DataFrame,
    methods: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> BootstrapAUC:
    """Case-resampling bootstrap of every method's fold-averaged AUC.

    Per fold (ascending), ``n_boot`` replicates resample the fold's test cases with
    replacement (the cases are those with at least one lesion in ``lesions``); every
    method is scored on the same replicates.

    Args:
        lesions: The ``RUN/results/lesions.csv`` frame (``fold``, ``case_id``,
            ``is_tp`` and one column per method).
        methods: Method columns.
        n_boot: Number of replicates B (>= 1).
        seed: Seed of the resampling; the same seed gives the same replicates.

    Returns:
        The replicates and the point estimates.
    """
    methods = list(methods)
    missing = [c for c in ("fold", "case_id", "is_tp", *methods) if c not in lesions.columns]
    if missing:
        raise ValueError(f"the lesion table is missing column(s) {', '.join(missing)}.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    rng = np.random.default_rng(seed)
    is_tp = as_bool(lesions["is_tp"])
    scores = lesions[methods].to_numpy(dtype=np.float64)
    groups = sorted(lesions.groupby("fold").indices.items())
    folds = np.array([f for f, _ in groups])
    reps = np.full((n_boot, len(groups), len(methods)), np.nan)
    point = np.full((len(groups), len(methods)), np.nan)
    for k, (_, index) in enumerate(groups):
        codes, _ = pd.factorize(lesions["case_id"].to_numpy()[index])
        weights = case_weights(codes, int(codes.max()) + 1, n_boot, rng)
        full = np.ones((1, index.size))
        for m in range(len(methods)):
            reps[:, k, m] = weighted_auc(scores[index, m], is_tp[index], weights)
            point[k, m] = weighted_auc(scores[index, m], is_tp[index], full)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of no defined fold: NaN
        mean_reps = np.nanmean(reps, axis=1)
        mean_point = np.nanmean(point, axis=0)
    return BootstrapAUC(methods, mean_point, folds, reps, mean_reps)


def auc_intervals(
    lesions: pd.DataFrame,
    methods: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    reference: str = "gcnn_classif",
) -> pd.DataFrame:
    """Table 2's interval columns: the AUC interval and the paired difference to a reference.

    Args:
        lesions: The lesion table (see :func:`bootstrap_auc`).
        methods: Method columns (rows follow this order).
        n_boot: Replicates B.
        seed: Resampling seed.
        level: Interval level (0.95: the 2.5th and 97.5th percentiles).
        reference: The method every other is compared with.

    Returns:
        One row per method with columns ``method, auc_lo, auc_hi,
        diff_vs_<reference>, diff_lo, diff_hi`` (fractions, like ``auc``): the difference
        is ``AUC(method) - AUC(reference)``, so negative means worse than the reference.
        The difference columns are NaN when ``reference`` is not among ``methods``.
    """
    boot = bootstrap_auc(lesions, methods, n_boot=n_boot, seed=seed)
    lo, hi = boot.interval(level)
    if reference in boot.methods:
        diff, dlo, dhi = boot.difference(reference, level)
    else:
        diff = dlo = dhi = np.full(len(boot.methods), np.nan)
    return pd.DataFrame(
        {
            "method": boot.methods,
            "auc_lo": lo,
            "auc_hi": hi,
            f"diff_vs_{reference}": diff,
            "diff_lo": dlo,
            "diff_hi": dhi,
        }
    )
