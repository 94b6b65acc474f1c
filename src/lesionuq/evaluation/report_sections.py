"""The HTML sections of the run report, each built from the files the pipeline wrote.

:func:`lesionuq.evaluation.report.write_report` puts these sections together. Each reads
tables only: ``RUN/results/*.csv`` (``table1``, ``table2``, ``table2_folds``,
``calibration``, ``operating_point``, ``retention``, ``learning_curve``), the figures the
pipeline drew (``calibration.png``, ``learning_curve.png``), ``RUN/config.yaml``,
``RUN/samples.csv`` and the validation lesion tables ``fold_K/graphs/val/lesions.csv``.
No scorer or model is loaded and no AUC is recomputed; a missing file gives a note in the
page instead of an error.

Example:
    >>> t1 = read_optional_csv(run / "results" / "table1.csv")
    >>> html = table1_html(t1) if t1 is not None else missing_note(path, run)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lesionuq.config import yaml_load
from lesionuq.evaluation.metrics import as_bool, summarize_learning_curve
from lesionuq.evaluation.render import escape as _e
from lesionuq.evaluation.render import html_table, img_tag
from lesionuq.io import read_csv_table
from lesionuq.methods import label as method_label
from lesionuq.operating_point import FEW_VALIDATION_LESIONS

__all__ = [
    "HOW_TO_READ",
    "TABLE1_BASE",
    "calibration_html",
    "default_method_html",
    "detection_html",
    "learning_curve_html",
    "missing_note",
    "operating_point_html",
    "protocol_html",
    "read_optional_csv",
    "table1_html",
    "table2_html",
    "tp_threshold",
    "validation_html",
    "validation_summary",
]

TABLE1_BASE = ("fold", "dice", "n_tp", "n_fp")
"""Table 1's own columns; the others are the lesion-level detection metrics."""


def read_optional_csv(path: Path) -> pd.DataFrame | None:
    """A result table of the run (:func:`~lesionuq.io.read_csv_table`), None if absent."""
    if not path.is_file():
        return None
    return read_csv_table(path)


def missing_note(path: Path, root: Path) -> str:
    """The page's note that ``path`` (shown relative to the run ``root``) is absent."""
    return f'<p class="missing">Not available: {_e(path.relative_to(root))}.</p>'


def _bold_if(text: str, flag: bool) -> str:
    return f"<b>{text}</b>" if flag else text


def _fmt(value: float, spec: str, scale: float = 1.0) -> str:
    if not np.isfinite(value):
        return "n/a"
    text = format(scale * value, spec)
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"


def table1_html(t1: pd.DataFrame) -> str:
    """Table 1: one row per fold (Dice, TP / FP lesions, FP share), then the total.

    Args:
        t1: The ``table1.csv`` frame (``fold, dice, n_tp, n_fp``; F rows).

    Returns:
        The ``<table>``, with a "mean / total" row when there is more than one fold.
    """
    rows = []
    for r in t1.itertuples(index=False):
        n = r.n_tp + r.n_fp
        share = _fmt(r.n_fp / n if n else float("nan"), ".1f", 100)
        rows.append([_e(r.fold), _fmt(r.dice, ".3f"), _e(r.n_tp), _e(r.n_fp), share])
    if len(t1) > 1:
        n_tp, n_fp = int(t1.n_tp.sum()), int(t1.n_fp.sum())
        share = _fmt(n_fp / (n_tp + n_fp) if n_tp + n_fp else float("nan"), ".1f", 100)
        rows.append(["mean / total", _fmt(t1.dice.mean(), ".3f"), str(n_tp), str(n_fp), share])
    header = ["Fold", "Dice", "# TP lesions", "# FP lesions", "FP share (%)"]
    classes = ([""] * (len(rows) - 1) + ["total"]) if len(t1) > 1 else []
    return html_table(header, rows, classes)


