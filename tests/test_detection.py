from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lesionuq.evaluation.detection import (
    case_detection_row,
    detection_scores,
    f1_retention_auc,
    f1_retention_curve,
    fold_detection_rows,
    match_lesions,
    normalised_dice,
    retention_rows,
)


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Three GT cubes, three predicted blobs (see the test for the expected matches)."""
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = 1  # GT1, 64 voxels
    gt[12:16, 12:16, 12:16] = 1  # GT2, 64 voxels
    gt[2:4, 14:18, 2:4] = 1  # GT3, 16 voxels, missed
    pred[2:6, 2:6, 2:6] = 1  # P1 = GT1: IoU 1
    pred[12:14, 12:16, 12:16] = 1  # P2, half of GT2: IoU 0.5
    pred[15:19, 15:19, 15:19] = 1  # P3, one corner voxel in GT2: IoU 1/127
    return pred, gt


def test_hand_case_both_rules():
    pred, gt = _hand_case()
    iou = match_lesions(pred, gt, "iou")
    assert iou.pred_tp.tolist() == [True, True, False]
    # GT labels follow the first voxel in C order: GT1 (2,2,2), GT3 (2,14,2), GT2 (12,12,12)
    assert iou.gt_detected.tolist() == [True, False, True]
    assert detection_scores(iou) == pytest.approx(
        {"lesion_tpr": 2 / 3, "lesion_ppv": 2 / 3, "lesion_f1": 2 / (2 + 0.5 * 2)}
    )
    ov = match_lesions(pred, gt, "overlap")
    assert ov.pred_tp.tolist() == [True, True, True]
    assert detection_scores(ov) == pytest.approx(
        {"lesion_tpr": 2 / 3, "lesion_ppv": 1.0, "lesion_f1": 3 / (3 + 0.5)}
    )
    # IoU threshold is inclusive: P2 has IoU exactly 0.5
    assert match_lesions(pred, gt, "iou", iou_threshold=0.5).pred_tp.tolist() == [True, True, False]
    assert match_lesions(pred, gt, "iou", iou_threshold=0.51).n_tp == 1


def test_26_connectivity_joins_diagonal_voxels():
    pred = np.zeros((4, 4, 4), np.uint8)
    pred[0, 0, 0] = pred[1, 1, 1] = 1  # one lesion under 26-, two under 6-connectivity
    gt = pred.copy()
    assert match_lesions(pred, gt).pred_tp.size == 1
    assert match_lesions(pred, gt, connectivity=6).pred_tp.size == 2


def _shifts_reference(pred: np.ndarray, gt: np.ndarray, thr: float = 0.25) -> tuple[int, ...]:
    """Loop-per-lesion port of the Shifts rule (scipy labels, 26-connectivity)."""
    s = np.ones((3, 3, 3))
    p_lab, n_p = ndimage.label(pred, structure=s)
    g_lab, n_g = ndimage.label(gt, structure=s)

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return np.sum(a & b) / np.sum(a | b)

    tp = fp = fn = 0
    for k in range(1, n_p + 1):
        m = p_lab == k
        best = max([0.0] + [iou(m, g_lab == j) for j in np.unique(g_lab[m]) if j])
        tp, fp = (tp + 1, fp) if best >= thr else (tp, fp + 1)
    for j in range(1, n_g + 1):
        m = g_lab == j
        best = max([0.0] + [iou(m, p_lab == k) for k in np.unique(p_lab[m]) if k])
        fn += best < thr
    return tp, fp, fn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_rule_matches_a_loop_implementation(seed):
    rng = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(rng.standard_normal((24, 24, 24)), 1.5)
    h = g + 0.8 * ndimage.gaussian_filter(rng.standard_normal(g.shape), 1.5)
    gt, pred = g > np.quantile(g, 0.9), h > np.quantile(h, 0.9)  # blobs, partial overlaps
    m = match_lesions(pred, gt)
    assert m.pred_tp.size > 3 and m.gt_detected.size > 3
    assert (m.n_tp, m.n_fp, m.n_fn) == _shifts_reference(pred, gt)


def test_normalised_dice():
    gt = np.zeros((10, 1, 1), bool)
    pred = gt.copy()
    assert normalised_dice(pred, gt) == 1.0  # both empty
    gt[0] = pred[0] = pred[1] = True  # TP 1, FP 1, FN 0
    k = 0.999 * 1 / (0.001 * 9)
    assert normalised_dice(pred, gt) == pytest.approx(2 / (2 + k))
    pred[1] = False
    assert normalised_dice(pred, gt) == 1.0
    assert normalised_dice(np.ones((2, 2, 2)), np.zeros((2, 2, 2))) == 0.0


def test_f1_retention_hand_case():
    u = np.array([0.9, 0.1, 0.5, 0.7])
    tp = np.array([False, True, False, True])
    x, f1 = f1_retention_curve(u, tp, n_fn=1)
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(f1, [0.8, 0.8, 2 / 3, 2 / 3, 2 / 3.5])
    assert f1_retention_auc(u, tp, 1) == pytest.approx(np.trapezoid(f1, x))
    # a perfect ranking (all FP first) beats the reverse one; F1 at 1 is the plain F1
    perfect = f1_retention_auc(np.where(tp, 0.0, 1.0), tp, 1)
    worst = f1_retention_auc(np.where(tp, 1.0, 0.0), tp, 1)
    assert perfect > f1_retention_auc(u, tp, 1) > worst
    assert f1_retention_auc(np.where(tp, 0.0, 1.0), tp, 0) == pytest.approx(
        0.25 * (1 + 1 + (1 + 0.8) / 2 + (0.8 + 2 / 3) / 2)
    )  # F1 1, 1, 1, 0.8, 2/3 at retained 0 .. 1


def test_case_and_fold_rows():
    pred, gt = _hand_case()
    row = case_detection_row(pred, gt)
    assert (row["n_gt"], row["n_pred"]) == (3, 3)
    assert (row["iou_tp"], row["iou_fp"], row["iou_fn"]) == (2, 1, 1)
    assert row["overlap_lesion_ppv"] == 1.0
    empty = case_detection_row(np.zeros_like(pred), np.zeros_like(gt))
    assert empty["ndsc"] == 1.0 and empty["iou_lesion_f1"] == 1.0
    assert np.isnan(empty["iou_lesion_tpr"])
    cases = pd.DataFrame([row | {"fold": 0}, row | {"fold": 0}, empty | {"fold": 1}])
    folds = fold_detection_rows(cases)
    assert folds["fold"].tolist() == [0, 1]
    assert folds.loc[0, "iou_lesion_f1"] == pytest.approx(4 / (4 + 0.5 * 4))  # pooled
    assert folds.loc[1, "ndsc"] == 1.0
    lesions = pd.DataFrame(
        {"fold": [0] * 4, "is_tp": ["False", "True", "False", "True"], "m": [0.9, 0.1, 0.5, 0.7]}
    )
    ret = retention_rows(lesions, ["m"], {0: 1})
    assert ret.loc[0, "f1_retention_auc"] == pytest.approx(
        f1_retention_auc(lesions["m"], [0, 1, 0, 1], 1)
    )
