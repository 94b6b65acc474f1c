"""A scorer wrapped with its P(FP) calibrator: :class:`CalibratedScorer`.

The wrapper estimator of scikit-learn's ``CalibratedClassifierCV(estimator, cv)``: it
takes an unfitted scorer instance, clones it (:func:`clone`) for every fit of
:func:`~lesionuq.calibration.cross_fit`, and writes the ``calibration.json`` that
``predict`` and the report read. :func:`fit_calibrated_scorer` is the experiment's step
for one fold. Calibration sits below the scorers (docs/DESIGN.md, layers): what it needs
of one is the :class:`Scorer` protocol, and it imports none of them.

Example:
    >>> cal = CalibratedScorer(make_scorer("gcnn_classif", cfg), n_inner=5).fit(val_lesions)
    >>> p_fp = cal.predict_p_fp(test_lesions)  # (N,) calibrated P(FP)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

import numpy as np

from lesionuq.calibration.calibrators import Calibrator, PlattCalibrator
from lesionuq.calibration.crossfit import cross_fit, half_fit_scores, is_regressor
from lesionuq.calibration.iou import IoURecalibrator
from lesionuq.calibration.storage import CALIBRATOR_FILE, operating_point_of, save_calibration
from lesionuq.config import ExperimentConfig
from lesionuq.lesions.dataset import LesionSet

__all__ = [
    "CalibratedScorer",
    "Scorer",
    "SelfCalibratedScorer",
    "clone",
    "fit_calibrated_scorer",
]

S = TypeVar("S", bound="Scorer")


class Scorer(Protocol):
    """What calibration needs of a scorer: a :class:`~lesionuq.scorers.base.LesionScorer`.

    Calibration sits below the scorers (docs/DESIGN.md, layers) and imports none of them.
    """

    name: str
    self_calibrated: ClassVar[bool]

    def fit(self, lesions: LesionSet, progress: bool = True) -> Any:
        """Learn from labelled lesions; returns the scorer."""

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64 uncertainty of N lesions."""

    def get_params(self) -> dict[str, Any]:
        """Constructor keyword arguments."""

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Any:
        """A new, unfitted scorer from :meth:`get_params` output."""


class SelfCalibratedScorer(Scorer, Protocol):
    """A scorer whose score is already a P(FP) fitted on out-of-fold scores (``gcnn_stack``).

    Its fit computes the out-of-fold P(FP) of its fitting lesions anyway (its own inner
    folds); :meth:`fit_predict_oof` returns them, as ``fit_predict`` returns a clustering's
    labels, instead of leaving them on the scorer.
    """

    n_inner: int

    def fit_predict_oof(self, lesions: LesionSet, progress: bool = True) -> np.ndarray:
        """Fit on N labelled lesions; return their (N,) out-of-fold P(FP)."""


def clone(scorer: S) -> S:
    """A new, unfitted scorer with the same parameters and name (scikit-learn's ``clone``)."""
    new = type(scorer).from_params(scorer.get_params())
    new.name = scorer.name
    return cast(S, new)


