"""Check the NiiVue viewer in a real headless browser (Chromium from the system packages).

Needs the bundle (``make viewer-bundle``) and ``apt-get install -y chromium``. Builds a
test page (a synthetic 64^3 head with three lesions), then with headless Chromium:

1. dumps the DOM after a self-test script has waited for the viewer, read the
   crosshair (``data-crosshair-mm``), clicked the table row of lesion 2 and read the
   crosshair again: the position must change and land on lesion 2's centroid;
2. takes a screenshot and checks the canvas area is not blank (many distinct grey
   levels, lesion colours present).

Usage: python benchmarks/viewer_check.py [--out viewer_check] [--chromium chromium]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionuq.export.viewer import find_niivue_bundle, lesion_centroids_mm, viewer_html

SELF_TEST = """<script>
(function () {
  const root = document.getElementById("lesionuq-viewer");
  const out = document.getElementById("selftest");
  let tries = 0;
  function step() {
    if (root.dataset.ready !== "1") {
      if (++tries > 200) { out.textContent = "FAIL not ready: " + root.dataset.ready; return; }
      return setTimeout(step, 50);
    }
    const before = root.dataset.crosshairMm;
    root.querySelector('tr[data-lesion="2"]').click();
    const after = root.dataset.crosshairMm;
    out.textContent = "before=" + before + ";after=" + after;
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("viewer_check"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if find_niivue_bundle() is None:
        print("no NiiVue bundle: run `make viewer-bundle` first")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    flair, labels, lesions = make_case()
    fragment = viewer_html(flair, labels, lesions)
    page = args.out / "viewer.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>viewer check</title></head>"
        "<body style='margin:8px;font-family:sans-serif'>"
        f"{fragment}<pre id='selftest'>pending</pre>{SELF_TEST}</body></html>",
        encoding="utf-8",
    )
    print(f"page: {page} ({page.stat().st_size / 1e6:.1f} MB)")
    flags = [
        args.chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--window-size=1200,560",
        "--virtual-time-budget=15000",
        "--run-all-compositor-stages-before-draw",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180
    ).stdout
    m = re.search(r"before=([-\d.,]*);after=([-\d.,]*)", dom)
    shot = args.out / "screenshot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    ok = True
    if m is None:
        found = re.search(r'id="selftest">([^<]*)<', dom)
        print(f"FAIL self-test did not finish: {found.group(1) if found else dom[-300:]!r}")
        ok = False
    else:
        before = np.array([float(v) for v in m.group(1).split(",")])
        after = np.array([float(v) for v in m.group(2).split(",")])
        target = lesion_centroids_mm(np.asarray(labels.dataobj), labels.affine, np.array([2]))[0]
        moved = float(np.linalg.norm(after - before))
        err = float(np.linalg.norm(after - target))
        print(f"crosshair before {before} after click on lesion 2 {after}")
        print(f"lesion 2 centroid {np.round(target, 2)}; moved {moved:.2f} mm; error {err:.2f} mm")
        ok &= moved > 1.0 and err < 1.5
    if not shot.is_file():
        print("FAIL no screenshot")
        return 1
    import matplotlib.image as mpimg

    img = (mpimg.imread(shot)[..., :3] * 255).astype(np.uint8)
    canvas = img[8 : 8 + 440, 8 : 8 + int(0.6 * img.shape[1])]
    grey = canvas[(canvas.max(axis=2) - canvas.min(axis=2)) < 8]
    levels = len(np.unique(grey[:, 0])) if grey.size else 0
    red = int(np.sum((canvas[..., 0] > 150) & (canvas[..., 1] < 90) & (canvas[..., 2] < 90)))
    green = int(np.sum((canvas[..., 1] > 120) & (canvas[..., 0] < 120) & (canvas[..., 2] < 120)))
    print(f"screenshot {shot}: canvas grey levels {levels}, red px {red}, green px {green}")
    ok &= levels > 20 and red > 10  # lesion 2 (P(FP) 0.9) is red on its three planes
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
