"""An interactive NiiVue viewer as a self-contained HTML fragment.

NiiVue (``@niivue/niivue``, BSD-2-Clause) is the field's WebGL2 viewer; its UMD bundle
runs offline and reads NIfTI from base64. The fragment holds the bundle, the FLAIR
(rescaled to 8 bits) and the lesion label map as base64 ``.nii.gz``, shows the three
planes with each lesion coloured by P(FP) on the ``RdYlGn_r`` scale of
``summary.png`` (green = likely true, red = likely false positive), and a lesion table
where clicking a row moves the crosshair to that lesion's centroid.

The bundle is not in git: ``make viewer-bundle`` (called by ``make setup`` when ``npm``
exists) runs ``npm pack @niivue/niivue@NIIVUE_VERSION`` and copies
``package/dist/niivue.umd.js`` to ``src/lesionuq/export/_vendor/``. Without it
:func:`viewer_html` returns None and callers keep their static pictures
(:data:`NO_VIEWER_NOTE` says how to get the viewer).

For tests and automation the page exposes, per viewer, ``window.lesionuqViewers[id]``
with ``goto(lesion_id)`` and the current crosshair in millimetres as the
``data-crosshair-mm`` attribute of the viewer's root element.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from scipy import ndimage

__all__ = [
    "NIIVUE_VERSION",
    "NO_VIEWER_NOTE",
    "find_niivue_bundle",
    "lesion_centroids_mm",
    "pfp_rgb",
    "viewer_html",
]

#: The pinned NiiVue release the Makefile fetches.
NIIVUE_VERSION = "0.69.0"
_VENDOR = Path(__file__).parent / "_vendor" / "niivue.umd.js"
#: Shown in a report instead of the viewer when the bundle is missing.
NO_VIEWER_NOTE = (
    "Interactive viewer not included: the NiiVue bundle is missing. Run `make viewer-bundle` "
    f"(needs npm; fetches @niivue/niivue@{NIIVUE_VERSION}) and predict again."
)


def find_niivue_bundle(path: str | Path | None = None) -> Path | None:
    """The NiiVue UMD bundle, or None when it has not been fetched.

    Args:
        path: An explicit bundle file; default the package's ``_vendor/niivue.umd.js``.

    Returns:
        The bundle path if the file exists.
    """
    candidate = Path(path) if path is not None else _VENDOR
    return candidate if candidate.is_file() else None


def pfp_rgb(p_fp: np.ndarray) -> np.ndarray:
    """Colour of P(FP) on the ``RdYlGn_r`` scale of ``summary.png``.

    Args:
        p_fp: (N,) probabilities in [0, 1].

    Returns:
        (N, 3) uint8 RGB; 0 -> green, 1 -> red.
    """
    rgba = colormaps["RdYlGn_r"](np.clip(np.asarray(p_fp, dtype=float), 0.0, 1.0))
    return np.rint(np.asarray(rgba)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)


def lesion_centroids_mm(labels: np.ndarray, affine: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """World (scanner mm) centroid of each lesion of a label map.

    Args:
        labels: (X, Y, Z) integer lesion ids, 0 background.
        affine: 4x4 voxel-to-world matrix.
        ids: (N,) lesion ids.

    Returns:
        (N, 3) centroids in mm; NaN for an id absent from the map.
    """
    ids = np.asarray(ids, dtype=int)
    if ids.size == 0:
        return np.zeros((0, 3))
    com = np.asarray(ndimage.center_of_mass(labels > 0, labels, ids), dtype=float).reshape(-1, 3)
    homog = np.c_[com, np.ones(len(com))]
    return (np.asarray(affine, dtype=float) @ homog.T).T[:, :3]


def _nifti_b64(data: np.ndarray, affine: np.ndarray) -> str:
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def _flair_uint8(flair: np.ndarray) -> np.ndarray:
    """FLAIR rescaled to 0..255, black at 0 and white at the 99.5 percentile.

    Black is the 0.5 percentile of non-zero voxels instead when that is below 0
    (z-scored images); a percentile as black would make a FLAIR's fairly uniform white
    matter almost black.
    """
    inside = flair[np.nonzero(flair)]
    lo, hi = np.percentile(inside, [0.5, 99.5]) if inside.size else (0.0, 1.0)
    lo = min(float(lo), 0.0)
    scaled = (flair - lo) / max(float(hi - lo), 1e-6)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _table(lesions: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(lesions)
    if "lesion_id" not in table and "index" in table:
        table = table.rename(columns={"index": "lesion_id"})
    missing = [c for c in ("lesion_id", "p_fp") if c not in table]
    if missing:
        raise ValueError(f"lesion table lacks column(s) {', '.join(missing)}.")
    return table.reset_index(drop=True)


def viewer_html(
    flair: nib.Nifti1Image,
    labels: nib.Nifti1Image,
    lesions: pd.DataFrame | Mapping[str, Any],
    *,
    element_id: str = "lesionuq-viewer",
    bundle: str | Path | None = None,
    include_bundle: bool = True,
    height_px: int = 440,
) -> str | None:
    """Build the viewer fragment for one scan.

    Args:
        flair: The FLAIR in the scan's space, (X, Y, Z).
        labels: Lesion label map on the same grid, (X, Y, Z), ids 1..N.
        lesions: One row per lesion: ``lesion_id`` (or ``index``), ``p_fp`` and
            optionally ``volume_ml``, ``review`` (e.g. ``lesions.csv``); table order
            is kept.
        element_id: Unique id of the viewer on its page (letters, digits, ``-``, ``_``).
        bundle: The NiiVue UMD bundle; default :func:`find_niivue_bundle`.
        include_bundle: Inline the bundle; a page with several viewers inlines it once
            (first viewer) and passes False for the others.
        height_px: Canvas height.

    Returns:
        HTML (a ``<div>`` and ``<script>`` elements, no ``<html>``), or None when the
        bundle is missing.
    """
    bundle_path = find_niivue_bundle(bundle)
    if bundle_path is None:
        return None
    if not element_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"element_id {element_id!r}: letters, digits, - and _ only.")
    table = _table(lesions)
    flair_data = np.asarray(flair.dataobj, dtype=np.float32).reshape(flair.shape[:3])
    label_data = np.rint(np.asarray(labels.dataobj)).astype(np.int32).reshape(labels.shape[:3])
    ids = table["lesion_id"].to_numpy(dtype=int)
    n_max = int(max(label_data.max(initial=0), ids.max(initial=0)))
    label_dtype = np.uint8 if n_max < 256 else np.uint16
    colours = pfp_rgb(table["p_fp"].to_numpy(dtype=float))
    lut_rgb = np.zeros((n_max + 1, 3), dtype=int)
    lut_rgb[ids] = colours
    alpha = np.zeros(n_max + 1, dtype=int)
    alpha[ids] = 255
    names = ["background"] + [f"lesion {i}" for i in range(1, n_max + 1)]
    centroids = lesion_centroids_mm(label_data, labels.affine, ids)
    rows = []
    for k, row in table.iterrows():
        lid = int(row["lesion_id"])
        r, g, b = (int(c) for c in colours[k])
        vol = f"{float(row['volume_ml']):.3f}" if "volume_ml" in table else ""
        review = ("review" if bool(row["review"]) else "kept") if "review" in table else ""
        rows.append(
            f'<tr data-lesion="{lid}" style="cursor:pointer">'
            f'<td><span style="display:inline-block;width:0.9em;height:0.9em;'
            f'background:rgb({r},{g},{b})"></span> {lid}</td>'
            f"<td>{float(row['p_fp']):.2f}</td><td>{vol}</td><td>{review}</td></tr>"
        )
    payload = {
        "flair": _nifti_b64(_flair_uint8(flair_data), flair.affine),
        "labels": _nifti_b64(label_data.astype(label_dtype), labels.affine),
        "lut": {
            "R": lut_rgb[:, 0].tolist(),
            "G": lut_rgb[:, 1].tolist(),
            "B": lut_rgb[:, 2].tolist(),
            "A": alpha.tolist(),
            "I": list(range(n_max + 1)),
            "labels": names,
        },
        "centroids": {
            str(int(i)): [round(float(v), 3) for v in c]
            for i, c in zip(ids, centroids, strict=True)
            if np.all(np.isfinite(c))
        },
    }
    eid = html.escape(element_id)
    parts = [
        f'<div class="lesionuq-viewer" id="{eid}" data-crosshair-mm="" data-ready="0" '
        'style="display:flex;gap:1em;align-items:flex-start">'
        f'<div style="flex:2;min-width:0;height:{int(height_px)}px">'
        f'<canvas id="{eid}-canvas" style="width:100%;height:100%"></canvas></div>'
        '<div style="flex:1;max-height:{h}px;overflow:auto">'.replace("{h}", str(int(height_px)))
        + '<table class="lesions"><thead><tr><th>lesion</th><th>P(FP)</th><th>volume (mL)</th>'
        f"<th>status</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p style="font-size:small">Click a row to move the crosshair to the lesion\'s '
        "centroid. Colour: P(FP), green 0 to red 1.</p></div></div>",
        f'<script type="application/json" id="{eid}-data">{json.dumps(payload)}</script>',
    ]
    if include_bundle:
        text = bundle_path.read_text(encoding="utf-8").replace("</script", "<\\/script")
        parts.append(f"<script>{text}</script>")
    parts.append(_INIT_JS.replace("__ID__", eid))
    return "\n".join(parts)


_INIT_JS = """<script>
(function () {
  const id = "__ID__";
  const root = document.getElementById(id);
  const data = JSON.parse(document.getElementById(id + "-data").textContent);
  const nv = new niivue.Niivue({
    backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false,
    crosshairColor: [0.2, 0.6, 1, 1], dragAndDropEnabled: false,
    multiplanarLayout: 2, multiplanarShowRender: 0,  // 2x2 grid, no 3-D render tile
    isSliceMM: true,  // world-space planes: an oblique scan shows true axial/coronal/sagittal
  });
  window.lesionuqViewers = window.lesionuqViewers || {};
  function record() {
    const mm = nv.frac2mm(nv.scene.crosshairPos);
    root.dataset.crosshairMm = [mm[0], mm[1], mm[2]].map((v) => v.toFixed(2)).join(",");
  }
  nv.onLocationChange = record;
  async function start() {
    await nv.attachToCanvas(document.getElementById(id + "-canvas"));
    const load = (b64, name) => niivue.NVImage.loadFromBase64({ base64: b64, name: name });
    const flair = await load(data.flair, id + "-flair.nii.gz");
    const labels = await load(data.labels, id + "-lesions.nii.gz");
    flair.cal_min = 0; flair.cal_max = 255;
    nv.addVolume(flair);
    nv.addVolume(labels);
    labels.setColormapLabel(data.lut);
    labels.opacity = 0.8;
    nv.setSliceType(nv.sliceTypeMultiplanar);
    nv.updateGLVolume();
    record();
    root.dataset.ready = "1";
  }
  function goto(lesionId) {
    const mm = data.centroids[String(lesionId)];
    if (!mm) return false;
    nv.scene.crosshairPos = nv.mm2frac(mm);
    nv.updateGLVolume();
    nv.drawScene();
    record();
    return true;
  }
  root.querySelectorAll("tr[data-lesion]").forEach((tr) => {
    tr.addEventListener("click", () => goto(tr.dataset.lesion));
  });
  window.lesionuqViewers[id] = { nv: nv, goto: goto };
  start().catch((err) => { root.dataset.ready = "error: " + err; });
})();
</script>"""
