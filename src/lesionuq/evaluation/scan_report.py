"""The one-scan report of ``lesionuq predict``: ``report.html`` around ``summary.png``.

:func:`scan_report_html` is the self-contained page of one scan: the viewer, the summary
figure and the lesion table. The figures it shows (:func:`summary_png`,
:func:`registration_png`) moved to :mod:`lesionuq.evaluation.render`, with the other
image panels; their names here are deprecated aliases, to go after one release.

Example:
    >>> png = summary_png(flair, labels, p_fp, table, "case_0")
    >>> page = scan_report_html(table, png, case_id="case_0", images=[path],
    ...                         model=folder, threshold=0.5, seconds=3.2)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesionuq import __version__
from lesionuq.evaluation.render import (
    escape,
    html_page,
    html_table,
    img_tag,
    registration_png,  # deprecated alias, moved to lesionuq.evaluation.render
    summary_png,  # deprecated alias, moved to lesionuq.evaluation.render
)
from lesionuq.export.viewer import NO_VIEWER_NOTE

__all__ = [
    "location_rows",
    "registration_png",
    "scan_report_html",
    "summary_png",
    "warnings_html",
]


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


_CODE = re.compile(r"`([^`]+)`")
"""A span in backticks: a command shown as code."""


def warnings_html(warnings: Sequence[str]) -> str:
    """A highlighted box with one paragraph per warning ('' when there is none).

    A span in backticks (a command, e.g. lesionuq refit) is shown as code.
    """
    if not warnings:
        return ""
    items = "".join(
        "<p><b>Warning:</b> " + _CODE.sub(r"<code>\1</code>", escape(w)) + "</p>" for w in warnings
    )
    return (
        '<div class="warning" style="background:#fff3cd;border:1px solid #e0b000;'
        f'padding:0.4em 0.8em;margin:0.8em 0">{items}</div>'
    )
