"""Segmentation and lesion-uncertainty metrics, and the paper's Tables 1 and 2.

Table 1 (per fold): Dice of the U-Net averaged over the fold's test cases, and the total
number of TP and FP test lesions. Table 2 (per method): the accuracy-confidence AUC
(:func:`lesionuq.evaluation.curves.ac_auc`) and Spearman's rho between the method's
uncertainty and the lesion size, both computed per fold over the fold's test lesions and
then averaged over folds (paper 3.3). :func:`summarize_learning_curve` is the same mean
over folds for the rows of ``results/learning_curve.csv``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lesionuq.evaluation.curves import ac_auc

__all__ = [
    "as_bool",
    "dice",
    "spearman_rho",
    "summarize_learning_curve",
    "table1",
    "table2",
]

TABLE1_COLUMNS = ("fold", "dice", "n_tp", "n_fp")
TABLE2_COLUMNS = ("method", "auc", "spearman_rho")
PER_FOLD_COLUMNS = ("fold", "method", "auc", "spearman_rho")


def dice(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    r"""Dice coefficient of two binary masks, outside an optional ignore region.

    .. math::

        D = \frac{2 |P \cap G|}{|P| + |G|}, \quad P = P_0 \setminus I,\ G = G_0 \setminus I

    Args:
        pred: (X, Y, Z) bool (or 0/1), the segmentation.
        gt: (X, Y, Z) bool (or 0/1), the ground truth, same shape.
        ignore: (X, Y, Z) ignore region :math:`I` (nonzero = left out, as the WMH
            challenge leaves out label 2), or None.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty (nothing to find, nothing found).
    """
    p = np.asarray(pred).astype(bool)
    g = np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}.")
    if ignore is not None:
        if np.shape(ignore) != p.shape:
            raise ValueError(f"ignore shape {np.shape(ignore)} differs from {p.shape}.")
        keep = np.asarray(ignore) == 0
        p, g = p & keep, g & keep
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def spearman_rho(uncertainty: np.ndarray, size: np.ndarray) -> float:
    """Spearman's rank correlation between lesion uncertainty and lesion size.

    Args:
        uncertainty: (N,) float.
        size: (N,) lesion sizes (voxels).

    Returns:
        rho in [-1, 1] (the Size baseline, 1/size, gives -1). NaN when N < 2 or either
        input is constant (the correlation is undefined).
    """
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    s = np.asarray(size, dtype=np.float64).reshape(-1)
    if u.shape != s.shape:
        raise ValueError(
            f"uncertainty and size must have the same length, got {u.size} and {s.size}."
        )
    if u.size < 2 or np.all(u == u[0]) or np.all(s == s[0]):
        return float("nan")
    return float(spearmanr(u, s).statistic)


def as_bool(values: pd.Series | np.ndarray) -> np.ndarray:
    """A boolean column as a bool array, also when read back from CSV as text.

    Accepts bool, 0/1 and the strings ``True``/``False`` (any case).
    """
    s = pd.Series(values)
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=bool)
    if not pd.api.types.is_numeric_dtype(s.dtype):
        text = s.astype(str).str.strip().str.lower()
        mapped = text.map({"true": True, "false": False, "1": True, "0": False})
        if mapped.isna().any():
            bad = s[mapped.isna()].iloc[0]
            raise ValueError(f"is_tp has a non-boolean value {bad!r}.")
        return mapped.to_numpy(dtype=bool)
    arr = s.to_numpy()
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError("is_tp must be boolean (or 0/1).")
    return arr.astype(bool)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {', '.join(missing)}.")


def table1(cases: pd.DataFrame) -> pd.DataFrame:
    """Table 1: U-Net Dice and lesion counts per fold.

    Args:
        cases: One row per test case with columns ``fold``, ``case_id``, ``dice``,
            ``n_tp``, ``n_fp`` (extra columns are ignored).

    Returns:
        One row per fold (ascending) with columns exactly ``fold, dice, n_tp, n_fp``:
        ``dice`` is the mean over the fold's test cases (NaN Dice, a case without ground
        truth, skipped), ``n_tp`` / ``n_fp`` are summed (int).
    """
    _require(cases, ("fold", "case_id", "dice", "n_tp", "n_fp"), "the per-case table")
    grouped = cases.groupby("fold", sort=True)
    out = pd.DataFrame(
        {
            "dice": grouped["dice"].mean(),
            "n_tp": grouped["n_tp"].sum().astype(int),
            "n_fp": grouped["n_fp"].sum().astype(int),
        }
    ).reset_index()
    return out[list(TABLE1_COLUMNS)]


def table2(lesions: pd.DataFrame, methods: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2: accuracy-confidence AUC and Spearman rho with size, per method.

    For each fold and method, the AUC of the method's uncertainty against ``is_tp`` and
    Spearman's rho of the uncertainty with ``n_voxels`` are computed over the fold's
    test lesions; Table 2 is their mean over folds. A fold where a value is undefined
    (no FP or no TP lesion, constant scores) is NaN in the per-fold table and left out
    of the mean (one warning names such folds).

    Args:
        lesions: The ``RUN/results/lesions.csv`` frame: ``fold``, ``case_id``,
            ``lesion_id``, ``n_voxels``, ``iou_adj``, ``is_tp`` and one column per
            method (its uncertainty, higher = less trusted).
        methods: Method columns to evaluate; Table 2 rows follow this order.

    Returns:
        ``(table, per_fold)``: ``table`` has columns exactly ``method, auc,
        spearman_rho`` (AUC a fraction in [0, 1]); ``per_fold`` has columns ``fold,
        method, auc, spearman_rho``, folds ascending, methods in the given order.
    """
    methods = list(methods)
    _require(lesions, ("fold", "n_voxels", "is_tp", *methods), "the lesion table")
    is_tp = as_bool(lesions["is_tp"])
    rows, undefined = [], set()
    for fold, index in lesions.groupby("fold", sort=True).indices.items():
        tp = is_tp[index]
        size = lesions["n_voxels"].to_numpy(dtype=np.float64)[index]
        for method in methods:
            u = lesions[method].to_numpy(dtype=np.float64)[index]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                auc = ac_auc(u, tp)
            if np.isnan(auc):
                undefined.add(int(fold))
            rows.append(
                {
                    "fold": fold,
                    "method": method,
                    "auc": auc,
                    "spearman_rho": spearman_rho(u, size),
                }
            )
    if undefined:
        warnings.warn(
            f"the AUC is undefined in fold(s) {sorted(undefined)} (no FP or no TP test "
            "lesion); those folds are left out of the mean.",
            RuntimeWarning,
            stacklevel=2,
        )
    per_fold = pd.DataFrame(rows, columns=list(PER_FOLD_COLUMNS))
    mean = per_fold.groupby("method", sort=False)[["auc", "spearman_rho"]].mean()
    table = mean.reindex(methods).reset_index()
    return table[list(TABLE2_COLUMNS)], per_fold


