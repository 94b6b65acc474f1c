"""The charts of the evaluation: Figure 2, the reliability diagrams and the learning curve.

Every chart of a run is drawn here from tables (no model, no run folder read):

- :func:`plot_accuracy_confidence`: Figure 2, ``results/figure2.png``, from the lesion
  table; :func:`mean_curve` is one method's fold-averaged curve;
- :func:`plot_reliability` / :func:`plot_calibration`: reliability diagrams before and
  after calibration, ``results/calibration.png``, from the calibration's long frame;
- :func:`learning_curve_figure` / :func:`plot_learning_curve`:
  ``results/learning_curve.png``, from ``learning_curve.csv``.

The image panels (a lesion's crop, a scan's slices) are in
:mod:`lesionuq.evaluation.render`. Matplotlib is used through the Agg canvas directly
(:func:`~lesionuq.evaluation.render.png_bytes`: no pyplot, no global backend state);
legend names and line styles come from the method catalogue (:mod:`lesionuq.methods`).

Curves of several folds are averaged "vertically": each fold's curve is evaluated on a
common grid of FP-kept values (:func:`lesionuq.evaluation.curves.curve_on_grid`) and the
TP-kept values are averaged. Folds are not pooled into one ranking because the scores of
learned methods (GCNN, MetaSeg) come from a different model in every fold and are not
comparable across folds; averaging keeps the area of the mean curve equal (up to the
grid) to the mean of the per-fold AUCs shown in the legend and in Table 2.

Example:
    >>> plot_accuracy_confidence(lesions, ["gcnn_classif", "size"], "figure2.png")
    >>> plot_learning_curve(curve, {"size": 0.71}, "learning_curve.png")
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from lesionuq.evaluation.calibration_metrics import Reliability, reliability_diagram
from lesionuq.evaluation.curves import ac_auc, accuracy_confidence_curve, curve_on_grid
from lesionuq.evaluation.metrics import as_bool, summarize_learning_curve
from lesionuq.evaluation.render import png_bytes
from lesionuq.io import atomic_write_bytes
from lesionuq.methods import label as method_label
from lesionuq.methods import style as method_style

__all__ = [
    "learning_curve_figure",
    "mean_curve",
    "plot_accuracy_confidence",
    "plot_calibration",
    "plot_learning_curve",
    "plot_reliability",
]


def mean_curve(
    lesions: pd.DataFrame, method: str, grid: np.ndarray
) -> tuple[np.ndarray, float, int]:
    """Fold-averaged accuracy-confidence curve of one method.

    Args:
        lesions: The lesion table (``fold``, ``is_tp`` and the method's column).
        method: Method column.
        grid: (G,) FP-kept values in [0, 1], ascending.

    Returns:
        ``(tp_mean (G,), auc_mean, n_folds)``: the TP-kept values averaged over the folds
        where the AUC is defined, the mean of those folds' AUC (fraction), and their
        number (0 gives NaNs).
    """
    is_tp = as_bool(lesions["is_tp"])
    curves, aucs = [], []
    for _, index in sorted(lesions.groupby("fold").indices.items()):
        u = lesions[method].to_numpy(dtype=np.float64)[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            auc = ac_auc(u, is_tp[index])
            if np.isnan(auc):
                continue
            fp, tp = accuracy_confidence_curve(u, is_tp[index])
        curves.append(curve_on_grid(fp, tp, grid))
        aucs.append(auc)
    if not curves:
        return np.full(grid.shape, np.nan), float("nan"), 0
    return np.mean(curves, axis=0), float(np.mean(aucs)), len(curves)


def plot_accuracy_confidence(
    lesions: pd.DataFrame,
    methods: Sequence[str],
    path: str | Path,
    *,
    grid_size: int = 401,
    dpi: int = 150,
    title: str | None = None,
) -> Path:
    """Figure 2: one accuracy-confidence curve per method, AUC (%) in the legend.

    Each method's curve is the average over folds of the per-fold curves on a common
    FP-kept grid (see the module docstring); the legend shows the mean over folds of the
    per-fold AUC in % (as Table 2), and lists the methods by decreasing AUC. The grey
    diagonal is a random ranking (AUC 50).

    Args:
        lesions: The ``RUN/results/lesions.csv`` frame.
        methods: Method columns to draw.
        path: Output PNG (written atomically).
        grid_size: Number of FP-kept grid points.
        dpi: Resolution.
        title: Optional title.

    Returns:
        The written path.
    """
    path = Path(path)
    grid = np.linspace(0.0, 1.0, grid_size)
    curves = []
    for i, method in enumerate(methods):
        tp, auc, n = mean_curve(lesions, method, grid)
        curves.append((method, i, tp, auc, n))
    curves.sort(key=lambda c: (-c[3] if np.isfinite(c[3]) else np.inf, c[1]))

    fig = Figure(figsize=(6.4, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#9e9e9e", lw=1.0, ls="-", zorder=1, label="Random (50.0)")
    for method, i, tp, auc, n in curves:
        colour, ls, lw = method_style(method, i)
        text = f"{method_label(method)} ({100 * auc:.1f})" if n else f"{method_label(method)} (n/a)"
        x = np.concatenate([[0.0], grid])
        y = np.concatenate([[0.0], tp])
        ax.plot(x, y, color=colour, ls=ls, lw=lw, label=text, zorder=3 if lw > 2 else 2)
    # legend in AUC order, random last
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
    ax.legend(handles, labels, loc="lower right", fontsize=8, title="AUC (%)", framealpha=0.9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(True, color="#e0e0e0", lw=0.6)
    ax.set_xlabel("FP lesions kept (fraction of all FP)")
    ax.set_ylabel("TP lesions kept (fraction of all TP)")
    n_folds = lesions["fold"].nunique() if len(lesions) else 0
    ax.set_title(
        title or f"Accuracy-confidence curves (mean of {n_folds} fold{'s' * (n_folds != 1)})",
        fontsize=10,
    )
    fig.tight_layout()
    return atomic_write_bytes(path, png_bytes(fig, dpi))


def _draw_reliability(ax: Any, rel: Reliability, title: str) -> None:
    centres = (rel.edges[:-1] + rel.edges[1:]) / 2
    width = rel.edges[1] - rel.edges[0]
    ok = rel.counts > 0
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    ax.bar(
        centres[ok],
        rel.observed[ok],
        width=width * 0.9,
        color="#4c72b0",
        alpha=0.8,
        label="observed FP frequency",
    )
    ax.plot(rel.mean_predicted[ok], rel.observed[ok], "o", color="#c44e52", ms=4,
            label="mean P(FP) in bin")  # fmt: skip
    for c, n, o in zip(centres[ok], rel.counts[ok], rel.observed[ok], strict=True):
        ax.text(c, min(o + 0.02, 0.95), str(int(n)), ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predicted P(FP)")
    ax.set_title(f"{title}\nECE {rel.ece:.3f}, n = {int(rel.counts.sum())}", fontsize=9)


def plot_reliability(
    curves: Mapping[str, tuple[Reliability, Reliability]],
    title: str | None = None,
) -> Figure:
    """Reliability diagrams, one column per method, rows ``before`` / ``after``.

    Args:
        curves: ``{method: (before, after)}`` :class:`Reliability` pairs; bin counts are
            written above each bar.
        title: Figure title.

    Returns:
        A matplotlib ``Figure`` (not attached to pyplot; save with ``fig.savefig``).
    """
    items = list(curves.items())
    if not items:
        raise ValueError("plot_reliability needs at least one method.")
    n = len(items)
    fig = Figure(figsize=(3.0 * n, 6.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False, sharex=True, sharey=True)
    for j, (method, (before, after)) in enumerate(items):
        _draw_reliability(axes[0, j], before, f"{method}: before")
        _draw_reliability(axes[1, j], after, f"{method}: after")
    axes[0, 0].set_ylabel("observed FP frequency")
    axes[1, 0].set_ylabel("observed FP frequency")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def plot_calibration(long: pd.DataFrame, path: Path, n_bins: int = 10) -> Path | None:
    """Reliability diagrams (test lesions of all folds pooled) to ``path``; None if empty.

    Args:
        long: One row per (fold, method, test lesion) with ``method``, ``is_fp``,
            ``p_before`` and ``p_after`` (the frame
            :func:`~lesionuq.evaluation.calibration_metrics.calibration_table` reads).
        path: Output PNG (written atomically).
        n_bins: Bins per diagram.

    Returns:
        The written path, or None when ``long`` holds no lesion.
    """
    if long.empty:
        return None
    curves = {}
    for m, g in long.groupby("method", sort=False):
        y = g["is_fp"].to_numpy(dtype=bool)
        if not y.size:
            continue
        curves[str(m)] = (
            reliability_diagram(g["p_before"].to_numpy(dtype=np.float64), y, n_bins),
            reliability_diagram(g["p_after"].to_numpy(dtype=np.float64), y, n_bins),
        )
    if not curves:
        return None
    fig = plot_reliability(curves, title="Reliability of P(FP) on the test lesions")
    return atomic_write_bytes(Path(path), png_bytes(fig, 110))


def plot_learning_curve(
    curve: pd.DataFrame,
    baselines: Mapping[str, float],
    path: str | Path,
    *,
    dpi: int = 150,
) -> Path:
    """Write :func:`learning_curve_figure` as a PNG (atomically); returns ``path``."""
    return atomic_write_bytes(Path(path), png_bytes(learning_curve_figure(curve, baselines), dpi))


def learning_curve_figure(curve: pd.DataFrame, baselines: Mapping[str, float]) -> Figure:
    """Mean test AUC (%) against the number of training lesions, log x, with a band.

    Each learned method is a line through :func:`summarize_learning_curve`'s means with a
    band of +- one standard deviation over repeats; each untrained baseline is a thin
    horizontal line at its Table-2 AUC. The x ticks are the training sizes themselves.

    Args:
        curve: The ``learning_curve.csv`` frame.
        baselines: Untrained method -> AUC (fraction).

    Returns:
        The figure (one axes).
    """
    summary = summarize_learning_curve(curve)
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, (method, part) in enumerate(summary.groupby("method", sort=False)):
        colour, ls, lw = method_style(method, i)
        x = part["n_train"].to_numpy(dtype=float)
        y = 100 * part["auc_mean"].to_numpy(dtype=float)
        s = 100 * part["auc_std"].to_numpy(dtype=float)
        ax.plot(
            x, y, color=colour, ls=ls, lw=max(lw, 1.8), marker="o", ms=4, label=method_label(method)
        )
        ax.fill_between(x, y - s, y + s, color=colour, alpha=0.15, lw=0)
    for i, (method, auc) in enumerate(sorted(baselines.items(), key=lambda kv: -kv[1])):
        if np.isfinite(auc):
            colour, ls, _ = method_style(method, i)
            ax.axhline(
                100 * auc,
                color=colour,
                ls=ls,
                lw=0.9,
                alpha=0.8,
                label=f"{method_label(method)} (untrained)",
            )
    finite = np.isfinite(summary["auc_mean"].to_numpy(dtype=float)) if len(summary) else []
    if np.any(finite):  # log axis only with something to draw on it
        ax.set_xscale("log")
        # the sizes themselves as plain labels (log's minor "3x10^1" labels overlap)
        ticks = [float(t) for t in np.unique(np.round(summary["n_train"].to_numpy(dtype=float)))]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, color="#e0e0e0", lw=0.6, which="both")
    ax.set_xlabel("training (validation) lesions per fold")
    ax.set_ylabel("test AUC (%), mean over folds")
    ax.set_title("Learning curve: band = +-1 SD over repeated subsamples", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig
