"""Recalibration of an IoU regressor's predicted IoU_adj to the observed IoU_adj.

For the regressors (``gcnn_reg``, ``metaseg_reg``, which predict IoU_adj and score
``u = 1 - IoU_hat``), :class:`IoURecalibrator` maps the out-of-fold predicted IoU_adj to the
observed one (isotonic or linear); their P(FP) calibrator is Platt scaling on ``u`` with
``transform="identity"`` (a logistic regression on the predicted IoU).

Example:
    >>> iou_cal = IoURecalibrator("isotonic").fit(1.0 - oof_scores, iou_adj)  # (N,), (N,)
    >>> iou_hat = iou_cal.predict(1.0 - test_scores)  # (M,) in [0, 1]
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.isotonic import IsotonicRegression

from lesionuq.calibration.logistic import as_scores

__all__ = ["IoURecalibrator"]


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
        x = as_scores(pred_iou, "pred_iou")
        y = as_scores(iou, "iou")
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
        x = as_scores(pred_iou, "pred_iou")
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
