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
    """MSSEG-2016 from Shanoir: ``Training|Testing/Center_XX/Patient_YY/Preprocessed_Data/
    *_preprocessed.nii.gz`` and ``Masks/{Consensus,ManualSegmentation_N}.nii.gz``
    (Commowick et al., Sci. Rep. 2018; sergivalverde/cnn-ms-lesion-segmentation)."""
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


def test_msseg2016_original_archives_and_raw_data(tmp_path):
    """The original challenge archives: patient-code folders with ``3DFLAIR.nii.gz``,
    ``3DT1.nii.gz``, ``DP.nii.gz``, ``T2.nii.gz``, ``3DT1GADO.nii.gz``, ``Consensus`` and
    ``ManualSegmentation_N`` side by side (Commowick et al. 2018; Anima's MSSEG 2016
    preparation script names the same sequences), and the ``Raw_Data/`` variant of the
    Shanoir tree unpacked into its own zip folder (``MSSEG-Training/Training/...``)."""
    orig = tmp_path / "orig" / "Training"
    for code in ("01016SACH", "07040DORE"):
        for seq in ("3DFLAIR", "3DT1", "DP", "T2", "3DT1GADO"):
            _nii(orig / code / f"{seq}.nii.gz")
        _mask(orig / code / "Consensus.nii.gz")
        _mask(orig / code / "ManualSegmentation_2.nii.gz")
    rows = _rows(
        build_manifest("msseg2016", tmp_path / "orig", tmp_path / "c.csv", ("flair", "pd"))
    )
    assert rows[0] == {
        "case_id": "Training_01016SACH",
        "flair": "orig/Training/01016SACH/3DFLAIR.nii.gz",
        "pd": "orig/Training/01016SACH/DP.nii.gz",
        "mask": "orig/Training/01016SACH/Consensus.nii.gz",
    }
    assert [r["case_id"] for r in rows] == ["Training_01016SACH", "Training_07040DORE"]
    # Raw_Data variant, one folder per unpacked zip; T1 on its own (finer) grid
    patient = tmp_path / "zips" / "MSSEG-Training" / "Training" / "Center_01" / "Patient_01"
    _nii(patient / "Raw_Data" / "3DFLAIR.nii.gz")
    _nii(patient / "Raw_Data" / "3DT1.nii.gz", np.ones((8, 8, 8), np.float32))
    _mask(patient / "Masks" / "Consensus.nii.gz")
    rows = _rows(build_manifest("msseg2016", tmp_path / "zips", tmp_path / "c.csv"))
    assert [(r["case_id"], r["flair"]) for r in rows] == [
        (
            "Training_Center_01_Patient_01",
            "zips/MSSEG-Training/Training/Center_01/Patient_01/Raw_Data/3DFLAIR.nii.gz",
        )
    ]
    with pytest.raises(
        InputError,
        match=r"3DT1.nii.gz: is on another voxel grid \(shape \(8, 8, 8\)\) than Consensus.nii.gz "
        r"\(shape \(4, 4, 4\)\), and lesionuq does not resample data sets; use the "
        "Preprocessed_Data files",
    ):
        build_manifest("msseg2016", tmp_path / "zips", tmp_path / "c.csv", ("flair", "t1"))


def test_mslub_raw_refusal_and_six_folders(tmp_path):
    """open_ms_data's ``cross_sectional/raw`` (own space per sequence) and the original
    zips unpacked into one folder each (``patientXX/patientXX_*.nii.gz``)."""
    for seq in ("FLAIR", "T1W", "consensus_gt"):
        _nii(tmp_path / "cross_sectional" / "raw" / "patient01" / f"{seq}.nii.gz")
    with pytest.raises(InputError, match="MSLUB raw t1 images are in their own space"):
        build_manifest("mslub", tmp_path / "cross_sectional", tmp_path / "c.csv", ("flair", "t1"))
    rows = _rows(build_manifest("mslub", tmp_path / "cross_sectional", tmp_path / "c.csv"))
    assert rows[0]["flair"] == "cross_sectional/raw/patient01/FLAIR.nii.gz"
    for i, zip_folder in enumerate(("MSLUB_1", "MSLUB_2")):
        p = f"patient0{i + 1}"
        for seq in ("FLAIR", "T2W"):
            _nii(tmp_path / "six" / zip_folder / p / f"{p}_{seq}.nii.gz")
        _mask(tmp_path / "six" / zip_folder / p / f"{p}_consensus_gt.nii.gz")
    rows = _rows(build_manifest("mslub", tmp_path / "six", tmp_path / "c.csv", ("flair", "t2")))
    assert [(r["case_id"], r["t2"]) for r in rows] == [
        ("patient01", "six/MSLUB_1/patient01/patient01_T2W.nii.gz"),
        ("patient02", "six/MSLUB_2/patient02/patient02_T2W.nii.gz"),
    ]


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


