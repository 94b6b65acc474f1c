"""Public data-set layouts -> cases.csv, checked row by row on tiny fake trees."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionuq.datasets import build_manifest
from lesionuq.io import InputError, read_manifest

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _nii(path: Path, data: np.ndarray | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(seed).random((4, 4, 4)).astype(np.float32) + 0.1
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def _mask(path: Path) -> Path:
    data = np.zeros((4, 4, 4), np.uint8)
    data[1:3, 1:3, 1:3] = 1
    return _nii(path, data)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------- msseg2016


def _msseg_tree(root: Path) -> None:
    for split, center, patient in [
        ("Training", "Center_01", "Patient_01"),
        ("Training", "Center_07", "Patient_02"),
        ("Testing", "Center_01", "Patient_01"),
    ]:
        case = root / split / center / patient
        for seq in ("FLAIR", "T1", "T2", "DP", "GADO"):
            _nii(case / "Preprocessed_Data" / f"{seq}_preprocessed.nii.gz")
        _mask(case / "Masks" / "Consensus.nii.gz")
        for n in range(1, 8):
            _mask(case / "Masks" / f"ManualSegmentation_{n}.nii.gz")


def test_msseg2016_rows(tmp_path):
    _msseg_tree(tmp_path / "msseg")
    out = build_manifest("msseg2016", tmp_path / "msseg", tmp_path / "cases.csv", ("flair", "t1"))
    rows = _rows(out)
    assert [r["case_id"] for r in rows] == [
        "Testing_Center_01_Patient_01",
        "Training_Center_01_Patient_01",
        "Training_Center_07_Patient_02",
    ]
    assert rows[1] == {
        "case_id": "Training_Center_01_Patient_01",
        "flair": "msseg/Training/Center_01/Patient_01/Preprocessed_Data/FLAIR_preprocessed.nii.gz",
        "t1": "msseg/Training/Center_01/Patient_01/Preprocessed_Data/T1_preprocessed.nii.gz",
        "mask": "msseg/Training/Center_01/Patient_01/Masks/Consensus.nii.gz",
    }
    # the manifest reads back and resolves to existing files
    cases = read_manifest(out, ("flair", "t1"))
    assert all(p.is_file() for c in cases for p in (*c.images, c.mask))


def test_msseg2016_rater_and_pd(tmp_path):
    _msseg_tree(tmp_path / "msseg")
    out = build_manifest(
        "msseg2016", tmp_path / "msseg", tmp_path / "c.csv", sequences=("pd",), rater=3
    )
    row = _rows(out)[0]
    assert row["pd"].endswith("Patient_01/Preprocessed_Data/DP_preprocessed.nii.gz")
    assert row["mask"].endswith("Patient_01/Masks/ManualSegmentation_3.nii.gz")
    with pytest.raises(InputError, match=r"consensus or 1\.\.7"):
        build_manifest("msseg2016", tmp_path / "msseg", tmp_path / "c.csv", rater=9)


def test_msseg2016_missing_sequence_names_the_folder(tmp_path):
    _msseg_tree(tmp_path / "msseg")
    (
        tmp_path / "msseg/Training/Center_07/Patient_02/Preprocessed_Data/T1_preprocessed.nii.gz"
    ).unlink()
    with pytest.raises(InputError, match=r"Center_07/Patient_02: missing T1_preprocessed"):
        build_manifest("msseg2016", tmp_path / "msseg", tmp_path / "c.csv", ("flair", "t1"))
    assert not (tmp_path / "c.csv").exists()


def test_wrong_layout_is_one_sentence(tmp_path):
    _msseg_tree(tmp_path / "msseg")
    with pytest.raises(InputError, match=r"msseg: no mslub case found \(expected patientXX"):
        build_manifest("mslub", tmp_path / "msseg", tmp_path / "c.csv")
    with pytest.raises(InputError, match="unknown layout 'brats'"):
        build_manifest("brats", tmp_path / "msseg", tmp_path / "c.csv")
    with pytest.raises(InputError, match="layout msseg2016 has no sequence 'swi'"):
        build_manifest("msseg2016", tmp_path / "msseg", tmp_path / "c.csv", ("swi",))


# ---------------------------------------------------------------------------- mslub


def test_mslub_distributed_layout(tmp_path):
    for p in ("patient01", "patient02"):
        for seq in ("FLAIR", "T1W", "T2W"):
            _nii(tmp_path / "mslub" / p / f"{p}_{seq}.nii.gz")
        _mask(tmp_path / "mslub" / p / f"{p}_consensus_gt.nii.gz")
    rows = _rows(build_manifest("mslub", tmp_path / "mslub", tmp_path / "c.csv", ("flair", "t2")))
    assert rows == [
        {
            "case_id": f"patient0{i}",
            "flair": f"mslub/patient0{i}/patient0{i}_FLAIR.nii.gz",
            "t2": f"mslub/patient0{i}/patient0{i}_T2W.nii.gz",
            "mask": f"mslub/patient0{i}/patient0{i}_consensus_gt.nii.gz",
        }
        for i in (1, 2)
    ]


def test_mslub_mirror_prefers_coregistered(tmp_path):
    for mirror in ("raw", "coregistered"):
        for seq in ("FLAIR", "T1W", "consensus_gt"):
            _nii(tmp_path / "cross_sectional" / mirror / "patient05" / f"{seq}.nii.gz")
    out = tmp_path / "sub" / "cases.csv"
    rows = _rows(build_manifest("mslub", tmp_path / "cross_sectional", out, ("flair", "t1")))
    assert rows == [
        {
            "case_id": "patient05",
            "flair": "../cross_sectional/coregistered/patient05/FLAIR.nii.gz",
            "t1": "../cross_sectional/coregistered/patient05/T1W.nii.gz",
            "mask": "../cross_sectional/coregistered/patient05/consensus_gt.nii.gz",
        }
    ]
    with pytest.raises(InputError, match="one reference segmentation per case"):
        build_manifest("mslub", tmp_path / "cross_sectional", out, rater="2")


# ------------------------------------------------------------------------- isbi2015


def test_isbi2015_one_case_per_time_point(tmp_path):
    root = tmp_path / "training"
    for tt in ("01", "02"):
        cid = f"training01_{tt}"
        for seq in ("flair", "mprage", "pd", "t2"):
            _nii(root / "training01" / "preprocessed" / f"{cid}_{seq}_pp.nii")
        for r in (1, 2):
            _mask(root / "training01" / "masks" / f"{cid}_mask{r}.nii")
    rows = _rows(build_manifest("isbi2015", root, tmp_path / "c.csv", ("flair", "t1"), rater=2))
    assert rows == [
        {
            "case_id": f"training01_{tt}",
            "flair": f"training/training01/preprocessed/training01_{tt}_flair_pp.nii",
            "t1": f"training/training01/preprocessed/training01_{tt}_mprage_pp.nii",
            "mask": f"training/training01/masks/training01_{tt}_mask2.nii",
        }
        for tt in ("01", "02")
    ]
    with pytest.raises(InputError, match="no consensus"):
        build_manifest("isbi2015", root, tmp_path / "c.csv")


# --------------------------------------------------------------------------- shifts


def test_shifts_splits(tmp_path):
    root = tmp_path / "shifts_ms"
    for split, ids in (("dev_in", ("6", "10")), ("train", ("1",))):
        for sid in ids:
            _nii(root / split / "flair" / f"{sid}_FLAIR_isovox.nii.gz")
            _nii(root / split / "t1" / f"{sid}_T1_isovox.nii.gz")
            _mask(root / split / "gt" / f"{sid}_gt_isovox.nii.gz")
    rows = _rows(build_manifest("shifts", root, tmp_path / "c.csv", ("flair", "t1")))
    assert [(r["case_id"], r["flair"], r["t1"], r["mask"]) for r in rows] == [
        (
            f"{split}_{sid}",
            f"shifts_ms/{split}/flair/{sid}_FLAIR_isovox.nii.gz",
            f"shifts_ms/{split}/t1/{sid}_T1_isovox.nii.gz",
            f"shifts_ms/{split}/gt/{sid}_gt_isovox.nii.gz",
        )
        for split, sid in (("dev_in", "6"), ("dev_in", "10"), ("train", "1"))
    ]
    # one split as root
    rows = _rows(build_manifest("shifts", root / "train", tmp_path / "c.csv"))
    assert [r["case_id"] for r in rows] == ["train_1"]


def test_partial_masks_name_the_case(tmp_path):
    root = tmp_path / "shifts_ms" / "eval_in"
    for sid in ("1", "2"):
        _nii(root / "flair" / f"{sid}_FLAIR_isovox.nii.gz")
    _mask(root / "gt" / "1_gt_isovox.nii.gz")
    with pytest.raises(InputError, match=r"eval_in: missing mask 2_gt_isovox"):
        build_manifest("shifts", root, tmp_path / "c.csv")
    (root / "gt" / "1_gt_isovox.nii.gz").unlink()  # no ground truth at all: prediction only
    rows = _rows(build_manifest("shifts", root, tmp_path / "c.csv"))
    assert [(r["case_id"], r["mask"]) for r in rows] == [("eval_in_1", ""), ("eval_in_2", "")]


# -------------------------------------------------------------------------- wmh2017


def test_wmh2017_label_two_is_excluded(tmp_path):
    root = tmp_path / "training"
    labels = np.zeros((4, 4, 4), np.float32)
    labels[0, 0, 0] = 1
    labels[1, 1, 1] = 2
    labels[2, 2, 2] = 1
    for subject in ("Utrecht/0", "Amsterdam/GE3T/100"):
        _nii(root / subject / "pre" / "FLAIR.nii.gz")
        _nii(root / subject / "pre" / "T1.nii.gz")
        _nii(root / subject / "wmh.nii.gz", labels)
    out = tmp_path / "out" / "cases.csv"
    rows = _rows(build_manifest("wmh2017", root, out, ("flair", "t1")))
    assert rows == [
        {
            "case_id": cid,
            "flair": f"../training/{sub}/pre/FLAIR.nii.gz",
            "t1": f"../training/{sub}/pre/T1.nii.gz",
            "mask": f"wmh2017_derived/{cid}_wmh_label1.nii.gz",
        }
        for cid, sub in (("Amsterdam_GE3T_100", "Amsterdam/GE3T/100"), ("Utrecht_0", "Utrecht/0"))
    ]
    derived = nib.load(str(out.parent / rows[0]["mask"]))
    data = np.asarray(derived.dataobj)
    assert sorted(np.unique(data)) == [0, 1]
    assert data.sum() == 2 and data[1, 1, 1] == 0 and data[0, 0, 0] == 1
    np.testing.assert_allclose(derived.affine, AFFINE)
    assert "label 2 (other pathology" in (out.parent / "wmh2017_derived/README.txt").read_text()


# ----------------------------------------------------------------------------- bids


def _bids_tree(root: Path) -> None:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "fake", "BIDSVersion": "1.10.0"})
    )
    deriv = root / "derivatives" / "manual"
    deriv.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "manual masks",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "Manual"}],
            }
        )
    )
    # sub-01 without sessions, mask in the common-derivatives form
    _nii(root / "sub-01/anat/sub-01_FLAIR.nii.gz")
    _nii(root / "sub-01/anat/sub-01_T1w.nii.gz")
    _mask(deriv / "sub-01/anat/sub-01_space-orig_label-lesion_mask.nii.gz")
    # sub-02 with two sessions, masks in the _roi form
    for ses in ("a", "b"):
        _nii(root / f"sub-02/ses-{ses}/anat/sub-02_ses-{ses}_FLAIR.nii.gz")
        _nii(root / f"sub-02/ses-{ses}/anat/sub-02_ses-{ses}_T1w.nii.gz")
        _mask(deriv / f"sub-02/ses-{ses}/anat/sub-02_ses-{ses}_label-lesion_roi.nii.gz")


def test_bids_layout(tmp_path):
    pytest.importorskip("bids")
    _bids_tree(tmp_path / "ds")
    rows = _rows(build_manifest("bids", tmp_path / "ds", tmp_path / "c.csv", ("flair", "t1")))
    man = "ds/derivatives/manual"
    assert rows == [
        {
            "case_id": "sub-01",
            "flair": "ds/sub-01/anat/sub-01_FLAIR.nii.gz",
            "t1": "ds/sub-01/anat/sub-01_T1w.nii.gz",
            "mask": f"{man}/sub-01/anat/sub-01_space-orig_label-lesion_mask.nii.gz",
        },
        *(
            {
                "case_id": f"sub-02_ses-{s}",
                "flair": f"ds/sub-02/ses-{s}/anat/sub-02_ses-{s}_FLAIR.nii.gz",
                "t1": f"ds/sub-02/ses-{s}/anat/sub-02_ses-{s}_T1w.nii.gz",
                "mask": f"{man}/sub-02/ses-{s}/anat/sub-02_ses-{s}_label-lesion_roi.nii.gz",
            }
            for s in ("a", "b")
        ),
    ]


def test_bids_missing_sequence(tmp_path):
    pytest.importorskip("bids")
    _bids_tree(tmp_path / "ds")
    (tmp_path / "ds/sub-02/ses-b/anat/sub-02_ses-b_T1w.nii.gz").unlink()
    with pytest.raises(InputError, match=r"sub-02/ses-b/anat: missing \*_T1w"):
        build_manifest("bids", tmp_path / "ds", tmp_path / "c.csv", ("flair", "t1"))


# ------------------------------------------------------------------------------ CLI


def test_manifest_command(tmp_path):
    from typer.testing import CliRunner

    from lesionuq.cli import app

    _msseg_tree(tmp_path / "msseg")
    out = tmp_path / "cases.csv"
    args = ["manifest", "--layout", "msseg2016", "--root", str(tmp_path / "msseg")]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--sequences", "flair,t1"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 case(s)" in result.output
    assert list(_rows(out)[0]) == ["case_id", "flair", "t1", "mask"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--rater", "x"])
    assert result.exit_code == 1
    assert "consensus or 1..7" in " ".join(result.output.split())
    assert "Traceback" not in result.output
