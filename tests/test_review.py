"""Issue 13 wired end to end: calibrated P(FP), operating point, detection metrics, shift.

The tiny run's lesions may all be false positives, so its outputs are checked for
structure and invariants; values are checked on constructed cases.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from helpers import TINY
from lesionuq.calibration import CALIBRATOR_FILE, PlattCalibrator, load_calibration
from lesionuq.calibration import scorer as calibrated_scorer
from lesionuq.cli import app
from lesionuq.config import METHODS, CalibrationConfig, ConfigError, ExperimentConfig
from lesionuq.errors import InputWarning
from lesionuq.evaluation.calibration_metrics import CALIBRATION_COLUMNS
from lesionuq.evaluation.curves import ac_auc
from lesionuq.io import InputError
from lesionuq.lesions.dataset import LesionSet
from lesionuq.pipeline.evaluate import score_fold, stage_evaluate
from lesionuq.pipeline.experiment import run_experiment
from lesionuq.pipeline.fit import is_calibrated, stage_fit
from lesionuq.predict import load_model, predict_scan
from lesionuq.predict.model import UNCALIBRATED_NOTE, FittedModel
from lesionuq.rundir import RunDir
from lesionuq.scorers.default_method import DEFAULT_METHOD_FILE
from lesionuq.shift import SHIFT_FILE

LEARNED = [m for m in METHODS if is_calibrated(m, TINY)]


def _stamps(run):
    return {p: p.stat().st_mtime_ns for p in run.glob("fold_*/scorers/*/stamp.json")}


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
    root, csv, _ = tiny_run
    dst = tmp_path_factory.mktemp("review") / "run"
    shutil.copytree(root / "run", dst)
    return dst, csv


def _thick_lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Resample onto a 0.9 x 0.9 x 3 mm grid in LPS orientation (linear), same field of view."""
    zooms = np.array([0.9, 0.9, 3.0])
    src_zooms = np.asarray(img.header.get_zooms()[:3])
    extent = np.asarray(img.shape) * src_zooms
    shape = np.ceil(extent / zooms).astype(int)
    origin = img.affine[:3, :3] @ (np.asarray(img.shape) - 1) * [1, 1, 0] + img.affine[:3, 3]
    target = np.diag([-0.9, -0.9, 3.0, 1.0])
    target[:3, 3] = origin
    m = np.linalg.solve(img.affine, target)
    data = ndimage.affine_transform(
        np.asarray(img.dataobj, dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(shape)
    )
    return nib.Nifti1Image(data.astype(np.float32), target)


# --------------------------------------------------------------------------- config


def test_calibration_config_is_checked():
    cfg = ExperimentConfig.from_dict({"calibration": {"review_target": "fp:0.5"}})
    assert cfg.calibration == CalibrationConfig(review_target="fp:0.5")
    with pytest.raises(ConfigError, match=r"config\.calibration\.review_target"):
        ExperimentConfig.from_dict({"calibration": {"review_target": "tp:1.5"}})
    with pytest.raises(ConfigError, match="did you mean 'isotonic'"):
        ExperimentConfig.from_dict({"calibration": {"method": "isotonc"}})
    with pytest.raises(ConfigError, match="n_inner"):
        ExperimentConfig.from_dict({"calibration": {"n_inner": 1}})


# --------------------------------------------------------------------------- fit


def test_fit_stores_calibration_from_validation_lesions(tiny_run):
    root, _, _ = tiny_run
    rd = RunDir(root / "run")
    _, _, splits = rd.read_plan()
    for split in splits:
        val = LesionSet.load(rd.lesion_set(split.fold, "val"))
        for m in METHODS:
            path = rd.scorer(split.fold, m) / CALIBRATOR_FILE
            assert path.is_file() == (m in LEARNED)
            if m not in LEARNED:
                continue
            cal, iou_cal, meta = load_calibration(path)
            assert cal.n_ == len(val)  # fitted on one out-of-fold score per validation lesion
            assert meta["oof_is_tp"] == val.is_tp.tolist()
            assert len(meta["oof_p_fp"]) == len(val)
            assert (iou_cal is not None) == m.endswith("_reg")
        ref = json.loads((rd.fold(split.fold) / SHIFT_FILE).read_text())
        assert ref["n"] == len(split.val)
        assert {"slice_thickness", "in_plane", "mean_entropy", "q99"} <= set(ref["features"])


def test_fit_cross_fits_on_validation_only_and_refits_only_calibrated(run_copy, monkeypatch):
    run, csv = run_copy
    rd = RunDir(run)
    _, _, splits = rd.read_plan()
    seen = []
    real = calibrated_scorer.cross_fit

    def spy(factory, lesions, **kwargs):
        seen.append((set(lesions.table["case_id"].astype(str)), len(lesions)))
        return real(factory, lesions, **kwargs)

    monkeypatch.setattr(calibrated_scorer, "cross_fit", spy)  # what CalibratedScorer calls
    before = _stamps(run)
    cfg = TINY.replace(calibration=CalibrationConfig(method="isotonic", n_inner=2))
    run_experiment(csv, run, cfg, progress=False, stop_after="graphs")
    stage_fit(run, progress=False)
    changed = {p.parent.name for p in before if p.stat().st_mtime_ns != before[p]}
    assert changed == set(LEARNED)
    assert len(seen) == len(LEARNED) * len(splits)
    for split in splits:
        n_val = len(LesionSet.load(rd.lesion_set(split.fold, "val")))
        calls = [s for s in seen if s[1] == n_val and s[0] <= set(split.val)]
        assert calls, f"fold {split.fold}: no cross-fit on its validation lesions"
    for split in splits:
        cal, _, _ = load_calibration(rd.scorer(split.fold, "gcnn_classif") / CALIBRATOR_FILE)
        assert cal.kind == "isotonic"

    # a new review target only re-chooses the operating point from the stored P(FP)
    before = _stamps(run)
    cfg = cfg.replace(calibration=CalibrationConfig("isotonic", 2, review_target="fp:0.5"))
    run_experiment(csv, run, cfg, progress=False, stop_after="graphs")
    stage_fit(run, progress=False)
    assert _stamps(run) == before
    for split in splits:
        _, _, meta = load_calibration(rd.scorer(split.fold, "gcnn_classif") / CALIBRATOR_FILE)
        p, tp = np.array(meta["oof_p_fp"]), np.array(meta["oof_is_tp"])
        op = meta["operating_point"]
        if (~tp).sum() == 0:
            assert op is None
            continue
        assert op["target"] == "fp:0.5"
        assert (p[~tp] >= op["threshold"]).mean() >= 0.5  # the target holds on validation


# --------------------------------------------------------------------------- evaluate


def test_evaluate_writes_calibrated_columns_and_new_tables(run_copy):
    run, _ = run_copy  # other tests refit the shared tiny run's scorers: evaluate a copy
    stage_evaluate(run, progress=False)
    rd = RunDir(run)
    _, _, splits = rd.read_plan()
    res = run / "results"
    lesions = pd.read_csv(res / "lesions.csv", dtype={"case_id": str})
    for split in splits:
        raw = score_fold(run, split, METHODS)
        got = lesions[lesions.fold == split.fold].reset_index(drop=True)
        for m in METHODS:
            path = rd.scorer(split.fold, m) / CALIBRATOR_FILE
            if m in ("gcnn_classif", "metaseg_classif"):
                cal = load_calibration(path)[0]
                want = cal.predict(raw[m].to_numpy()) if len(raw) else np.zeros(0)
            else:  # baselines and regressors keep their raw score (1 - IoU_hat)
                want = raw[m].to_numpy()
            np.testing.assert_allclose(got[m].to_numpy(), want, rtol=1e-6, atol=1e-12)
            # strictly increasing map: the ranking (hence every AUC) is the raw one
            assert (np.argsort(got[m], kind="stable") == np.argsort(want, kind="stable")).all()

    cal = pd.read_csv(res / "calibration.csv")
    assert list(cal.columns) == list(CALIBRATION_COLUMNS)
    if len(lesions):
        assert set(cal["method"]) == set(LEARNED)
        assert set(cal["stage"]) == {"before", "after"}
        assert set(cal["fold"].astype(str)) == {"all"} | {str(s.fold) for s in splits}
        assert cal["ece"].between(0, 1).all() and cal["brier"].between(0, 1).all()
        assert cal.loc[cal.method == "gcnn_classif", "mae"].isna().all()
        assert cal.loc[cal.method == "gcnn_reg", "mae"].notna().all()
        assert (res / "calibration.png").is_file()
    op = pd.read_csv(res / "operating_point.csv")
    assert {"fold", "method", "target", "threshold", "fp_flagged", "tp_flagged"} <= set(op)

    t1 = pd.read_csv(res / "table1.csv")
    assert list(t1.columns[:4]) == ["fold", "dice", "n_tp", "n_fp"]
    # the overlap rule is looser than IoU >= 0.25: never fewer detections
    assert (t1["overlap_lesion_tpr"] >= t1["iou_lesion_tpr"] - 1e-12).all()
    assert t1["ndsc"].between(0, 1).all()
    ret = pd.read_csv(res / "retention.csv")
    assert len(ret) == len(splits) * len(METHODS)
    assert ret["f1_retention_auc"].between(0, 1).all()
    page = (res / "report.html").read_text()
    for title in ("Calibration of P(FP)", "Operating point", "Lesion-level detection"):
        assert title in page


def test_calibration_keeps_the_auc_on_a_constructed_case():
    rng = np.random.default_rng(0)
    is_tp = rng.random(200) < 0.6
    raw = np.clip(np.where(is_tp, 0.1, 0.9) + rng.normal(0, 0.3, 200), 1e-9, 1 - 1e-9)
    raw[:5] = [1e-9, 1e-9, 0.998, 0.998, 0.5]  # saturated and tied values
    cal = PlattCalibrator().fit(raw, ~is_tp)
    assert ac_auc(cal.predict(raw), is_tp) == pytest.approx(ac_auc(raw, is_tp), abs=1e-12)


# --------------------------------------------------------------------------- predict


def _model_with_calibration(folder, p_oof, is_tp, target="tp:0.95"):
    from lesionuq.operating_point import OperatingPoint

    cal = PlattCalibrator().fit(p_oof, ~is_tp)
    op = OperatingPoint.choose(p_oof, is_tp, target).to_dict()
    meta = {"oof_p_fp": p_oof.tolist(), "oof_is_tp": is_tp.tolist(), "operating_point": op}
    return FittedModel(folder, TINY, None, {}, calibrator=cal, calibration=meta)


def test_review_rule_order_and_target_met(tmp_path):
    rng = np.random.default_rng(1)
    is_tp = rng.random(60) < 0.5
    p = np.where(is_tp, rng.uniform(0, 0.6, 60), rng.uniform(0.3, 1.0, 60))
    model = _model_with_calibration(tmp_path, p, is_tp)
    assert model.review_rule(0.7).threshold == 0.7  # --threshold overrides everything
    stored = model.review_rule()
    assert stored.source == "stored operating point" and stored.target == "tp:0.95"
    assert (p[is_tp] >= stored.threshold).mean() <= 0.05
    fp = model.review_rule(review_target="fp:0.5")
    assert fp.source == "review target" and (p[~is_tp] >= fp.threshold).mean() >= 0.5
    n_tp, n_fp = int(is_tp.sum()), int((~is_tp).sum())
    assert f"on the 60 validation lesions ({n_tp} true, {n_fp} false positives)" in fp.describe()
    assert "few validation lesions" in fp.describe()  # 60 < 100
    with pytest.raises(InputError, match=r"tp:0\.95"):
        model.review_rule(review_target="half")
    old = FittedModel(tmp_path, TINY, None, {})
    assert old.review_rule().threshold == 0.5 and not old.calibrated
    np.testing.assert_array_equal(old.p_fp(np.array([0.2, 0.9])), [0.2, 0.9])
    with pytest.raises(InputError, match="calibrated model folder"):
        old.review_rule(review_target="tp:0.9")


@pytest.fixture(scope="module")
def scans(tiny_run, tmp_path_factory):
    """(fold_0 folder, an in-distribution scan, its 0.9 x 0.9 x 3 mm LPS resampling).

    The tiny run has one validation scan per fold, so its reference is that scan's
    profile: the in-distribution scan is that validation scan (a test scan may differ in
    mean entropy by more than the 10 % tolerance of a single-scan reference).
    """
    root, csv, _ = tiny_run
    rd = RunDir(root / "run")
    split = rd.read_plan()[2][0]
    cases = pd.read_csv(csv, dtype={"case_id": str}).set_index("case_id")
    image = csv.parent / cases.loc[split.val[0], "flair"]
    thick = tmp_path_factory.mktemp("thick") / "thick_lps.nii.gz"
    nib.save(_thick_lps(nib.load(str(image))), str(thick))
    return _as_if_learned(rd.fold(0), tmp_path_factory.mktemp("model")), image, thick


def _as_if_learned(fold, out):
    """A copy of a tiny-run fold whose stamp says its U-Net learned (validation Dice 0.6).

    The tiny U-Net trains 4 steps and does not learn (Dice ~0.001), which ``predict`` says
    in every scan's warnings; these tests see the shift and calibration warnings alone.
    """
    from lesionuq.rundir import read_stamp, write_stamp

    folder = out / fold.name
    shutil.copytree(fold, folder, ignore=shutil.ignore_patterns("*test", "*val", "graphs"))
    stamp = read_stamp(folder / "stamp_train.json")
    write_stamp(folder / "stamp_train.json", **{**stamp, "best_dice": 0.6})
    return folder


def test_a_unet_that_did_not_learn_is_in_every_scans_warnings(tiny_run, scans, tmp_path):
    root, _, _ = tiny_run
    fold = RunDir(root / "run").fold(0)  # the real tiny fold: its U-Net did not learn
    _, image, _ = scans
    dice = json.loads((fold / "stamp_train.json").read_text())["best_dice"]
    assert load_model(scans[0]).training is None and dice < 0.2
    res = predict_scan(fold, [image], tmp_path / "out", progress=False)
    (note,) = [w for w in res.warnings if "did not learn" in w]
    assert note.startswith(
        f"This model's U-Net did not learn to segment (best validation Dice {dice:.3f} at epoch"
    )
    assert res.warnings[0] == note  # before the review warnings: it voids them all
    for name in ("prediction.json", "lesions.json"):
        assert note in json.loads((tmp_path / "out" / name).read_text())["warnings"]


def test_predict_in_distribution_does_not_warn(scans, tmp_path):
    folder, image, _ = scans
    res = predict_scan(folder, [image], tmp_path / "out", progress=False)
    assert res.warnings == []
    meta = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert meta["warnings"] == [] and meta["calibrated"] is True
    side = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert side["threshold"] == res.threshold and side["calibration"]["kind"] == "platt"
    model = load_model(folder)
    assert res.threshold == model.review_rule().threshold
    # P(FP) in lesions.csv is the calibrated map of the raw GCNN output
    assert res.table["p_fp"].between(0, 1).all()


def test_thick_slice_lps_scan_warns_everywhere(scans, tmp_path):
    folder, _, thick = scans
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["predict", "--model", str(folder), "--out", str(out), "--image", str(thick), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: This scan is unlike the scans this model was validated on" in text
    assert "P(FP) values may be unreliable" in text
    meta = json.loads((out / "prediction.json").read_text())
    # the spline resampling's ripples widen the brain past the 4 mm grid: that input
    # warning comes first, then the shift warning
    crop, warning = meta["warnings"]
    assert "of the brain volume lies outside the target field of view" in crop
    assert "in-plane voxel size 0.9 mm vs 4 mm" in warning
    assert json.loads((out / "lesions.json").read_text())["warnings"] == [crop, warning]
    page = (out / "report.html").read_text()
    assert page.index("validated on") < page.index("<table")  # at the top
    assert "adapts the model" in warning and "<code>lesionuq refit</code> on a few" in page


def test_an_input_warning_is_one_of_the_scans_warnings(scans, tmp_path):
    """A scan without a zero background warns in the outputs, not only on stderr."""
    folder, image, _ = scans
    img = nib.load(str(image))
    data = np.asarray(img.dataobj, np.float32)
    offset = tmp_path / "offset.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > 0, data, 10.0), img.affine), str(offset))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # collected, not raised
        res = predict_scan(folder, [offset], tmp_path / "out", progress=False)
    (note,) = [w for w in res.warnings if "above the brain threshold" in w]
    assert note.startswith(f"{offset}: 100 % of the image is above the brain threshold 0")
    meta = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert note in meta["warnings"]
    assert note in json.loads((tmp_path / "out" / "lesions.json").read_text())["warnings"]


def test_old_model_folder_still_predicts(scans, tmp_path):
    folder, image, _ = scans
    old = tmp_path / "fold_0"
    shutil.copytree(folder, old, ignore=shutil.ignore_patterns("*test", "*val", "graphs"))
    for p in [*old.glob(f"scorers/*/{CALIBRATOR_FILE}"), old / SHIFT_FILE]:
        p.unlink()
    (old / DEFAULT_METHOD_FILE).unlink(missing_ok=True)  # newer than calibration too
    res = predict_scan(old, [image], tmp_path / "out", progress=False)
    assert res.threshold == 0.5
    assert res.warnings == [UNCALIBRATED_NOTE[0].upper() + UNCALIBRATED_NOTE[1:]]
    side = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert side["threshold_source"] == "default (uncalibrated model)"
    assert side["calibration"] is None
    with pytest.raises(InputError, match="calibrated model folder"):
        predict_scan(old, [image], tmp_path / "o2", progress=False, review_target="tp:0.9")


def test_every_learned_scorer_is_calibrated_and_no_fixed_one() -> None:
    assert set(LEARNED) == {"gcnn_classif", "gcnn_reg", "metaseg_classif", "metaseg_reg"}
    assert is_calibrated("gcnn_ens", TINY)  # a registered learned method beyond the paper
    assert not any(is_calibrated(m, TINY) for m in ("size", "entropy_mean", "pcs_logsum"))


def test_predict_reports_the_folders_default_method(scans, tmp_path):
    folder, image, _ = scans
    chosen = json.loads((folder / DEFAULT_METHOD_FILE).read_text())
    model = load_model(folder)
    assert model.p_fp_method == chosen["method"]
    res = predict_scan(model, [image], tmp_path / "out", progress=False)
    side = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert side["p_fp_method"] == chosen["method"]
    assert side["p_fp_method_reason"] == chosen["reason"]
    assert side["p_fp_method_validation_auc"] == chosen["val_auc"]
    full = side["p_fp_method_validation_auc_full"]  # the tiny run fits with half fits
    assert full == chosen["val_auc_full"] and "gcnn_classif" in full
    page = (tmp_path / "out" / "report.html").read_text()
    assert "P(FP) method" in page and "Validation AUC of the untrained baselines" in page
    # the note names the method once: a reason that starts with it gets no prefix
    m, d = model.p_fp_method, model.default
    assert d is not None
    model.default = dataclasses.replace(d, reason=f"{m} ranked the lesions best.")
    assert model.p_fp_note().startswith(f"{m} ranked the lesions best. Validation AUC")
    model.default = dataclasses.replace(d, reason="nothing to rank.")
    assert model.p_fp_note().startswith(f"{m}: nothing to rank.")
    model.default = d
    # p_fp is the chosen method's calibrated P(FP): a monotone map of its raw score
    raw = res.table[f"u_{chosen['method']}"] if chosen["method"] != "gcnn_classif" else None
    if raw is not None and len(res.table) > 1:
        order = np.argsort(raw.to_numpy(), kind="stable")
        assert np.all(np.diff(res.table["p_fp"].to_numpy()[order]) >= -1e-12)


def test_a_learned_default_is_calibrated_by_its_own_folders_calibrator(scans, tmp_path):
    """A default naming a learned scorer reports that scorer's calibrated P(FP), from its
    own calibration.json, even where default_method.json also carries a calibrator (as a
    hand-edited or a re-chosen file may: a baseline default's Platt map)."""
    folder, image, _ = scans
    copy = tmp_path / "fold_0"
    shutil.copytree(folder, copy)
    chosen = json.loads((copy / DEFAULT_METHOD_FILE).read_text())
    base = chosen["best_baseline"]
    stale = PlattCalibrator(transform="identity").fit(np.linspace(0, 1, 9), np.arange(9) > 4)
    chosen |= {"method": "metaseg_classif", "reason": "metaseg_classif ranked best.",
               "calibrator": {"calibrator": stale.to_dict()}}  # fmt: skip
    chosen["learned"] = sorted({*chosen["learned"], "metaseg_classif"})
    (copy / DEFAULT_METHOD_FILE).write_text(json.dumps(chosen))
    # the tiny run's calibrator is flat (1 TP lesion): store one that separates
    path = copy / "scorers" / "metaseg_classif" / CALIBRATOR_FILE
    p_val = np.linspace(0.01, 0.99, 21)
    platt = PlattCalibrator().fit(p_val, p_val + 0.1 * np.sin(9 * p_val) > 0.5)
    path.write_text(json.dumps({**json.loads(path.read_text()), "calibrator": platt.to_dict()}))
    model = load_model(copy)
    assert model.p_fp_method == "metaseg_classif" and base != "metaseg_classif"
    cal, _, payload = load_calibration(path)
    assert model.calibration == payload and model.calibrator.to_dict() == cal.to_dict()
    res = predict_scan(model, [image], tmp_path / "out", progress=False)
    side = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert side["p_fp_method"] == "metaseg_classif"
    assert side["p_fp_method_reason"] == "metaseg_classif ranked best."
    assert np.ptp(res.table["p_fp"].to_numpy()) > 0  # not the flat calibrator of the run
    from lesionuq.predict.infer import _calibrate

    raw = np.array([0.01, 0.2, 0.5, 0.9, 0.99])
    out = _calibrate(model, {"gcnn_classif": np.full(5, 0.5), "metaseg_classif": raw,
                             "gcnn_reg": np.full(5, 0.5)})  # fmt: skip
    np.testing.assert_allclose(out["gcnn_classif"], np.clip(cal.predict(raw), 0.0, 1.0))
    assert np.all(np.diff(out["gcnn_classif"]) > 0)  # Platt: increasing