def _isbi_tree(root: Path, subject: str = "training01", masks: bool = True) -> None:
    """ISBI 2015 as unpacked (uoguelph-mlrg/vlr loaders; the test set as
    ``testdata_website/testNN/preprocessed/`` without ``masks``)."""
    for tt in ("01", "02"):
        cid = f"{subject}_{tt}"
        for seq in ("flair", "mprage", "pd", "t2"):
            _nii(root / subject / "preprocessed" / f"{cid}_{seq}_pp.nii")
        if masks:
            m1 = np.zeros((4, 4, 4), np.uint8)
            m2 = np.zeros((4, 4, 4), np.uint8)
            m1[0, 0, 0:2] = 1  # rater 1: voxels (0,0,0), (0,0,1)
            m2[0, 0, 1:3] = 1  # rater 2: voxels (0,0,1), (0,0,2)
            _nii(root / subject / "masks" / f"{cid}_mask1.nii", m1)
            _nii(root / subject / "masks" / f"{cid}_mask2.nii", m2)


def test_isbi2015_union_intersection_and_default_rater(tmp_path):
    root = tmp_path / "training"
    _isbi_tree(root)
    out = tmp_path / "isbi" / "cases.csv"
    with pytest.raises(InputError, match="choose --rater 1, 2, union or intersection"):
        build_manifest("isbi2015", root, out)
    assert not (tmp_path / "isbi").exists()
    for rater, voxels in (("union", 3), ("intersection", 1)):
        rows = _rows(build_manifest("isbi2015", root, out, rater=rater, overwrite=True))
        assert rows[0]["mask"] == f"isbi2015_derived/training01_01_mask-{rater}.nii.gz"
        data = np.asarray(nib.load(str(out.parent / rows[0]["mask"])).dataobj)
        assert int(data.sum()) == voxels and data[0, 0, 1] == 1
    # another rater over an earlier derived folder needs --overwrite
    with pytest.raises(InputError, match="add --overwrite"):
        build_manifest("isbi2015", root, out, rater="union")


def test_isbi2015_test_set_without_masks(tmp_path):
    # testdata_website/test01/... unpacked into its own folder: root one level above
    _isbi_tree(tmp_path / "isbi_test" / "testdata_website", "test01", masks=False)
    rows = _rows(build_manifest("isbi2015", tmp_path / "isbi_test", tmp_path / "c.csv"))
    assert [(r["case_id"], r["mask"]) for r in rows] == [("test01_01", ""), ("test01_02", "")]
    assert (
        rows[0]["flair"] == "isbi_test/testdata_website/test01/preprocessed/test01_01_flair_pp.nii"
    )


# --------------------------------------------------------------------------- shifts


def _shifts_tree(root: Path) -> None:
    """Shifts 2.0 as unpacked from shifts_ms_pt1.zip and shifts_ms_pt2.zip: cohort above
    split, ``{flair,t1,gt,fg_mask}/<id>_*_isovox.nii.gz`` (Shifts-Project/shifts
    ``mswml/data_load.py``; configs listing ``shifts_ms_pt2/best/train/flair``)."""
    layout = {
        "shifts_ms_pt1/msseg": {"train": ("25", "3"), "dev_in": ("6",)},
        "shifts_ms_pt2/best": {"train": ("25",)},
        "shifts_ms_pt2/ljubljana": {"dev_out": ("1",)},
    }
    for cohort, splits in layout.items():
        for split, ids in splits.items():
            for sid in ids:
                folder = root / cohort / split
                _nii(folder / "flair" / f"{sid}_FLAIR_isovox.nii.gz")
                _nii(folder / "t1" / f"{sid}_T1_isovox.nii.gz")
                _mask(folder / "gt" / f"{sid}_gt_isovox.nii.gz")
                _mask(folder / "fg_mask" / f"{sid}_isovox_fg_mask.nii.gz")


