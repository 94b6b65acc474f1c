"""Cross-fitting: a scorer and its P(FP) calibrator from one fold's validation lesions.

:func:`cross_fit` fits a scorer and its calibrator on the same lesions without reusing
any lesion twice: inner K-fold (:func:`inner_folds`: stratified by ``is_tp``, grouped by
case when there are enough cases), the calibrator is fitted on the out-of-fold scores
only, and the scorer is then refitted on all the validation lesions. Regressors
(:func:`is_regressor`) also get an :class:`~lesionuq.calibration.IoURecalibrator`.

Example:
    >>> fit = cross_fit(lambda: MetaSegScorer("classif"), val_lesions, n_inner=5)
    >>> scorer, calibrator, oof_scores = fit  # oof_scores: (N,)
    >>> p_fp = calibrator.predict(scorer.score(test_lesions))  # (M,)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from lesionuq.calibration.calibrators import Calibrator, make_calibrator
from lesionuq.calibration.iou import IoURecalibrator
from lesionuq.lesions.dataset import LesionSet

__all__ = [
    "CrossFitResult",
    "cross_fit",
    "half_fit_scores",
    "inner_folds",
    "is_regressor",
    "scan_folds",
]


def inner_folds(
    is_tp: np.ndarray, groups: np.ndarray | None, n_inner: int = 5, seed: int = 0
) -> np.ndarray:
    """Assign each lesion to one of the inner folds.

    Rule: stratified by ``is_tp`` and grouped by case (``StratifiedGroupKFold``) when there
    are at least ``n_inner`` cases; otherwise stratified over lesions (``StratifiedKFold``,
    with ``min(n_inner, smaller class count)`` folds when that is >= 2); otherwise plain
    shuffled ``KFold``. Always at least 2 folds.

    Args:
        is_tp: (N,) bool.
        groups: (N,) case ids, or None (no grouping).
        n_inner: Wanted number of folds (>= 2).
        seed: Shuffling seed.

    Returns:
        (N,) int64 fold of each lesion, 0..K-1.

    Raises:
        ValueError: ``n_inner < 2`` or fewer than 2 lesions.
    """
    y = np.asarray(is_tp, dtype=bool).reshape(-1)
    n = y.size
    if n_inner < 2:
        raise ValueError(f"n_inner must be >= 2, got {n_inner}.")
    if n < 2:
        raise ValueError(f"cross-fitting needs at least 2 lesions, got {n}.")
    x = np.zeros((n, 1))
    fold = np.full(n, -1, dtype=np.int64)
    min_class = int(min(y.sum(), n - y.sum()))
    if groups is not None and len(np.unique(groups)) >= n_inner and min_class >= 1:
        splitter: Any = StratifiedGroupKFold(n_inner, shuffle=True, random_state=seed)
        splits = splitter.split(x, y, np.asarray(groups))
    elif min(n_inner, min_class) >= 2:
        splitter = StratifiedKFold(min(n_inner, min_class), shuffle=True, random_state=seed)
        splits = splitter.split(x, y)
    else:
        splits = KFold(min(n_inner, n), shuffle=True, random_state=seed).split(x)
    for k, (_, test) in enumerate(splits):
        fold[test] = k
    return fold


def scan_folds(lesions: LesionSet, n_inner: int, seed: int = 0) -> np.ndarray:
    """Inner folds of lesions by scan whenever they come from at least 2 scans.

    ``min(n_inner, number of scans)`` folds grouped by ``case_id`` and stratified by
    ``is_tp`` (:func:`inner_folds`), so that a model is judged on scans it was not fitted
    on; by lesion (``n_inner`` folds) when there is one scan or no ``case_id`` column.

    Args:
        lesions: N lesions with ``is_tp`` (and ``case_id``) in their table.
        n_inner: Wanted number of folds (>= 2).
        seed: Shuffling seed.

    Returns:
        (N,) int64 fold of each lesion, 0..K-1.
    """
    table = lesions.table
    cases = table["case_id"].astype(str).to_numpy() if "case_id" in table else None
    n_cases = 0 if cases is None else np.unique(cases).size
    k = min(n_inner, n_cases) if n_cases >= 2 else n_inner
    return inner_folds(lesions.is_tp, cases, k, seed)


def is_regressor(scorer: Any) -> bool:
    """Whether a scorer predicts IoU_adj (``task == "reg"``; its score is 1 - IoU_hat)."""
    return getattr(scorer, "task", None) == "reg"


@dataclass
class CrossFitResult:
    """What :func:`cross_fit` returns.

    Attributes:
        scorer: The scorer refitted on ALL the validation lesions.
        calibrator: uncertainty -> P(FP), fitted on ``oof_scores`` only.
        oof_scores: (N,) out-of-fold uncertainty of each validation lesion.
        inner_fold: (N,) inner fold of each validation lesion.
        iou_calibrator: For regressors, the recalibration of the predicted IoU_adj
            (``1 - oof_scores``) to the observed IoU_adj; None for classifiers.
    """

    scorer: Any
    calibrator: Calibrator
    oof_scores: np.ndarray
    inner_fold: np.ndarray
    iou_calibrator: IoURecalibrator | None = None

    def __iter__(self) -> Iterator[Any]:
        """Unpack as ``scorer, calibrator, oof_scores``."""
        return iter((self.scorer, self.calibrator, self.oof_scores))


def cross_fit(
    factory: Callable[[], Any],
    lesions: LesionSet,
    n_inner: int = 5,
    seed: int = 0,
    kind: str = "platt",
    iou_kind: str = "isotonic",
    progress: bool = False,
) -> CrossFitResult:
    """Fit a scorer and its P(FP) calibrator on one fold's validation lesions.

    1. Split the lesions into inner folds (:func:`inner_folds`, by ``case_id``).
    2. For each inner fold k: fit ``factory()`` on the other folds, score fold k.
    3. Fit the calibrator on all out-of-fold scores (each from a scorer that never saw
       that lesion) against ``is_fp = not is_tp``.
    4. Refit ``factory()`` on all the lesions: the scorer used on test lesions.

    Classifiers (scores in [0, 1]) get Platt on the logit (or isotonic); regressors
    (:func:`is_regressor`) get Platt on the identity of ``u = 1 - IoU_hat`` (or isotonic) and
    an :class:`IoURecalibrator` fitted on the out-of-fold predicted IoU_adj.

    Args:
        factory: Returns a new unfitted scorer with ``fit(LesionSet, progress=) -> self``
            and ``score(LesionSet) -> (N,)``.
        lesions: The fold's validation lesions (table with ``is_tp``, ``case_id`` and, for
            regressors, ``iou_adj``).
        n_inner: Number of inner folds.
        seed: Seed of the inner split (the scorers' own seeds are the factory's).
        kind: ``"platt"`` or ``"isotonic"``.
        iou_kind: ``"isotonic"`` or ``"linear"`` (regressors only).
        progress: Passed to each scorer's ``fit``.

    Returns:
        A :class:`CrossFitResult`; it unpacks as ``scorer, calibrator, oof_scores``.

    Raises:
        ValueError: Fewer than 2 lesions, or missing label columns.
    """
    y_tp = lesions.is_tp
    groups = lesions.table["case_id"].astype(str).to_numpy() if "case_id" in lesions.table else None
    fold = inner_folds(y_tp, groups, n_inner, seed)
    oof = np.full(len(lesions), np.nan)
    regressor = None
    with warnings.catch_warnings():
        # a fold with a single class makes a constant scorer: expected, not news
        warnings.simplefilter("ignore", UserWarning)
        for k in range(int(fold.max()) + 1):
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            scorer = factory()
            regressor = is_regressor(scorer)
            scorer.fit(lesions.subset(train), progress=progress)
            oof[test] = np.asarray(scorer.score(lesions.subset(test)), dtype=np.float64)
    if not np.all(np.isfinite(oof)):
        raise RuntimeError("cross-fitting left lesions without a finite out-of-fold score.")
    is_fp = ~y_tp
    transform = "identity" if regressor else "logit"
    calibrator = make_calibrator(kind, transform).fit(oof, is_fp)
    iou_cal = None
    if regressor:
        iou = lesions.table["iou_adj"].to_numpy(dtype=np.float64)
        iou_cal = IoURecalibrator(iou_kind).fit(1.0 - oof, iou)
    final = factory().fit(lesions, progress=progress)
    return CrossFitResult(final, calibrator, oof, fold, iou_cal)


def half_fit_scores(
    factory: Callable[[], Any],
    lesions: LesionSet,
    fold: np.ndarray,
    seed: int = 0,
    splits: int = 1,
) -> np.ndarray:
    """Out-of-fold scores of models fitted on half of each inner fold's training cases.

    The learning-curve point below the cross-fit's (issue 31): a model of :func:`cross_fit`
    for inner fold k is fitted on the other folds; here the other folds' cases are
    shuffled (``numpy.random.default_rng(seed)``, one generator over the folds in order)
    and cut into two halves, a model is fitted on each half's lesions and scores fold
    k. A half with one class only is not fitted (its row stays NaN for fold k). With the
    cross-fit's out-of-fold AUC, these give the AUC's growth with the training size, which
    :mod:`lesionuq.scorers.default_method` extrapolates to the model fitted on all lesions.

    With ``splits`` > 1 the cut is repeated: each round draws, per inner fold, a cut into
    halves that no earlier round used (the same generator, so round 0 is the cut of
    ``splits=1``); an inner fold whose cases allow fewer distinct cuts (3 or 4 cases allow
    3) gets all of them and NaN rows after. Averaging over cuts lowers the noise of the
    half-size AUC, which one cut of a few cases leaves large.

    Args:
        factory: Returns a new unfitted scorer (``fit(LesionSet, progress=)``, ``score``).
        lesions: The validation lesions (``is_tp``, ``case_id``).
        fold: (N,) inner fold of each lesion (the cross-fit's).
        seed: Seed of the halves.
        splits: Distinct cuts into halves per inner fold (>= 1).

    Returns:
        (2 * splits, N) float64 scores: rows 2r and 2r + 1 from the models fitted on the
        halves of cut r; NaN where none was.

    Raises:
        ValueError: ``splits`` < 1.
    """
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}.")
    fold = np.asarray(fold)
    t = lesions.is_tp
    cases = lesions.table["case_id"].astype(str).to_numpy()
    scores = np.full((2 * splits, len(lesions)), np.nan)
    rng = np.random.default_rng(seed)
    used: dict[Any, set[frozenset[str]]] = {k: set() for k in np.unique(fold)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(splits):
            for k in np.unique(fold):
                test = np.flatnonzero(fold == k)
                halves = _new_cut(np.unique(cases[fold != k]), used[k], rng)
                for h, half in enumerate(halves):
                    train = np.flatnonzero(np.isin(cases, half) & (fold != k))
                    if t[train].all() or not t[train].any():
                        continue
                    scorer = factory().fit(lesions.subset(train), progress=False)
                    row = scores[2 * r + h]
                    row[test] = np.asarray(scorer.score(lesions.subset(test)), np.float64)
    return scores


def _new_cut(
    cases: np.ndarray, used: set[frozenset[str]], rng: np.random.Generator
) -> list[np.ndarray]:
    """A cut of ``cases`` into two halves (first ``n // 2`` of a shuffle) not in ``used``.

    Args:
        cases: (n,) distinct case ids (shuffled in place).
        used: The cuts drawn before, each as the frozenset of one half (the smaller for
            odd n, the one holding ``min(cases)`` for even n); the new one is added.
        rng: The generator (one shuffle per draw; the first draw is the cut of one round).

    Returns:
        The two halves, or no halves when every distinct cut is in ``used``.
    """
    n = len(cases)
    distinct = math.comb(n, n // 2) // (2 if n % 2 == 0 and n > 1 else 1)
    while len(used) < distinct:
        rng.shuffle(cases)
        halves = np.array_split(cases, [n // 2])
        # an even cut and its mirror are the same cut: keyed by the half holding min(cases)
        key = frozenset(halves[0] if n % 2 or n < 2 else min(halves, key=lambda a: min(a)))
        if key not in used:
            used.add(key)
            return halves
    return []
