"""The pieces both HTML reports share: PNG bytes, image tags, tables, the page."""

from __future__ import annotations

import base64
import re

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lesionuq.evaluation.render import (
    STYLESHEET,
    html_page,
    html_table,
    img_tag,
    png_bytes,
    summary_png,
)
from lesionuq.evaluation.scan_report import scan_report_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_png_bytes_size_follows_dpi_and_leaves_backend():
    before = matplotlib.get_backend()
    fig = Figure(figsize=(2.0, 1.0))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    png = png_bytes(fig, dpi=50)
    assert png.startswith(PNG_MAGIC)
    # IHDR holds width and height: 2 x 1 inch at 50 dpi
    assert int.from_bytes(png[16:20], "big") == 100
    assert int.from_bytes(png[20:24], "big") == 50
    assert matplotlib.get_backend() == before


def test_img_tag_round_trips_and_escapes():
    tag = img_tag(b"\x89PNGdata", 'a "b" <c>', "fig")
    assert tag.startswith('<img class="fig" alt="a &quot;b&quot; &lt;c&gt;" src="data:')
    b64 = re.search(r"base64,([A-Za-z0-9+/=]+)\"", tag).group(1)
    assert base64.b64decode(b64) == b"\x89PNGdata"
    assert "class" not in img_tag(b"x", "y")


def test_html_table_row_classes():
    text = html_table(["a", "b"], [["1", "2"], ["3", "4"], ["5", "6"]], ["", "review"])
    assert text.splitlines() == [
        "<table>",
        "<tr><th>a</th><th>b</th></tr>",
        "<tr><td>1</td><td>2</td></tr>",
        '<tr class="review"><td>3</td><td>4</td></tr>',
        "<tr><td>5</td><td>6</td></tr>",
        "</table>",
    ]


def test_html_page_has_the_one_stylesheet():
    page = html_page("x <y>", ["<p>1</p>", "<p>2</p>"])
    assert "<title>x &lt;y&gt;</title>" in page
    assert f"<style>{STYLESHEET}</style>" in page
    assert "<p>1</p>\n<p>2</p>" in page and page.endswith("</html>\n")


def test_scan_report_highlights_rows_to_review(tmp_path):
    labels = np.zeros((12, 12, 10), np.int32)
    labels[2:4, 2:4, 3:5] = 1
    labels[7:10, 6:9, 6:8] = 2
    flair = np.where(labels > 0, 3.0, 1.0).astype(np.float32)
    p_fp = np.array([0.2, 0.7])
    table = pd.DataFrame(
        {"lesion_id": [2, 1], "centroid_x_mm": [1.26, -3.0], "p_fp": [0.7, 0.2]}
    ).assign(review=lambda t: t.p_fp >= 0.5)
    png = summary_png(flair, labels, p_fp, table, "c1")
    assert png.startswith(PNG_MAGIC)
    page = scan_report_html(
        table, png, case_id="c1", images=[tmp_path / "f.nii.gz"], model=tmp_path,
        threshold=0.5, seconds=1.0,
    )  # fmt: skip
    assert page.count('<tr class="review">') == 1
    assert '<tr class="review"><td>2</td><td>1.3</td><td>0.7</td><td>yes</td></tr>' in page
    assert "<tr><td>1</td><td>-3.0</td><td>0.2</td><td></td></tr>" in page
    assert "2, of which 1 to review" in page and str(tmp_path.resolve()) in page
    assert f"<style>{STYLESHEET}</style>" in page
