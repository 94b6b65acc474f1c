"""The default P(FP) method of a model folder (lesionuq.scorers.default_method)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lesionuq.scorers.default_method import (
    MethodChoice,
    choose_default_method,
    validation_auc,
)

# 4 TP then 4 FP: a score ranks the lesions perfectly when every FP is above every TP
IS_TP = np.array([True] * 4 + [False] * 4)
PERFECT = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
# one FP (0.35) below two TP (0.4, 0.5): 14 of the 16 FP-TP pairs right -> 0.875
GOOD = np.array([0.1, 0.2, 0.4, 0.5, 0.35, 0.7, 0.8, 0.9])
# every pair wrong except ties: FP all below TP -> 0
REVERSED = PERFECT[::-1].copy()


def test_validation_auc_hand_values() -> None:
    assert validation_auc(PERFECT, IS_TP) == 1.0
    assert validation_auc(GOOD, IS_TP) == pytest.approx(14 / 16)
    assert validation_auc(REVERSED, IS_TP) == 0.0
    assert validation_auc(np.ones(8), IS_TP) == 0.5  # all tied: half
    assert math.isnan(validation_auc(PERFECT[:4], IS_TP[:4]))  # no FP


def test_learned_scorer_chosen_when_not_below_best_baseline() -> None:
    c = choose_default_method(
        {"gcnn_classif": PERFECT, "gcnn_stack": GOOD},
        {"entropy_mean": GOOD, "size": REVERSED},
        IS_TP,
    )
    assert c.method == "gcnn_classif" and not c.is_baseline
    assert c.best_baseline == "entropy_mean"
    assert c.val_auc == {"gcnn_classif": 1.0, "gcnn_stack": 0.875, "entropy_mean": 0.875,
                         "size": 0.0}  # fmt: skip
    assert "gcnn_classif" in c.reason and "100.0 %" in c.reason and "87.5 %" in c.reason


def test_a_tie_with_the_baseline_counts_and_order_breaks_learned_ties() -> None:
    c = choose_default_method(
        {"gcnn_stack": GOOD, "gcnn_classif": GOOD}, {"entropy_mean": GOOD}, IS_TP
    )
    assert c.method == "gcnn_classif"  # equal AUCs: the paper's first (order)
    c = choose_default_method(
        {"gcnn_stack": GOOD, "gcnn_classif": GOOD},
        {"entropy_mean": GOOD},
        IS_TP,
        order=("gcnn_stack", "gcnn_classif"),
    )
    assert c.method == "gcnn_stack"


def test_baseline_chosen_when_every_learned_scorer_ranks_worse() -> None:
    c = choose_default_method(
        {"gcnn_classif": GOOD, "gcnn_stack": REVERSED},
        {"entropy_mean": PERFECT, "variance_mean": GOOD},
        IS_TP,
    )
    assert c.method == "entropy_mean" and c.is_baseline
    assert "gcnn_classif, reached 87.5 %" in c.reason and "Platt" in c.reason
    assert c.baselines_text() == "entropy_mean 100.0 %, variance_mean 87.5 %"


def test_one_class_keeps_the_paper_method() -> None:
    tp = np.ones(8, dtype=bool)
    c = choose_default_method({"gcnn_classif": GOOD}, {"entropy_mean": PERFECT}, tp)
    assert c.method == "gcnn_classif" and "one class" in c.reason and c.best_baseline is None


def test_round_trip_through_json() -> None:
    c = choose_default_method({"gcnn_classif": GOOD}, {"entropy_mean": PERFECT}, IS_TP)
    again = MethodChoice.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c


def _fold_with(tmp_path, oof_gcnn: np.ndarray, column: np.ndarray):
    """A fold folder: entropy_mean fitted (its column = ``column``), gcnn_classif's oof."""
    from helpers import random_lesion_set
    from lesionuq.config import ExperimentConfig
    from lesionuq.scorers import make_scorer

    val = random_lesion_set(8, seed=1)
    val.table["is_tp"] = IS_TP
    val.table["entropy_mean"] = column
    fold = tmp_path / "fold_0"
    scorer = make_scorer("entropy_mean", ExperimentConfig()).fit(val)
    scorer.save(fold / "scorers" / "entropy_mean")
    g = fold / "scorers" / "gcnn_classif"
    g.mkdir(parents=True)
    (g / "scorer.json").write_text("{}")
    payload = {"calibrator": {}, "iou_calibrator": None, "oof_p_fp": oof_gcnn.tolist(),
               "oof_is_tp": IS_TP.tolist()}  # fmt: skip
    (g / "calibration.json").write_text(json.dumps(payload))
    return fold, val


