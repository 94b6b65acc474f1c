"""Calibrators: monotone non-decreasing maps from a lesion uncertainty to P(FP).

A learned scorer's output (the GCNN's softmax, MetaSeg's logistic output, ``1 - IoU_hat``
of the regressors) ranks lesions but is not a calibrated probability: trained to
convergence, the GCNN says 1e-9 or 0.998. A calibrator is fitted on labelled lesions the
scorer did NOT train on (:mod:`lesionuq.calibration.crossfit`).

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

Both are saved as JSON (``to_dict`` / :func:`calibrator_from_dict`), never pickled.

Example:
    >>> cal = make_calibrator("platt").fit(oof_scores, is_fp)  # (N,), (N,)
    >>> p_fp = cal.predict(test_scores)  # (M,) in (0, 1)
    >>> same = calibrator_from_dict(cal.to_dict())
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import numpy as np
from scipy import special
from sklearn.isotonic import IsotonicRegression

from lesionuq.calibration.logistic import (
    as_labels,
    as_scores,
    clipped_logit,
    fit_monotone_logistic,
)

__all__ = [
    "Calibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "calibrator_from_dict",
    "make_calibrator",
]


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
        s, y = _fit_inputs(scores, is_fp)
        z = self._z(s)
        (a,), b = fit_monotone_logistic(z[:, None], y, self.min_slope)
        self.a_, self.b_ = float(a), float(b)
        self.n_ = int(s.size)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """(N,) float64 P(FP), strictly increasing in the score."""
        self._check_fitted("a_")
        s = as_scores(scores, "scores")
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
        s, y = _fit_inputs(scores, is_fp)
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
        s = as_scores(scores, "scores")
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


def _fit_inputs(scores: np.ndarray, is_fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) float64 scores and (N,) 0/1 labels a calibrator fits on, checked.

    Raises:
        ValueError: No lesions, NaN scores or non-binary labels.
    """
    s = as_scores(scores, "scores")
    y = as_labels(is_fp, s.size)
    if s.size == 0:
        raise ValueError("cannot calibrate on zero lesions.")
    return s, y


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
