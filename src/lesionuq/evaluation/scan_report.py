"""The one-scan report of ``lesionuq predict``: ``summary.png`` and ``report.html``.

:func:`summary_png` draws axial slices through the most doubtful lesions of one scan,
contours coloured by P(FP); :func:`scan_report_html` is the self-contained page around
it with the lesion table. Both use the pieces of :mod:`lesionuq.evaluation.render`
(Agg canvas, one stylesheet) shared with the run report.

Example:
    >>> png = summary_png(flair, labels, p_fp, table, "case_0")
    >>> page = scan_report_html(table, png, case_id="case_0", images=[path],
    ...                         model=folder, threshold=0.5, seconds=3.2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps, colors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from scipy import ndimage

from lesionuq import __version__
from lesionuq.evaluation.render import (
    PLAIN,
    escape,
    html_page,
    html_table,
    img_tag,
    plain_text,
    png_bytes,
)
from lesionuq.export.viewer import NO_VIEWER_NOTE

__all__ = [
    "location_rows",
    "registration_png",
    "scan_report_html",
    "summary_png",
    "warnings_html",
]


def summary_png(
    flair: np.ndarray,
    labels: np.ndarray,
    p_fp: np.ndarray,
    table: pd.DataFrame,
    case_id: str,
    max_panels: int = 4,
) -> bytes:
    """Axial slices through the most doubtful lesions, contours coloured by P(FP).

    Drawn on the preprocessed grid (RAS, isotropic), where axial slices are planes of
    constant z whatever the input orientation. One slice per lesion in table order,
    skipping slices within 1 voxel of one already shown; the middle slice without lesions.

    Args:
        flair: (X, Y, Z) first sequence, z-scored (0 outside the brain).
        labels: (X, Y, Z) lesion labels 1..N.
        p_fp: (N,) P(FP) of lesions 1..N.
        table: The lesion table sorted by P(FP) descending (its ``lesion_id`` order
            chooses the slices).
        case_id: Title.
        max_panels: Number of slices at most.

    Returns:
        PNG bytes.
    """
    cmap = colormaps["RdYlGn_r"]
    norm = colors.Normalize(0.0, 1.0)
    n = len(p_fp)
    slices: list[int] = []
    if n:
        ids = table["lesion_id"].to_numpy()
        com = ndimage.center_of_mass(labels > 0, labels, ids)
        for c in com:
            z = round(c[2])
            if all(abs(z - s) > 1 for s in slices):
                slices.append(z)
            if len(slices) == max_panels:
                break
    else:
        slices = [flair.shape[2] // 2]
    inside = flair[flair != 0]  # z-scored brain; 0 outside the brain
    lo, hi = np.percentile(inside, [0.5, 99.5]) if inside.size else (0.0, 1.0)
    shown = np.where(flair == 0, lo, flair)  # background black
    fig = Figure(figsize=(3.6 * len(slices) + 1.0, 4.4))
    axes = fig.subplots(1, len(slices), squeeze=False)
    for ax, z in zip(axes[0], slices, strict=True):
        ax.imshow(shown[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        lab = labels[:, :, z]
        on_slice = np.unique(lab[lab > 0])
        for k in on_slice:
            colour = cmap(norm(float(p_fp[k - 1])))
            ax.contour((lab == k).T.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
            xs, ys = np.nonzero(lab == k)
            ax.annotate(
                str(int(k)), (xs.max() + 1.5, ys.max() + 1.5), color=colour, fontsize=8,
                fontweight="bold",
            )  # fmt: skip
        doubtful = sorted(on_slice, key=lambda k: -p_fp[k - 1])[:3]
        names = "\n".join(f"#{k} P(FP) {p_fp[k - 1]:.2f}" for k in doubtful)
        ax.set_title(f"axial z={z}" + (f"\n{names}" if names else ""), fontsize=8)
        ax.text(0.02, 0.02, "R→", transform=ax.transAxes, color="w", fontsize=7)
        ax.set_axis_off()
    if n == 0:
        axes[0][0].set_title("no lesion found", fontsize=10)
    fig.suptitle(
        f"{plain_text(case_id)}: {n} lesion(s), contours coloured by P(FP)",
        fontsize=10,
        y=1.06,
        **PLAIN,
    )
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="P(FP)")
    return png_bytes(fig, 110, tight=True)


def registration_png(
    image: np.ndarray, brain: np.ndarray, ventricles: np.ndarray, title: str
) -> bytes:
    """The registration check: the template's brain and ventricles drawn on the scan.

    Three orthogonal slices through the centre of the scan's brain, the registered
    template's brain outline in cyan and its lateral ventricles in yellow: a wrong
    registration shows as outlines off the anatomy.

    Args:
        image: (X, Y, Z) scan (0 outside the brain).
        brain: (X, Y, Z) bool template brain brought onto the scan grid.
        ventricles: (X, Y, Z) bool template lateral ventricles on the scan grid.
        title: Figure title (the registration's quality measures).

    Returns:
        PNG bytes.
    """
    inside = image[image != 0]
    lo, hi = np.percentile(inside, [0.5, 99.5]) if inside.size else (0.0, 1.0)
    shown = np.where(image == 0, lo, image)
    support = np.argwhere(image != 0)
    centre = support.mean(0).round().astype(int) if len(support) else np.array(image.shape) // 2
    fig = Figure(figsize=(10.0, 3.8))
    axes = fig.subplots(1, 3)
    for ax, axis, name in zip(axes, (2, 1, 0), ("axial", "coronal", "sagittal"), strict=True):
        index: list[slice | int] = [slice(None)] * 3
        index[axis] = int(centre[axis])
        sl = tuple(index)
        ax.imshow(shown[sl].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        for mask, colour in ((brain, "c"), (ventricles, "y")):
            plane = mask[sl].astype(float)
            if plane.max() > 0:
                ax.contour(plane.T, levels=[0.5], colors=[colour], linewidths=1.0)
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(plain_text(title), fontsize=9, **PLAIN)
    return png_bytes(fig, 90, tight=True)


def _cell(column: str, value: object) -> str:
    """One table cell's text: ``yes``/empty for booleans, 1 decimal for centroids."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float | np.floating):
        return f"{value:.1f}" if column.startswith("centroid") else f"{value:.3g}"
    return str(value)


def scan_report_html(
    table: pd.DataFrame,
    png: bytes,
    *,
    case_id: str,
    images: Sequence[Path],
    model: Path,
    threshold: float,
    seconds: float,
    viewer: str | None = None,
    warnings: Sequence[str] = (),
    threshold_note: str | None = None,
    method_note: str | None = None,
    location: Mapping[str, Any] | None = None,
    location_png: bytes | None = None,
) -> str:
    """A self-contained HTML page: the viewer, the summary figure (base64), the lesion table.

    Args:
        table: The lesion rows to show, most doubtful first, with a boolean ``review``
            column (rows to review are highlighted).
        png: The summary figure (:func:`summary_png`).
        case_id: Name of the case.
        images: The input scans (shown resolved).
        model: The model folder (shown resolved).
        threshold: P(FP) at or above which a lesion is to review.
        seconds: Wall time of the prediction.
        viewer: The interactive NiiVue viewer fragment
            (:func:`lesionuq.export.viewer.viewer_html`); None shows
            :data:`~lesionuq.export.viewer.NO_VIEWER_NOTE` instead, above the static figure.
        warnings: Sentences shown in a box at the top (:func:`warnings_html`).
        threshold_note: How the review threshold was chosen, shown under the counts.
        method_note: Which method gives P(FP) and why (with the baselines' validation
            AUCs), shown under it.
        location: The ``location`` entry of ``lesions.json`` (counts per region, the DIS
            verdicts, the registration's quality), shown under the counts; None without.
        location_png: The registration check (:func:`registration_png`), shown under the
            summary figure; None without.

    Returns:
        The page text.
    """
    n_review = int(table["review"].sum()) if len(table) else 0
    if len(table):
        rows = [
            [escape(_cell(c, v)) for c, v in zip(table.columns, rec, strict=True)]
            for rec in table.itertuples(index=False)
        ]
        classes = ["review" if r else "" for r in table["review"]]
        header = [escape(c) for c in table.columns]
        body = html_table(header, rows, classes)
    else:
        body = "<p><b>No lesion found.</b> The segmentation and the maps are empty.</p>"
    scans = "<br>".join(escape(Path(p).resolve()) for p in images)
    parts = [
        f"<h1>Lesion-wise uncertainty: {escape(case_id)}</h1>",
        warnings_html(warnings),
        '<table class="meta">',
        f"<tr><td>scan</td><td>{scans}</td></tr>",
        f"<tr><td>model</td><td>{escape(Path(model).resolve())}</td></tr>",
        f"<tr><td>lesions</td><td>{len(table)}, of which {n_review} to review "
        f"(P(FP) &ge; {threshold:g}, highlighted)</td></tr>",
        f"<tr><td>review rule</td><td>{escape(threshold_note)}</td></tr>" if threshold_note else "",
        f"<tr><td>P(FP) method</td><td>{escape(method_note)}</td></tr>" if method_note else "",
        location_rows(location) if location is not None else "",
        f"<tr><td>lesionuq</td><td>{escape(__version__)}, {seconds:.1f} s</td></tr>",
        "</table>",
        "<h2>Viewer</h2>",
        viewer if viewer is not None else f'<p class="note">{escape(NO_VIEWER_NOTE)}</p>',
        f"<p>{img_tag(png, 'summary', 'wide')}</p>",
        (
            "<h2>Registration to MNI152 (lesion locations)</h2>"
            f"<p>{img_tag(location_png, 'registration check', 'wide')}</p>"
            if location_png is not None
            else ""
        ),
        "<h2>Lesions (sorted by P(FP), most doubtful first)</h2>",
        body,
        '<p class="note">p_fp: probability that the lesion is a false positive '
        "(the P(FP) method above; gcnn_classif by default); iou_pred: predicted IoU_adj "
        "with the true lesion (gcnn_reg); "
        "entropy/variance/pcs_mean: mean voxel entropy, variance and PCS confidence over the "
        "lesion; volume and centroid (world mm) on the input scan's grid.</p>",
    ]
    return html_page(f"lesionuq: {case_id}", parts)


def location_rows(location: Mapping[str, Any]) -> str:
    """Rows of the report's meta table: counts per region, DIS sentence, registration."""
    counts = location.get("counts", {})
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    reg = location.get("registration", {})
    quality = f"brain Dice {reg.get('brain_dice')}, {reg.get('seconds')} s" + (
        "" if reg.get("ok") else " (NOT trusted)"
    )
    dis = location.get("dis", {})
    return (
        f"<tr><td>locations</td><td>{escape(shown or 'no lesion')}</td></tr>"
        f"<tr><td>dissemination in space</td><td>{escape(dis.get('sentence', ''))}</td></tr>"
        f"<tr><td>registration</td><td>{escape(reg.get('method', ''))}: "
        f"{escape(quality)}</td></tr>"
    )


def warnings_html(warnings: Sequence[str]) -> str:
    """A highlighted box with one paragraph per warning ('' when there is none)."""
    if not warnings:
        return ""
    items = "".join(f"<p><b>Warning:</b> {escape(w)}</p>" for w in warnings)
    return (
        '<div class="warning" style="background:#fff3cd;border:1px solid #e0b000;'
        f'padding:0.4em 0.8em;margin:0.8em 0">{items}</div>'
    )
