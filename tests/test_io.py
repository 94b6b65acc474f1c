from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionuq.io import (
    Case,
    InputError,
    atomic_dir,
    check_image,
    check_mask,
    load_case,
    load_nifti,
    read_manifest,
    save_nifti,
    write_manifest,
)

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _image(shape=(8, 8, 8)) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    data[2:6, 2:6, 2:6] = 100.0
    return data


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _case(tmp_path: Path, image=None, mask=None, mask_affine=AFFINE) -> Case:
    img = _write(tmp_path / "a" / "flair.nii.gz", _image() if image is None else image)
    m = np.zeros((8, 8, 8), np.uint8) if mask is None else mask
    msk = _write(tmp_path / "a" / "mask.nii.gz", m, mask_affine)
    return Case("a", (img,), msk)


def _one_sentence(msg: str, path: Path) -> None:
    assert msg.startswith(str(path) + ": ")
    assert msg.endswith(".")
    assert "\n" not in msg


def test_valid_case_loads(tmp_path):
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[3, 3, 3] = 1
    images, m = load_case(_case(tmp_path, mask=mask))
    assert len(images) == 1 and images[0].shape == (8, 8, 8)
    assert check_mask(m, "m").sum() == 1
    assert check_image(images[0], "i").max() == 100.0


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError) as err:
        load_nifti(path)
    assert str(err.value) == f"{path}: file not found."


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(InputError, match="cannot be read as NIfTI") as err:
        load_nifti(path)
    _one_sentence(str(err.value), path)


def test_non_nifti_image_is_refused_and_nifti2_accepted(tmp_path):
    mgh = tmp_path / "flair.mgz"
    nib.save(nib.MGHImage(_image(), AFFINE), str(mgh))
    with pytest.raises(InputError) as err:
        load_nifti(mgh)
    assert str(err.value) == f"{mgh}: is not a NIfTI image (nibabel reads a MGHImage)."
    nii2 = tmp_path / "flair2.nii.gz"
    nib.save(nib.Nifti2Image(_image(), AFFINE), str(nii2))
    assert load_nifti(nii2).shape == (8, 8, 8)


def test_truncated_file(tmp_path):
    path = _write(tmp_path / "trunc.nii", _image((16, 16, 16)))
    path.write_bytes(path.read_bytes()[:1000])  # header intact, data cut
    with pytest.raises(InputError, match="cannot be read as NIfTI"):
        load_nifti(path)


def test_four_d_image(tmp_path):
    path = _write(tmp_path / "4d.nii.gz", np.ones((8, 8, 8, 2), np.float32))
    with pytest.raises(InputError) as err:
        check_image(load_nifti(path), path)
    assert str(err.value) == f"{path}: expected a 3-D image, got 4-D shape (8, 8, 8, 2)."


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    path = _write(tmp_path / "4d1.nii.gz", _image()[..., None])
    assert check_image(load_nifti(path), path).shape == (8, 8, 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, bad):
    data = _image()
    data[0, 0, 0] = bad
    data[1, 0, 0] = bad
    path = _write(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError) as err:
        check_image(load_nifti(path), path)
    assert str(err.value) == f"{path}: contains 2 NaN or infinite voxels."


