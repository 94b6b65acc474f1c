"""``predict --cases --location``: lesion locations and DIS over a batch (issue 30).

The model folder and the analytic test scans are those of ``test_predict.py``. The
registration is replaced by the identity (as in ``test_predict.py``'s trusted-registration
test): the toy brain is too small to register to MNI152, and the identity gives real
classes and DIS verdicts in a fraction of a second. The batch is predicted four times in
one test (without location, with it, again with it, without it) to check what is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import lesionuq.location as location_pkg
import lesionuq.predict as predict_pkg
from lesionuq.cli import app
from lesionuq.config import config_digest
from lesionuq.io import Case, InputError
from lesionuq.location import Registration
from lesionuq.outputs import read_marker
from lesionuq.predict import LOCATION_COLUMNS, TABLE_COLUMNS, load_model, predict_manifest
from lesionuq.predict.batch import (
    DIS_COLUMNS,
    BatchResult,
    _batch_digest,
    _batch_table,
    _previous,
)
from test_predict import brain_scan, lps_affine, make_model_dir, oblique_affine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("run") / "fold_0")


@pytest.fixture()
def two_cases(tmp_path):
    """``cases.csv`` of an oblique scan with 3 lesions and an LPS scan with none."""
    root = tmp_path / "scans"
    root.mkdir()
    obl = root / "flair_obl.nii.gz"
    nib.save(brain_scan(oblique_affine(), (76, 76, 24)), str(obl))
    affine, shape = lps_affine()
    img = brain_scan(affine, shape)
    data = np.asarray(img.dataobj)
    blank = root / "flair_blank.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > 200, 100.0, data).astype(np.float32), affine), blank)
    csv = root / "cases.csv"
    csv.write_text(f"case_id,flair\nobl,{obl}\nblank,{blank}\n")
    return csv


def identity(image, affine, brain=None, **_):
    """A trusted identity registration (MNI mm = the scan's world mm)."""
    shape = tuple(int(s) for s in image.shape)
    return Registration(sitk.AffineTransform(3), shape, affine, 1.0, np.ones(3))


def test_batch_digest_gains_location_only_when_asked(tmp_path):
    img = tmp_path / "a.nii.gz"
    img.write_bytes(b"x" * 10)
    case = Case("a", (img,))
    st = img.stat()
    old = {  # the digest of a batch made before --location went with --cases
        "model": "m",
        "images": [[str(img.resolve()), st.st_size, st.st_mtime_ns]],
        "threshold": 0.5,
        "save_maps": False,
    }
    assert _batch_digest("m", case, 0.5, False) == config_digest(old)
    assert _batch_digest("m", case, 0.5, False, location=False) == config_digest(old)
    with_location = _batch_digest("m", case, 0.5, False, location=True)
    assert with_location == config_digest({**old, "location": True}) != config_digest(old)


def test_batch_table_without_lesions_keeps_the_location_columns():
    plain = _batch_table([], location=False)
    assert list(plain.columns) == ["case_id", *TABLE_COLUMNS]
    located = _batch_table([], location=True)
    assert list(located.columns) == ["case_id", *TABLE_COLUMNS, *LOCATION_COLUMNS]
    assert len(located) == 0


def _per_case(out, case_id):
    table = pd.read_csv(out / case_id / "lesions.csv")
    table.insert(0, "case_id", case_id)
    return table


def test_batch_location_columns_dis_csv_and_reuse(model_dir, two_cases, tmp_path, monkeypatch):
    monkeypatch.setattr(location_pkg, "register_to_template", identity)
    model = load_model(model_dir, n_images=1)
    out = tmp_path / "batch"
    cases = {"obl": None, "blank": None}

    # 1. without location: the old batch key and digests, no location columns, no dis.csv
    plain = predict_manifest(model, two_cases, out, threshold=0.5, progress=False)
    key = config_digest([model.digest(), str(two_cases.resolve()), 0.5, False])
    assert read_marker(out).key == key
    assert "location" not in plain.table.columns and plain.dis is None
    assert not (out / "dis.csv").exists()
    obl = Case("obl", (two_cases.parent / "flair_obl.nii.gz",))
    md = model.digest()
    assert _previous(out / "obl", md, obl, 0.5, False) is not None
    assert _previous(out / "obl", md, obl, 0.5, False, location=True) is None

    # 2. with location over it: refused without --overwrite, then every case is redone
    with pytest.raises(InputError, match="overwrite"):
        predict_manifest(model, two_cases, out, threshold=0.5, progress=False, location=True)
    res = predict_manifest(
        model, two_cases, out, threshold=0.5, progress=False, overwrite=True, location=True
    )
    assert all(r is not None for r in res.results.values())
    assert read_marker(out).key != key
    table = pd.read_csv(out / "lesions.csv")
    assert list(table.columns) == ["case_id", *TABLE_COLUMNS, *LOCATION_COLUMNS, "u_entropy_mean"]
    assert table.groupby("case_id").size().to_dict() == {"obl": 3}
    assert set(table["location"]) <= {"periventricular", "juxtacortical", "deep"}
    assert table[list(LOCATION_COLUMNS[1:])].notna().all().all()
    blank = pd.read_csv(out / "blank" / "lesions.csv")
    assert list(blank.columns) == [*TABLE_COLUMNS, *LOCATION_COLUMNS, "u_entropy_mean"]
    assert len(blank) == 0
    pd.testing.assert_frame_equal(table, _per_case(out, "obl"))  # blank adds no row

    dis = pd.read_csv(out / "dis.csv", keep_default_na=False, dtype={"regions": str})
    assert list(dis.columns) == list(DIS_COLUMNS) and dis["case_id"].tolist() == list(cases)
    for row in dis.itertuples(index=False):
        entry = json.loads((out / row.case_id / "lesions.json").read_text())["location"]
        d = entry["dis"]
        regions = [r for r, v in d["regions"].items() if v["n_lesions"] > 0]
        assert row.regions == ";".join(regions)
        assert row.verdict == d["verdict"]
        assert row.verdict_without_review == d["verdict_without_review"]
        assert row.probability == pytest.approx(d["probability"], abs=1e-9)
        assert row.n_review == d["n_review"]
        assert row.registration_ok == entry["registration"]["ok"] is True
    obl_row = dis.iloc[0]
    located = sorted({r for r in table["location"] if r != "deep"})
    assert sorted(filter(None, obl_row["regions"].split(";"))) == located
    blank_row = dis.iloc[1]
    assert blank_row["regions"] == "" and blank_row["verdict"] != "met"
    assert blank_row["probability"] == 0.0
    assert "dis.csv" in read_marker(out).files

    # 3. the same batch again: reused, the same tables (dis.csv from lesions.json)
    again = predict_manifest(model, two_cases, out, threshold=0.5, progress=False, location=True)
    assert all(r is None for r in again.results.values())
    pd.testing.assert_frame_equal(pd.read_csv(out / "lesions.csv"), table)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "dis.csv", keep_default_na=False, dtype={"regions": str}), dis
    )

    # 4. without location over it: redone, the location columns and dis.csv are gone
    back = predict_manifest(model, two_cases, out, threshold=0.5, progress=False, overwrite=True)
    assert all(r is not None for r in back.results.values())
    assert "location" not in pd.read_csv(out / "lesions.csv").columns
    assert not (out / "dis.csv").exists() and read_marker(out).key == key


def test_cli_passes_location_to_the_batch(tmp_path, monkeypatch):
    seen = {}

    def fake(model, cases, out, **kwargs):
        seen.update(kwargs)
        return BatchResult(Path(out), pd.DataFrame({"review": pd.Series(dtype=bool)}))

    monkeypatch.setattr(predict_pkg, "predict_manifest", fake)
    args = ["predict", "--model", str(tmp_path), "--cases", str(tmp_path / "c.csv")]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--location"])
    assert result.exit_code == 0, result.output
    assert seen["location"] is True
