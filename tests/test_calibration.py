from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from lesionuq.calibration import (
    CALIBRATOR_FILE,
    CalibratedScorer,
    IoURecalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    clipped_logit,
    cross_fit,
    fit_calibrated_scorer,
    fit_monotone_logistic,
    inner_folds,
    load_calibration,
    make_calibrator,
    save_calibration,
)
from lesionuq.config import CalibrationConfig, ExperimentConfig
from lesionuq.errors import NotFittedError
from lesionuq.evaluation.calibration_metrics import expected_calibration_error
from lesionuq.evaluation.curves import ac_auc
from lesionuq.io import InputError
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.baselines import MetaSegScorer


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores sigmoid(8 (p - 0.5)) of true P(FP) = p: ranked right, badly calibrated."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    is_fp = rng.random(n) < p
    return 1.0 / (1.0 + np.exp(-8.0 * (p - 0.5))), is_fp


def test_platt_recovers_a_known_logistic_map():
    # labels drawn from sigmoid(2 * logit(s) - 1): Platt must find a ~ 2, b ~ -1
    rng = np.random.default_rng(3)
    s = rng.uniform(0.02, 0.98, 20000)
    z = np.log(s / (1 - s))
    y = rng.random(s.size) < 1 / (1 + np.exp(-(2 * z - 1)))
    cal = PlattCalibrator().fit(s, y)
    assert cal.a_ == pytest.approx(2.0, abs=0.1)
    assert cal.b_ == pytest.approx(-1.0, abs=0.1)


def test_monotone_logistic_recovers_two_known_slopes_and_floors_a_harmful_one():
    # labels from sigmoid(1.5 z1 + 0.5 z2 - 0.5); z3 pushes the other way (true weight -1)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(40000, 3))
    y = rng.random(z.shape[0]) < 1 / (1 + np.exp(-(1.5 * z[:, 0] + 0.5 * z[:, 1] - z[:, 2] - 0.5)))
    a, b = fit_monotone_logistic(z, y, min_slope=1e-6)
    # leaving z3's effect out attenuates the others alike: their ratio stays 3
    assert 1.0 < a[0] < 1.55 and a[0] / a[1] == pytest.approx(3.0, rel=0.15)
    assert a[2] == 1e-6  # a negative weight is not allowed: the floor
    assert b == pytest.approx(-0.5, abs=0.2)
    # one column is exactly Platt scaling
    s = 1 / (1 + np.exp(-z[:, 0]))
    cal = PlattCalibrator(transform="identity").fit(z[:, 0], y)
    (a1,), b1 = fit_monotone_logistic(z[:, :1], y)
    assert (a1, b1) == (cal.a_, cal.b_)
    assert PlattCalibrator().fit(s, y).a_ == pytest.approx(a1, rel=1e-6)
    with pytest.raises(ValueError, match="finite"):
        fit_monotone_logistic(np.array([[np.nan]]), np.array([1]))
    with pytest.raises(ValueError, match="min_slope"):
        fit_monotone_logistic(z[:5], y[:5], min_slope=0.0)


def test_clipped_logit_and_the_identity_platt_map():
    z = clipped_logit(np.array([0.0, 0.5, 0.8, 1.0]))
    assert z[1] == 0.0 and z[2] == pytest.approx(np.log(4.0))
    assert z[0] == pytest.approx(-np.log(1e12), rel=1e-9)  # finite, not -inf
    assert z[3] == pytest.approx(np.log(1e12), rel=1e-5)  # 1 - 1e-12 rounds in float64
    p = np.array([0.01, 0.3, 0.99])
    np.testing.assert_allclose(PlattCalibrator.identity("logit", 7).predict(p), p, rtol=1e-12)
    ident = PlattCalibrator.identity("identity")
    np.testing.assert_allclose(ident.predict(np.array([0.0, 2.0])), [0.5, 1 / (1 + np.exp(-2))])
    assert PlattCalibrator.identity(n=7).to_dict()["n"] == 7


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_calibration_improves_ece_and_keeps_the_auc(kind):
    s, is_fp = _overconfident()
    s_test, fp_test = _overconfident(seed=1)
    s_test = np.round(s_test, 2)  # ties in the raw scores must stay ties, order kept
    cal = make_calibrator(kind).fit(s, is_fp)
    p = cal.predict(s_test)
    assert np.all((p >= 0) & (p <= 1))
    assert expected_calibration_error(p, fp_test) < expected_calibration_error(s_test, fp_test)
    # strictly monotone: same order, same ties, so the same AUC (exactly)
    order = np.argsort(s_test, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)
    assert np.all((np.diff(p[order]) > 0) == (np.diff(s_test[order]) > 0))
    assert ac_auc(p, ~fp_test) == ac_auc(s_test, ~fp_test)


