"""The building blocks both HTML reports share: PNG bytes, image tags, tables, one stylesheet.

The run report (:func:`lesionuq.evaluation.report.write_report`) and the one-scan report
of ``lesionuq predict`` (:mod:`lesionuq.evaluation.scan_report`) are self-contained pages
built from these pieces. Figures are drawn on a :class:`matplotlib.figure.Figure` and
rendered by the Agg canvas directly: no pyplot and no global backend state, so a notebook
user's backend is left as it was.

Example:
    >>> from matplotlib.figure import Figure

from lesionuq.utils import PLAIN, plain_text
    >>> fig = Figure(figsize=(2, 2))
    >>> _ = fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    >>> page = html_page("demo", img_tag(png_bytes(fig, dpi=50), "a line", "fig"))
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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