def table2_html(t2: pd.DataFrame, per_fold: pd.DataFrame | None) -> str:
    """Table 2: AUC (with its bootstrap interval and difference when present), rho, folds.

    The highest AUC and the smallest |rho| are bold, per column; a method whose interval
    overlaps the best method's is marked with &#8776;.

    Args:
        t2: The ``table2.csv`` frame: ``method, auc, spearman_rho`` (M rows), optionally
            ``auc_lo, auc_hi`` and ``diff_vs_REF, diff_lo, diff_hi``.
        per_fold: The ``table2_folds.csv`` frame (``fold, method, auc, ...``; one AUC
            column per fold), or None for no fold columns.

    Returns:
        The ``<table>`` and, with intervals, the note how to read them.
    """
    auc = t2["auc"].to_numpy(dtype=np.float64)
    rho = np.abs(t2["spearman_rho"].to_numpy(dtype=np.float64))
    best_auc = np.nanmax(auc) if np.isfinite(auc).any() else np.nan
    best_rho = np.nanmin(rho) if np.isfinite(rho).any() else np.nan
    folds: list = []
    pivot = pd.DataFrame()  # no per-fold AUCs: no fold columns
    if per_fold is not None and len(per_fold):
        pivot = per_fold.pivot(index="method", columns="fold", values="auc")
        folds = list(pivot.columns)
        fold_best = pivot.max(axis=0)
    has_ci = {"auc_lo", "auc_hi"} <= set(t2.columns) and np.isfinite(best_auc)
    diff = next((c for c in t2.columns if c.startswith("diff_vs_")), None)
    if has_ci:  # the best method's interval, to mark the ones overlapping it
        best_row = t2.loc[int(np.nanargmax(auc))]
    rows = []
    for r in t2.itertuples(index=False):
        is_best = bool(np.isclose(r.auc, best_auc))
        auc_text = _bold_if(_fmt(r.auc, ".1f", 100), is_best)
        row = [_e(method_label(r.method)), auc_text]
        if has_ci:
            overlaps = r.auc_hi >= best_row.auc_lo and r.auc_lo <= best_row.auc_hi
            row[1] += " &#8776;" if overlaps and not is_best else ""
            row.append(f"{_fmt(r.auc_lo, '.1f', 100)} &ndash; {_fmt(r.auc_hi, '.1f', 100)}")
        if diff is not None:
            d = getattr(r, diff)
            row.append(
                f"{_fmt(d, '+.1f', 100)} ({_fmt(r.diff_lo, '+.1f', 100)}, "
                f"{_fmt(r.diff_hi, '+.1f', 100)})"
                if np.isfinite(d)
                else "n/a"
            )
        row.append(
            _bold_if(_fmt(r.spearman_rho, ".2f"), bool(np.isclose(abs(r.spearman_rho), best_rho)))
        )
        for f in folds:
            v = pivot.loc[r.method, f] if r.method in pivot.index else np.nan
            row.append(_bold_if(_fmt(v, ".1f", 100), bool(np.isclose(v, fold_best[f]))))
        rows.append(row)
    ref = method_label(diff.removeprefix("diff_vs_")) if diff is not None else ""
    header = [
        "Method",
        "AUC (%)",
        *(["95 % CI"] if has_ci else []),
        *([f"&Delta; vs {_e(ref)} (95 % CI)"] if diff is not None else []),
        "Spearman &rho;",
        *[f"AUC fold {_e(f)}" for f in folds],
    ]
    out = html_table(header, rows)
    if has_ci:
        out += (
            '\n<p class="note">95 % CI: percentile bootstrap (test cases resampled within '
            "each fold). &#8776;: the interval overlaps the best method's, so the data do not "
            "separate the two. &Delta;: paired bootstrap difference of the AUC to "
            f"{_e(ref)} (points); an interval excluding 0 is a clear difference.</p>"
        )
    return out