def test_fit_writes_the_choice_and_a_baseline_calibrator(tmp_path) -> None:
    from lesionuq.scorers.default_method import fit_default_method, load_default_method

    fold, val = _fold_with(tmp_path, oof_gcnn=GOOD, column=PERFECT)
    c = fit_default_method(fold, val, "tp:0.75")
    assert c.method == "entropy_mean" and c.val_auc["gcnn_classif"] == pytest.approx(0.875)
    assert load_default_method(fold) == c
    from lesionuq.calibration import calibrator_from_dict

    cal = calibrator_from_dict(c.calibrator["calibrator"])
    p = cal.predict(PERFECT)
    assert np.all(np.diff(p) > 0)  # monotone: the ranking is the baseline's
    assert np.allclose(c.calibrator["oof_p_fp"], p)
    assert c.calibrator["operating_point"]["target"] == "tp:0.75"


def test_fit_keeps_the_learned_scorer_when_it_ranks_at_least_as_well(tmp_path) -> None:
    from lesionuq.scorers.default_method import fit_default_method

    fold, val = _fold_with(tmp_path, oof_gcnn=PERFECT, column=GOOD)
    c = fit_default_method(fold, val)
    assert c.method == "gcnn_classif" and c.calibrator is None
    assert c.best_baseline == "entropy_mean"


# the learned scorer's out-of-fold P(FP) from two inner models, the second 0.5 higher:
# each model ranks its own lesions perfectly, the pooled AUC is pulled down by the offset
OFFSET_FOLD = np.array([0, 0, 1, 1, 0, 0, 1, 1])
OFFSET_OOF = np.array([0.1, 0.2, 0.6, 0.7, 0.3, 0.4, 0.8, 0.9])


def test_pairs_within_inner_folds_undo_the_offset_of_separate_models() -> None:
    assert validation_auc(OFFSET_OOF, IS_TP) == pytest.approx(12 / 16)  # pooled
    pooled = choose_default_method({"gcnn_classif": OFFSET_OOF}, {"entropy_mean": GOOD}, IS_TP)
    assert pooled.method == "entropy_mean" and pooled.pairs == "pooled"
    c = choose_default_method(
        {"gcnn_classif": OFFSET_OOF},
        {"entropy_mean": GOOD},
        IS_TP,
        folds={"gcnn_classif": OFFSET_FOLD},
    )
    assert c.method == "gcnn_classif" and c.pairs == "within inner folds"
    assert c.val_auc["gcnn_classif"] == 1.0
    # the baseline on the same pairs: fold 0 holds TP 0.1, 0.2 / FP 0.35, 0.7 (4 of 4
    # right), fold 1 TP 0.4, 0.5 / FP 0.8, 0.9 (4 of 4): GOOD's one wrong pair spans folds
    assert c.val_auc["entropy_mean"] == 1.0
    assert "pairs within inner folds" in c.reason
    assert MethodChoice.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    old = c.to_dict()
    del old["pairs"]  # a default_method.json written before the field
    assert MethodChoice.from_dict(old).pairs == "pooled"