def test_isotonic_without_tiebreak_ties_lesions():
    s, is_fp = _overconfident()
    plain = IsotonicCalibrator(tiebreak=0.0).fit(s, is_fp).predict(s)
    broken = IsotonicCalibrator().fit(s, is_fp).predict(s)
    assert np.unique(plain).size < s.size  # flat steps
    assert np.unique(broken).size == np.unique(s).size
    assert np.max(np.abs(plain - broken)) < 1e-6


def test_platt_slope_stays_positive_on_anticorrelated_scores():
    s = np.linspace(0.05, 0.95, 50)
    cal = PlattCalibrator().fit(s, s < 0.5)  # higher score = fewer FP
    assert cal.a_ == pytest.approx(1e-6)
    p = cal.predict(s)
    assert np.all(np.diff(p) > 0)
    assert p.mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("cal", [PlattCalibrator("identity"), IsotonicCalibrator()])
def test_json_round_trip_is_exact(cal):
    s, is_fp = _overconfident(200)
    cal.fit(s, is_fp)
    back = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert type(back) is type(cal)
    np.testing.assert_array_equal(back.predict(s), cal.predict(s))


def test_calibrator_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        PlattCalibrator().predict(np.zeros(2))
    with pytest.raises(ValueError, match="binary"):
        PlattCalibrator().fit(np.zeros(2), np.array([0, 2]))
    with pytest.raises(ValueError, match="unknown calibrator"):
        make_calibrator("beta")
    with pytest.raises(ValueError, match="unknown calibrator kind"):
        calibrator_from_dict({"kind": "beta"})


def test_iou_recalibrator_fixes_a_biased_regressor():
    rng = np.random.default_rng(0)
    iou = rng.random(400)
    pred = 0.5 * iou + 0.4 + rng.normal(0, 0.02, iou.size)  # squeezed and shifted
    for kind in ("isotonic", "linear"):
        rec = IoURecalibrator(kind).fit(pred, iou)
        assert rec.mae_after_ < 0.05 < rec.mae_before_
        back = IoURecalibrator.from_dict(json.loads(json.dumps(rec.to_dict())))
        np.testing.assert_array_equal(back.predict(pred), rec.predict(pred))


def test_inner_folds_group_by_case_and_stratify():
    is_tp = np.tile([True, True, False], 20)
    cases = np.repeat([f"c{i}" for i in range(10)], 6)
    fold = inner_folds(is_tp, cases, 5, seed=0)
    assert set(fold) == set(range(5))
    for c in np.unique(cases):  # a case never straddles two folds
        assert np.unique(fold[cases == c]).size == 1
    # too few cases: stratified over lesions instead, every fold has both classes
    fold = inner_folds(is_tp, np.repeat(["a", "b"], 30), 5, seed=0)
    for k in range(5):
        assert 0 < is_tp[fold == k].sum() < (fold == k).sum()


class _SpyScorer:
    """Score = FP rate of its training lesions + a small column term; logs what it saw."""

    log: ClassVar[list[_SpyScorer]] = []

    def __init__(self) -> None:
        self.trained: set[tuple[str, int]] = set()
        self.scored: set[tuple[str, int]] = set()
        _SpyScorer.log.append(self)

    @staticmethod
    def _keys(lesions: LesionSet) -> set[tuple[str, int]]:
        t = lesions.table
        return set(zip(t["case_id"], t["lesion_id"].astype(int), strict=True))

    def fit(self, lesions: LesionSet, progress: bool = True) -> _SpyScorer:
        self.trained |= self._keys(lesions)
        self.rate_ = float(1 - lesions.is_tp.mean())
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        self.scored |= self._keys(lesions)
        return self.rate_ + 0.1 * lesions.table["entropy_mean"].to_numpy()