def _mean_table(frame: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean of ``values`` over folds per ``keys`` (rows of a pooled ``fold == "all"`` dropped)."""
    per_fold = frame[frame["fold"].astype(str) != "all"]
    return per_fold.groupby(list(keys), sort=False)[list(values)].mean().reset_index()


def calibration_html(run: Path) -> str:
    """Calibration section: ECE / Brier / log loss before and after, and the diagrams."""
    res = run / "results"
    cal = read_optional_csv(res / "calibration.csv")
    out = ["<h2>Calibration of P(FP)</h2>"]
    if cal is None or not len(cal):
        out.append('<p class="missing">No calibrated scorer in this run.</p>')
        return "\n".join(out)
    out.append(
        '<p class="note">How to read: a calibrated P(FP) of 0.3 means that about 30 % of the '
        "lesions given that value are false positives. Each learned scorer's calibrator "
        "is fitted on its fold's validation lesions only, on out-of-fold scores (inner "
        "cross-fitting); these rows measure it on the test lesions. ECE: expected "
        "calibration error (10 bins, 0 = perfect); Brier: mean squared error of P(FP); "
        "MAE: mean absolute error of the predicted IoU_adj (regressors). Means over "
        "folds; the calibration is a strictly increasing map, so the AUCs of Table 2 do "
        "not change.</p>"
    )
    mean = _mean_table(cal, ["method", "stage"], ["ece", "brier", "log_loss", "mae"])
    rows = []
    for method, grp in mean.groupby("method", sort=False):
        b = grp[grp.stage == "before"].iloc[0]
        a = grp[grp.stage == "after"].iloc[0]
        rows.append(
            [_e(method_label(str(method)))]
            + [f"{_fmt(b[c], '.3f')} &rarr; {_fmt(a[c], '.3f')}" for c in ("ece", "brier")]
            + [f"{_fmt(b['log_loss'], '.2f')} &rarr; {_fmt(a['log_loss'], '.2f')}"]
            + [f"{_fmt(b['mae'], '.3f')} &rarr; {_fmt(a['mae'], '.3f')}"]
        )
    header = ["Method", "ECE (before &rarr; after)", "Brier", "Log loss", "MAE of IoU_adj"]
    out.append(html_table(header, rows))
    png = res / "calibration.png"
    if png.is_file():
        out.append(img_tag(png.read_bytes(), "reliability diagrams", "fig"))
        out.append(
            '<p class="note">Reliability diagrams (test lesions of all folds): bars are the '
            "observed share of FP lesions per P(FP) bin, numbers the lesions in the bin; "
            "a calibrated scorer follows the dashed diagonal.</p>"
        )
    return "\n".join(out)


def operating_point_html(run: Path) -> str:
    """What the stored review threshold did on the test lesions."""
    op = read_optional_csv(run / "results" / "operating_point.csv")
    out = ["<h2>Operating point: the review threshold on the test lesions</h2>"]
    if op is None or not len(op):
        out.append(
            '<p class="missing">No operating point was stored (the validation lesions '
            "could not meet the review target, or nothing is calibrated).</p>"
        )
        return "\n".join(out)
    out.append(
        '<p class="note">How to read: <code>predict</code> flags a lesion for review when its '
        "P(FP) reaches a threshold chosen on the validation lesions for the target shown "
        "(tp:0.95 = keep at least 95 % of the true lesions unflagged). These rows say what "
        "that threshold did on the test lesions (means over folds): the share of FP and "
        "of TP lesions flagged, and the lesion precision before and after removing the "
        "flagged lesions.</p>"
    )
    cols = ["threshold", "fp_flagged", "tp_flagged", "precision_before", "precision_after"]
    mean = _mean_table(op, ["method", "target"], cols)
    rows = [
        [_e(method_label(str(r.method))), _e(r.target), _fmt(r.threshold, ".3g")]
        + [_fmt(getattr(r, c), ".1f", 100) for c in cols[1:]]
        for r in mean.itertuples(index=False)
    ]
    header = ["Method", "Target", "Threshold", "FP flagged (%)", "TP flagged (%)",
              "Precision before (%)", "Precision after (%)"]  # fmt: skip
    out.append(html_table(header, rows))
    return "\n".join(out)


def default_method_html(run: Path) -> str:
    """How each fold's default P(FP) method (the one ``predict`` reports) did on the test lesions.

    Reads ``results/default_method.csv``; empty when the run has none (fitted before the
    default method existed).
    """
    frame = read_optional_csv(run / "results" / "default_method.csv")
    if frame is None or not len(frame):
        return ""
    out = [
        "<h3>The P(FP) method <code>predict</code> reports, on the test lesions</h3>",
        '<p class="note">Each fold chose its default P(FP) method on its validation lesions '
        "only (out-of-fold AUC, extrapolated to the fit on all of them where the scorer "
        "has half-size fits, never below the best untrained baseline there). Here is "
        "what that choice did on the fold's test lesions, beside the untrained baseline "
        "that was best on the validation lesions, the one best on these test lesions "
        "(known only in hindsight) and the paper's GCNN. AUC in %.</p>",
    ]

    def pct(value: object) -> str:
        return _fmt(float(str(value)), ".1f", 100) if str(value) not in ("", "nan") else "-"

    def val_auc(r: Any) -> str:
        """Out of fold, then extrapolated to the full fit when there is one."""
        full = getattr(r, "val_auc_full", float("nan"))  # older files lack the column
        extra = f" ({pct(full)} at full size)" if str(full) not in ("", "nan") else ""
        return pct(r.val_auc) + extra

    rows = []
    for r in frame.itertuples(index=False):
        hindsight = f"{_e(method_label(str(r.test_best_baseline)))} {pct(r.test_best_baseline_auc)}"
        val_base = f"{_e(method_label(str(r.val_best_baseline)))} {pct(r.val_best_baseline_auc)}"
        rows.append(
            [
                str(r.fold),
                _e(method_label(str(r.method))),
                val_auc(r),
                val_base,
                _bold_if(pct(r.test_auc), float(r.test_auc) >= float(r.test_best_baseline_auc)),
                pct(r.test_auc_val_best_baseline),
                hindsight,
                pct(r.test_auc_gcnn_classif),
            ]
        )
    header = ["Fold", "Default method", "Validation AUC", "Best baseline (validation)",
              "Test AUC", "That baseline, test", "Best baseline on test (hindsight)",
              "Paper's GCNN, test"]  # fmt: skip
    out.append(html_table(header, rows))
    out.append(
        '<p class="note">Bold: the default ranked the test lesions at least as well as the '
        "best untrained baseline in hindsight. With few validation scans the choice rests "
        "on noisy out-of-fold AUCs.</p>"
    )
    return "\n".join(out)


def detection_html(run: Path, t1: pd.DataFrame | None) -> str:
    """Lesion-level detection metrics (Table 1's extra columns) and F1-retention areas."""
    out = ["<h2>Lesion-level detection</h2>"]
    extra = [c for c in (t1.columns if t1 is not None else []) if c not in TABLE1_BASE]
    if t1 is None or not extra:
        out.append('<p class="missing">Not computed for this run.</p>')
        return "\n".join(out)
    out.append(
        '<p class="note">How to read: lesion TPR = detected ground-truth lesions / all '
        "ground-truth lesions; PPV = matching predicted lesions / all predicted lesions; "
        "F1 = TP / (TP + (FP + FN) / 2) (Shifts). Two matching rules: <b>IoU</b>, a "
        "predicted and a true lesion match at IoU &ge; 0.25 (Shifts); <b>overlap</b>, any "
        "shared voxel (WMH challenge). nDSC: Dice normalised to a 0.1 % lesion load "
        "(Shifts), mean over test scans.</p>"
    )
    rows = [[_e(r["fold"])] + [_fmt(r[c], ".3f") for c in extra] for _, r in t1.iterrows()]
    out.append(html_table(["Fold", *(_e(c) for c in extra)], rows))
    ret = read_optional_csv(run / "results" / "retention.csv")
    if ret is not None and len(ret):
        out.append(
            '<p class="note">Lesion-F1 retention: remove the most uncertain lesions first '
            "(a removed lesion is handed to a reader); the area under F1 vs retained "
            "fraction is higher when a method puts the false positives first. Mean over "
            "folds.</p>"
        )
        mean = ret.groupby("method", sort=False)["f1_retention_auc"].mean()
        mean = mean.sort_values(ascending=False)
        rows = [[_e(method_label(str(m))), _fmt(v, ".3f")] for m, v in mean.items()]
        out.append(html_table(["Method", "F1-retention AUC"], rows))
    return "\n".join(out)


def validation_summary(run: str | Path) -> pd.DataFrame | None:
    """What the learned scorers of each fold were fitted on: its validation lesions.

    Args:
        run: The run directory (reads ``fold_K/graphs/val/lesions.csv``).

    Returns:
        One row per fold: ``fold``, ``scans``, ``lesions``, ``tp``, ``fp``; None when no
        fold has its validation lesion table yet.
    """
    rows = []
    for table in sorted(Path(run).glob("fold_*/graphs/val/lesions.csv")):
        fold = table.parents[2].name.removeprefix("fold_")
        if not fold.isdigit():
            continue
        lesions = read_csv_table(table, usecols=["case_id", "is_tp"])
        tp = int(as_bool(lesions["is_tp"]).sum())
        n = len(lesions)
        rows.append((int(fold), int(lesions["case_id"].nunique()), n, tp, n - tp))
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["fold", "scans", "lesions", "tp", "fp"])
    return frame.sort_values("fold", ignore_index=True)


def validation_html(run: Path) -> str:
    """The training data of the learned scorers, with a warning when it is small."""
    summary = validation_summary(run)
    if summary is None:
        return ""
    rows = [[str(v) for v in r] for r in summary.itertuples(index=False)]
    out = [
        "<h3>What the learned scorers were trained on</h3>",
        html_table(["Fold", "Validation scans", "Lesions", "TP", "FP"], rows),
    ]
    few = int(summary["lesions"].min())
    if few < FEW_VALIDATION_LESIONS or int(summary["scans"].min()) < 2:
        out.append(
            '<p class="missing">The learned scorers (GCNN, MetaSeg) of some folds were '
            f"fitted on as few as {few} validation lesions (fewest scans in a fold: "
            f"{int(summary['scans'].min())}). The paper "
            "had about 700 per fold; on the project's quality bench the GCNN needed 100-200 "
            "lesions to pass the untrained baselines. Read the learned rows of Table 2 with "
            "care, and run <code>lesionuq learning-curve</code> on this run.</p>"
        )
    else:
        out.append(
            '<p class="note">The learned scorers (GCNN, MetaSeg) are fitted on these '
            "validation lesions only; the learning curve (if computed) shows whether more "
            "would help.</p>"
        )
    return "\n".join(out)


def learning_curve_html(run: Path) -> str:
    """The learning-curve section (figure and table), empty when it was not computed."""
    res = run / "results"
    png, csv = res / "learning_curve.png", res / "learning_curve.csv"
    if not png.is_file() or not csv.is_file():
        return ""
    summary = summarize_learning_curve(pd.read_csv(csv))
    table = summary.pivot_table(index="size", columns="method", values="auc_mean", sort=False)
    n_train = summary.groupby("size", sort=False)["n_train"].mean()
    rows = [
        [_e(size), f"{n_train[size]:.0f}", *(_fmt(v, ".1f", 100) for v in table.loc[size])]
        for size in table.index
    ]
    header = ["Size", "Training lesions", *(_e(method_label(m)) for m in table.columns)]
    return "\n".join(
        [
            "<h2>Learning curve: is the validation set large enough?</h2>",
            img_tag(png.read_bytes(), "learning curve", "fig"),
            html_table(header, rows),
            '<p class="note">Learned scorers refitted on stratified, seeded subsamples of each '
            "fold's validation lesions (by case where possible), scoring the same test "
            "lesions; test AUC (%) averaged over folds, then over repeats (band: &plusmn;1 SD "
            "over repeats). Flat lines: untrained baselines. A curve still rising at the "
            "full size means more validation scans would help; a learned method below the "
            "best baseline at the full size is not worth training on this data.</p>",
        ]
    )


def tp_threshold(run: Path) -> str:
    """The TP threshold on IoU_adj from ``RUN/config.yaml`` (0.1 when unreadable)."""
    try:
        cfg = yaml_load((run / "config.yaml").read_text()) or {}
        return f"{float(cfg['graphs']['epsilon']):g}"
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return "0.1"


HOW_TO_READ = """
<p>Every connected component of the U-Net segmentation of a test scan is a <em>lesion</em>.
It is a true positive (TP) when its adjusted IoU with the ground truth is at least EPSILON, a
false positive (FP) otherwise. Each method gives every lesion an uncertainty score; a useful
score is <b>higher for FP lesions</b>, so that the lesions it flags are the ones to check.</p>
<p><b>Accuracy-confidence curve (Figure 2).</b> Lesions are set aside from the most to the
least uncertain; the curve shows the fraction of FP lesions still kept (x) against the
fraction of TP lesions still kept (y), from (1, 1) with every lesion kept to (0, 0) with all
removed. A good score removes FPs first, so its curve stays high (near the top-left).
<b>AUC</b> is the area under it: 100&nbsp;% means every FP is more uncertain than every TP,
50&nbsp;% is a random ranking (the grey diagonal), and it equals the probability that a
random FP lesion is scored more uncertain than a random TP lesion. Only the ranking
matters, so methods with different score ranges compare fairly. AUC and &rho; are computed
per fold and averaged over folds.</p>
<p><b>Spearman &rho;</b> is the rank correlation of a method's uncertainty with lesion size.
The <em>Size</em> baseline (uncertainty 1/size) has &rho; = &minus;1 by construction; logsum
scores are strongly tied to size too. Small lesions are more often FP, so size alone already
ranks lesions better than chance, but a score close to &minus;1 mostly measures size, not
the model's doubt; a good method beats Size on AUC with a weaker dependence on size.</p>
"""


def protocol_html(run: Path) -> str:
    """A paragraph on the samples protocol (the user's segmenter), or "" for the U-Net's."""
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    if cfg.get("protocol") != "samples":
        return ""
    t = ""
    with contextlib.suppress(OSError, ValueError, KeyError):
        n = pd.read_csv(run / "samples.csv")["n_samples"]
        t = f" (T = {n.min()}" + (f" to {n.max()}" if n.max() != n.min() else "") + " per case)"
    return (
        '<p class="sub"><b>Scorer-only (samples) protocol.</b> The segmentation and its '
        f"samples{_e(t)} come from {_e(str(cfg.get('samples_source') or 'the manifest'))}; "
        "no U-Net was trained, and each fold's scorers learned from every case outside "
        "its test fold (<code>samples.csv</code> lists each case's samples).</p>"
    )
