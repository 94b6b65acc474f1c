"""The paper's baseline lesion scorers (section 3.2), read from the lesion table.

- ``entropy_mean``, ``variance_mean``, ``pcs_mean``, ``entropy_logsum``,
  ``variance_logsum``, ``pcs_logsum``: the table column of the same name, already an
  uncertainty aggregated over the (undilated) lesion voxels with voxel uncertainty
  u = entropy, variance or 1 - PCS: mean(u), or sum(log(max(u, eps))) (Nair et al.; the
  logsum gives small lesions the higher uncertainty). See ``lesions.components.lesion_table``.
- ``size``: 1 / S, S the lesion size in voxels.
- ``metaseg_classif``: logistic regression on the standardised MetaSeg features
  [entropy_mean, variance_mean, pcs_mean, n_voxels] predicting FP; uncertainty P(FP).
- ``metaseg_reg``: linear regression on the same features predicting IoU_adj;
  uncertainty 1 - prediction.

Linear models are fitted with scikit-learn and saved as JSON (scaler mean/scale,
coefficients, intercept); loading rebuilds the scikit-learn objects, so scores are
bit-identical.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler

from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.base import LesionScorer, check_is_fitted, table_column

__all__ = [
    "METASEG_FEATURES",
    "ColumnScorer",
    "MetaSegScorer",
    "SizeScorer",
    "metaseg_features",
    "size_uncertainty",
]

METASEG_FEATURES: tuple[str, ...] = ("entropy_mean", "variance_mean", "pcs_mean", "n_voxels")
"""Lesion-table columns used by MetaSeg, in this order."""


def size_uncertainty(n_voxels: np.ndarray) -> np.ndarray:
    """The ``size`` baseline: u = 1 / S.

    Args:
        n_voxels: (N,) lesion sizes S in voxels (>= 1).

    Returns:
        (N,) float64.
    """
    n = np.asarray(n_voxels, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError("lesion sizes must be >= 1 voxel.")
    return 1.0 / n


def metaseg_features(table: pd.DataFrame, scorer: str = "metaseg") -> np.ndarray:
    """The MetaSeg feature matrix (unstandardised).

    Args:
        table: Lesion table with the :data:`METASEG_FEATURES` columns.
        scorer: Name used in the error message.

    Returns:
        (N, 4) float64 columns [entropy_mean, variance_mean, pcs_mean, n_voxels].

    Raises:
        ValueError: A column is missing or holds NaN.
    """
    x = np.stack([table_column(table, c, scorer) for c in METASEG_FEATURES], axis=1)
    x = x.reshape(len(table), len(METASEG_FEATURES))
    if not np.all(np.isfinite(x)):
        raise ValueError(f"scorer '{scorer}': the MetaSeg features contain NaN or inf.")
    return x


class ColumnScorer(LesionScorer):
    """A lesion-table column used as the uncertainty (the mean / logsum baselines).

    Args:
        column: Table column, e.g. ``"entropy_logsum"``.
        name: Method name; defaults to ``column``.
    """

    requires_fit = False

    def __init__(self, column: str, name: str | None = None) -> None:
        self.column = column
        self.name = name or column

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Nothing to learn; checks the column exists and returns ``self``."""
        table_column(lesions.table, self.column, self.name)
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: the column values."""
        return table_column(lesions.table, self.column, self.name)


class SizeScorer(LesionScorer):
    """The naive ``size`` baseline, u = 1 / S (S = ``n_voxels``)."""

    requires_fit = False

    def __init__(self, name: str = "size") -> None:
        self.name = name

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Nothing to learn; returns ``self``."""
        table_column(lesions.table, "n_voxels", self.name)
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: 1 / n_voxels."""
        return size_uncertainty(table_column(lesions.table, "n_voxels", self.name))


class MetaSegScorer(LesionScorer):
    """MetaSeg-style linear side learner on [entropy_mean, variance_mean, pcs_mean, size].

    ``task="classif"``: logistic regression predicting FP (= not ``is_tp``), uncertainty
    P(FP). ``task="reg"``: least-squares regression predicting ``iou_adj``, uncertainty
    1 - prediction. Features are standardised with the training mean and scale.

    If the training lesions are degenerate (none, or only TP / only FP for the
    classifier), the scorer warns and returns a constant (the FP fraction, 0.5 without
    lesions).

    Args:
        task: ``"classif"`` or ``"reg"``.
        name: Method name; defaults to ``"metaseg_" + task``.
        max_iter: Iteration limit of the logistic regression solver.

    Attributes:
        scaler_: Fitted ``StandardScaler`` (None when constant).
        model_: Fitted ``LogisticRegression`` / ``LinearRegression`` (None when constant).
        constant_: The constant uncertainty of a degenerate fit, else None.
    """

    def __init__(self, task: str = "classif", name: str | None = None, max_iter: int = 1000):
        if task not in ("classif", "reg"):
            raise ValueError(f"task must be 'classif' or 'reg', got {task!r}.")
        self.task = task
        self.name = name or f"metaseg_{task}"
        self.max_iter = max_iter

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns of :meth:`_features`, in order."""
        return tuple(METASEG_FEATURES)

    def _features(self, table: pd.DataFrame) -> np.ndarray:
        """(N, D) unstandardised features of the lesion table (a subclass may add some)."""
        return metaseg_features(table, self.name)

    def _new_model(self) -> LogisticRegression | LinearRegression:
        if self.task == "classif":
            return LogisticRegression(max_iter=self.max_iter)
        return LinearRegression()

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Fit the scaler and the linear model on labelled lesions.

        Raises:
            ValueError: Missing feature/label columns, or NaN labels (no ground truth).
        """
        x = self._features(lesions.table)
        self.scaler_: StandardScaler | None = None
        self.model_: LogisticRegression | LinearRegression | None = None
        self.constant_: float | None = None
        if self.task == "classif":
            y = 1 - table_column(lesions.table, "is_tp", self.name).astype(np.int64)  # 1 = FP
            if len(y) == 0 or np.all(y == y[0]):
                self.constant_ = float(y.mean()) if len(y) else 0.5
                warnings.warn(
                    f"{self.name}: training lesions contain a single class (or none); "
                    f"using the constant P(FP) = {self.constant_:g}.",
                    UserWarning,
                    stacklevel=2,
                )
                return self
        else:
            y = table_column(lesions.table, "iou_adj", self.name)
            if not np.all(np.isfinite(y)):
                raise ValueError(f"{self.name}: iou_adj has NaN; fitting needs ground truth.")
            if len(y) == 0:
                self.constant_ = 0.5
                warnings.warn(
                    f"{self.name}: no training lesions; using the constant uncertainty 0.5.",
                    UserWarning,
                    stacklevel=2,
                )
                return self
        self.scaler_ = StandardScaler().fit(x)
        self.model_ = self._new_model().fit(self.scaler_.transform(x), y)
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: P(FP) (classif) or 1 - predicted IoU_adj (reg)."""
        check_is_fitted(self)
        x = self._features(lesions.table)
        if self.constant_ is not None:
            return np.full(len(x), self.constant_, dtype=np.float64)
        if len(x) == 0:
            return np.zeros(0, dtype=np.float64)
        assert self.scaler_ is not None and self.model_ is not None
        z = self.scaler_.transform(x)
        if self.task == "classif":
            fp_col = list(self.model_.classes_).index(1)
            return self.model_.predict_proba(z)[:, fp_col].astype(np.float64)
        return 1.0 - self.model_.predict(z).astype(np.float64)

    def _state(self, folder: Path) -> dict[str, Any]:
        check_is_fitted(self)
        if self.constant_ is not None:
            return {"constant": self.constant_}
        assert self.scaler_ is not None and self.model_ is not None
        state: dict[str, Any] = {
            "constant": None,
            "features": list(self.feature_names),
            "scaler_mean": self.scaler_.mean_.tolist(),
            "scaler_scale": self.scaler_.scale_.tolist(),
            "n_samples_seen": int(self.scaler_.n_samples_seen_),
            "coef": np.asarray(self.model_.coef_).tolist(),
            "intercept": np.asarray(self.model_.intercept_).tolist(),
        }
        if self.task == "classif":
            state["classes"] = [int(c) for c in self.model_.classes_]
        return state

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self.scaler_ = None
        self.model_ = None
        self.constant_ = state.get("constant")
        if self.constant_ is not None:
            return
        n = len(self.feature_names)
        scaler = StandardScaler()
        scaler.mean_ = np.asarray(state["scaler_mean"], dtype=np.float64)
        scaler.scale_ = np.asarray(state["scaler_scale"], dtype=np.float64)
        scaler.var_ = scaler.scale_**2
        scaler.n_samples_seen_ = state["n_samples_seen"]
        scaler.n_features_in_ = n
        model = self._new_model()
        model.coef_ = np.asarray(state["coef"], dtype=np.float64)
        intercept = np.asarray(state["intercept"], dtype=np.float64)
        model.intercept_ = intercept if self.task == "classif" else float(intercept)
        model.n_features_in_ = n
        if self.task == "classif":
            model.classes_ = np.asarray(state["classes"], dtype=np.int64)
        self.scaler_, self.model_ = scaler, model
