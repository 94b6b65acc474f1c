"""``gcnn_auto`` (SelectedScorer), ``gcnn_stack`` (StackedScorer): fitted on validation only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from helpers import random_lesion_set
from lesionuq.config import ExperimentConfig, GCNNConfig
from lesionuq.evaluation.curves import ac_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.base import LesionScorer
from lesionuq.scorers.registry import make_estimators
from lesionuq.scorers.select import (
    CANDIDATES,
    STACK_CANDIDATES,
    SelectedScorer,
    StackedScorer,
    selection_aucs,
)

GCNN = GCNNConfig(hidden=8, epochs=2, batch_size=4)


def _named(candidates: tuple[str, ...]) -> list:
    """The candidates as (name, unfitted scorer) pairs, built from the catalogue."""
    return make_estimators(candidates, ExperimentConfig(gcnn=GCNN))


def _with_cases(lesions: LesionSet, n_cases: int) -> LesionSet:
    table = lesions.table.copy()
    table["case_id"] = [f"c{i % n_cases}" for i in range(len(table))]
    return LesionSet(table, lesions.graphs)


def _plant(lesions: LesionSet, column: str, informative: bool, seed: int) -> LesionSet:
    """``column`` = 1 - IoU (+ tiny noise): ranks every FP above every TP when informative."""
    table = lesions.table.copy()
    rng = np.random.default_rng(seed)
    if informative:
        table[column] = 1.0 - table["iou_adj"] + 1e-3 * rng.random(len(table))
    else:
        table[column] = rng.random(len(table))
    return LesionSet(table, lesions.graphs)


def test_a_perfect_column_is_chosen_and_keeps_its_ranking_on_new_lesions(one_thread):
    val = _plant(_with_cases(random_lesion_set(30, seed=3), 6), "variance_mean", True, 0)
    test = _plant(random_lesion_set(20, seed=4), "variance_mean", True, 1)
    candidates = ("entropy_mean", "variance_mean", "size", "metaseg_classif", "gcnn_classif")
    s = SelectedScorer(_named(candidates), n_inner=3, seed=0).fit(val, progress=False)
    assert s.choice_ == "variance_mean"
    assert s.inner_auc_["variance_mean"] == pytest.approx(1.0)
    assert set(s.inner_auc_) == set(s.candidates)
    p = s.score(test)
    assert p.shape == (20,) and np.all((p > 0) & (p < 1))
    # the Platt map is strictly increasing: same order as the chosen column, AUC 1 on test
    u = test.table["variance_mean"].to_numpy()
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(u, kind="stable"))
    assert ac_auc(p, test.is_tp) == pytest.approx(1.0)
    # FP lesions (high 1 - IoU) get a higher P(FP) than TP lesions
    assert p[~test.is_tp].min() > p[test.is_tp].max()


def test_a_tie_goes_to_the_earlier_simpler_candidate(one_thread):
    val = _with_cases(random_lesion_set(24, seed=5), 4)
    for column in ("entropy_mean", "pcs_logsum"):
        val = _plant(val, column, True, 2)
    s = SelectedScorer(_named(("pcs_logsum", "entropy_mean")), seed=0).fit(val)
    assert s.inner_auc_ == {"pcs_logsum": 1.0, "entropy_mean": 1.0}
    assert s.choice_ == "pcs_logsum"


def test_learned_candidates_are_judged_out_of_fold():
    """A learned candidate's AUC comes from inner folds that never saw the lesion scored."""

    class Memorise:  # AUC 1 on lesions it was fitted on, 0.5 (all tied) on others
        requires_fit = True

        def fit(self, lesions, progress=False):
            self.seen_ = set(lesions.table["lesion_id"])
            self.fp_ = set(lesions.table.loc[~lesions.is_tp, "lesion_id"])
            return self

        def score(self, lesions):
            ids = lesions.table["lesion_id"]
            return np.array([1.0 if i in self.fp_ else 0.5 for i in ids], dtype=np.float64)

    val = _with_cases(random_lesion_set(24, seed=6), 4)
    fold = np.arange(24) % 3
    aucs, scores = selection_aucs({"memorise": Memorise}, val, fold)
    assert np.all(scores["memorise"] == 0.5)  # never scored by a model that saw it
    assert aucs["memorise"] == pytest.approx(0.5)


