"""Accuracy-confidence curves and AUC on hand-made rankings; AUC == rank probability."""

from __future__ import annotations

import numpy as np
import pytest

from lesionuq.evaluation.curves import (
    AccuracyConfidenceAUC,
    ac_auc,
    accuracy_confidence_curve,
    curve_on_grid,
    rank_probability,
    within_fold_auc,
)

# 5 lesions, the two at 0.7 tied (one TP, one FP): F = 2, T = 3
U5 = np.array([0.9, 0.7, 0.7, 0.4, 0.1])
TP5 = np.array([False, True, False, True, True])


def brute_force(u: np.ndarray, tp: np.ndarray) -> float:
    """P(u_FP > u_TP) + 1/2 P(tie), over all FP-TP pairs."""
    diff = u[~tp][:, None] - u[tp][None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_perfect_reversed_and_tied():
    u = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    tp = np.array([False, False, True, True, True])
    assert ac_auc(u, tp) == 1.0
    assert ac_auc(-u, tp) == 0.0
    assert rank_probability(u, tp) == 1.0
    assert rank_probability(-u, tp) == 0.0
    tied = np.full(5, 0.3)
    assert ac_auc(tied, tp) == 0.5
    assert rank_probability(tied, tp) == 0.5
    fp_kept, tp_kept = accuracy_confidence_curve(tied, tp)
    np.testing.assert_array_equal(fp_kept, [1.0, 0.0])
    np.testing.assert_array_equal(tp_kept, [1.0, 0.0])


def test_perfect_curve_points():
    u = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    tp = np.array([False, False, True, True, True])
    fp_kept, tp_kept = accuracy_confidence_curve(u, tp)
    np.testing.assert_allclose(fp_kept, [1, 0.5, 0, 0, 0, 0])
    np.testing.assert_allclose(tp_kept, [1, 1, 1, 2 / 3, 1 / 3, 0])


def test_hand_computed_curve_with_tie():
    # remove 0.9 (FP) -> (1/2, 1); remove the 0.7 pair (TP + FP) together -> (0, 2/3);
    # remove 0.4 (TP) -> (0, 1/3); remove 0.1 (TP) -> (0, 0)
    fp_kept, tp_kept = accuracy_confidence_curve(U5, TP5)
    np.testing.assert_allclose(fp_kept, [1.0, 0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(tp_kept, [1.0, 1.0, 2 / 3, 1 / 3, 0.0])
    # trapezoids: 0.5 * (1 + 1) / 2 + 0.5 * (1 + 2/3) / 2 = 11/12; pairs: (3 + 2.5) / 6
    assert ac_auc(U5, TP5) == pytest.approx(11 / 12)
    assert rank_probability(U5, TP5) == pytest.approx(11 / 12)
    # input order does not matter
    perm = np.array([3, 0, 4, 2, 1])
    np.testing.assert_allclose(accuracy_confidence_curve(U5[perm], TP5[perm])[1], tp_kept)
    assert ac_auc(U5[perm], TP5[perm]) == pytest.approx(11 / 12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_auc_equals_rank_probability_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 200
    u = rng.integers(0, 12, size=n).astype(float)  # many ties
    tp = rng.random(n) < 0.6
    auc = ac_auc(u, tp)
    assert auc == pytest.approx(rank_probability(u, tp), abs=1e-12)
    assert auc == pytest.approx(brute_force(u, tp), abs=1e-12)
    # only the ranking matters: a strictly increasing transform keeps the AUC
    assert ac_auc(np.exp(u / 3.0) - 7.0, tp) == pytest.approx(auc, abs=1e-12)


def test_informative_score_beats_random():
    rng = np.random.default_rng(7)
    tp = rng.random(300) < 0.6
    u = rng.normal(size=300) + 1.5 * ~tp
    assert ac_auc(u, tp) > 0.75
    assert ac_auc(-u, tp) < 0.25


def test_undefined_cases_give_nan():
    with pytest.warns(RuntimeWarning, match="without any FP"):
        assert np.isnan(ac_auc([0.1, 0.2], [True, True]))
    with pytest.warns(RuntimeWarning, match="without any TP"):
        assert np.isnan(rank_probability([0.1, 0.2], [False, False]))
    with pytest.warns(RuntimeWarning):
        fp_kept, tp_kept = accuracy_confidence_curve([0.1, 0.2], [True, True])
    assert np.isnan(fp_kept).all()
    np.testing.assert_allclose(tp_kept, [1.0, 0.5, 0.0])
    assert np.isnan(ac_auc([], []))
    assert np.isnan(rank_probability(np.zeros(0), np.zeros(0, bool)))


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        ac_auc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN"):
        ac_auc([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="boolean"):
        ac_auc([0.1, 0.2], [2, 0])
    assert ac_auc([0.9, 0.1], [0, 1]) == 1.0  # 0/1 is accepted


def test_curve_on_grid():
    fp_kept, tp_kept = accuracy_confidence_curve(U5, TP5)
    values = curve_on_grid(fp_kept, tp_kept, [0.0, 0.25, 0.5, 0.75, 1.0])
    # at fp = 0 the top of the vertical segment; halfway between (0, 2/3) and (1/2, 1)
    np.testing.assert_allclose(values, [2 / 3, 5 / 6, 1.0, 1.0, 1.0])
    grid = np.linspace(0, 1, 2001)
    y = curve_on_grid(fp_kept, tp_kept, grid)
    area = np.sum(np.diff(grid) * (y[1:] + y[:-1]) / 2)
    assert area == pytest.approx(11 / 12, abs=1e-3)


def test_cumulative_metric():
    metric = AccuracyConfidenceAUC()
    assert metric(U5, TP5) == pytest.approx(11 / 12)
    # FPs at u = 2 and 4, TPs at u = 0, 1, 3: pairs (2 + 3) / 6
    assert metric(np.arange(5.0), TP5[::-1]) == pytest.approx(5 / 6)
    expected = [11 / 12, 5 / 6]
    with pytest.warns(RuntimeWarning):
        metric([0.1, 0.2], [True, True])  # NaN fold, skipped by aggregate
    mean, std = metric.aggregate()
    assert mean == pytest.approx(np.mean(expected))
    assert std == pytest.approx(np.std(expected))
    metric.reset()
    assert np.isnan(metric.aggregate()[0])


def test_within_fold_auc_counts_only_pairs_scored_by_one_model():
    # two inner models; the second scores everything 0.7 higher (a chance offset)
    u = np.array([0.1, 0.2, 0.8, 0.9])
    tp = np.array([True, False, True, False])
    fold = np.array([0, 0, 1, 1])
    # pooled: FP {0.2, 0.9} vs TP {0.1, 0.8}: 0.2 < 0.8 is the one wrong pair of 4
    assert rank_probability(u, tp) == pytest.approx(3 / 4)
    assert within_fold_auc(u, tp, fold) == 1.0  # each model ranks its pair right
    # weighted by pairs: fold 0 has 2 FP x 1 TP right, fold 1 1 x 1 wrong, fold 2 one class
    u = np.array([0.5, 0.6, 0.1, 0.9, 0.2, 0.3, 0.4])
    tp = np.array([False, False, True, True, False, True, True])
    fold = np.array([0, 0, 0, 1, 1, 2, 2])
    assert within_fold_auc(u, tp, fold) == pytest.approx(2 / 3)
    # ties count half inside a fold
    assert within_fold_auc(np.array([0.5, 0.5]), np.array([True, False]), np.zeros(2)) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_fold_auc_with_one_fold_is_the_rank_probability(seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 6, 40).astype(float)  # many ties
    tp = rng.random(40) < 0.6
    assert within_fold_auc(u, tp, np.zeros(40, int)) == pytest.approx(rank_probability(u, tp))
    fold = rng.integers(0, 3, 40)
    pairs = [
        (i, j) for i in range(40) for j in range(40) if fold[i] == fold[j] and not tp[i] and tp[j]
    ]
    by_hand = np.mean([(u[i] > u[j]) + 0.5 * (u[i] == u[j]) for i, j in pairs])
    assert within_fold_auc(u, tp, fold) == pytest.approx(by_hand)


def test_within_fold_auc_without_a_mixed_fold_is_nan():
    tp = np.array([True, True, False, False])
    assert np.isnan(within_fold_auc(np.arange(4.0), tp, np.array([0, 0, 1, 1])))
    with pytest.raises(ValueError, match="fold"):
        within_fold_auc(np.arange(4.0), tp, np.zeros(3))
