"""Dice, Spearman rho and Tables 1-2 on hand-made frames."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from lesionuq.evaluation.metrics import as_bool, dice, spearman_rho, table1, table2


def test_dice_hand_values():
    pred = np.zeros((4, 4, 4), bool)
    gt = np.zeros((4, 4, 4), bool)
    pred[0, 0, :4] = True  # 4 voxels
    gt[0, 0, 2:4] = True
    gt[1, 1, :2] = True  # 4 voxels, 2 shared
    assert dice(pred, gt) == pytest.approx(0.5)
    assert dice(pred, pred) == 1.0
    assert dice(np.zeros_like(pred), np.zeros_like(gt)) == 1.0
    assert dice(pred, np.zeros_like(gt)) == 0.0
    assert dice(pred.astype(np.uint8), gt.astype(np.uint8)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        dice(pred, gt[:2])


def test_spearman():
    size = np.array([3, 10, 1, 50, 7, 7, 200])
    assert spearman_rho(1.0 / size, size) == pytest.approx(-1.0)
    assert spearman_rho(np.log(size), size) == pytest.approx(1.0)
    # hand value: ranks (1,2,3) vs (1,3,2): rho = 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman_rho([1.0, 2.0, 3.0], [10, 30, 20]) == pytest.approx(0.5)
    assert np.isnan(spearman_rho(np.full(5, 0.2), size[:5]))
    assert np.isnan(spearman_rho([0.3], [4]))


def test_as_bool_from_csv_text():
    np.testing.assert_array_equal(as_bool(pd.Series(["True", "false", "1"])), [1, 0, 1])
    np.testing.assert_array_equal(as_bool(np.array([0, 1])), [False, True])
    with pytest.raises(ValueError):
        as_bool(pd.Series(["maybe"]))


def test_table1():
    cases = pd.DataFrame(
        {
            "fold": [1, 0, 0, 1],
            "case_id": ["c", "a", "b", "d"],
            "dice": [0.5, 0.6, 0.8, np.nan],  # a case without ground truth: skipped
            "n_lesions": [3, 3, 5, 1],
            "n_tp": [2, 1, 4, 0],
            "n_fp": [1, 2, 1, 1],
        }
    )
    t1 = table1(cases)
    assert list(t1.columns) == ["fold", "dice", "n_tp", "n_fp"]
    assert t1["fold"].tolist() == [0, 1]
    np.testing.assert_allclose(t1["dice"], [0.7, 0.5])
    assert t1["n_tp"].tolist() == [5, 2]
    assert t1["n_fp"].tolist() == [3, 2]
    with pytest.raises(ValueError, match="n_fp"):
        table1(cases.drop(columns="n_fp"))


def lesion_frame() -> pd.DataFrame:
    # fold 0: U5 example of test_curves (AUC 11/12 for "a"); fold 1: 4 lesions
    n0 = [40, 5, 12, 30, 100]
    n1 = [3, 8, 60, 20]
    frame = pd.DataFrame(
        {
            "fold": [0] * 5 + [1] * 4,
            "case_id": ["x"] * 5 + ["y"] * 4,
            "lesion_id": [1, 2, 3, 4, 5, 1, 2, 3, 4],
            "n_voxels": n0 + n1,
            "iou_adj": [0.0, 0.5, 0.05, 0.7, 0.9, 0.02, 0.3, 0.8, 0.6],
            "is_tp": [False, True, False, True, True, False, True, True, True],
            # fold 1: FP at 0.8; TPs 0.9, 0.2, 0.1 -> pairs 0 + 1 + 1 of 3 = 2/3
            "a": [0.9, 0.7, 0.7, 0.4, 0.1, 0.8, 0.9, 0.2, 0.1],
        }
    )
    frame["size"] = 1.0 / frame["n_voxels"]
    return frame


def test_table2_values_and_columns():
    lesions = lesion_frame()
    t2, per_fold = table2(lesions, ["size", "a"])
    assert list(t2.columns) == ["method", "auc", "spearman_rho"]
    assert t2["method"].tolist() == ["size", "a"]
    assert list(per_fold.columns) == ["fold", "method", "auc", "spearman_rho"]
    assert per_fold["fold"].tolist() == [0, 0, 1, 1]
    assert per_fold["method"].tolist() == ["size", "a", "size", "a"]
    a = per_fold[per_fold.method == "a"]
    np.testing.assert_allclose(a["auc"], [11 / 12, 2 / 3])
    assert t2.set_index("method").loc["a", "auc"] == pytest.approx((11 / 12 + 2 / 3) / 2)
    # size = 1/n_voxels: rho -1 in every fold
    np.testing.assert_allclose(per_fold[per_fold.method == "size"]["spearman_rho"], [-1, -1])
    assert t2.set_index("method").loc["size", "spearman_rho"] == pytest.approx(-1.0)
    # size AUC in fold 0: FP sizes 40, 12; TP sizes 5, 30, 100 -> pairs (1 + 2) / 6 = 0.5
    assert per_fold.iloc[0]["auc"] == pytest.approx(0.5)
    # hand rho for "a" in fold 1: u ranks (3, 4, 2, 1) vs size ranks (1, 2, 4, 3)
    # d = (2, 2, -2, -2): rho = 1 - 6 * 16 / (4 * 15) = -0.6
    assert a.iloc[1]["spearman_rho"] == pytest.approx(-0.6)


def test_table2_round_trip_through_csv_and_nan_fold():
    lesions = lesion_frame()
    lesions.loc[lesions.fold == 1, "is_tp"] = True  # fold 1 has no FP: AUC undefined
    text = lesions.to_csv(index=False)
    back = pd.read_csv(io.StringIO(text))
    with pytest.warns(RuntimeWarning, match=r"fold\(s\) \[1\]"):
        t2, per_fold = table2(back, ["a"])
    assert np.isnan(per_fold.iloc[1]["auc"])
    assert t2.loc[0, "auc"] == pytest.approx(11 / 12)  # mean over the defined fold only
    with pytest.raises(ValueError, match="missing column"):
        table2(lesions, ["nope"])