def test_empty_image(tmp_path):
    path = _write(tmp_path / "empty.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(InputError) as err:
        check_image(load_nifti(path), path)
    assert str(err.value) == f"{path}: the image is empty (all voxels are zero)."


def test_shape_mismatch(tmp_path):
    case = _case(tmp_path)
    _write(case.mask, np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(InputError) as err:
        load_case(case)
    msg = str(err.value)
    _one_sentence(msg, case.mask)
    assert "shape (8, 8, 7) does not match flair.nii.gz shape (8, 8, 8)" in msg


def test_affine_mismatch(tmp_path):
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    case = _case(tmp_path, mask_affine=shifted)
    with pytest.raises(InputError) as err:
        load_case(case)
    assert str(err.value) == f"{case.mask}: affine does not match the affine of flair.nii.gz."


def test_sequence_shape_mismatch(tmp_path):
    case = _case(tmp_path)
    t1 = _write(tmp_path / "a" / "t1.nii.gz", _image((8, 8, 9)))
    with pytest.raises(InputError, match=re.escape(f"{t1}: shape (8, 8, 9) does not match")):
        load_case(Case("a", (case.images[0], t1), case.mask))


def test_non_binary_mask(tmp_path):
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[1, 1, 1], mask[2, 2, 2] = 1, 2
    case = _case(tmp_path, mask=mask)
    with pytest.raises(InputError) as err:
        load_case(case)
    assert str(err.value) == f"{case.mask}: the mask is not binary (values 0, 1, 2...)."


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_column(tmp_path):
    path = _csv(tmp_path / "cases.csv", "case_id,flair\na,a/flair.nii.gz\n")
    with pytest.raises(InputError) as err:
        read_manifest(path)
    assert str(err.value) == f"{path}: missing column(s) mask."
    # without masks (prediction) the same file is fine
    assert read_manifest(path, require_mask=False)[0].mask is None


def test_missing_sequence_column(tmp_path):
    path = _csv(tmp_path / "cases.csv", "case_id,flair,mask\na,f.nii.gz,m.nii.gz\n")
    with pytest.raises(InputError, match=re.escape(f"{path}: missing column(s) t1.")):
        read_manifest(path, sequences=("flair", "t1"))


def test_duplicate_case_id(tmp_path):
    rows = ["case_id,flair,mask", "a,a/f.nii.gz,a/m.nii.gz", "b,b/f.nii.gz,b/m.nii.gz"]
    text = "\n".join([*rows, "a,c/f.nii.gz,c/m.nii.gz"]) + "\n"
    path = _csv(tmp_path / "cases.csv", text)
    with pytest.raises(InputError) as err:
        read_manifest(path)
    assert str(err.value) == f"{path}: duplicate case_id 'a' on line 4."


def test_missing_manifest_and_empty_manifest(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_manifest(tmp_path / "none.csv")
    path = _csv(tmp_path / "cases.csv", "case_id,flair,mask\n")
    with pytest.raises(InputError, match="no cases listed"):
        read_manifest(path)


def test_manifest_round_trip_relative_paths(tmp_path):
    case = _case(tmp_path)
    csv_path = tmp_path / "sets" / "cases.csv"
    write_manifest(csv_path, [case])
    text = csv_path.read_text().splitlines()
    assert text == ["case_id,flair,mask", "a,../a/flair.nii.gz,../a/mask.nii.gz"]
    (back,) = read_manifest(csv_path)
    assert back.case_id == "a"
    assert back.images[0].resolve() == case.images[0].resolve()
    assert back.mask.resolve() == case.mask.resolve()


def test_save_nifti_keeps_affine_and_dtype(tmp_path):
    affine = np.array([[-0.9, 0, 0, 10], [0, 0.9, 0, -5], [0, 0, 3, 2], [0, 0, 0, 1]])
    path = save_nifti(tmp_path / "x" / "m.nii.gz", np.ones((4, 5, 6), bool), affine)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, affine)
    assert img.get_data_dtype() == np.uint8
    assert not list(path.parent.glob(".tmp-*"))


def test_manifest_with_comma_in_path_round_trips(tmp_path):
    folder = tmp_path / "scans, batch 2"
    case = _case(folder)
    csv_path = tmp_path / "cases.csv"
    write_manifest(csv_path, [case])
    (back,) = read_manifest(csv_path)
    assert back.images[0].resolve() == case.images[0].resolve()
    assert back.mask.resolve() == case.mask.resolve()


def test_manifest_tolerates_bom_and_spaces(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_bytes("\ufeffcase_id, flair, mask\na, a/f.nii.gz, a/m.nii.gz\n".encode())
    (case,) = read_manifest(path)
    assert case.case_id == "a"
    assert case.images[0] == tmp_path / "a/f.nii.gz"
    assert case.mask == tmp_path / "a/m.nii.gz"


# --------------------------------------------------------------------------- issue 10


@pytest.mark.parametrize(
    ("cid", "ok"),
    [
        ("case_001", True),
        ("=1+1", True),  # allowed as a name; neutralised in CSVs
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("/abs/path", False),
        ("a\\b", False),
        (".hidden", False),
        ("tab\there", False),
        ("x" * 101, False),
        ("x" * 100, True),
    ],
)
def test_case_id_must_be_a_portable_folder_name(cid, ok):
    from lesionuq.io import case_id_problem

    assert (case_id_problem(cid) is None) == ok


def test_read_manifest_names_the_line_of_a_bad_case_id(tmp_path):
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,flair,mask\nok,a.nii.gz,m.nii.gz\n../x,b.nii.gz,m.nii.gz\n")
    with pytest.raises(InputError, match=r"case_id '\.\./x' on line 3 cannot name a folder"):
        read_manifest(csv)


def test_binary_and_gzip_manifests_are_one_sentence(tmp_path):
    import gzip

    csv = tmp_path / "cases.csv"
    csv.write_bytes(gzip.compress(b"case_id,flair,mask\n"))
    with pytest.raises(InputError, match="gzip-compressed"):
        read_manifest(csv)
    csv.write_bytes(b"case_id,flair\xff\xfe,mask\n")
    with pytest.raises(InputError, match="not a UTF-8 text CSV"):
        read_manifest(csv)


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(tmp_path):
    import pandas as pd

    from lesionuq.io import csv_cell, csv_text, csv_value

    frame = pd.DataFrame({"case_id": ["=1+1", "+cmd", "-2", "@SUM(A1)", "ok"], "v": [-1.5] * 5})
    lines = csv_text(frame).splitlines()
    assert lines[1:] == ["'=1+1,-1.5", "'+cmd,-1.5", "'-2,-1.5", "'@SUM(A1),-1.5", "ok,-1.5"]
    assert csv_cell("'=x") == "''=x" and csv_value(csv_cell("'=x")) == "'=x"  # reversible
    assert csv_cell(-3.0) == -3.0  # numbers untouched
    write_manifest(tmp_path / "m.csv", [Case("=1+1", (tmp_path / "f.nii.gz",))])
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("'=1+1,")


def test_disk_full_is_one_sentence_naming_the_folder(tmp_path, monkeypatch):
    import errno

    import lesionuq.io as lio

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lio.os, "replace", full)
    with pytest.raises(InputError, match=rf"{tmp_path}: no space left on the device"):
        lio.atomic_write_bytes(tmp_path / "a.bin", b"x" * 2**20)
    with pytest.raises(InputError, match=r"about 0\.0 MiB needed"):
        save_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4), np.float32), np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_atomic_dir_follows_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)