def test_registered_gcnn_auto_saves_and_loads_with_the_same_scores(tmp_path, one_thread):
    cfg = ExperimentConfig(gcnn=GCNN, seed=4)
    s = make_scorer("gcnn_auto", cfg)
    assert isinstance(s, SelectedScorer) and s.seed == 4
    assert dict(s.estimators)["gcnn_classif"].cfg == GCNN  # the candidates get cfg.gcnn
    assert s.n_inner == cfg.calibration.n_inner
    val = _plant(_with_cases(random_lesion_set(30, seed=7), 6), "size", False, 3)
    test = random_lesion_set(9, seed=8)
    s.fit(val)
    s.save(tmp_path / "auto")
    assert (tmp_path / "auto" / "chosen" / "scorer.json").is_file()
    loaded = load_scorer("gcnn_auto", tmp_path / "auto")
    assert loaded.choice_ == s.choice_ and loaded.inner_auc_ == s.inner_auc_
    np.testing.assert_array_equal(loaded.score(test), s.score(test))


def test_one_class_or_too_few_lesions_keep_the_first_candidate():
    one = random_lesion_set(1, seed=0)
    s = SelectedScorer(_named(CANDIDATES)).fit(one)
    assert s.choice_ == "metaseg_classif"  # the default candidates' first
    s = SelectedScorer(_named(("entropy_mean", "gcnn_classif"))).fit(one)
    assert s.choice_ == "entropy_mean"
    u = one.table["entropy_mean"].to_numpy()
    np.testing.assert_allclose(s.score(one), 1.0 / (1.0 + np.exp(-u)))
    tp_only = random_lesion_set(10, seed=0)
    table = tp_only.table.assign(iou_adj=0.9, is_tp=True)
    s = SelectedScorer(_named(("size", "metaseg_classif"))).fit(
        LesionSet(pd.DataFrame(table), tp_only.graphs)
    )
    assert s.choice_ == "size" and all(np.isnan(v) for v in s.inner_auc_.values())


def test_unknown_or_self_candidates_are_refused():
    val = random_lesion_set(6, seed=0)
    with pytest.raises(ValueError, match="Unknown scoring method 'nope'"):
        _named(("entropy_mean", "nope"))  # the registry builds no unknown candidate
    size = make_scorer("size", ExperimentConfig())
    for bad in (_named(("gcnn_auto",)), [], [("size", size), ("size", size)], [("x", "size")]):
        with pytest.raises(ValueError, match="bad candidates"):
            SelectedScorer(bad).fit(val)


def test_stacking_weighs_an_informative_candidate_over_a_random_one(one_thread):
    val = _with_cases(random_lesion_set(40, seed=9), 8)
    val = _plant(_plant(val, "variance_mean", True, 4), "entropy_mean", False, 5)
    test = random_lesion_set(30, seed=10)
    test = _plant(_plant(test, "variance_mean", True, 6), "entropy_mean", False, 7)
    s = StackedScorer(_named(("entropy_mean", "variance_mean")), seed=0).fit(val)
    assert s.inner_auc_["variance_mean"] == pytest.approx(1.0)
    assert s.weights_["variance_mean"] > 20 * s.weights_["entropy_mean"] > 0
    p = s.score(test)
    assert p.shape == (30,) and np.all((p > 0) & (p < 1))
    assert ac_auc(p, test.is_tp) > 0.95
    # monotone in every candidate: more uncertainty in either never lowers P(FP)
    for column in ("entropy_mean", "variance_mean"):
        table = test.table.copy()
        table[column] += 0.1
        assert np.all(s.score(LesionSet(table, test.graphs)) > p)


def test_registered_gcnn_stack_saves_and_loads_with_the_same_scores(tmp_path, one_thread):
    cfg = ExperimentConfig(gcnn=GCNN, seed=2)
    s = make_scorer("gcnn_stack", cfg)
    assert isinstance(s, StackedScorer) and s.candidates == STACK_CANDIDATES
    assert s.candidates[-1] == "gcnn_classif" and s.n_inner == cfg.calibration.n_inner
    val = _plant(_with_cases(random_lesion_set(30, seed=11), 6), "variance_mean", True, 8)
    test = random_lesion_set(9, seed=12)
    s.fit(val)
    s.save(tmp_path / "stack")
    for c in s.candidates:
        assert (tmp_path / "stack" / "candidates" / c / "scorer.json").is_file()
    loaded = load_scorer("gcnn_stack", tmp_path / "stack")
    assert loaded.weights_ == s.weights_ and loaded.intercept_ == s.intercept_
    np.testing.assert_array_equal(loaded.score(test), s.score(test))
    # one lesion: no inner folds, every weight 1
    one = StackedScorer(_named(("entropy_mean", "size"))).fit(random_lesion_set(1))
    assert one.weights_ == {"entropy_mean": 1.0, "size": 1.0} and one.intercept_ == 0.0


