"""Turn a lesion scorer's uncertainty into a probability a clinician can read: P(FP).

A learned scorer's output (the GCNN's softmax, MetaSeg's logistic output, ``1 - IoU_hat``
of the regressors) ranks lesions but is not a calibrated probability: trained to
convergence, the GCNN says 1e-9 or 0.998. A *calibrator* is a monotone non-decreasing map
``uncertainty -> P(FP)`` fitted on labelled lesions the scorer did NOT train on.

- :class:`PlattCalibrator` (default): ``P(FP) = sigmoid(a * z(u) + b)`` with ``a > 0``,
  ``z = logit(u)`` for scores in [0, 1] (``transform="logit"``) or ``z = u``
  (``transform="identity"``). Fitted by maximum likelihood with Platt's (1999) smoothed
  targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (no saturation at 0 or 1 on separable
  data). ``a`` is bounded below by ``min_slope > 0``, so the map is *strictly* increasing
  and every ranking metric (the accuracy-confidence AUC) is unchanged.
- :class:`IsotonicCalibrator`: the isotonic (pool-adjacent-violators) fit of ``is_fp`` on
  ``u``, linearly interpolated between its knots and clipped outside them. Isotonic steps
  are flat, which would create ties and change the AUC slightly; a tiebreak of weight
  ``tiebreak`` (1e-6) adds a strictly increasing logistic of the standardised score, so
  the order of distinct scores is kept (up to float64 resolution, ~1e-16 relative).

:func:`cross_fit` fits a scorer and its calibrator on one fold's validation lesions
without reusing any lesion twice: inner K-fold (stratified by ``is_tp``, grouped by case
when there are enough cases), the calibrator is fitted on the out-of-fold scores only, and
the scorer is then refitted on all the validation lesions. :class:`CalibratedScorer` is
the same as a wrapper estimator around a scorer instance, in the manner of
scikit-learn's ``CalibratedClassifierCV(estimator, cv)``: it clones the scorer for each
fit, and writes the ``calibration.json`` that ``predict`` and the report read.

For the regressors (``gcnn_reg``, ``metaseg_reg``, which predict IoU_adj and score
``u = 1 - IoU_hat``), :class:`IoURecalibrator` maps the out-of-fold predicted IoU_adj to the
observed one (isotonic or linear), and the P(FP) calibrator is the same Platt scaling on
``u`` with ``transform="identity"`` (a logistic regression on the predicted IoU).

Everything is saved as JSON (``to_dict`` / :func:`calibrator_from_dict`), never pickled.

Example:
    >>> cal = CalibratedScorer(make_scorer("gcnn_classif", cfg), n_inner=5).fit(val_lesions)
    >>> p_fp = cal.predict_p_fp(test_lesions)  # (N,) calibrated P(FP)
"""

from __future__ import annotations

import json
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

import numpy as np
from scipy import optimize, special
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from lesionuq.config import ExperimentConfig
from lesionuq.io import InputError, atomic_write_text
from lesionuq.lesions.dataset import LesionSet
from lesionuq.operating_point import OperatingPoint

__all__ = [
    "CALIBRATOR_FILE",
    "CalibratedScorer",
    "Calibrator",
    "CrossFitResult",
    "IoURecalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "Scorer",
    "SelfCalibratedScorer",
    "calibrator_from_dict",
    "clipped_logit",
    "clone",
    "cross_fit",
    "fit_calibrated_scorer",
    "fit_monotone_logistic",
    "inner_folds",
    "is_regressor",
    "load_calibration",
    "make_calibrator",
    "operating_point_of",
    "save_calibration",
    "update_operating_point",
]

logger = logging.getLogger(__name__)
S = TypeVar("S", bound="Scorer")

CALIBRATOR_FILE = "calibration.json"
"""Name of the calibration file written next to a scorer's ``scorer.json``."""


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


_EPS = 1e-12  # clip of scores before the logit
_FORMAT = 1