def test_a_learned_scorer_is_compared_with_the_baselines_on_its_own_pairs() -> None:
    base = np.array([0.1, 0.5, 0.3, 0.4, 0.2, 0.6, 0.7, 0.8])
    # gcnn_stack's folds are one (pooled): 3 wrong pairs -> base 13/16; the stack has two
    # wrong pairs and a tie -> 13.5/16, so it beats the baseline on its own pairs, though
    # not base's 7/8 on the paper's pairs (fold 0: 3 of 4 right, fold 1: 4 of 4)
    stack = np.array([0.1, 0.2, 0.4, 0.5, 0.35, 0.5, 0.8, 0.9])
    c = choose_default_method(
        {"gcnn_classif": REVERSED, "gcnn_stack": stack},
        {"entropy_mean": base},
        IS_TP,
        folds={"gcnn_classif": OFFSET_FOLD, "gcnn_stack": np.zeros(8, int)},
    )
    assert c.val_auc["entropy_mean"] == pytest.approx(7 / 8)  # on the paper's pairs
    assert c.val_auc["gcnn_stack"] == pytest.approx(13.5 / 16)
    assert c.method == "gcnn_stack"


def test_fit_reads_the_stored_inner_folds_or_recomputes_them(tmp_path) -> None:
    from lesionuq.calibration import inner_folds
    from lesionuq.scorers.default_method import fit_default_method

    fold, val = _fold_with(tmp_path, oof_gcnn=OFFSET_OOF, column=GOOD)
    cal = fold / "scorers" / "gcnn_classif" / "calibration.json"
    c = fit_default_method(fold, val)  # no oof_fold, no seed: pooled, as before
    assert c.pairs == "pooled" and c.method == "entropy_mean"
    payload = json.loads(cal.read_text())
    cal.write_text(json.dumps({**payload, "oof_fold": OFFSET_FOLD.tolist()}))
    c = fit_default_method(fold, val)
    assert c.pairs == "within inner folds" and c.method == "gcnn_classif"
    # an older file: the folds are recomputed with the experiment's seed and n_inner
    cal.write_text(json.dumps({**payload, "n_inner": 2, "method": "platt"}))
    c = fit_default_method(fold, val, seed=5)
    groups = val.table["case_id"].astype(str).to_numpy()
    expected = inner_folds(IS_TP, groups, 2, 5)
    assert c.pairs == "within inner folds"
    from lesionuq.evaluation.curves import within_fold_auc

    assert c.val_auc["gcnn_classif"] == pytest.approx(within_fold_auc(OFFSET_OOF, IS_TP, expected))
    # a self-calibrated scorer's split is its own: not recomputed
    cal.write_text(json.dumps({**payload, "n_inner": 2, "method": "self"}))
    assert fit_default_method(fold, val, seed=5).pairs == "pooled"


def test_default_method_rows_put_the_choice_beside_the_baselines_on_test(tmp_path) -> None:
    """results/default_method.csv: the chosen method's test AUC and the baselines'."""
    import pandas as pd

    from lesionuq.pipeline.evaluate import DEFAULT_METHOD_COLUMNS, default_method_rows
    from lesionuq.rundir import FoldSplit
    from lesionuq.scorers.default_method import DEFAULT_METHOD_FILE

    c = choose_default_method(
        {"gcnn_classif": PERFECT}, {"entropy_mean": GOOD, "size": REVERSED}, IS_TP
    )
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / DEFAULT_METHOD_FILE).write_text(json.dumps(c.to_dict()))
    # fold 1's test lesions: the GCNN ranks them 14 of 16, entropy_mean 16 of 16, size 0
    lesions = pd.DataFrame(
        {"fold": [0] * 2 + [1] * 8, "is_tp": [True, False, *IS_TP],
         "gcnn_classif": [0.0, 1.0, *GOOD], "entropy_mean": [0.0, 1.0, *PERFECT],
         "size": [0.0, 1.0, *REVERSED]}
    )  # fmt: skip
    methods = ["gcnn_classif", "entropy_mean", "size"]
    rows = default_method_rows(tmp_path, FoldSplit(1, (), (), ()), lesions, methods)
    assert list(rows.columns) == list(DEFAULT_METHOD_COLUMNS) and len(rows) == 1
    r = rows.iloc[0]
    assert (r.fold, r.method, r.pairs) == (1, "gcnn_classif", "pooled")
    assert (r.val_auc, r.val_best_baseline, r.val_best_baseline_auc) == (1.0, "entropy_mean", 0.875)
    assert r.test_auc == pytest.approx(14 / 16) and r.test_auc_gcnn_classif == r.test_auc
    assert r.test_auc_val_best_baseline == 1.0
    assert (r.test_best_baseline, r.test_best_baseline_auc) == ("entropy_mean", 1.0)
    assert np.isnan(r.val_auc_full)  # no half-size fits
    # a fold without default_method.json (fitted before the rule) has no row
    assert default_method_rows(tmp_path, FoldSplit(0, (), (), ()), lesions, methods).empty
    # with half-size fits: the extrapolated AUC beside the measured one, and in the report
    c.val_auc_full = {"gcnn_classif": 0.9}
    (tmp_path / "fold_1" / DEFAULT_METHOD_FILE).write_text(json.dumps(c.to_dict()))
    rows = default_method_rows(tmp_path, FoldSplit(1, (), (), ()), lesions, methods)
    assert rows.iloc[0].val_auc_full == 0.9
    from lesionuq.evaluation.report_sections import default_method_html

    (tmp_path / "results").mkdir()
    rows.to_csv(tmp_path / "results" / "default_method.csv", index=False)
    assert "100.0 (90.0 at full size)" in default_method_html(tmp_path)
    # a file written before the column existed still renders
    rows.drop(columns="val_auc_full").to_csv(tmp_path / "results" / "default_method.csv")
    html = default_method_html(tmp_path)
    assert "100.0" in html and "at full size" not in html


