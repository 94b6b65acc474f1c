"""The self-contained HTML report of a run.

It reads only the run-directory contract (docs/DESIGN.md): ``RUN/config.yaml``,
``RUN/results/{lesions,table1,table2}.csv``, ``RUN/results/figure2.png`` and, for the
lesion gallery, ``RUN/fold_K/test/CASE/{image,lesions,gt}.nii.gz``. The page is built
from the pieces in :mod:`lesionuq.evaluation.render`, shared with the one-scan report of
``lesionuq predict``. Figure 2 (``mean_curve``, ``plot_accuracy_confidence``, now in
:mod:`lesionuq.evaluation.figures`) and ``render_lesion_crop`` (now in
:mod:`lesionuq.evaluation.render`) are deprecated aliases here, to go after one release.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from lesionuq.config import yaml_load
from lesionuq.evaluation.figures import (
    mean_curve,  # deprecated alias, moved to lesionuq.evaluation.figures
    plot_accuracy_confidence,  # deprecated alias, moved to lesionuq.evaluation.figures
)
from lesionuq.evaluation.metrics import as_bool, summarize_learning_curve, table2
from lesionuq.evaluation.render import escape as _e
from lesionuq.evaluation.render import (
    html_page,
    html_table,
    img_tag,
    render_lesion_crop,  # moved to lesionuq.evaluation.render (deprecated alias here)
)
from lesionuq.export.viewer import NO_VIEWER_NOTE, find_niivue_bundle, viewer_html
from lesionuq.io import atomic_write_text, read_csv_table
from lesionuq.methods import CATALOGUE, outputs_p_fp
from lesionuq.methods import label as method_label
from lesionuq.operating_point import FEW_VALIDATION_LESIONS

__all__ = [
    "mean_curve",
    "plot_accuracy_confidence",
    "render_lesion_crop",
    "validation_summary",
    "write_report",
]

LESION_COLUMNS = ("fold", "case_id", "lesion_id", "n_voxels", "iou_adj", "is_tp")

# legend label and (colour, line style, line width) per method, from the method catalogue
LABELS = {name: spec.label for name, spec in CATALOGUE.items()}
STYLES = {name: spec.style for name, spec in CATALOGUE.items()}

TABLE1_BASE = ("fold", "dice", "n_tp", "n_fp")


# --------------------------------------------------------------------------- HTML report


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    return read_csv_table(path)


def _nii(path: Path) -> nib.Nifti1Image:
    """``nib.load`` of a NIfTI file of the run directory (data loaded lazily)."""
    return cast(nib.Nifti1Image, nib.load(str(path)))


def _missing(path: Path, root: Path) -> str:
    return f'<p class="missing">Not available: {_e(path.relative_to(root))}.</p>'


def _bold_if(text: str, flag: bool) -> str:
    return f"<b>{text}</b>" if flag else text


def _fmt(value: float, spec: str, scale: float = 1.0) -> str:
    if not np.isfinite(value):
        return "n/a"
    text = format(scale * value, spec)
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"


def _table1_html(t1: pd.DataFrame) -> str:
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


def _table2_html(t2: pd.DataFrame, per_fold: pd.DataFrame | None) -> str:
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


def _calibration_html(run: Path) -> str:
    """Calibration section: ECE / Brier / log loss before and after, and the diagrams."""
    res = run / "results"
    cal = _read_csv(res / "calibration.csv")
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


def _operating_point_html(run: Path) -> str:
    """What the stored review threshold did on the test lesions."""
    op = _read_csv(run / "results" / "operating_point.csv")
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


def _detection_html(run: Path, t1: pd.DataFrame | None) -> str:
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
    ret = _read_csv(run / "results" / "retention.csv")
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


def _validation_html(run: Path) -> str:
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


def _learning_curve_html(run: Path) -> str:
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


def _epsilon(run: Path) -> str:
    """The TP threshold on IoU_adj from ``RUN/config.yaml`` (0.1 when unreadable)."""
    try:
        cfg = yaml_load((run / "config.yaml").read_text()) or {}
        return f"{float(cfg['graphs']['epsilon']):g}"
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return "0.1"


def _gallery_method(lesions: pd.DataFrame, method: str | None) -> str | None:
    methods = [c for c in lesions.columns if c not in LESION_COLUMNS]
    if method is not None:
        return method if method in methods else None
    return "gcnn_classif" if "gcnn_classif" in methods else (methods[0] if methods else None)


def _gallery_viewer(run: Path, lesions: pd.DataFrame, method: str, fold: int, case: str) -> str:
    """The NiiVue viewer of one test case of the gallery, or the note how to get it.

    Lesions are coloured by P(FP) for a classifier, else by the rank of their uncertainty
    within the case (green least, red most uncertain).
    """
    d = run / f"fold_{fold}" / "test" / case
    if find_niivue_bundle() is None:
        return f'<p class="note">{_e(NO_VIEWER_NOTE)}</p>'
    if not ((d / "image.nii.gz").is_file() and (d / "lesions.nii.gz").is_file()):
        return ""
    rows = lesions[(lesions["fold"] == fold) & (lesions["case_id"].astype(str) == case)]
    rows = rows.sort_values(method, ascending=False)
    score = rows[method].to_numpy(dtype=float)
    if outputs_p_fp(method):
        colour = np.clip(score, 0.0, 1.0)
        scale = "P(FP)"
    else:
        ranks = pd.Series(score).rank(method="average").to_numpy()
        colour = (ranks - 1) / max(len(ranks) - 1, 1)
        scale = f"rank of {method_label(method)} within the case"
    image, labels = _nii(d / "image.nii.gz"), _nii(d / "lesions.nii.gz")
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    table = pd.DataFrame(
        {
            "lesion_id": rows["lesion_id"].to_numpy(dtype=int),
            "p_fp": colour,
            "volume_ml": rows["n_voxels"].to_numpy(dtype=float) * voxel_ml,
            "review": ~as_bool(rows["is_tp"]),
        }
    )
    fragment = viewer_html(image, labels, table, element_id="gallery-viewer")
    if fragment is None:
        return f'<p class="note">{_e(NO_VIEWER_NOTE)}</p>'
    return (
        f"<h3>Viewer: fold {fold}, case {_e(case)} (holds the most uncertain lesion)</h3>"
        f'<p class="note">Lesions coloured by {_e(scale)}, green to red; the P(FP) column '
        'shows that colour value, the status column the truth ("review" = FP, "kept" = '
        "TP).</p>" + fragment
    )


def _gallery_html(run: Path, lesions: pd.DataFrame, method: str, n: int, margin: int) -> str:
    order = lesions.sort_values(
        [method, "fold", "case_id", "lesion_id"], ascending=[False, True, True, True]
    )
    most = order.head(n)
    least = order.drop(most.index).tail(n).iloc[::-1]
    volumes: dict[tuple[int, str], tuple] = {}

    def load(fold: int, case: str) -> tuple:
        key = (fold, case)
        if key not in volumes:
            d = run / f"fold_{fold}" / "test" / case
            arrays = []
            for name in ("image", "lesions", "gt"):
                p = d / f"{name}.nii.gz"
                arrays.append(np.asarray(_nii(p).dataobj) if p.is_file() else None)
            volumes[key] = tuple(arrays)
        return volumes[key]

    what = "P(FP)" if outputs_p_fp(method) else "uncertainty"

    def tile(r: pd.Series) -> str:
        image, labels, gt = load(int(r["fold"]), str(r["case_id"]))
        lesion_id = int(r["lesion_id"])
        if image is None or labels is None or not np.any(labels == lesion_id):
            picture = '<p class="missing">image.nii.gz / lesions.nii.gz not available</p>'
        else:
            png = render_lesion_crop(
                image, labels, lesion_id, None if gt is None else gt > 0, margin=margin
            )
            picture = img_tag(png, f"lesion {lesion_id} of case {r['case_id']}")
        tp = bool(as_bool(pd.Series([r["is_tp"]]))[0])
        truth = '<span class="tp">TP</span>' if tp else '<span class="fpl">FP</span>'
        return (
            f'<div class="tile">{picture}'
            f"<div>{_e(what)} = <b>{float(r[method]):.3g}</b> &middot; true: {truth}</div>"
            f"<div>IoU<sub>adj</sub> {float(r['iou_adj']):.2f} &middot; "
            f"{int(r['n_voxels'])} voxels</div>"
            f'<div class="note">fold {_e(r["fold"])} &middot; case {_e(r["case_id"])} '
            f"&middot; lesion {lesion_id}</div></div>"
        )

    parts = [
        f"<h3>Most uncertain test lesions ({_e(method_label(method))})</h3>",
        '<div class="gallery">' + "".join(tile(r) for _, r in most.iterrows()) + "</div>",
        f"<h3>Least uncertain test lesions ({_e(method_label(method))})</h3>",
        '<div class="gallery">' + "".join(tile(r) for _, r in least.iterrows()) + "</div>",
    ]
    if len(most):  # one viewer (one bundle) for the case of the most uncertain lesion
        top = most.iloc[0]
        parts.append(_gallery_viewer(run, lesions, method, int(top["fold"]), str(top["case_id"])))
    return "\n".join(parts)


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


def _protocol_html(run: Path) -> str:
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


def write_report(
    run_dir: str | Path,
    *,
    method: str | None = None,
    n_gallery: int = 6,
    margin: int = 8,
) -> Path:
    """Write ``RUN/results/report.html``: a self-contained summary of a finished run.

    Contents: a short guide, Table 1 (Dice, TP/FP counts per fold), Table 2 (AUC in %,
    Spearman rho, per-fold AUC; best values in bold) with the validation lesions the
    learned scorers were fitted on (:func:`validation_summary`; a warning below
    :data:`~lesionuq.operating_point.FEW_VALIDATION_LESIONS` per
    fold or from one scan), Figure 2, the calibration of P(FP)
    (``calibration.csv`` / ``.png``), the operating point's effect on the test lesions
    (``operating_point.csv``), the lesion-level detection metrics (Table 1's extra
    columns, ``retention.csv``) and a gallery of the
    ``n_gallery`` most and least uncertain test lesions (all folds together) by
    ``method`` (default ``gcnn_classif``, else the first method column): an axial FLAIR
    crop with the lesion contour, its score, its true label, IoU_adj and size. The run's
    ``config.yaml`` is shown collapsed. Images are embedded as base64 PNG and the CSS is
    inline, so the file has no external reference. Missing inputs are reported in the
    page instead of failing.

    Args:
        run_dir: The run directory ``RUN``.
        method: Method ranking the gallery.
        n_gallery: Lesions per gallery row (most / least uncertain).
        margin: Voxels around each lesion in the crops.

    Returns:
        The report's path.
    """
    run = Path(run_dir)
    res = run / "results"
    lesions = _read_csv(res / "lesions.csv")
    t1 = _read_csv(res / "table1.csv")
    t2 = _read_csv(res / "table2.csv")
    per_fold = None
    if lesions is not None and t2 is not None and len(lesions):
        present = [m for m in t2["method"] if m in lesions.columns]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_fold = table2(lesions, present)[1]

    body = [f"<h1>Lesion-wise uncertainty: results of run {_e(run.name)}</h1>"]
    if lesions is not None:
        tp = as_bool(lesions["is_tp"]) if len(lesions) else np.zeros(0, bool)
        summary = (
            f"{len(lesions)} test lesions ({int(tp.sum())} TP, {int((~tp).sum())} FP) "
            f"in {lesions['fold'].nunique()} folds"
        )
        if t2 is not None and t2["auc"].notna().any():
            best = t2.loc[t2["auc"].idxmax()]
            summary += (
                f"; best method: {method_label(best['method'])} ({100 * best['auc']:.1f} % AUC)"
            )
        body.append(f'<p class="sub">{_e(summary)}.</p>')
    protocol = _protocol_html(run)
    body += [protocol] if protocol else []
    guide = HOW_TO_READ.replace("EPSILON", _epsilon(run))
    segmenter = "U-Net" if not protocol else "given"
    body += ["<h2>How to read this report</h2>", guide.replace("U-Net", segmenter)]

    title = (
        "U-Net segmentation of the test scans"
        if not protocol
        else "Segmentation of the test scans (your segmenter)"
    )
    body.append(f"<h2>Table 1. {title}</h2>")
    if t1 is not None:
        body.append(_table1_html(t1))
        body.append(
            '<p class="note">Dice: mean over the fold\'s test scans; counts: lesions '
            "(connected components of the segmentation) in the fold's test scans.</p>"
        )
    else:
        body.append(_missing(res / "table1.csv", run))

    body.append(
        "<h2>Table 2. Lesion uncertainty: accuracy-confidence AUC and Spearman &rho; with size</h2>"
    )
    if t2 is not None:
        body.append(_table2_html(t2, per_fold))
        body.append(
            '<p class="note">Means over folds. Bold: highest AUC (per column) and '
            "smallest |&rho;| (uncertainty least tied to lesion size).</p>"
        )
        body.append(_validation_html(run))
    else:
        body.append(_missing(res / "table2.csv", run))

    body.append("<h2>Figure 2. Accuracy-confidence curves</h2>")
    fig_path = res / "figure2.png"
    if fig_path.is_file():
        body.append(img_tag(fig_path.read_bytes(), "accuracy-confidence curves", "fig"))
        body.append(
            '<p class="note">Curves averaged over folds on a common FP grid; AUC (%) in '
            "brackets, methods sorted by AUC.</p>"
        )
    else:
        body.append(_missing(fig_path, run))

    body.append(_calibration_html(run))
    body.append(_operating_point_html(run))
    body.append(_detection_html(run, t1))
    body.append(_learning_curve_html(run))
    body.append("<h2>Lesion gallery</h2>")
    gallery_method = _gallery_method(lesions, method) if lesions is not None else None
    if lesions is not None and len(lesions) and gallery_method is not None:
        body.append(
            '<p class="note">Axial slice through the lesion (preprocessed FLAIR); yellow: '
            "the predicted lesion; cyan dashed: ground truth. Most uncertain first, then "
            "least uncertain; all folds together.</p>"
        )
        body.append(_gallery_html(run, lesions, gallery_method, n_gallery, margin))
    else:
        body.append('<p class="missing">No test lesions to show.</p>')

    body.append("<h2>Configuration</h2>")
    cfg = run / "config.yaml"
    if cfg.is_file():
        body.append(
            "<details><summary>config.yaml (the fully resolved configuration)</summary>"
            f"<pre>{_e(cfg.read_text())}</pre></details>"
        )
    else:
        body.append(_missing(cfg, run))

    page = html_page(f"lesionuq report: {run.name}", body)
    return atomic_write_text(res / "report.html", page)