class CalibratedScorer:
    """A scorer and its P(FP) calibrator, fitted on the same lesions without reusing one.

    The wrapper estimator of scikit-learn's ``CalibratedClassifierCV(estimator, cv)``:
    :meth:`fit` clones ``estimator`` for each inner fold (:func:`cross_fit`), fits the
    calibrator on the out-of-fold scores only, and refits a clone on all the lesions. A
    ``self_calibrated`` estimator (``gcnn_stack``: its output is already a logistic fit on
    out-of-fold scores) is fitted once; its calibrator is the identity (method ``"self"``)
    and its own out-of-fold P(FP) (:meth:`SelfCalibratedScorer.fit_predict_oof`) stand for
    the cross-fitted ones. ``estimator`` itself is never fitted.

    Args:
        estimator: An unfitted learned scorer (``requires_fit``), the template of every fit.
        n_inner: Inner folds (:func:`inner_folds`).
        seed: Seed of the inner split (the scorer's own seed is its parameter).
        method: Calibrator, ``"platt"`` or ``"isotonic"`` (:func:`make_calibrator`).
        iou_kind: Regressors' IoU recalibration, ``"isotonic"`` or ``"linear"``.
        half_fits: Also fit a classifier on each half of every inner fold's training cases
            (:func:`half_fit_scores`, 2 more fits per inner fold at half the size), so the
            default-method rule can extrapolate its out-of-fold AUC to the full fit.
        half_splits: Distinct cuts into halves per inner fold (``splits`` of
            :func:`half_fit_scores`).

    Attributes:
        estimator_: The scorer fitted on all the lesions.
        calibrator_: uncertainty -> P(FP), fitted on ``oof_scores_`` (the identity for a
            self-calibrated estimator).
        iou_calibrator_: For regressors, the recalibration of the predicted IoU_adj; else
            None.
        oof_scores_: (N,) out-of-fold uncertainty of each fitting lesion.
        oof_p_fp_: (N,) ``calibrator_.predict(oof_scores_)``: the out-of-fold P(FP) a
            review threshold is chosen on.
        oof_is_tp_: (N,) bool labels of the fitting lesions.
        inner_fold_: (N,) inner fold of each lesion (for a self-calibrated scorer its own
            ``oof_fold_`` when it has one, else zeros): the model that scored each
            out-of-fold value. Saved as ``oof_fold``.
        method_: ``method``, or ``"self"``.
        n_inner_: Inner folds used (the estimator's own for a self-calibrated one).
        half_scores_: (2 * half_splits, N) scores of the half-size fits
            (:func:`half_fit_scores` over ``inner_fold_``), or None (``half_fits`` off, a
            regressor, or one inner fold).

    Example:
        >>> cal = CalibratedScorer(MetaSegScorer("classif"), n_inner=5).fit(val_lesions)
        >>> cal.predict_p_fp(test_lesions)  # (N,) in (0, 1)
    """

    estimator_: Scorer
    calibrator_: Calibrator
    iou_calibrator_: IoURecalibrator | None
    oof_scores_: np.ndarray
    oof_p_fp_: np.ndarray
    oof_is_tp_: np.ndarray
    inner_fold_: np.ndarray
    method_: str
    n_inner_: int

    def __init__(
        self,
        estimator: Scorer,
        n_inner: int = 5,
        seed: int = 0,
        method: str = "platt",
        iou_kind: str = "isotonic",
        half_fits: bool = False,
        half_splits: int = 1,
    ) -> None:
        self.estimator = estimator
        self.n_inner = n_inner
        self.seed = seed
        self.method = method
        self.iou_kind = iou_kind
        self.half_fits = half_fits
        self.half_splits = half_splits

    def fit(self, lesions: LesionSet, progress: bool = False) -> Self:
        """Cross-fit the scorer and its calibrator on N >= 2 labelled lesions.

        Args:
            lesions: Table with ``is_tp``, ``case_id`` (inner folds by case) and, for
                regressors, ``iou_adj``; graphs when the scorer reads them.
            progress: Passed to each of the scorer's fits.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: Fewer than 2 lesions, or missing label columns.
        """
        if self.estimator.self_calibrated:
            scorer = cast(SelfCalibratedScorer, clone(self.estimator))
            self.oof_scores_ = np.asarray(
                scorer.fit_predict_oof(lesions, progress=progress), dtype=np.float64
            )
            self.estimator_ = scorer
            self.calibrator_ = PlattCalibrator.identity("logit", len(lesions))
            self.iou_calibrator_ = None
            own = getattr(scorer, "oof_fold_", None)  # the stacker's own inner split
            self.inner_fold_ = (
                np.asarray(own, dtype=np.int64) if own is not None else np.zeros(len(lesions), int)
            )
            self.method_, self.n_inner_ = "self", int(scorer.n_inner)
        else:
            fit = cross_fit(
                lambda: clone(self.estimator),
                lesions,
                n_inner=self.n_inner,
                seed=self.seed,
                kind=self.method,
                iou_kind=self.iou_kind,
                progress=progress,
            )
            self.estimator_ = fit.scorer
            self.calibrator_ = fit.calibrator
            self.iou_calibrator_ = fit.iou_calibrator
            self.oof_scores_ = fit.oof_scores
            self.inner_fold_ = fit.inner_fold
            self.method_, self.n_inner_ = self.method, int(fit.inner_fold.max()) + 1
        self.oof_p_fp_ = self.calibrator_.predict(self.oof_scores_)
        self.oof_is_tp_ = np.asarray(lesions.is_tp, dtype=bool)
        self.half_scores_ = None
        if self.half_fits and not is_regressor(self.estimator) and self.inner_fold_.max() > 0:
            self.half_scores_ = half_fit_scores(
                lambda: clone(self.estimator),
                lesions,
                self.inner_fold_,
                self.seed,
                splits=self.half_splits,
            )
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise RuntimeError("this CalibratedScorer is not fitted; call fit() first.")

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64 uncertainty of the fitted scorer (not calibrated)."""
        self._check_fitted()
        return np.asarray(self.estimator_.score(lesions), dtype=np.float64)

    def predict_p_fp(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64 calibrated P(FP) of N lesions."""
        return self.calibrator_.predict(self.score(lesions))

    def save_calibration(self, path: str | Path, review_target: str) -> Path:
        """Write ``calibration.json`` (:func:`save_calibration`) with the out-of-fold data.

        Besides the calibrators, the file keeps the method, the number of inner folds,
        the out-of-fold P(FP) with their labels (so that ``predict`` can choose another
        review target) and inner folds (``oof_fold``: which lesions one inner model
        scored, for :func:`~lesionuq.evaluation.curves.within_fold_auc`), the half-size
        fits' scores when there are any (``half_scores``, NaN as null) and the operating
        point of ``review_target``.

        Args:
            path: Usually ``RUN/fold_K/scorers/METHOD/calibration.json``.
            review_target: A review target such as ``"tp:0.95"``.
        """
        self._check_fitted()
        is_tp = self.oof_is_tp_
        extra = {
            "method": self.method_,
            "n_inner": self.n_inner_,
            "oof_p_fp": [float(v) for v in self.oof_p_fp_],
            "oof_is_tp": [bool(v) for v in is_tp],
            "oof_fold": [int(v) for v in self.inner_fold_],
            "operating_point": operating_point_of(self.oof_p_fp_, is_tp, review_target),
        }
        if self.half_scores_ is not None:
            extra["half_scores"] = [
                [float(v) if np.isfinite(v) else None for v in row] for row in self.half_scores_
            ]
        return save_calibration(path, self.calibrator_, self.iou_calibrator_, extra=extra)

    def __repr__(self) -> str:
        return (
            f"CalibratedScorer({self.estimator!r}, n_inner={self.n_inner}, seed={self.seed}, "
            f"method={self.method!r}, iou_kind={self.iou_kind!r}, half_fits={self.half_fits}, "
            f"half_splits={self.half_splits})"
        )


def fit_calibrated_scorer(
    factory: Callable[[], S],
    cfg: ExperimentConfig,
    val: LesionSet,
    folder: Path,
    progress: bool,
) -> S:
    """Cross-fit a learned scorer and write its ``calibration.json`` into ``folder``.

    A fold's step of the experiment: :class:`CalibratedScorer` with the config's
    calibration settings, then :meth:`CalibratedScorer.save_calibration`.

    Args:
        factory: Zero-argument function returning the unfitted learned scorer (``requires_fit``),
            e.g. ``lambda: make_scorer("gcnn_classif", cfg)``; called once (the template).
        cfg: Experiment config (``calibration`` and ``seed``).
        val: The fold's validation lesions (N >= 2).
        folder: The scorer's folder (``calibration.json`` is written there).
        progress: Show progress bars.

    Returns:
        The scorer refitted on all of ``val``.
    """
    c = cfg.calibration
    cal = CalibratedScorer(
        factory(),
        n_inner=c.n_inner,
        seed=cfg.seed,
        method=c.method,
        half_fits=c.half_fits,
        half_splits=c.half_splits,
    )
    cal.fit(val, progress=progress).save_calibration(folder / CALIBRATOR_FILE, c.review_target)
    return cast(S, cal.estimator_)
