"""Case-resampling bootstrap of Table 2's AUC: hand cases, identities, pairing, seeding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesionuq.evaluation.bootstrap import (
    auc_intervals,
    bootstrap_auc,
    case_weights,
    weighted_auc,
)
from lesionuq.evaluation.curves import ac_auc
from lesionuq.evaluation.metrics import table2


def _frame(rng: np.random.Generator, n_folds: int = 3, n: int = 60) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "fold": np.repeat(np.arange(n_folds), n),
            "case_id": [f"c{f}_{i}" for f in range(n_folds) for i in rng.integers(0, 6, n)],
            "n_voxels": rng.integers(1, 50, n_folds * n),
            "is_tp": rng.random(n_folds * n) < 0.6,
        }
    )
    noise = rng.random(len(frame))
    frame["good"] = noise + 0.8 * ~frame["is_tp"]
    frame["coarse"] = np.round(noise, 1)  # many ties
    frame["gcnn_classif"] = noise + 0.3 * ~frame["is_tp"]
    return frame


def test_weighted_auc_equals_ac_auc_on_duplicated_lesions():
    rng = np.random.default_rng(1)
    u = np.round(rng.random(40), 1)  # ties across classes
    t = rng.random(40) < 0.5
    w = rng.integers(0, 4, (6, 40))
    got = weighted_auc(u, t, w)
    want = [ac_auc(np.repeat(u, w[b]), np.repeat(t, w[b])) for b in range(6)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_weighted_auc_hand_values():
    # FP at 3 and 1, TP at 2 and 1: pairs (3>2) 1, (3>1) 1, (1<2) 0, (1=1) 1/2 -> 2.5/4
    u, t = np.array([3.0, 1.0, 2.0, 1.0]), np.array([False, False, True, True])
    assert weighted_auc(u, t, np.ones((1, 4)))[0] == pytest.approx(0.625)
    # weight 2 on the first FP: pairs 2*(1+1) + (0 + 1/2) = 4.5 over 3*2
    assert weighted_auc(u, t, np.array([[2.0, 1, 1, 1]]))[0] == pytest.approx(0.75)
    # no TP drawn: undefined
    assert np.isnan(weighted_auc(u, t, np.array([[1.0, 1, 0, 0]]))[0])


def test_case_weights_are_case_counts():
    codes = np.array([0, 0, 1, 2, 2, 2])
    w = case_weights(codes, 3, 50, np.random.default_rng(0))
    assert w.shape == (50, 6)
    # lesions of one case share the weight; the counts of the 3 cases sum to 3
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 3], w[:, 5])
    np.testing.assert_array_equal(w[:, 0] + w[:, 2] + w[:, 3], np.full(50, 3.0))


def _one_fold(u_fp: list[float], u_tp: list[float], cases_fp: list[str], cases_tp: list[str]):
    return pd.DataFrame(
        {
            "fold": 0,
            "case_id": cases_fp + cases_tp,
            "is_tp": [False] * len(u_fp) + [True] * len(u_tp),
            "m": u_fp + u_tp,
        }
    )


def test_perfect_ranking_gives_one_one():
    frame = _one_fold([0.9, 0.8, 0.7], [0.1, 0.2, 0.3], ["a", "b", "c"], ["a", "b", "c"])
    ci = auc_intervals(frame, ["m"], n_boot=200, seed=0, reference="m")
    assert ci.loc[0, ["auc_lo", "auc_hi"]].tolist() == [1.0, 1.0]
    assert ci.loc[0, ["diff_vs_m", "diff_lo", "diff_hi"]].tolist() == [0.0, 0.0, 0.0]


def test_all_tied_gives_one_half():
    frame = _one_fold([0.5, 0.5, 0.5], [0.5, 0.5], ["a", "b", "c"], ["a", "c"])
    boot = bootstrap_auc(frame, ["m"], n_boot=200, seed=3)
    assert boot.point[0] == 0.5
    finite = boot.replicates[np.isfinite(boot.replicates)]
    assert finite.size > 150 and np.all(finite == 0.5)
    lo, hi = boot.interval()
    assert (lo[0], hi[0]) == (0.5, 0.5)


def test_resamples_cases_not_lesions():
    # case A: FP 0.9 above TP 0.1; case B: FP 0.2 below TP 0.8.
    # Drawing cases: {A,A} -> 1, {A,B} -> 3/4, {B,B} -> 0 (probabilities 1/4, 1/2, 1/4).
    # Drawing lesions would also give e.g. 1/3 (FP_B with TP_A, TP_B, TP_B).
    frame = _one_fold([0.9, 0.2], [0.1, 0.8], ["A", "B"], ["A", "B"])
    boot = bootstrap_auc(frame, ["m"], n_boot=2000, seed=0)
    values, counts = np.unique(boot.replicates[:, 0], return_counts=True)
    np.testing.assert_array_equal(values, [0.0, 0.75, 1.0])
    np.testing.assert_allclose(counts / 2000, [0.25, 0.5, 0.25], atol=0.04)
    assert boot.point[0] == 0.75


def test_point_is_table2_mean_and_interval_contains_it():
    frame = _frame(np.random.default_rng(0))
    methods = ["good", "coarse", "gcnn_classif"]
    boot = bootstrap_auc(frame, methods, n_boot=300, seed=0)
    t2, _ = table2(frame, methods)
    np.testing.assert_allclose(boot.point, t2["auc"], atol=1e-12)
    lo, hi = boot.interval()
    assert np.all(lo < boot.point) and np.all(boot.point < hi)
    # the replicate value is the mean of its fold values
    np.testing.assert_allclose(boot.replicates, boot.fold_replicates.mean(axis=1))


def test_paired_difference_uses_the_same_resamples():
    frame = _frame(np.random.default_rng(2))
    frame["shifted"] = frame["gcnn_classif"] * 2 + 1  # same ranking, other scale
    ci = auc_intervals(frame, ["gcnn_classif", "shifted", "good"], n_boot=300, seed=0)
    # same ranking: difference 0 in every paired replicate (unpaired it would spread)
    assert ci.loc[1, ["diff_vs_gcnn_classif", "diff_lo", "diff_hi"]].abs().max() < 1e-12
    assert ci.loc[1, "auc_hi"] - ci.loc[1, "auc_lo"] > 0.02
    # "good" separates FP more strongly: its whole paired interval is above 0
    assert ci.loc[2, "diff_lo"] > 0
    t2 = table2(frame, ["gcnn_classif", "good"])[0].set_index("method")["auc"]
    assert ci.loc[2, "diff_vs_gcnn_classif"] == pytest.approx(t2["good"] - t2["gcnn_classif"])


def test_same_seed_same_interval_other_seed_differs():
    frame = _frame(np.random.default_rng(4))
    a = auc_intervals(frame, ["good", "coarse"], n_boot=200, seed=7)
    b = auc_intervals(frame, ["good", "coarse"], n_boot=200, seed=7)
    c = auc_intervals(frame, ["good", "coarse"], n_boot=200, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["auc_lo"], c["auc_lo"])
    assert a["diff_vs_gcnn_classif"].isna().all()  # reference absent


def test_undefined_fold_is_left_out_of_the_mean():
    frame = _frame(np.random.default_rng(5), n_folds=2)
    only_tp = frame.fold == 1
    frame.loc[only_tp, "is_tp"] = True  # fold 1 has no FP: its AUC is undefined
    boot = bootstrap_auc(frame, ["good"], n_boot=100, seed=0)
    assert np.isnan(boot.fold_replicates[:, 1, 0]).all()
    np.testing.assert_allclose(boot.replicates[:, 0], boot.fold_replicates[:, 0, 0])
    assert boot.point[0] == pytest.approx(ac_auc(frame.good[~only_tp], frame.is_tp[~only_tp]))


def test_report_table2_shows_intervals_and_marks_overlap():
    from lesionuq.evaluation.report_sections import table2_html

    t2 = pd.DataFrame(
        {
            "method": ["gcnn_classif", "size", "entropy_mean"],
            "auc": [0.80, 0.75, 0.60],
            "spearman_rho": [-0.5, -1.0, -0.7],
            "auc_lo": [0.70, 0.65, 0.50],
            "auc_hi": [0.90, 0.85, 0.69],
            "diff_vs_gcnn_classif": [0.0, -0.05, -0.20],
            "diff_lo": [0.0, -0.10, -0.30],
            "diff_hi": [0.0, 0.01, -0.12],
        }
    )
    html = table2_html(t2, None)
    rows = html.split("</table>")[0].split("<tr>")[2:]
    assert "<b>80.0</b></td>" in rows[0]  # best: bold, not marked
    assert "75.0 &#8776;" in rows[1]  # 65-85 overlaps 70-90
    assert "60.0</td>" in rows[2] and "&#8776;" not in rows[2]  # 50-69 does not
    assert "65.0 &ndash; 85.0" in rows[1]
    assert "-20.0 (-30.0, -12.0)" in rows[2]