def summarize_learning_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of the learning curve per method and size.

    For one repeat, the AUC is averaged over folds (as in Table 2); the table gives the
    mean and the standard deviation of that fold mean over the repeats. A numeric size is
    kept only where every fold has it (a fold with fewer validation lesions skips it);
    ``all`` rows are the whole validation set of each fold.

    Args:
        curve: The ``learning_curve.csv`` frame.

    Returns:
        Columns ``method, size`` (an int, or ``"all"``), ``n_train`` (mean training
        lesions), ``auc_mean``, ``auc_std`` (over repeats, population), ``repeats``;
        sorted by method (first appearance) and ``n_train``.
    """
    columns = ["method", "size", "n_train", "auc_mean", "auc_std", "repeats"]
    if curve.empty:
        return pd.DataFrame(columns=columns)
    n_folds = curve["fold"].nunique()
    frame = curve.assign(
        label=np.where(curve["full"].astype(bool), "all", curve["size"].astype(str))
    )
    by_repeat = frame.groupby(["method", "label", "repeat"], sort=False).agg(
        auc=("auc", "mean"), n_train=("size", "mean"), folds=("fold", "nunique")
    )
    by_repeat = by_repeat[by_repeat["folds"] == n_folds].reset_index()
    out = by_repeat.groupby(["method", "label"], sort=False).agg(
        n_train=("n_train", "mean"),
        auc_mean=("auc", "mean"),
        auc_std=("auc", lambda a: float(np.std(a))),
        repeats=("repeat", "nunique"),
    )
    out = out.reset_index().rename(columns={"label": "size"})
    out["size"] = [s if s == "all" else int(s) for s in out["size"]]
    order = {m: i for i, m in enumerate(dict.fromkeys(curve["method"]))}
    out["rank"] = out["method"].map(order)
    return out.sort_values(["rank", "n_train"])[columns].reset_index(drop=True)