def test_bad_affines_are_refused_on_load(tmp_path):
    path = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(path))
    hdr = nib.load(str(path)).header.copy()
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    raw = bytearray(path.read_bytes())
    raw[: hdr.sizeof_hdr] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="is singular"):
        load_nifti(path)
    with pytest.raises(InputError, match="is a folder, not a NIfTI file"):
        load_nifti(tmp_path)


def test_weights_only_refusal_never_recommends_the_unsafe_option(tmp_path):
    import torch

    from lesionuq.segmentation.train import load_segmenter

    torch.save({"unet": InputError("x")}, tmp_path / "segmenter.pt")
    with pytest.raises(InputError) as err:
        load_segmenter(tmp_path / "segmenter.pt")
    assert "refuses to load" in str(err.value)
    assert "weights_only=False" not in str(err.value)


def test_csv_cells_come_back_as_the_ids_they_were(tmp_path):
    import pandas as pd

    from lesionuq.io import atomic_write_text, csv_text, read_csv_table

    ids = ["=1+1", "'=1+1", "-2", "ok", "'plain"]
    frame = pd.DataFrame({"case_id": ids, "v": [1.5, -1.0, 0.0, 2.0, 3.0]})
    atomic_write_text(tmp_path / "t.csv", csv_text(frame))
    back = read_csv_table(tmp_path / "t.csv")
    assert back["case_id"].tolist() == ids
    assert back["v"].tolist() == [1.5, -1.0, 0.0, 2.0, 3.0]
    write_manifest(tmp_path / "m.csv", [Case("=1+1", (tmp_path / "f.nii.gz",))])
    assert read_manifest(tmp_path / "m.csv", require_mask=False)[0].case_id == "=1+1"


def test_a_scan_too_large_for_memory_is_refused_from_its_header(tmp_path, monkeypatch):
    import lesionuq.io as lio

    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 32), np.float32), np.eye(4)), str(path))
    monkeypatch.setattr(lio, "available_memory", lambda: 2**20)  # 1 MiB left
    read = []
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", lambda self, **kw: read.append(1))
    with pytest.raises(InputError, match=r"a 64 x 64 x 32 image needs about 0\.0 GiB to load"):
        load_nifti(path)
    assert read == []  # refused before the data were read
