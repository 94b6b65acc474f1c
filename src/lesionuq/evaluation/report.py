"""The self-contained HTML report of a run, ``RUN/results/report.html``, and its gallery.

:func:`write_report` reads only the run-directory contract (docs/DESIGN.md):
``RUN/config.yaml``, the tables of ``RUN/results`` (``lesions``, ``table1``, ``table2``,
``table2_folds`` and the others of :mod:`lesionuq.evaluation.report_sections`), the
figures the pipeline drew (``figure2.png``, ``calibration.png``, ``learning_curve.png``)
and, for the lesion gallery, ``RUN/fold_K/test/CASE/{image,lesions,gt}.nii.gz``. It loads
no scorer or model and recomputes nothing the pipeline wrote: the tables are the CSVs, the
gallery's crops are drawn from the images (:func:`~lesionuq.evaluation.render.render_lesion_crop`).
The page is built from the pieces in :mod:`lesionuq.evaluation.render`, shared with the
one-scan report of ``lesionuq predict``.

``mean_curve`` and ``plot_accuracy_confidence`` (now in :mod:`lesionuq.evaluation.figures`)
and ``render_lesion_crop`` (now in :mod:`lesionuq.evaluation.render`) are deprecated
aliases here, to go after one release.

Example:
    >>> write_report("runs/x", n_gallery=6)  # runs/x/results/report.html
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.evaluation.figures import (
    mean_curve,  # deprecated alias, moved to lesionuq.evaluation.figures
    plot_accuracy_confidence,  # deprecated alias, moved to lesionuq.evaluation.figures
)
from lesionuq.evaluation.metrics import as_bool
from lesionuq.evaluation.render import escape as _e
from lesionuq.evaluation.render import (
    html_page,
    img_tag,
    render_lesion_crop,  # moved to lesionuq.evaluation.render (deprecated alias here)
)
from lesionuq.evaluation.report_sections import (
    HOW_TO_READ,
    calibration_html,
    default_method_html,
    detection_html,
    learning_curve_html,
    missing_note,
    operating_point_html,
    protocol_html,
    read_optional_csv,
    table1_html,
    table2_html,
    tp_threshold,
    validation_html,
    validation_summary,
)
from lesionuq.export.viewer import NO_VIEWER_NOTE, find_niivue_bundle, viewer_html
from lesionuq.io import atomic_write_text
from lesionuq.methods import CATALOGUE, outputs_p_fp
from lesionuq.methods import label as method_label

__all__ = [
    "mean_curve",
    "plot_accuracy_confidence",
    "render_lesion_crop",
    "validation_summary",
    "write_report",
]

LESION_COLUMNS = ("fold", "case_id", "lesion_id", "n_voxels", "iou_adj", "is_tp")
"""The lesion table's own columns; every other column is a method's score."""

# legend label and (colour, line style, line width) per method, from the method catalogue
LABELS = {name: spec.label for name, spec in CATALOGUE.items()}
STYLES = {name: spec.style for name, spec in CATALOGUE.items()}


def _nii(path: Path) -> nib.Nifti1Image:
    """``nib.load`` of a NIfTI file of the run directory (data loaded lazily)."""
    return cast(nib.Nifti1Image, nib.load(str(path)))


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
    lesions = read_optional_csv(res / "lesions.csv")
    t1 = read_optional_csv(res / "table1.csv")
    t2 = read_optional_csv(res / "table2.csv")
    per_fold = read_optional_csv(res / "table2_folds.csv")  # the pipeline's per-fold AUCs

    # the run's folder and its parent: the demo's run is OUT/run ("results of run run")
    label = "/".join(run.resolve().parts[-2:])
    body = [f"<h1>Lesion-wise uncertainty: results of run {_e(label)}</h1>"]
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
    protocol = protocol_html(run)
    body += [protocol] if protocol else []
    guide = HOW_TO_READ.replace("EPSILON", tp_threshold(run))
    segmenter = "U-Net" if not protocol else "given"
    body += ["<h2>How to read this report</h2>", guide.replace("U-Net", segmenter)]

    title = (
        "U-Net segmentation of the test scans"
        if not protocol
        else "Segmentation of the test scans (your segmenter)"
    )
    body.append(f"<h2>Table 1. {title}</h2>")
    if t1 is not None:
        body.append(table1_html(t1))
        body.append(
            '<p class="note">Dice: mean over the fold\'s test scans; counts: lesions '
            "(connected components of the segmentation) in the fold's test scans.</p>"
        )
    else:
        body.append(missing_note(res / "table1.csv", run))

    body.append(
        "<h2>Table 2. Lesion uncertainty: accuracy-confidence AUC and Spearman &rho; with size</h2>"
    )
    if t2 is not None:
        body.append(table2_html(t2, per_fold))
        body.append(
            '<p class="note">Means over folds. Bold: highest AUC (per column) and '
            "smallest |&rho;| (uncertainty least tied to lesion size).</p>"
        )
        body.append(validation_html(run))
        body.append(default_method_html(run))
    else:
        body.append(missing_note(res / "table2.csv", run))

    body.append("<h2>Figure 2. Accuracy-confidence curves</h2>")
    fig_path = res / "figure2.png"
    if fig_path.is_file():
        body.append(img_tag(fig_path.read_bytes(), "accuracy-confidence curves", "fig"))
        body.append(
            '<p class="note">Curves averaged over folds on a common FP grid; AUC (%) in '
            "brackets, methods sorted by AUC.</p>"
        )
    else:
        body.append(missing_note(fig_path, run))

    body.append(calibration_html(run))
    body.append(operating_point_html(run))
    body.append(detection_html(run, t1))
    body.append(learning_curve_html(run))
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
        body.append(missing_note(cfg, run))

    page = html_page(f"lesionuq report: {run.name}", body)
    return atomic_write_text(res / "report.html", page)