def test_gcnn_stack_is_fitted_once_and_keeps_its_own_out_of_fold_p_fp(tmp_path, one_thread):
    """The experiment does not cross-fit a calibrator around a self-calibrated scorer."""
    from lesionuq.calibration import CALIBRATOR_FILE, fit_calibrated_scorer, load_calibration

    cfg = ExperimentConfig(gcnn=GCNN, seed=1)
    val = _plant(_with_cases(random_lesion_set(30, seed=13), 6), "variance_mean", True, 9)
    fits, oofs = [], []
    original = StackedScorer.fit_predict_oof

    def counted(self, lesions, progress=True):
        fits.append(len(lesions))
        oofs.append(original(self, lesions, progress))
        return oofs[-1]

    StackedScorer.fit_predict_oof = counted
    try:
        factory = lambda: make_scorer("gcnn_stack", cfg)  # noqa: E731
        scorer = fit_calibrated_scorer(factory, cfg, val, tmp_path, progress=False)
    finally:
        StackedScorer.fit_predict_oof = original
    assert fits[0] == 30  # once on all the validation lesions (no outer cross-fitting),
    # then the default rule's half-size fits: 2 per fold of the stacker's own inner split,
    # each on half of the other folds' cases
    assert len(fits) == 1 + 2 * len(set(scorer.oof_fold_)) and max(fits[1:]) < 30
    cal, iou_cal, meta = load_calibration(tmp_path / CALIBRATOR_FILE)
    assert meta["method"] == "self" and meta["n_inner"] == cfg.calibration.n_inner
    assert iou_cal is None
    test = random_lesion_set(12, seed=14)
    p = scorer.score(test)
    np.testing.assert_allclose(cal.predict(p), p, rtol=1e-9)  # the identity
    np.testing.assert_allclose(meta["oof_p_fp"], oofs[0], rtol=1e-12)
    assert meta["oof_is_tp"] == val.is_tp.tolist()
    # the stacker's own inner split (by case), which scored the out-of-fold values
    assert meta["oof_fold"] == scorer.oof_fold_.tolist()
    assert len(set(meta["oof_fold"])) == min(
        cfg.calibration.n_inner, val.table["case_id"].nunique()
    )
    # out of fold: led by the planted column (the other candidates move it a little)
    assert ac_auc(oofs[0], val.is_tp) > 0.95
    assert max(scorer.weights_, key=scorer.weights_.get) == "variance_mean"


def test_one_scan_leaves_the_learned_candidates_out(tmp_path, one_thread):
    """One scan cannot show how a learned scorer does on another: it gets weight 0."""
    val = _plant(_with_cases(random_lesion_set(20, seed=15), 1), "variance_mean", True, 10)
    s = StackedScorer(_named(("variance_mean", "size", "gcnn_classif")))
    with pytest.warns(UserWarning, match=r"one scan.*gcnn_classif"):
        s.fit(val)
    assert s.weights_["gcnn_classif"] == 0.0 and list(s.fitted_) == ["variance_mean", "size"]
    assert np.isnan(s.inner_auc_["gcnn_classif"]) and s.inner_auc_["variance_mean"] == 1.0
    assert s.weights_["variance_mean"] > s.weights_["size"] > 0
    s.save(tmp_path / "stack")
    assert not (tmp_path / "stack" / "candidates" / "gcnn_classif").exists()
    test = random_lesion_set(10, seed=16)
    np.testing.assert_array_equal(
        load_scorer("gcnn_stack", tmp_path / "stack").score(test), s.score(test)
    )
    # only learned candidates: nothing else to stack, so they stay (no warning)
    alone = StackedScorer(_named(("metaseg_classif",))).fit(val)
    assert list(alone.fitted_) == ["metaseg_classif"] and alone.weights_["metaseg_classif"] > 0


def test_inner_folds_are_by_case_from_two_cases_on():
    """2 cases and n_inner 3: 2 folds, one case each; 4 cases: 3 folds, no case split."""
    s = StackedScorer(_named(STACK_CANDIDATES), n_inner=3)
    for n_cases, n_folds in ((2, 2), (4, 3)):
        val = _with_cases(random_lesion_set(24, seed=17), n_cases)
        fold = s._inner_fold(val)
        cases = val.table["case_id"].to_numpy()
        assert sorted(set(fold)) == list(range(n_folds))
        assert all(np.unique(fold[cases == c]).size == 1 for c in np.unique(cases))