# --------------------------------------------------------------------------- learning curve
# two inner folds (K = 2): the full fit is one doubling beyond the out-of-fold models, as
# the half-size fits are one halving below them, so the extrapolation adds the whole gap


def test_extrapolated_auc_hand_values() -> None:
    from lesionuq.scorers.default_method import extrapolated_auc

    fold = OFFSET_FOLD  # 2 inner folds, each with 2 TP and 2 FP
    half = np.stack([PERFECT, REVERSED])  # within-fold AUCs 1 and 0: mean 0.5
    assert extrapolated_auc(0.75, half, IS_TP, fold) == pytest.approx(1.0)
    assert extrapolated_auc(0.9, half, IS_TP, fold) == 1.0  # 1.3, clipped
    # K = 3: the step to the full fit is log(3/2), a share log(1.5)/log(2) of a halving
    fold3 = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    want = 0.75 + (0.75 - 0.5) * math.log(1.5) / math.log(2)
    assert extrapolated_auc(0.75, np.stack([PERFECT, REVERSED]), IS_TP, fold3) == pytest.approx(
        want
    )
    # a flat curve leaves the AUC; a falling one lowers it
    assert extrapolated_auc(1.0, np.stack([PERFECT, PERFECT]), IS_TP, fold) == 1.0
    assert extrapolated_auc(0.25, half, IS_TP, fold) == pytest.approx(0.0)
    # a half without scores (NaN: not fitted) is left out of the mean
    nan_row = np.full(8, np.nan)
    seven_of_eight = np.array([0.1, 0.5, 0.3, 0.4, 0.45, 0.7, 0.8, 0.9])  # within folds
    got = extrapolated_auc(0.9, np.stack([seven_of_eight, nan_row]), IS_TP, fold)
    assert got == pytest.approx(0.9 + (0.9 - 0.875))
    assert extrapolated_auc(0.25, np.stack([nan_row, PERFECT]), IS_TP, fold) == 0.0  # -0.5
    # nothing to extrapolate from: one inner fold, or no half-size score at all
    assert extrapolated_auc(0.75, half, IS_TP, np.zeros(8, int)) == 0.75
    assert extrapolated_auc(0.75, np.stack([nan_row, nan_row]), IS_TP, fold) == 0.75