def _as_1d(values: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf.")
    return a


def _labels(is_fp: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(is_fp).reshape(-1)
    if y.shape != (n,):
        raise ValueError(f"is_fp has {y.size} entries for {n} scores.")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("is_fp must be binary (0/1 or bool).")
    return y.astype(np.float64)


class Calibrator(ABC):
    """A monotone non-decreasing map from a lesion uncertainty to P(FP).

    Subclasses register themselves by ``kind`` for :func:`calibrator_from_dict`.
    """

    kind: ClassVar[str]
    _kinds: ClassVar[dict[str, type[Calibrator]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Calibrator._kinds[cls.kind] = cls

    @abstractmethod
    def fit(self, scores: np.ndarray, is_fp: np.ndarray) -> Self:
        """Fit on lesions the scorer did not train on.

        Args:
            scores: (N,) uncertainties (higher = less trusted).
            is_fp: (N,) bool or 0/1, 1 = false positive lesion.

        Returns:
            ``self``.
        """

    @abstractmethod
    def predict(self, scores: np.ndarray) -> np.ndarray:
        """(N,) float64 P(FP) in [0, 1] of (N,) uncertainties."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters and learned state (``"kind"`` included)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first.")


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
    column is :class:`PlattCalibrator`; several are a monotone stacking of scorers
    (:class:`lesionuq.scorers.select.StackedScorer`), where a column that adds nothing
    gets the slope ``min_slope`` instead of a negative weight.

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
    y = _labels(is_fp, z.shape[0])
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


class PlattCalibrator(Calibrator):
    """Platt scaling, ``P(FP) = sigmoid(a * z(u) + b)`` with ``a >= min_slope > 0``.

    Args:
        transform: ``"logit"`` (scores are probabilities; ``z = logit(clip(u))``) or
            ``"identity"`` (``z = u``, any real score).
        min_slope: Lower bound of ``a``. Keeps the map strictly increasing even when the
            scores are uninformative or anti-correlated with FP (then ``a = min_slope``
            and P(FP) is nearly the FP rate).

    Attributes:
        a_: Slope (> 0).
        b_: Intercept.
        n_: Number of fitting lesions.
    """

    kind = "platt"

    def __init__(self, transform: str = "logit", min_slope: float = 1e-6) -> None:
        if transform not in ("logit", "identity"):
            raise ValueError(f"transform must be 'logit' or 'identity', got {transform!r}.")
        if not min_slope > 0:
            raise ValueError(f"min_slope must be > 0, got {min_slope}.")
        self.transform = transform
        self.min_slope = float(min_slope)

    def _z(self, scores: np.ndarray) -> np.ndarray:
        return clipped_logit(scores) if self.transform == "logit" else scores

    @classmethod
    def identity(cls, transform: str = "logit", n: int = 0) -> Self:
        """The fitted map ``a = 1, b = 0``: P(FP) = u (``"logit"``) or sigmoid(u).

        Args:
            transform: As in the constructor.
            n: Number of lesions to record as the fitting set.
        """
        cal = cls(transform=transform)
        cal.a_, cal.b_, cal.n_ = 1.0, 0.0, int(n)
        return cal

    def fit(self, scores: np.ndarray, is_fp: np.ndarray) -> Self:
        """Maximum likelihood with Platt's smoothed targets (see the module docstring).

        Raises:
            ValueError: No lesions, NaN scores or non-binary labels.
        """
        s = _as_1d(scores, "scores")
        y = _labels(is_fp, s.size)
        if s.size == 0:
            raise ValueError("cannot calibrate on zero lesions.")
        z = self._z(s)
        (a,), b = fit_monotone_logistic(z[:, None], y, self.min_slope)
        self.a_, self.b_ = float(a), float(b)
        self.n_ = int(s.size)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """(N,) float64 P(FP), strictly increasing in the score."""
        self._check_fitted("a_")
        s = _as_1d(scores, "scores")
        return special.expit(self.a_ * self._z(s) + self.b_)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "platt", "transform", "min_slope", "a", "b", "n"}``."""
        self._check_fitted("a_")
        return {
            "kind": self.kind,
            "transform": self.transform,
            "min_slope": self.min_slope,
            "a": self.a_,
            "b": self.b_,
            "n": self.n_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output."""
        cal = cls(transform=d["transform"], min_slope=d["min_slope"])
        cal.a_, cal.b_, cal.n_ = float(d["a"]), float(d["b"]), int(d["n"])
        return cal


class IsotonicCalibrator(Calibrator):
    """Isotonic regression of ``is_fp`` on the score, plus a tiny strictly increasing tiebreak.

    ``P(FP) = (1 - w) * iso(u) + w * sigmoid((u - m) / s)`` with ``w = tiebreak``, ``m`` /
    ``s`` the median / standard deviation of the fitting scores. ``iso`` is piecewise
    linear between the fitted knots and constant outside them.

    Args:
        tiebreak: Weight ``w`` of the tiebreak (0 gives the plain isotonic fit, whose flat
            steps tie lesions and can change the AUC).

    Attributes:
        x_, y_: (K,) knots of the isotonic fit (x increasing, y non-decreasing in [0, 1]).
        center_, scale_: ``m`` and ``s`` of the tiebreak.
        n_: Number of fitting lesions.
    """

    kind = "isotonic"

    def __init__(self, tiebreak: float = 1e-6) -> None:
        if not 0 <= tiebreak < 1:
            raise ValueError(f"tiebreak must be in [0, 1), got {tiebreak}.")
        self.tiebreak = float(tiebreak)

    def fit(self, scores: np.ndarray, is_fp: np.ndarray) -> Self:
        """Pool-adjacent-violators fit (scikit-learn), kept as knots.

        Raises:
            ValueError: No lesions, NaN scores or non-binary labels.
        """
        s = _as_1d(scores, "scores")
        y = _labels(is_fp, s.size)
        if s.size == 0:
            raise ValueError("cannot calibrate on zero lesions.")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(s, y)
        self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        self.center_ = float(np.median(s))
        sd = float(s.std())
        self.scale_ = sd if sd > 0 else 1.0
        self.n_ = int(s.size)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """(N,) float64 P(FP), non-decreasing (strictly increasing when ``tiebreak > 0``)."""
        self._check_fitted("x_")
        s = _as_1d(scores, "scores")
        iso = np.interp(s, self.x_, self.y_)
        w = self.tiebreak
        return (1.0 - w) * iso + w * special.expit((s - self.center_) / self.scale_)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "isotonic", "tiebreak", "x", "y", "center", "scale", "n"}``."""
        self._check_fitted("x_")
        return {
            "kind": self.kind,
            "tiebreak": self.tiebreak,
            "x": self.x_.tolist(),
            "y": self.y_.tolist(),
            "center": self.center_,
            "scale": self.scale_,
            "n": self.n_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output."""
        cal = cls(tiebreak=d["tiebreak"])
        cal.x_ = np.asarray(d["x"], dtype=np.float64)
        cal.y_ = np.asarray(d["y"], dtype=np.float64)
        cal.center_, cal.scale_, cal.n_ = float(d["center"]), float(d["scale"]), int(d["n"])
        return cal


def make_calibrator(kind: str = "platt", transform: str = "logit") -> Calibrator:
    """An unfitted calibrator.

    Args:
        kind: ``"platt"`` (default) or ``"isotonic"``.
        transform: Platt's score transform (``"logit"`` or ``"identity"``); ignored by
            the isotonic calibrator (it is invariant to monotone transforms).

    Raises:
        ValueError: Unknown kind.
    """
    if kind == "platt":
        return PlattCalibrator(transform=transform)
    if kind == "isotonic":
        return IsotonicCalibrator()
    raise ValueError(f"unknown calibrator '{kind}' (known: platt, isotonic).")


def calibrator_from_dict(d: dict[str, Any]) -> Calibrator:
    """Rebuild any fitted calibrator from its ``to_dict`` output.

    Raises:
        ValueError: Missing or unknown ``kind``.
    """
    kind = d.get("kind")
    if kind not in Calibrator._kinds:
        raise ValueError(
            f"unknown calibrator kind {kind!r} (known: {', '.join(sorted(Calibrator._kinds))})."
        )
    return Calibrator._kinds[kind].from_dict(d)


class IoURecalibrator:
    """Monotone recalibration of a regressor's predicted IoU_adj to the observed IoU_adj.

    Args:
        kind: ``"isotonic"`` (non-decreasing step fit, clipped to [0, 1]) or ``"linear"``
            (least squares ``iou = c0 + c1 * pred``, clipped to [0, 1]).

    Attributes:
        x_, y_: Isotonic knots (``kind="isotonic"``).
        coef_: (c0, c1) (``kind="linear"``).
        mae_before_, mae_after_: Mean absolute error on the fitting lesions (out-of-fold
            predictions) before and after recalibration.
    """

    def __init__(self, kind: str = "isotonic") -> None:
        if kind not in ("isotonic", "linear"):
            raise ValueError(f"kind must be 'isotonic' or 'linear', got {kind!r}.")
        self.kind = kind

    def fit(self, pred_iou: np.ndarray, iou: np.ndarray) -> Self:
        """Fit on out-of-fold predictions ``pred_iou`` (N,) and observed ``iou`` (N,)."""
        x = _as_1d(pred_iou, "pred_iou")
        y = _as_1d(iou, "iou")
        if x.shape != y.shape or x.size == 0:
            raise ValueError(f"pred_iou ({x.size}) and iou ({y.size}) must be equal, non-empty.")
        if self.kind == "isotonic":
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
            self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        else:
            c1 = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
            self.coef_ = (float(y.mean() - c1 * x.mean()), c1)
        self.mae_before_ = float(np.mean(np.abs(np.clip(x, 0.0, 1.0) - y)))
        self.mae_after_ = float(np.mean(np.abs(self.predict(x) - y)))
        return self

    def predict(self, pred_iou: np.ndarray) -> np.ndarray:
        """(N,) float64 recalibrated IoU_adj in [0, 1]."""
        if not (hasattr(self, "x_") or hasattr(self, "coef_")):
            raise RuntimeError("IoURecalibrator is not fitted; call fit() first.")
        x = _as_1d(pred_iou, "pred_iou")
        if self.kind == "isotonic":
            return np.interp(x, self.x_, self.y_)
        return np.clip(self.coef_[0] + self.coef_[1] * x, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "mae_before": self.mae_before_,
            "mae_after": self.mae_after_,
        }
        if self.kind == "isotonic":
            d |= {"x": self.x_.tolist(), "y": self.y_.tolist()}
        else:
            d["coef"] = list(self.coef_)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IoURecalibrator:
        """Rebuild from :meth:`to_dict` output."""
        cal = cls(kind=d["kind"])
        cal.mae_before_, cal.mae_after_ = float(d["mae_before"]), float(d["mae_after"])
        if cal.kind == "isotonic":
            cal.x_ = np.asarray(d["x"], dtype=np.float64)
            cal.y_ = np.asarray(d["y"], dtype=np.float64)
        else:
            cal.coef_ = (float(d["coef"][0]), float(d["coef"][1]))
        return cal


# --------------------------------------------------------------------------- cross-fitting


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


# --------------------------------------------------------------------------- storage


def save_calibration(
    path: str | Path,
    calibrator: Calibrator,
    iou_calibrator: IoURecalibrator | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a calibrator (and a regressor's IoU recalibration) as JSON, atomically.

    Args:
        path: Usually ``RUN/fold_K/scorers/METHOD/calibration.json``.
        calibrator: Fitted P(FP) calibrator.
        iou_calibrator: Fitted IoU recalibration (regressors), or None.
        extra: More JSON-able entries (e.g. the operating point), stored under their keys.
    """
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "calibrator": calibrator.to_dict(),
        "iou_calibrator": iou_calibrator.to_dict() if iou_calibrator is not None else None,
    }
    payload |= extra or {}
    return atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def load_calibration(
    path: str | Path,
) -> tuple[Calibrator, IoURecalibrator | None, dict[str, Any]]:
    """Read :func:`save_calibration` output.

    Returns:
        The calibrator, the IoU recalibration (or None) and the whole JSON dict (for the
        ``extra`` entries).

    Raises:
        InputError: The file is missing, not JSON or lacks the calibrator.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}).") from err
    if not isinstance(payload, dict) or "calibrator" not in payload:
        raise InputError(f"{path}: missing key 'calibrator'.")
    try:
        cal = calibrator_from_dict(payload["calibrator"])
        iou = payload.get("iou_calibrator")
        iou_cal = IoURecalibrator.from_dict(iou) if iou else None
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path}: unreadable calibrator ({err}).") from err
    return cal, iou_cal, payload


# --------------------------------------------------------------- a fold's fitted scorer


def operating_point_of(p_fp: np.ndarray, is_tp: np.ndarray, target: str) -> dict | None:
    """``OperatingPoint.choose`` as a dict, or None when the target cannot be met.

    :meth:`lesionuq.operating_point.OperatingPoint.choose`; a failure is logged.

    Args:
        p_fp: (N,) calibrated P(FP) of validation lesions.
        is_tp: (N,) bool, whether each lesion is a true positive.
        target: A review target such as ``"tp:0.95"``.
    """
    try:
        return OperatingPoint.choose(p_fp, is_tp, target).to_dict()
    except ValueError as err:  # e.g. no true lesion among the validation lesions
        logger.warning("no operating point: %s", err)
        return None


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
        inner_fold_: (N,) inner fold of each lesion (zeros for a self-calibrated one).
        method_: ``method``, or ``"self"``.
        n_inner_: Inner folds used (the estimator's own for a self-calibrated one).

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
    ) -> None:
        self.estimator = estimator
        self.n_inner = n_inner
        self.seed = seed
        self.method = method
        self.iou_kind = iou_kind

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
            self.inner_fold_ = np.zeros(len(lesions), int)
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
        review target) and the operating point of ``review_target``.

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
            "operating_point": operating_point_of(self.oof_p_fp_, is_tp, review_target),
        }
        return save_calibration(path, self.calibrator_, self.iou_calibrator_, extra=extra)

    def __repr__(self) -> str:
        return (
            f"CalibratedScorer({self.estimator!r}, n_inner={self.n_inner}, seed={self.seed}, "
            f"method={self.method!r}, iou_kind={self.iou_kind!r})"
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
    cal = CalibratedScorer(factory(), n_inner=c.n_inner, seed=cfg.seed, method=c.method)
    cal.fit(val, progress=progress).save_calibration(folder / CALIBRATOR_FILE, c.review_target)
    return cast(S, cal.estimator_)


def update_operating_point(folder: Path, target: str) -> None:
    """Re-choose the operating point stored in ``folder/calibration.json`` for ``target``.

    Nothing happens when the file is missing, already holds ``target``, or has no
    out-of-fold P(FP) (an older run).
    """
    path = folder / CALIBRATOR_FILE
    if not path.is_file():
        return
    cal, iou_cal, payload = load_calibration(path)
    op = payload.get("operating_point") or {}
    if op.get("target") == target or "oof_p_fp" not in payload:
        return
    p = np.asarray(payload["oof_p_fp"], dtype=np.float64)
    is_tp = np.asarray(payload["oof_is_tp"], dtype=bool)
    extra = {
        k: v for k, v in payload.items() if k not in ("format", "calibrator", "iou_calibrator")
    }
    extra["operating_point"] = operating_point_of(p, is_tp, target)
    save_calibration(path, cal, iou_cal, extra=extra)