def test_candidates_are_instances_cloned_for_every_fit(one_thread):
    """As StackingClassifier(estimators=...): the given scorers stay unfitted."""
    cfg = ExperimentConfig(gcnn=GCNN, seed=2)
    s = make_scorer("gcnn_stack", cfg)
    assert [c for c, _ in s.estimators] == list(STACK_CANDIDATES)
    assert all(scorer.name == c for c, scorer in s.estimators)
    val = _plant(_with_cases(random_lesion_set(24, seed=18), 4), "variance_mean", True, 11)
    s.fit(val)
    given = dict(s.estimators)
    assert not hasattr(given["gcnn_classif"], "in_features_")  # never fitted itself
    assert all(s.fitted_[c] is not given[c] for c in s.fitted_)
    assert hasattr(s.fitted_["gcnn_classif"], "in_features_")


def test_the_catalogue_names_the_candidates_and_the_registry_builds_them():
    from lesionuq.methods import CATALOGUE

    for name, spec in CATALOGUE.items():
        assert name not in spec.candidates and set(spec.candidates) <= set(CATALOGUE)
    cfg = ExperimentConfig(gcnn=GCNN, sequences=("flair", "t1"))
    robust = dict(make_scorer("gcnn_stack_robust", cfg).estimators)["gcnn_robust"]
    assert robust.n_sequences == 2 and robust.cfg == GCNN
    assert make_scorer("gcnn_auto", cfg).candidates == CANDIDATES


def test_a_stack_saved_with_candidate_names_still_loads(tmp_path, one_thread):
    """Folders written before the candidates were instances name them in scorer.json."""
    import dataclasses
    import json

    cfg = ExperimentConfig(gcnn=GCNN, seed=5)
    val = _plant(_with_cases(random_lesion_set(24, seed=19), 4), "variance_mean", True, 12)
    test = random_lesion_set(9, seed=20)
    s = make_scorer("gcnn_stack", cfg).fit(val)
    s.save(tmp_path / "stack")
    meta_file = tmp_path / "stack" / "scorer.json"
    meta = json.loads(meta_file.read_text())
    assert [c for c, _ in meta["params"]["estimators"]] == list(STACK_CANDIDATES)
    # what the selector wrote before: candidate names and the settings they came from
    meta["params"] = {
        "gcnn": dataclasses.asdict(GCNN),
        "candidates": list(STACK_CANDIDATES),
        "n_inner": cfg.calibration.n_inner,
        "seed": 5,
        "name": "gcnn_stack",
        "sequences": ["flair"],
    }
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    loaded = load_scorer("gcnn_stack", tmp_path / "stack")
    assert repr(loaded) == repr(s)  # the same candidates, built from the stored settings
    np.testing.assert_array_equal(loaded.score(test), s.score(test))
    # and it saves in today's format, which loads again
    loaded.save(tmp_path / "again")
    again = load_scorer("gcnn_stack", tmp_path / "again")
    np.testing.assert_array_equal(again.score(test), s.score(test))


class _Growing(LesionScorer):
    """A learned scorer whose ranking needs ``enough`` training lesions.

    Fitted on at least ``enough`` lesions it scores with the table's ``good`` column,
    on fewer with ``bad``: a learning curve that is still rising.
    """

    def __init__(self, enough: int = 15, name: str = "growing") -> None:
        self.enough = enough
        self.name = name

    def fit(self, lesions: LesionSet, progress: bool = True) -> _Growing:
        self.n_train_ = len(lesions)
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        column = "good" if self.n_train_ >= self.enough else "bad"
        return lesions.table[column].to_numpy(dtype=np.float64)


def _rising(seed: int) -> LesionSet:
    """36 lesions of 6 scans, half FP: ``variance_mean`` ranks them well, ``good`` a
    little worse, ``bad`` at random."""
    val = _with_cases(random_lesion_set(36, seed=seed), 6)
    table = val.table.copy()
    rng = np.random.default_rng(seed)
    fp = np.arange(len(table)) % 2 == 1
    table["is_tp"] = ~fp
    table["iou_adj"] = np.where(fp, 0.0, 0.5)
    table["variance_mean"] = fp + rng.normal(0, 0.4, len(table))
    table["good"] = fp + rng.normal(0, 0.6, len(table))
    table["bad"] = rng.random(len(table))
    return LesionSet(table, val.graphs)