def _lesions(n_cases: int = 10, per_case: int = 8, seed: int = 0) -> LesionSet:
    rng = np.random.default_rng(seed)
    n = n_cases * per_case
    ent = rng.random(n)
    is_tp = rng.random(n) > ent  # uncertain lesions are more often FP
    iou = np.where(is_tp, rng.uniform(0.1, 1, n), rng.uniform(0, 0.1, n))
    table = pd.DataFrame(
        {
            "case_id": np.repeat([f"case_{i}" for i in range(n_cases)], per_case),
            "lesion_id": np.tile(np.arange(1, per_case + 1), n_cases),
            "n_voxels": rng.integers(3, 300, n),
            "entropy_mean": ent,
            "variance_mean": 0.2 * ent + 0.01 * rng.random(n),
            "pcs_mean": 1 - ent / 2,
            "iou_adj": iou,
            "is_tp": is_tp,
        }
    )
    return LesionSet(table)


def test_cross_fit_calibrates_on_out_of_fold_scores_only():
    lesions = _lesions()
    _SpyScorer.log = []
    fit = cross_fit(_SpyScorer, lesions, n_inner=5, seed=0, kind="platt")
    inner, final = _SpyScorer.log[:-1], _SpyScorer.log[-1]
    assert len(inner) == 5
    everything = _SpyScorer._keys(lesions)
    for spy in inner:  # no inner scorer scored a lesion it was trained on
        assert spy.trained.isdisjoint(spy.scored)
        assert spy.trained | spy.scored == everything
    assert final.trained == everything and fit.scorer is final
    # each OOF score came from the scorer of its own inner fold
    for k, spy in enumerate(inner):
        idx = np.flatnonzero(fit.inner_fold == k)
        np.testing.assert_allclose(fit.oof_scores[idx], spy.score(lesions.subset(idx)))
    # the calibrator is exactly the one fitted on the OOF scores
    ref = PlattCalibrator().fit(fit.oof_scores, ~lesions.is_tp)
    assert (fit.calibrator.a_, fit.calibrator.b_) == (ref.a_, ref.b_)
    scorer, calibrator, oof = fit  # unpacks as the brief's triple
    assert scorer is final and calibrator is fit.calibrator and oof is fit.oof_scores
    assert fit.iou_calibrator is None


def test_cross_fit_metaseg_regressor_gets_iou_recalibration():
    lesions = _lesions(seed=1)
    fit = cross_fit(lambda: MetaSegScorer("reg"), lesions, n_inner=5, seed=0)
    assert fit.calibrator.transform == "identity" and fit.calibrator.a_ > 0
    assert fit.iou_calibrator is not None
    rec = fit.iou_calibrator
    assert np.isfinite(rec.mae_before_) and np.isfinite(rec.mae_after_)
    p = fit.calibrator.predict(fit.scorer.score(lesions))
    assert np.all((p > 0) & (p < 1))
    assert ac_auc(p, lesions.is_tp) == ac_auc(fit.scorer.score(lesions), lesions.is_tp)