def test_shifts_cohorts_and_splits(tmp_path):
    root = tmp_path / "shifts"
    _shifts_tree(root)
    rows = _rows(build_manifest("shifts", root, tmp_path / "c.csv", ("flair", "t1")))
    assert [r["case_id"] for r in rows] == [
        "msseg_dev_in_6",
        "msseg_train_3",
        "msseg_train_25",
        "best_train_25",
        "ljubljana_dev_out_1",
    ]
    assert rows[1] == {
        "case_id": "msseg_train_3",
        "flair": "shifts/shifts_ms_pt1/msseg/train/flair/3_FLAIR_isovox.nii.gz",
        "t1": "shifts/shifts_ms_pt1/msseg/train/t1/3_T1_isovox.nii.gz",
        "mask": "shifts/shifts_ms_pt1/msseg/train/gt/3_gt_isovox.nii.gz",
    }
    # every level accepted as --root: pt folder, cohort folder, split folder
    for sub, ids in (
        ("shifts_ms_pt2", ["best_train_25", "ljubljana_dev_out_1"]),
        ("shifts_ms_pt1/msseg", ["msseg_dev_in_6", "msseg_train_3", "msseg_train_25"]),
        ("shifts_ms_pt2/best/train", ["best_train_25"]),
    ):
        rows = _rows(build_manifest("shifts", root / sub, tmp_path / "c.csv"))
        assert [r["case_id"] for r in rows] == ids
    rows = _rows(build_manifest("shifts", root, tmp_path / "c.csv", split="train,dev_out"))
    assert [r["case_id"] for r in rows] == [
        "msseg_train_3",
        "msseg_train_25",
        "best_train_25",
        "ljubljana_dev_out_1",
    ]
    with pytest.raises(
        InputError, match="no shifts split 'eval_in' \\(found dev_in, dev_out, train\\)"
    ):
        build_manifest("shifts", root, tmp_path / "c.csv", split="eval_in")
    with pytest.raises(InputError, match="--split applies to the shifts layout"):
        build_manifest("mslub", root, tmp_path / "c.csv", split="train")


def test_partial_masks_name_the_case(tmp_path):
    root = tmp_path / "shifts_ms_pt1" / "msseg" / "eval_in"
    for sid in ("1", "2"):
        _nii(root / "flair" / f"{sid}_FLAIR_isovox.nii.gz")
    _mask(root / "gt" / "1_gt_isovox.nii.gz")
    with pytest.raises(InputError, match=r"eval_in: missing mask 2_gt_isovox"):
        build_manifest("shifts", root, tmp_path / "c.csv")
    (root / "gt" / "1_gt_isovox.nii.gz").unlink()  # no ground truth at all: prediction only
    rows = _rows(build_manifest("shifts", root, tmp_path / "c.csv"))
    assert [(r["case_id"], r["mask"]) for r in rows] == [
        ("msseg_eval_in_1", ""),
        ("msseg_eval_in_2", ""),
    ]


# -------------------------------------------------------------------------- wmh2017


def _wmh_labels() -> np.ndarray:
    labels = np.zeros((4, 4, 4), np.float32)  # stored as float32 like the release
    labels[0, 0, 0] = 1
    labels[1, 1, 1] = 2
    labels[2, 2, 2] = 1
    return labels


def _wmh_tree(root: Path) -> None:
    """WMH 2017 as released on DataverseNL (doi:10.34894/AECRSD): ``training|test/<site>
    [/<scanner>]/<id>/{pre/FLAIR,pre/T1,wmh}.nii.gz`` with ``additional_annotations/
    observer_o3|o4/training/...result.nii.gz`` (hjkuijf/wmhchallenge; the release's
    readme), including the test scanner folder ``Philips_VU .PETMR_01.``."""
    for subject in ("training/Utrecht/0", "training/Amsterdam/GE3T/100"):
        _nii(root / subject / "pre" / "FLAIR.nii.gz")
        _nii(root / subject / "pre" / "T1.nii.gz")
        _nii(root / subject / "wmh.nii.gz", _wmh_labels())
        obs = np.zeros((4, 4, 4), np.float32)
        obs[3, 3, 3] = 1
        _nii(root / "additional_annotations/observer_o3" / subject / "result.nii.gz", obs)
    test = root / "test/Amsterdam/Philips_VU .PETMR_01./161"
    _nii(test / "pre" / "FLAIR.nii.gz")
    _nii(test / "wmh.nii.gz", np.zeros((4, 4, 4), np.float32))