def test_a_learned_candidate_still_gaining_is_judged_at_its_full_size(tmp_path):
    """gcnn_auto's half fits (issue 31): the inner models see 24 of 36 lesions and rank
    with ``good``; the half-size ones see 12 and rank at random. Extrapolated to all 36
    lesions the learner beats the baseline that won out of fold."""
    val = _rising(seed=11)
    baseline = make_scorer("variance_mean", ExperimentConfig())
    pairs = [("variance_mean", baseline), ("growing", _Growing(enough=18))]
    plain = SelectedScorer(pairs, n_inner=3, seed=0).fit(val)
    assert plain.inner_auc_["growing"] < plain.inner_auc_["variance_mean"]
    assert plain.choice_ == "variance_mean" and plain.judged_auc_ == plain.inner_auc_
    full = SelectedScorer(pairs, n_inner=3, seed=0, half_fits=True).fit(val)
    assert full.inner_auc_ == plain.inner_auc_  # the same out-of-fold AUCs
    assert full.judged_auc_["variance_mean"] == full.inner_auc_["variance_mean"]  # untrained
    assert full.judged_auc_["growing"] > full.inner_auc_["variance_mean"]
    assert full.choice_ == "growing" and full.chosen_.n_train_ == 36
    full.save(tmp_path / "auto")
    back = SelectedScorer.load(tmp_path / "auto")
    assert back.judged_auc_ == full.judged_auc_ and back.choice_ == "growing"


def test_gcnn_auto_takes_half_fits_from_the_config_and_gcnn_stack_none():
    cfg = ExperimentConfig(gcnn=GCNN)
    assert make_scorer("gcnn_auto", cfg).half_fits is cfg.calibration.half_fits is True
    off = cfg.replace(calibration=dataclasses.replace(cfg.calibration, half_fits=False))
    assert make_scorer("gcnn_auto", off).half_fits is False
    assert make_scorer("gcnn_stack", cfg).half_fits is False  # it weighs, it does not choose
    assert make_scorer("gcnn_auto", cfg).half_splits == 1
    three = cfg.replace(calibration=dataclasses.replace(cfg.calibration, half_splits=3))
    assert make_scorer("gcnn_auto", three).half_splits == 3


def test_gcnn_stack_all_spans_the_logsums_that_gcnn_stack_cannot_reach(one_thread):
    """Every untrained baseline is an input: a lesion set where a logsum alone tells FP."""
    cfg = ExperimentConfig(gcnn=GCNN)
    stack_all = make_scorer("gcnn_stack_all", cfg)
    untrained = ["entropy_mean", "entropy_logsum", "variance_mean", "variance_logsum"]
    untrained += ["pcs_mean", "pcs_logsum", "size"]
    assert [c for c, _ in stack_all.estimators] == [*untrained, "gcnn_classif"]
    val = _plant(_with_cases(random_lesion_set(40, seed=21), 8), "entropy_logsum", True, 2)
    test = _plant(random_lesion_set(30, seed=22), "entropy_logsum", True, 3)
    for column in ("entropy_mean", "variance_mean", "pcs_mean"):  # the means tell nothing
        val, test = _plant(val, column, False, 4), _plant(test, column, False, 5)
    stack_all.fit(val, progress=False)
    assert max(stack_all.weights_, key=stack_all.weights_.get) == "entropy_logsum"
    assert ac_auc(stack_all.score(test), test.is_tp) > 0.95
    stack = make_scorer("gcnn_stack", cfg).fit(val, progress=False)
    assert "entropy_logsum" not in stack.weights_
    assert ac_auc(stack.score(test), test.is_tp) < 0.8  # outside its span


def test_gcnn_pair_stacks_the_papers_two_gcnns_and_scores_their_weighted_sum(one_thread, tmp_path):
    """P(FP) = sigmoid(a_c logit(P_classif) + a_r (1 - IoU_hat) + b), both a >= 1e-6."""
    from scipy import special

    from lesionuq.calibration import clipped_logit

    cfg = ExperimentConfig(gcnn=GCNN)
    pair = make_scorer("gcnn_pair", cfg)
    assert [c for c, _ in pair.estimators] == ["gcnn_classif", "gcnn_reg"]
    val = _with_cases(random_lesion_set(40, seed=31), 8)
    test = random_lesion_set(25, seed=32)
    pair.fit(val, progress=False)
    assert set(pair.weights_) == {"gcnn_classif", "gcnn_reg"}
    assert min(pair.weights_.values()) >= 1e-6
    z_c = clipped_logit(pair.fitted_["gcnn_classif"].score(test))
    z_r = pair.fitted_["gcnn_reg"].score(test)  # 1 - IoU_hat, as it is
    want = special.expit(
        pair.weights_["gcnn_classif"] * z_c + pair.weights_["gcnn_reg"] * z_r + pair.intercept_
    )
    np.testing.assert_allclose(pair.score(test), want, rtol=1e-12)
    pair.save(tmp_path / "pair")
    back = load_scorer("gcnn_pair", tmp_path / "pair")
    np.testing.assert_allclose(back.score(test), want, rtol=1e-12)
