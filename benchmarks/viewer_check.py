"""Check the NiiVue viewer in a real headless browser (Chromium from the system packages).

Needs the bundle (``make viewer-bundle``) and ``apt-get install -y chromium``. Builds a
test page (a synthetic 64^3 head with three lesions), or with ``--report`` takes a real
``report.html`` written by ``lesionuq predict`` (or the experiment report, with
``--element-id gallery-viewer``), then with headless Chromium:

1. dumps the DOM after a self-test script has waited for the viewer, read the
   crosshair (``data-crosshair-mm``), clicked a table row (lesion 2 of the test page; the
   last lesion row of a report) and read the crosshair again: the position must change
   and land on that lesion's centroid (from the page's own data);
2. takes a screenshot and checks the canvas area is not blank (many distinct grey
   levels, lesion colours present).

Usage: python benchmarks/viewer_check.py [--report pred/report.html] [--out viewer_check]
[--chromium chromium]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionuq.export.viewer import find_niivue_bundle, viewer_html

SELF_TEST = """<pre id='selftest' style='position:fixed;bottom:0;right:0;margin:0;
background:#fff;font-size:10px'>pending</pre><script>
(function () {
  const root = document.getElementById("__ID__");
  const out = document.getElementById("selftest");
  document.body.prepend(root);  // a report's viewer may lie below the window: move it up
  let tries = 0;
  function step() {
    if (root.dataset.ready !== "1") {
      if (++tries > 200) { out.textContent = "FAIL not ready: " + root.dataset.ready; return; }
      return setTimeout(step, 50);
    }
    const before = root.dataset.crosshairMm;
    const rows = root.querySelectorAll("tr[data-lesion]");
    const row = __ROW__;
    row.click();
    const after = root.dataset.crosshairMm;
    const box = document.getElementById("__ID__-canvas").getBoundingClientRect();
    out.textContent = "lesion=" + row.dataset.lesion + ";before=" + before + ";after=" + after +
      ";box=" + [box.left, box.top, box.width, box.height].map(Math.round).join(",");
  }
  step();
})();
</script>"""


def make_case(shape: int = 64) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    rng = np.random.default_rng(0)
    grid = np.indices((shape,) * 3).astype(np.float32)
    c = (shape - 1) / 2
    r2 = sum(((g - c) / (0.42 * shape)) ** 2 for g in grid)
    flair = np.where(r2 < 1, 300 + 40 * rng.standard_normal((shape,) * 3), 0).astype(np.float32)
    labels = np.zeros((shape,) * 3, np.int16)
    for k, (x, y, z, rad) in enumerate([(20, 30, 32, 4), (42, 36, 24, 5), (32, 22, 42, 3)], 1):
        ball = (grid[0] - x) ** 2 + (grid[1] - y) ** 2 + (grid[2] - z) ** 2 <= rad**2
        labels[ball] = k
        flair[ball] = 700
    affine = np.array([[-1.0, 0, 0, 32], [0, 1.0, 0, -40], [0, 0, 1.0, -20], [0, 0, 0, 1]])
    lesions = {
        "lesion_id": [2, 1, 3],
        "p_fp": [0.9, 0.1, 0.5],
        "volume_ml": [0.515, 0.257, 0.113],
        "review": [True, False, True],
    }
    return nib.Nifti1Image(flair, affine), nib.Nifti1Image(labels, affine), lesions


def _self_test(element_id: str, row: str) -> str:
    return SELF_TEST.replace("__ID__", element_id).replace("__ROW__", row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("viewer_check"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--report", type=Path, help="A report.html to check instead.")
    parser.add_argument("--element-id", default="lesionuq-viewer", help="Viewer id.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    page = args.out / "viewer.html"
    if args.report is not None:
        text = args.report.read_text(encoding="utf-8")
        if f'id="{args.element_id}-canvas"' not in text:
            print(f"FAIL {args.report}: no viewer {args.element_id!r} (bundle missing?)")
            return 1
        test = _self_test(args.element_id, "rows[rows.length - 1]")
        head, tail = text.rsplit("</body>", 1)  # the last one: the bundle holds others
        page.write_text(head + test + "</body>" + tail, encoding="utf-8")
        size = (1280, 1600)
    else:
        if find_niivue_bundle() is None:
            print("no NiiVue bundle: run `make viewer-bundle` first")
            return 2
        flair, labels, lesions = make_case()
        fragment = viewer_html(flair, labels, lesions)
        page.write_text(
            "<!doctype html><html><head><meta charset='utf-8'><title>viewer check</title>"
            "</head><body style='margin:8px;font-family:sans-serif'>"
            f"{fragment}{_self_test(args.element_id, 'rows[0]')}</body></html>",
            encoding="utf-8",
        )
        size = (1200, 560)
    print(f"page: {page} ({page.stat().st_size / 1e6:.1f} MB)")
    flags = [
        args.chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        f"--window-size={size[0]},{size[1]}",
        "--virtual-time-budget=15000",
        "--run-all-compositor-stages-before-draw",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180
    ).stdout
    m = re.search(r"lesion=(\d+);before=([-\d.,]*);after=([-\d.,]*);box=([-\d,]*)", dom)
    shot = args.out / "screenshot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    ok = True
    if m is None:
        found = re.search(r'id="selftest">([^<]*)<', dom)
        print(f"FAIL self-test did not finish: {found.group(1) if found else dom[-300:]!r}")
        ok = False
    else:
        lesion = m.group(1)
        before = np.array([float(v) for v in m.group(2).split(",")])
        after = np.array([float(v) for v in m.group(3).split(",")])
        box = [int(v) for v in m.group(4).split(",")]
        data = re.search(rf'id="{args.element_id}-data">(.*?)</script>', dom, re.S)
        target = np.array(json.loads(html.unescape(data.group(1)))["centroids"][lesion])
        moved = float(np.linalg.norm(after - before))
        err = float(np.linalg.norm(after - target))
        print(f"crosshair before {before} after click on lesion {lesion} {after}")
        print(
            f"lesion {lesion} centroid {np.round(target, 2)}; moved {moved:.2f} mm; "
            f"error {err:.2f} mm"
        )
        ok &= moved > 1.0 and err < 1.5
    if not shot.is_file():
        print("FAIL no screenshot")
        return 1
    import matplotlib.image as mpimg

    img = (mpimg.imread(shot)[..., :3] * 255).astype(np.uint8)
    if m is not None:  # the canvas as laid out (CSS px = screenshot px at scale 1)
        x, y, w, h = box
        canvas = img[max(y, 0) : y + h, max(x, 0) : x + w]
    else:
        canvas = img[8 : 8 + 440, 8 : 8 + int(0.6 * img.shape[1])]
    grey = canvas[(canvas.max(axis=2) - canvas.min(axis=2)) < 8]
    levels = len(np.unique(grey[:, 0])) if grey.size else 0
    rgb = canvas.astype(int)
    red = int(np.sum((rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)))
    green = int(np.sum((rgb[..., 1] > 120) & (rgb[..., 0] < 120) & (rgb[..., 2] < 120)))
    # any lesion colour (green..yellow..red): saturated, not the blue crosshair
    lesion = int(np.sum((rgb.max(axis=2) - rgb.min(axis=2) > 60) & (rgb.argmax(axis=2) < 2)))
    print(
        f"screenshot {shot}: canvas grey levels {levels}, lesion-coloured px {lesion} "
        f"(red {red}, green {green})"
    )
    ok &= levels > 20 and lesion > 10  # lesions coloured on the three planes
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
