"""Standard outputs: BIDS derivatives, ITK-SNAP / FSLeyes label files, the NiiVue viewer."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lesionuq.export import (
    bids_entities,
    label_colours,
    viewer_html,
    write_bids_derivatives,
    write_fsleyes_lut,
    write_itksnap_labels,
)
from lesionuq.export.labels import FLAGGED_RGB, KEPT_RGB
from lesionuq.export.viewer import lesion_centroids_mm, pfp_rgb

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])


def _case():
    labels = np.zeros((8, 8, 8), np.int16)
    labels[1:3, 1:3, 1:3] = 1  # 8 voxels, centre (1.5, 1.5, 1.5)
    labels[5, 5, 4:7] = 2  # 3 voxels, centre (5, 5, 5)
    lesions = pd.DataFrame(
        {
            "lesion_id": [2, 1],
            "volume_ml": [0.024, 0.064],
            "p_fp": [0.8, 0.25],
            "review": [True, False],
        }
    )
    prob = (labels > 0).astype(np.float32) * 0.9
    images = {
        "mask": nib.Nifti1Image((labels > 0).astype(np.uint8), AFFINE),
        "probseg": nib.Nifti1Image(prob, AFFINE),
        "dseg": nib.Nifti1Image(labels, AFFINE),
        "entropy": nib.Nifti1Image(prob * 0.5, AFFINE),
        "variance": nib.Nifti1Image(prob * 0.1, AFFINE),
    }
    return labels, lesions, images


# ----------------------------------------------------------------------- labels


def test_label_colours_by_review_status():
    _, lesions, _ = _case()
    assert label_colours(lesions) == [
        (1, KEPT_RGB, "lesion 1 kept P(FP)=0.25"),
        (2, FLAGGED_RGB, "lesion 2 review P(FP)=0.80"),
    ]
    assert FLAGGED_RGB[0] > 200 > FLAGGED_RGB[1] and KEPT_RGB[1] > 150 > KEPT_RGB[0]


def test_itksnap_file_parses_back(tmp_path):
    _, lesions, _ = _case()
    path = write_itksnap_labels(tmp_path / "label_description.txt", lesions)
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    parsed = [shlex.split(ln) for ln in lines]  # IDX R G B A VIS MSH "LABEL"
    assert all(len(p) == 8 for p in parsed)
    assert parsed[0] == ["0", "0", "0", "0", "0", "0", "0", "Clear Label"]
    assert [(int(p[0]), tuple(map(int, p[1:4])), p[7]) for p in parsed[1:]] == label_colours(
        lesions
    )
    assert all(float(p[4]) == 1.0 and p[5] == p[6] == "1" for p in parsed[1:])


def test_fsleyes_lut_parses_back(tmp_path):
    _, lesions, _ = _case()
    path = write_fsleyes_lut(tmp_path / "lesions.lut", lesions)
    rows = [ln.split(maxsplit=4) for ln in path.read_text().splitlines()]
    values = [int(r[0]) for r in rows]
    assert values == sorted(values) == [1, 2]  # FSLeyes wants ascending label values
    for r, (idx, rgb, name) in zip(rows, label_colours(lesions), strict=True):
        assert int(r[0]) == idx and r[4] == name
        np.testing.assert_allclose([float(v) for v in r[1:4]], np.array(rgb) / 255, atol=5e-6)


# ------------------------------------------------------------------------- BIDS


def test_bids_entities():
    assert bids_entities("sub-01_ses-a_acq-3d_FLAIR.nii.gz") == {
        "sub": "01",
        "ses": "a",
        "acq": "3d",
    }
    assert bids_entities("sub-7_ses-b") == {"sub": "7", "ses": "b"}
    with pytest.raises(ValueError, match="no sub-"):
        bids_entities("patient01_FLAIR.nii.gz")


def test_bids_derivatives_written_and_indexed(tmp_path):
    bids = pytest.importorskip("bids")
    labels, lesions, images = _case()
    deriv = tmp_path / "derivatives" / "lesionuq"
    files = write_bids_derivatives(
        deriv,
        {"sub": "01", "ses": "a", "acq": "3d"},
        images,
        lesions,
        sources=["bids:raw:sub-01/ses-a/anat/sub-01_ses-a_acq-3d_FLAIR.nii.gz"],
        threshold=0.5,
        version="9.9",
    )
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "lesionuq"
    assert desc["GeneratedBy"][0]["Version"] == "9.9"
    anat = deriv / "sub-01" / "ses-a" / "anat"
    stem = "sub-01_ses-a_acq-3d_space-orig"
    assert files["mask"] == anat / f"{stem}_label-lesion_mask.nii.gz"
    assert files["probseg"] == anat / f"{stem}_label-lesion_probseg.nii.gz"
    assert files["dseg"] == anat / f"{stem}_desc-lesions_dseg.nii.gz"
    assert files["entropy"] == anat / f"{stem}_label-lesion_desc-entropy_uncertainty.nii.gz"

    layout = bids.BIDSLayout(str(deriv), validate=False, is_derivative=True)
    common = {"subject": "01", "session": "a", "acquisition": "3d", "space": "orig"}
    ext = ".nii.gz"
    for suffix, extra in (
        ("mask", {"label": "lesion"}),
        ("probseg", {"label": "lesion"}),
        ("dseg", {"desc": "lesions"}),
        ("uncertainty", {"label": "lesion", "desc": "entropy"}),
        ("uncertainty", {"label": "lesion", "desc": "variance"}),
    ):
        found = layout.get(suffix=suffix, extension=ext, **common, **extra)
        assert len(found) == 1, (suffix, extra)
    tsv = layout.get(suffix="dseg", extension=".tsv", **common)
    assert len(tsv) == 1
    # pybids attaches the sidecar's metadata to the image (BIDS inheritance)
    dseg_meta = layout.get(suffix="dseg", extension=ext, **common)[0].get_metadata()
    assert dseg_meta["ReviewThreshold"] == 0.5
    assert dseg_meta["volume_ml"]["Units"] == "mL"
    assert set(dseg_meta) >= {"index", "name", "p_fp", "volume_ml", "review"}
    mask_meta = layout.get(suffix="mask", extension=ext, **common)[0].get_metadata()
    assert mask_meta["Sources"][0].startswith("bids:raw:sub-01/ses-a")

    table = pd.read_csv(files["dseg_tsv"], sep="\t")
    assert list(table.columns) == ["index", "name", "p_fp", "volume_ml", "review", "color"]
    assert table["index"].tolist() == [1, 2]
    assert table["name"].tolist() == ["lesion-1", "lesion-2"]
    assert table["p_fp"].tolist() == [0.25, 0.8]
    assert table["review"].tolist() == [False, True]
    assert table["color"].tolist() == ["#1ebe3c", "#e61e1e"]  # KEPT_RGB, FLAGGED_RGB
    # images keep data and grid
    dseg = nib.load(str(files["dseg"]))
    np.testing.assert_array_equal(np.asarray(dseg.dataobj), labels)
    np.testing.assert_allclose(dseg.affine, AFFINE)
    assert np.asarray(nib.load(str(files["mask"])).dataobj).dtype == np.uint8


def test_bids_derivatives_without_session(tmp_path):
    _, lesions, images = _case()
    files = write_bids_derivatives(tmp_path / "d", {"sub": "02"}, images, lesions)
    assert files["mask"] == tmp_path / "d/sub-02/anat/sub-02_space-orig_label-lesion_mask.nii.gz"
    with pytest.raises(ValueError, match="alphanumeric"):
        write_bids_derivatives(tmp_path / "d", {"sub": "0_2"}, images, lesions)


# ----------------------------------------------------------------------- viewer


def test_centroids_and_colour_scale():
    labels, _, _ = _case()
    mm = lesion_centroids_mm(labels, AFFINE, np.array([1, 2]))
    # x = -2 i + 10, y = 2 j - 5, z = 2 k + 3
    np.testing.assert_allclose(mm, [[7.0, -2.0, 6.0], [0.0, 5.0, 13.0]])
    rgb = pfp_rgb(np.array([0.0, 1.0]))
    assert rgb[0, 1] > rgb[0, 0]  # P(FP) 0 is green
    assert rgb[1, 0] > rgb[1, 1]  # P(FP) 1 is red


def test_viewer_none_without_bundle(tmp_path):
    _, lesions, images = _case()
    flair = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), AFFINE)
    assert viewer_html(flair, images["dseg"], lesions, bundle=tmp_path / "absent.js") is None


def test_viewer_fragment(tmp_path):
    labels, lesions, images = _case()
    rng = np.random.default_rng(0)
    flair = nib.Nifti1Image(rng.random((8, 8, 8)).astype(np.float32) + 1, AFFINE)
    bundle = tmp_path / "niivue.umd.js"
    bundle.write_text("var niivue = {}; // '</script>' must not close the tag")
    html = viewer_html(flair, images["dseg"], lesions, bundle=bundle, element_id="v1")
    assert html is not None
    assert html.count("</script>") == 3  # data, bundle, init
    assert "<\\/script>" in html
    data = json.loads(re.search(r'id="v1-data">(.*?)</script>', html, re.S).group(1))
    lab = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(data["labels"])))
    np.testing.assert_array_equal(np.asarray(lab.dataobj), labels)
    np.testing.assert_allclose(lab.affine, AFFINE)
    fl = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(data["flair"])))
    assert fl.get_data_dtype() == np.uint8 and np.asarray(fl.dataobj).max() == 255
    lut = data["lut"]
    assert lut["I"] == [0, 1, 2] and lut["A"] == [0, 255, 255]
    expected = pfp_rgb(np.array([0.25, 0.8]))
    assert [lut["R"][1], lut["G"][1], lut["B"][1]] == expected[0].tolist()
    assert [lut["R"][2], lut["G"][2], lut["B"][2]] == expected[1].tolist()
    assert data["centroids"] == {"2": [0.0, 5.0, 13.0], "1": [7.0, -2.0, 6.0]}
    rows = re.findall(r'<tr data-lesion="(\d+)"', html)
    assert rows == ["2", "1"]  # table order kept
    no_bundle = viewer_html(flair, images["dseg"], lesions, bundle=bundle, include_bundle=False)
    assert no_bundle.count("</script>") == 2


def test_scan_report_shows_viewer_else_the_note():
    import pandas as pd

    from lesionuq.evaluation.scan_report import scan_report_html
    from lesionuq.export.viewer import NO_VIEWER_NOTE

    table = pd.DataFrame({"lesion_id": [1], "p_fp": [0.7], "review": [True]})
    kw = {"case_id": "c", "images": [Path("f.nii.gz")], "model": Path("m")}
    kw |= {"threshold": 0.5, "seconds": 1.0}
    png = b"\x89PNG\r\n\x1a\n"
    with_viewer = scan_report_html(table, png, viewer='<div id="v">VIEWER</div>', **kw)
    assert '<div id="v">VIEWER</div>' in with_viewer and NO_VIEWER_NOTE not in with_viewer
    without = scan_report_html(table, png, **kw)
    assert "make viewer-bundle" in without and "VIEWER" not in without
    assert without.count("data:image/png;base64,") == 1  # the static figure stays


@pytest.mark.parametrize(
    "name",
    [
        "sub-01_ses-.._FLAIR.nii.gz",  # was read as sub-01 alone: the session dropped
        "sub-01_<img src=x onerror=alert(1)>-a_FLAIR.nii.gz",
        "sub-01_ses-_FLAIR.nii.gz",
        "sub-01_ses-a_ses-b_FLAIR.nii.gz",
        "sub-01_ses-a.b_FLAIR.nii.gz",
    ],
)
def test_bids_entities_must_follow_the_label_rule(name):
    with pytest.raises(ValueError, match="not a BIDS entity"):
        bids_entities(name)
