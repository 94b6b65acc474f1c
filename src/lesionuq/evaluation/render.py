"""What both HTML reports draw and embed: image panels, PNG bytes, tables, one stylesheet.

The run report (:func:`lesionuq.evaluation.report.write_report`) and the one-scan report
of ``lesionuq predict`` (:mod:`lesionuq.evaluation.scan_report`) are self-contained pages
built from these pieces. The image panels drawn from a scan and its lesion labels live
here: :func:`render_lesion_crop` (a lesion of the run report's gallery),
:func:`summary_png` (the most doubtful lesions of one scan) and :func:`registration_png`
(the atlas registration check); the charts of a run are in
:mod:`lesionuq.evaluation.figures`. Figures are drawn on a
:class:`matplotlib.figure.Figure` and rendered by the Agg canvas directly: no pyplot and
no global backend state, so a notebook user's backend is left as it was.

Example:
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(2, 2))
    >>> _ = fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    >>> page = html_page("demo", img_tag(png_bytes(fig, dpi=50), "a line", "fig"))
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from scipy import ndimage

from lesionuq.utils import PLAIN, plain_text

__all__ = [
    "PLAIN",
    "STYLESHEET",
    "escape",
    "html_page",
    "html_table",
    "img_tag",
    "plain_text",
    "png_bytes",
    "registration_png",
    "render_lesion_crop",
    "summary_png",
]

#: The inline CSS of every lesionuq report (no external reference).
STYLESHEET = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1040px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 0.3em; font-size: 0.92em; }
th, td { padding: 0.25em 0.7em; text-align: right; font-variant-numeric: tabular-nums; }
th { border-bottom: 2px solid #444; } td { border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
tr.total td { border-top: 2px solid #444; font-style: italic; }
tr.review td { background: #fde0dc; font-weight: bold; }
table.meta td { text-align: left; border: none; padding-left: 0; }
.note { color: #555; font-size: 0.88em; }
.fig { max-width: 640px; width: 100%; }
.wide { max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { border: 1px solid #ccc; padding: 4px; width: 244px; font-size: 0.82em;
        break-inside: avoid; page-break-inside: avoid; }
.tile img { width: 240px; height: 240px; display: block; }
.tp { color: #1a7f37; font-weight: bold; } .fpl { color: #c62828; font-weight: bold; }
.missing { color: #c62828; }
pre { background: #f6f6f6; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
@media print { body { margin: 0; max-width: none; } h2 { page-break-after: avoid; }
               pre { white-space: pre-wrap; } }
"""


def escape(value: object) -> str:
    """:func:`plain_text` of ``value`` with ``& < > " '`` escaped for HTML."""
    return html.escape(plain_text(value))


def png_bytes(fig: Figure, dpi: int, *, tight: bool = False) -> bytes:
    """Render a figure with the Agg canvas (no pyplot, no backend switch) to PNG bytes.

    Args:
        fig: A figure made with ``matplotlib.figure.Figure``.
        dpi: Resolution.
        tight: Crop to the drawn content (``bbox_inches="tight"``), e.g. to keep a
            suptitle placed above the axes.

    Returns:
        The PNG file content.
    """
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def img_tag(data: bytes, alt: str, cls: str = "") -> str:
    """An ``<img>`` holding PNG bytes as a base64 ``data:`` URI.

    Args:
        data: PNG file content.
        alt: Alternative text (escaped here).
        cls: CSS class of the tag (none when empty).

    Returns:
        The tag.
    """
    b64 = base64.b64encode(data).decode("ascii")
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{escape(alt)}" src="data:image/png;base64,{b64}">'


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()
) -> str:
    """A ``<table>`` of ready-made HTML cells (escape text before passing it).

    Args:
        header: (C,) header cells.
        rows: (R, C) body cells.
        classes: CSS class of each row (``""``: none); may be shorter than ``rows``.

    Returns:
        One line per row.
    """
    out = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_page(title: str, body: str | Sequence[str]) -> str:
    """A self-contained page: :data:`STYLESHEET` inline, ``body`` as given.

    Args:
        title: Page title (escaped here).
        body: HTML of the body, or its parts (joined with newlines).

    Returns:
        The page text.
    """
    if not isinstance(body, str):
        body = "\n".join(body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLESHEET}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- image panels


def render_lesion_crop(
    image: np.ndarray,
    labels: np.ndarray,
    lesion_id: int,
    gt: np.ndarray | None = None,
    *,
    margin: int = 8,
    min_size: int = 24,
    dpi: int = 100,
) -> bytes:
    """PNG of an axial crop of the image around one lesion, with its contour.

    The axial slice is the one holding most of the lesion's voxels; the crop is the
    lesion's in-plane bounding box widened by ``margin`` voxels and to at least
    ``min_size`` voxels. The lesion contour is yellow; the ground truth (if given) cyan,
    dashed. Arrays are RAS, so the slice is shown with x to the right, y (anterior) up.

    Args:
        image: (X, Y, Z) float, e.g. the preprocessed FLAIR.
        labels: (X, Y, Z) int, lesion labels (0 = background).
        lesion_id: Label of the lesion to show.
        gt: (X, Y, Z) bool ground truth, or None.
        margin: Voxels around the lesion's bounding box.
        min_size: Minimal crop side in voxels.
        dpi: Resolution of the 2.4-inch image.

    Returns:
        The PNG file content.
    """
    mask = np.asarray(labels) == lesion_id
    if not mask.any():
        raise ValueError(f"lesion {lesion_id} is not in the label map.")
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    xs, ys = np.nonzero(mask[:, :, z])
    lo = np.array([xs.min(), ys.min()]) - margin
    hi = np.array([xs.max(), ys.max()]) + margin + 1
    grow = np.maximum(min_size - (hi - lo), 0)
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    shape = np.array(mask.shape[:2])
    shift = np.maximum(-lo, 0) - np.maximum(hi - shape, 0)
    lo, hi = np.maximum(lo + shift, 0), np.minimum(hi + shift, shape)
    window = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), z)

    crop = np.asarray(image, dtype=np.float32)[window]
    finite = crop[np.isfinite(crop)]
    vmin, vmax = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(2.4, 2.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(crop.T, cmap="gray", origin="lower", vmin=vmin, vmax=max(vmax, vmin + 1e-6))

    def contour(m: np.ndarray, **kw) -> None:
        if not m.any():
            return
        up = 6  # upsample so that the contour follows voxel edges
        big = np.kron(m.astype(np.float32), np.ones((up, up), np.float32))
        cx = (np.arange(big.shape[0]) + 0.5) / up - 0.5
        cy = (np.arange(big.shape[1]) + 0.5) / up - 0.5
        ax.contour(cx, cy, big.T, levels=[0.5], **kw)

    if gt is not None:
        contour(
            np.asarray(gt, dtype=bool)[window], colors="#00e5ff", linewidths=1.0, linestyles="--"
        )
    contour(mask[window], colors="#ffd60a", linewidths=1.6)
    ax.set_xlim(-0.5, crop.shape[0] - 0.5)
    ax.set_ylim(-0.5, crop.shape[1] - 0.5)
    ax.set_axis_off()
    return png_bytes(fig, dpi)


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