def test_a_learned_scorer_still_gaining_is_judged_at_its_full_size() -> None:
    """Out of fold it trails the baseline (0.875 < 1.0), but it rose from 0.5 at half
    size: extrapolated to all lesions it reaches 1.25, clipped to 1, and becomes the default."""
    # within inner fold 0 one FP (0.45) sits below one TP (0.5): 7 of the 8 pairs right
    learned = {"gcnn_classif": np.array([0.1, 0.5, 0.3, 0.4, 0.45, 0.7, 0.8, 0.9])}
    folds = {"gcnn_classif": OFFSET_FOLD}
    base = {"entropy_mean": PERFECT}
    assert choose_default_method(learned, base, IS_TP, folds=folds).method == "entropy_mean"
    half = {"gcnn_classif": np.stack([PERFECT, REVERSED])}
    c = choose_default_method(learned, base, IS_TP, folds=folds, half_scores=half)
    assert c.val_auc["gcnn_classif"] == 0.875  # measured, on its own pairs
    assert c.val_auc_full == {"gcnn_classif": 1.0}
    assert c.method == "gcnn_classif" and not c.is_baseline
    assert "extrapolated to all 8 lesions" in c.reason
    assert MethodChoice.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # a flat learning curve changes nothing; half scores without known folds are unused
    flat = {"gcnn_classif": np.stack([learned["gcnn_classif"]] * 2)}
    c = choose_default_method(learned, base, IS_TP, folds=folds, half_scores=flat)
    assert c.method == "entropy_mean" and "reached 87.5 %, 87.5 % extrapolated" in c.reason
    c = choose_default_method(learned, base, IS_TP, half_scores=half)
    assert c.method == "entropy_mean" and c.val_auc_full == {}


def test_fit_reads_the_half_size_scores(tmp_path) -> None:
    from lesionuq.scorers.default_method import fit_default_method

    fold, val = _fold_with(tmp_path, oof_gcnn=GOOD, column=PERFECT)
    cal = fold / "scorers" / "gcnn_classif" / "calibration.json"
    payload = json.loads(cal.read_text())
    rows = [PERFECT.tolist(), [None] * 4 + REVERSED[4:].tolist()]  # null: not fitted
    cal.write_text(json.dumps({**payload, "oof_fold": OFFSET_FOLD.tolist(), "half_scores": rows}))
    c = fit_default_method(fold, val)
    half = np.array([[math.nan if v is None else v for v in r] for r in rows])
    from lesionuq.scorers.default_method import extrapolated_auc

    want = extrapolated_auc(c.val_auc["gcnn_classif"], half, IS_TP, OFFSET_FOLD)
    assert c.val_auc_full == {"gcnn_classif": pytest.approx(want)}


def test_an_iou_regressor_is_a_candidate_only_on_request(tmp_path) -> None:
    """gcnn_reg's calibration.json (with its IoU recalibrator) is skipped by the rule; the
    default-candidates bench reads it as it reads a classifier's."""
    from lesionuq.scorers.default_method import fit_default_method, read_candidates

    fold, val = _fold_with(tmp_path, oof_gcnn=GOOD, column=GOOD)
    g = fold / "scorers" / "gcnn_reg"
    g.mkdir(parents=True)
    (g / "scorer.json").write_text("{}")
    payload = {"calibrator": {}, "iou_calibrator": {"kind": "linear", "coef": [0.0, 1.0],
               "mae_before": 0.1, "mae_after": 0.1}, "oof_p_fp": PERFECT.tolist(),
               "oof_is_tp": IS_TP.tolist()}  # fmt: skip
    (g / "calibration.json").write_text(json.dumps(payload))
    c = fit_default_method(fold, val)  # the regressor ranks perfectly, and is not judged
    assert c.learned == ["gcnn_classif"] and c.method == "gcnn_classif"
    assert c.val_auc["gcnn_classif"] == pytest.approx(0.875)  # tied with entropy_mean
    assert read_candidates(fold, val).choose(IS_TP) == c
    found = read_candidates(fold, val, regressors=True)
    assert set(found.learned) == {"gcnn_classif", "gcnn_reg"}
    assert set(found.baselines) == {"entropy_mean"}
    both = found.choose(IS_TP)
    assert both.method == "gcnn_reg" and both.val_auc["gcnn_reg"] == 1.0
    assert found.only(["gcnn_classif"]).choose(IS_TP) == c
    assert found.only([]).choose(IS_TP).method == "entropy_mean"