def test_save_and_load_calibration(tmp_path):
    s, is_fp = _overconfident(100)
    cal = PlattCalibrator().fit(s, is_fp)
    rec = IoURecalibrator("linear").fit(s, 1 - s)
    path = save_calibration(tmp_path / "calibration.json", cal, rec, {"operating_point": {"t": 1}})
    back, back_rec, payload = load_calibration(path)
    np.testing.assert_array_equal(back.predict(s), cal.predict(s))
    np.testing.assert_array_equal(back_rec.predict(s), rec.predict(s))
    assert payload["operating_point"] == {"t": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_calibration(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        load_calibration(tmp_path / "none.json")


@pytest.mark.parametrize("task", ["classif", "reg"])
def test_calibrated_scorer_is_cross_fit_around_clones_of_its_estimator(task, tmp_path):
    """The wrapper gives cross_fit's numbers and fit_calibrated_scorer's file, template unfitted."""
    lesions = _lesions(seed=2)
    template = MetaSegScorer(task)
    cal = CalibratedScorer(template, n_inner=4, seed=3, method="platt").fit(lesions)
    with pytest.raises(NotFittedError):
        template.score(lesions)  # only clones are fitted
    ref = cross_fit(lambda: MetaSegScorer(task), lesions, n_inner=4, seed=3, kind="platt")
    np.testing.assert_array_equal(cal.oof_scores_, ref.oof_scores)
    np.testing.assert_array_equal(cal.inner_fold_, ref.inner_fold)
    assert (cal.calibrator_.a_, cal.calibrator_.b_) == (ref.calibrator.a_, ref.calibrator.b_)
    assert (cal.iou_calibrator_ is not None) == (task == "reg")
    assert cal.method_ == "platt" and cal.n_inner_ == 4
    np.testing.assert_array_equal(cal.oof_p_fp_, ref.calibrator.predict(ref.oof_scores))
    np.testing.assert_array_equal(cal.score(lesions), ref.scorer.score(lesions))
    p = cal.predict_p_fp(lesions)
    np.testing.assert_array_equal(p, ref.calibrator.predict(ref.scorer.score(lesions)))
    assert np.all((p > 0) & (p < 1))
    # the experiment's fold step writes the very same calibration.json
    cfg = ExperimentConfig(seed=3, calibration=CalibrationConfig("platt", 4, "tp:0.9", False))
    cal.save_calibration(tmp_path / "wrapper.json", "tp:0.9")
    fit_calibrated_scorer(lambda: MetaSegScorer(task), cfg, lesions, tmp_path, progress=False)
    assert (tmp_path / "wrapper.json").read_bytes() == (tmp_path / CALIBRATOR_FILE).read_bytes()
    meta = json.loads((tmp_path / CALIBRATOR_FILE).read_text())
    assert meta["method"] == "platt" and meta["n_inner"] == 4
    assert meta["oof_is_tp"] == lesions.is_tp.tolist()
    assert meta["oof_fold"] == ref.inner_fold.tolist()  # which inner model scored each
    assert len(set(meta["oof_fold"])) == 4
    assert meta["operating_point"]["target"] == "tp:0.9"


def test_half_fits_train_on_half_of_each_inner_folds_training_cases():
    from lesionuq.calibration import half_fit_scores

    lesions = _lesions(n_cases=10)
    cases = lesions.table["case_id"].astype(str).to_numpy()
    fold = inner_folds(lesions.is_tp, cases, 5, seed=0)
    _SpyScorer.log = []
    scores = half_fit_scores(_SpyScorer, lesions, fold, seed=4)
    assert scores.shape == (2, len(lesions)) and np.isfinite(scores).all()
    spies = _SpyScorer.log
    assert len(spies) == 10  # 2 per inner fold
    for k in range(5):
        first, second = spies[2 * k], spies[2 * k + 1]
        test = {(c, int(i)) for c, i in lesions.table[fold == k][["case_id", "lesion_id"]].values}
        other = {c for c in cases[fold != k]}
        got = [{c for c, _ in s.trained} for s in (first, second)]
        assert got[0].isdisjoint(got[1]) and got[0] | got[1] == other  # two halves of them
        assert {len(g) for g in got} == {4}  # 8 training cases, 4 and 4
        for s, row in zip((first, second), scores, strict=True):
            assert s.scored == test and s.trained.isdisjoint(test)
            idx = np.flatnonzero(fold == k)
            np.testing.assert_allclose(row[idx], s.score(lesions.subset(idx)))
    again = half_fit_scores(_SpyScorer, lesions, fold, seed=4)
    np.testing.assert_array_equal(again, scores)  # seeded


def test_half_fits_skip_a_half_with_one_class():
    from lesionuq.calibration import half_fit_scores

    lesions = _lesions(n_cases=4, per_case=6)
    t = lesions.table
    t["is_tp"] = t["case_id"].isin(["case_0", "case_1"])  # cases 0-1 all TP, 2-3 all FP
    fold = np.repeat([0, 1], 12)  # cases 0-1 | cases 2-3
    scores = half_fit_scores(_SpyScorer, lesions, fold, seed=0)
    assert np.isnan(scores).all()  # every half is one case of one class


def test_calibrated_scorer_half_fits_for_classifiers_only(tmp_path):
    from lesionuq.calibration import half_fit_scores

    lesions = _lesions(seed=2)
    cal = CalibratedScorer(MetaSegScorer("classif"), n_inner=4, seed=3, half_fits=True)
    cal.fit(lesions)
    want = half_fit_scores(lambda: MetaSegScorer("classif"), lesions, cal.inner_fold_, 3)
    np.testing.assert_array_equal(cal.half_scores_, want)
    cal.save_calibration(tmp_path / "c.json", "tp:0.9")
    assert json.loads((tmp_path / "c.json").read_text())["half_scores"] == want.tolist()
    reg = CalibratedScorer(MetaSegScorer("reg"), n_inner=4, seed=3, half_fits=True).fit(lesions)
    assert reg.half_scores_ is None  # a regressor is no default-method candidate
    reg.save_calibration(tmp_path / "r.json", "tp:0.9")
    assert "half_scores" not in json.loads((tmp_path / "r.json").read_text())


def test_half_fits_with_more_cuts_draw_distinct_cuts_until_none_is_left():
    from lesionuq.calibration import half_fit_scores

    lesions = _lesions(n_cases=8)
    cases = lesions.table["case_id"].astype(str).to_numpy()
    fold = np.repeat([0, 1], len(lesions) // 2)  # cases 0-3 | cases 4-7
    assert set(cases[fold == 0]) == {f"case_{i}" for i in range(4)}
    _SpyScorer.log = []
    scores = half_fit_scores(_SpyScorer, lesions, fold, seed=4, splits=4)
    assert scores.shape == (8, len(lesions))
    # 4 training cases have 3 distinct cuts into 2 + 2 ({ab|cd}, {ac|bd}, {ad|bc}):
    # rounds 0-2 use them all, round 3 has none left and stays NaN
    assert np.isfinite(scores[:6]).all() and np.isnan(scores[6:]).all()
    assert len(_SpyScorer.log) == 12  # 3 cuts x 2 halves x 2 inner folds
    for k in (0, 1):
        fits = [
            s
            for s in _SpyScorer.log
            if s.scored and {c for c, _ in s.scored} <= set(cases[fold == k])
        ]
        halves = [frozenset(c for c, _ in s.trained) for s in fits]
        cuts = {frozenset((halves[i], halves[i + 1])) for i in range(0, 6, 2)}
        assert len(cuts) == 3 and all(len(h) == 2 for h in halves)
        assert all(a | b == set(cases[fold != k]) for a, b in map(tuple, cuts))
    # round 0 is the cut of one round: an earlier run's half-size fits are unchanged
    one = half_fit_scores(_SpyScorer, lesions, fold, seed=4)
    np.testing.assert_array_equal(scores[:2], one)
    with pytest.raises(ValueError, match="splits"):
        half_fit_scores(_SpyScorer, lesions, fold, splits=0)


def test_the_configs_cuts_into_halves_reach_the_saved_half_size_fits(tmp_path):
    lesions = _lesions(seed=2)
    cfg = ExperimentConfig(seed=3, calibration=CalibrationConfig("platt", 4, "tp:0.9", True, 2))
    fit_calibrated_scorer(lambda: MetaSegScorer("classif"), cfg, lesions, tmp_path, progress=False)
    rows = json.loads((tmp_path / CALIBRATOR_FILE).read_text())["half_scores"]
    one = CalibratedScorer(MetaSegScorer("classif"), n_inner=4, seed=3, half_fits=True)
    one.fit(lesions)
    assert len(rows) == 4 and one.half_scores_ is not None
    assert rows[:2] == one.half_scores_.tolist()  # cut 0 is the one-cut fit's
    assert rows[2:] != rows[:2]