def test_wmh2017_label_two_is_the_ignore_region(tmp_path):
    _wmh_tree(tmp_path / "wmh")
    root = tmp_path / "wmh" / "training"
    out = tmp_path / "out" / "cases.csv"
    rows = _rows(build_manifest("wmh2017", root, out, ("flair", "t1")))
    assert rows == [
        {
            "case_id": cid,
            "flair": f"../wmh/training/{sub}/pre/FLAIR.nii.gz",
            "t1": f"../wmh/training/{sub}/pre/T1.nii.gz",
            "mask": f"wmh2017_derived/{cid}_wmh_label1.nii.gz",
            "ignore": f"wmh2017_derived/{cid}_wmh_label2_ignore.nii.gz",
            "source_id": sub,
        }
        for cid, sub in (("Amsterdam_GE3T_100", "Amsterdam/GE3T/100"), ("Utrecht_0", "Utrecht/0"))
    ]
    derived = nib.load(str(out.parent / rows[0]["mask"]))
    data = np.asarray(derived.dataobj)
    assert sorted(np.unique(data)) == [0, 1]
    assert data.sum() == 2 and data[1, 1, 1] == 0 and data[0, 0, 0] == 1
    ignore = np.asarray(nib.load(str(out.parent / rows[0]["ignore"])).dataobj)
    assert ignore.sum() == 1 and ignore[1, 1, 1] == 1
    np.testing.assert_allclose(derived.affine, AFFINE)
    readme = (out.parent / "wmh2017_derived/README.txt").read_text()
    assert "label 2 (other pathology" in readme and "ignore region" in readme
    cases = read_manifest(out, ("flair", "t1"))
    assert cases[0].ignore == (out.parent / rows[0]["ignore"])
    # the same command again rewrites its own derived folder without --overwrite
    assert _rows(build_manifest("wmh2017", root, out, ("flair", "t1"))) == rows


def test_wmh2017_extra_observers_and_clean_ids(tmp_path):
    _wmh_tree(tmp_path / "wmh")
    out = tmp_path / "o3" / "cases.csv"
    rows = _rows(build_manifest("wmh2017", tmp_path / "wmh" / "training", out, rater="o3"))
    assert [(r["case_id"], r["mask"], r["ignore"]) for r in rows] == [
        (
            cid,
            f"../wmh/additional_annotations/observer_o3/training/{sub}/result.nii.gz",
            f"wmh2017_derived/{cid}_wmh_label2_ignore.nii.gz",
        )
        for cid, sub in (("Amsterdam_GE3T_100", "Amsterdam/GE3T/100"), ("Utrecht_0", "Utrecht/0"))
    ]
    with pytest.raises(InputError, match=r"wmh2017 has no consensus: wmh.nii.gz is observer"):
        build_manifest("wmh2017", tmp_path / "wmh" / "training", out, rater="consensus")
    with pytest.raises(InputError, match=r"raters are o12 .* o3 and o4; got --rater 5"):
        build_manifest("wmh2017", tmp_path / "wmh" / "training", out, rater="5")
    rows = _rows(build_manifest("wmh2017", tmp_path / "wmh" / "test", tmp_path / "t.csv"))
    assert [(r["case_id"], r["source_id"]) for r in rows] == [
        ("Amsterdam_Philips_VU_PETMR_01_161", "Amsterdam/Philips_VU .PETMR_01./161")
    ]
    assert "ignore" not in rows[0]  # no label 2 in this case: no ignore column


def test_wmh2017_refused_case_leaves_nothing(tmp_path):
    """Issue 25 item 8: every case is checked before anything is published."""
    _wmh_tree(tmp_path / "wmh")
    root = tmp_path / "wmh" / "training"
    bad = _wmh_labels()
    bad[3, 0, 0] = 5
    _nii(root / "Utrecht/0/wmh.nii.gz", bad)  # the second case in order
    out = tmp_path / "out" / "cases.csv"
    with pytest.raises(InputError, match=r"Utrecht/0/wmh.nii.gz: labels must be 0, 1, 2; found 5"):
        build_manifest("wmh2017", root, out)
    assert not (tmp_path / "out").exists()  # no cases.csv, no derived folder, no masks
    # an earlier derived folder with a user's own file: kept, and the earlier masks too
    _nii(root / "Utrecht/0/wmh.nii.gz", _wmh_labels())
    build_manifest("wmh2017", root, out)
    derived = out.parent / "wmh2017_derived"
    (derived / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in derived.iterdir() if p.is_file()}
    _nii(root / "Utrecht/0/wmh.nii.gz", bad)
    with pytest.raises(InputError, match="found 5"):
        build_manifest("wmh2017", root, out)
    after = {p.name: p.read_bytes() for p in derived.iterdir() if p.is_file()}
    assert after == before
    # a foreign folder in the derived folder's place is refused before anything is read
    other = tmp_path / "other"
    (other / "wmh2017_derived").mkdir(parents=True)
    (other / "wmh2017_derived" / "x.nii.gz").write_text("user")
    with pytest.raises(InputError, match="not written by lesionuq"):
        build_manifest("wmh2017", root, other / "cases.csv")
    assert (other / "wmh2017_derived" / "x.nii.gz").read_text() == "user"
    assert not (other / "cases.csv").exists()


def test_manifest_out_refuses_inputs_and_folders(tmp_path):
    """Issue 25 item 3: --out an input image, a mask or a folder is refused in one sentence."""
    _wmh_tree(tmp_path / "wmh")
    root = tmp_path / "wmh" / "training"
    flair = root / "Utrecht/0/pre/FLAIR.nii.gz"
    original = flair.read_bytes()
    with pytest.raises(InputError, match=r"--out must name a \.csv file"):
        build_manifest("wmh2017", root, flair)
    assert flair.read_bytes() == original
    assert not (root / "Utrecht/0/pre/wmh2017_derived").exists()
    own = tmp_path / "notes.csv"
    own.write_text("my,notes\n1,2\n")
    with pytest.raises(InputError, match=r"exists and is not a cases\.csv manifest"):
        build_manifest("wmh2017", root, own)
    assert own.read_text() == "my,notes\n1,2\n"
    folder = tmp_path / "existing"
    folder.mkdir()
    with pytest.raises(InputError, match=r"existing: is a folder; --out names the manifest"):
        build_manifest("wmh2017", root, folder)
    assert list(folder.iterdir()) == [] and not (tmp_path / "wmh2017_derived").exists()
    # derived masks are never written into the data set
    with pytest.raises(InputError, match="lies inside the data set folder"):
        build_manifest("wmh2017", root, root / "cases.csv")
    assert not (root / "cases.csv").exists() and not (root / "wmh2017_derived").exists()


def test_manifest_path_cells_are_neutralised(tmp_path):
    """Issue 25 item 19: a path cell starting with '=' is written as './=...' (same file)."""
    root = tmp_path / "shifts_ms_pt2" / "best" / "=cmd"
    _nii(root / "flair" / "1_FLAIR_isovox.nii.gz")
    _mask(root / "gt" / "1_gt_isovox.nii.gz")
    out = root.parent / "cases.csv"
    rows = _rows(build_manifest("shifts", root, out))
    assert rows[0]["flair"] == "./=cmd/flair/1_FLAIR_isovox.nii.gz"
    assert read_manifest(out)[0].images[0] == out.parent / "./=cmd/flair/1_FLAIR_isovox.nii.gz"
    assert read_manifest(out)[0].images[0].is_file()


# ----------------------------------------------------------------------------- bids


def _bids_tree(root: Path) -> None:
    """BIDS 1.10 raw data with a manual-mask derivatives data set ("Common derivatives:
    segmentations", ``*_label-lesion_mask``; the ``_label-lesion_roi`` form of fMRIPrep's
    usage notes)."""
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


def test_bids_queries_do_not_grow_with_subjects(tmp_path, monkeypatch):
    """Issue 25 item 14: a constant number of pybids queries (one per suffix), not a few
    per subject, each of which rescanned the whole index (quadratic in the subjects)."""
    bids = pytest.importorskip("bids")
    calls = []
    original = bids.BIDSLayout.get

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("suffix"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(bids.BIDSLayout, "get", counting)
    counts = []
    for n in (1, 4):
        root = tmp_path / f"ds{n}"
        _bids_tree(root)
        for i in range(3, 3 + n):
            _nii(root / f"sub-{i:02d}/anat/sub-{i:02d}_FLAIR.nii.gz")
            _nii(root / f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz")
            mask = f"derivatives/manual/sub-{i:02d}/anat/sub-{i:02d}_label-lesion_mask.nii.gz"
            _mask(root / mask)
        calls.clear()
        rows = _rows(build_manifest("bids", root, tmp_path / f"c{n}.csv", ("flair", "t1")))
        assert len(rows) == 3 + n
        counts.append(len(calls))
    assert counts[0] == counts[1] == 5  # FLAIR, T1w; derivatives mask, roi; raw roi
