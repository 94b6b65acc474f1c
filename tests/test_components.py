from __future__ import annotations

import numpy as np
import pytest

from helpers import random_maps
from lesionuq.config import GraphConfig
from lesionuq.lesions.components import (
    LESION_TABLE_COLUMNS,
    adjusted_iou,
    label_lesions,
    lesion_table,
)
from lesionuq.uncertainty import VoxelMaps


def _bar(shape, x_range, y=0, z=0):
    """A 1-voxel-thick bar along x covering x_range (half-open)."""
    m = np.zeros(shape, dtype=bool)
    m[x_range[0] : x_range[1], y, z] = True
    return m


def _maps(shape, seed=0):
    return random_maps(shape, seed)


def _adjusted_iou_by_sets(labels, n, gt, connectivity=26):
    """The MetaSeg definition written literally with boolean masks (slow, obvious)."""
    g_lab, m = label_lesions(gt, connectivity)
    out = np.zeros(n)
    for k in range(1, n + 1):
        pk = labels == k
        touching = [j for j in range(1, m + 1) if np.any(pk & (g_lab == j))]
        if not touching:
            continue
        k_prime = np.isin(g_lab, touching)
        others = [q for q in range(1, n + 1) if q != k and np.any((labels == q) & k_prime)]
        q_prime = np.isin(labels, others)
        out[k - 1] = np.sum(pk & k_prime) / np.sum((pk | k_prime) & ~q_prime)
    return out


# ---------------------------------------------------------------- labelling


def test_corner_touching_cubes_are_one_lesion_under_26_two_under_6():
    seg = np.zeros((8, 8, 8), dtype=bool)
    seg[0:2, 0:2, 0:2] = True
    seg[2:4, 2:4, 2:4] = True  # touches the first cube only at voxel corner (1,1,1)-(2,2,2)
    labels26, n26 = label_lesions(seg, 26)
    _, n18 = label_lesions(seg, 18)
    labels6, n6 = label_lesions(seg, 6)
    assert (n26, n18, n6) == (1, 2, 2)
    assert labels26.dtype == np.int32
    assert set(np.unique(labels26)) == {0, 1}
    assert labels6[0, 0, 0] == 1 and labels6[3, 3, 3] == 2
    assert np.array_equal(labels6 > 0, seg)


def test_labels_follow_first_voxel_in_c_order():
    seg = np.zeros((6, 6, 6), dtype=bool)
    seg[4, 0, 0] = True  # flat index 144: third
    seg[0, 5, 5] = True  # flat index 35: first
    seg[1, 0:3, 0] = True  # flat index 36: second
    seg[5, 5, 5] = True  # last
    labels, n = label_lesions(seg)
    assert n == 4
    assert labels[0, 5, 5] == 1
    assert np.all(labels[1, 0:3, 0] == 2)
    assert labels[4, 0, 0] == 3
    assert labels[5, 5, 5] == 4


def test_label_empty_and_bad_input():
    labels, n = label_lesions(np.zeros((4, 4, 4), dtype=np.uint8))
    assert n == 0 and labels.dtype == np.int32 and not labels.any()
    with pytest.raises(ValueError, match="3-D"):
        label_lesions(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="connectivity"):
        label_lesions(np.zeros((4, 4, 4)), connectivity=8)
    one = np.zeros((4, 4, 4), dtype=np.int32)
    one[1, 1, 1] = 1
    with pytest.raises(ValueError, match="connectivity must be 6, 18 or 26, got 4"):
        adjusted_iou(one, 1, one, connectivity=4)


# ---------------------------------------------------------------- adjusted IoU


def test_adjusted_iou_exact_match_is_one_and_no_gt_is_zero():
    shape = (12, 4, 4)
    seg = _bar(shape, (0, 4)) | _bar(shape, (8, 11))
    gt = _bar(shape, (0, 4))
    labels, n = label_lesions(seg)
    np.testing.assert_array_equal(adjusted_iou(labels, n, gt), [1.0, 0.0])
    np.testing.assert_array_equal(adjusted_iou(labels, n, np.zeros(shape)), [0.0, 0.0])


def test_adjusted_iou_gt_split_in_two_predictions():
    # gt: x = 0..9 (10 voxels). Predictions: A = 0..2 (3), B = 5..9 (5); 3, 4 uncovered.
    # IoU_adj(A) = |A ∩ gt| / |(A ∪ gt) \ B| = 3 / (10 - 5) = 0.6
    # IoU_adj(B) = 5 / (10 - 3) = 5/7        (the plain IoUs would be 0.3 and 0.5)
    shape = (12, 3, 3)
    gt = _bar(shape, (0, 10))
    seg = _bar(shape, (0, 3)) | _bar(shape, (5, 10))
    labels, n = label_lesions(seg)
    np.testing.assert_allclose(adjusted_iou(labels, n, gt), [0.6, 5 / 7])


def test_adjusted_iou_prediction_sticking_out_of_a_split_gt():
    # gt: x = 1..9 (9). A = 0..3 (4, voxel 0 outside gt), B = 6..9 (4); 4, 5 uncovered.
    # A: 3 / |{0..9} \ {6..9}| = 3 / 6 ;  B: 4 / |{0..9} \ {0..3}| = 4 / 6  (A's voxel 0 is in Q')
    shape = (12, 3, 3)
    gt = _bar(shape, (1, 10))
    seg = _bar(shape, (0, 4)) | _bar(shape, (6, 10))
    labels, n = label_lesions(seg)
    np.testing.assert_allclose(adjusted_iou(labels, n, gt), [0.5, 4 / 6])


def test_adjusted_iou_prediction_covering_two_gt_lesions():
    # Prediction x = 0..9 (10); gt lesions x = 0..2 (3) and x = 6..11 (6, 2 outside pred).
    # K' = both gt lesions, Q' empty: 7 / |{0..11}| = 7/12.
    shape = (14, 3, 3)
    seg = _bar(shape, (0, 10))
    gt = _bar(shape, (0, 3)) | _bar(shape, (6, 12))
    labels, n = label_lesions(seg)
    np.testing.assert_allclose(adjusted_iou(labels, n, gt), [7 / 12])


def test_adjusted_iou_matches_literal_definition_on_random_blobs():
    rng = np.random.default_rng(3)
    shape = (14, 14, 14)
    seg = rng.random(shape) < 0.12
    gt = rng.random(shape) < 0.12
    labels, n = label_lesions(seg)
    assert n > 20
    got = adjusted_iou(labels, n, gt)
    expected = _adjusted_iou_by_sets(labels, n, gt)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert 0 < np.count_nonzero(got) < n


def test_adjusted_iou_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        adjusted_iou(np.zeros((4, 4, 4), np.int32), 0, np.zeros((4, 4, 5)))


# ---------------------------------------------------------------- table


def test_lesion_table_values_by_hand():
    shape = (10, 6, 6)
    seg = np.zeros(shape, dtype=bool)
    seg[1:3, 1, 1] = True  # lesion 1: voxels (1,1,1), (2,1,1)
    seg[6, 2:5, 3] = True  # lesion 2: (6,2,3), (6,3,3), (6,4,3)
    gt = np.zeros(shape, dtype=bool)
    gt[1:5, 1, 1] = True  # lesion 1: IoU_adj = 2/4 -> TP ; lesion 2: no gt -> FP
    z = np.zeros(shape, dtype=np.float32)
    ent, var, pcs = z.copy(), z.copy(), z.copy() + 1
    ent[1, 1, 1], ent[2, 1, 1] = 0.2, 0.4
    var[1, 1, 1], var[2, 1, 1] = 0.01, 0.03
    pcs[1, 1, 1], pcs[2, 1, 1] = 0.9, 0.6
    ent[6, 2:5, 3] = [0.5, 0.5, 0.5]
    var[6, 2:5, 3] = [0.0, 0.1, 0.2]  # 0 is clipped at logsum_eps
    pcs[6, 2:5, 3] = [1.0, 0.7, 0.8]  # u = 1 - pcs = 0 (clipped), 0.3, 0.2
    maps = VoxelMaps(prob=seg.astype(np.float32), entropy=ent, variance=var, pcs=pcs)
    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    affine[:3, 3] = [-10, 4, 7]
    cfg = GraphConfig(epsilon=0.5, logsum_eps=1e-4)
    labels, n = label_lesions(seg)
    t = lesion_table(labels, n, maps, gt, affine, cfg, "case_7")

    assert list(t.columns) == list(LESION_TABLE_COLUMNS)
    assert t["case_id"].tolist() == ["case_7", "case_7"]
    assert t["lesion_id"].tolist() == [1, 2]
    assert t["n_voxels"].tolist() == [2, 3]
    np.testing.assert_allclose(t["volume_mm3"], [6.0, 9.0])
    np.testing.assert_allclose(
        t[["centroid_x", "centroid_y", "centroid_z"]], [[1.5, 1, 1], [6, 3, 3]]
    )
    assert t["bbox"].tolist() == ["1:3,1:2,1:2", "6:7,2:5,3:4"]
    np.testing.assert_allclose(t["iou_adj"], [0.5, 0.0])
    assert t["is_tp"].tolist() == [True, False]
    np.testing.assert_allclose(t["entropy_mean"], [0.3, 0.5], rtol=1e-6)
    np.testing.assert_allclose(t["entropy_logsum"], [np.log(0.2 * 0.4), 3 * np.log(0.5)], rtol=1e-6)
    np.testing.assert_allclose(t["variance_mean"], [0.02, 0.1], rtol=1e-6)
    np.testing.assert_allclose(
        t["variance_logsum"], [np.log(0.01 * 0.03), np.log(1e-4 * 0.1 * 0.2)], rtol=1e-6
    )
    np.testing.assert_allclose(t["pcs_mean"], [0.25, 0.5 / 3], rtol=1e-6)
    np.testing.assert_allclose(
        t["pcs_logsum"], [np.log(0.1 * 0.4), np.log(1e-4 * 0.3 * 0.2)], rtol=1e-5
    )


def test_lesion_table_without_gt_and_empty():
    shape = (6, 6, 6)
    seg = np.zeros(shape, dtype=bool)
    seg[2:4, 2:4, 2:4] = True
    maps = _maps(shape)
    labels, n = label_lesions(seg)
    t = lesion_table(labels, n, maps, None, np.eye(4), GraphConfig(), "a")
    assert len(t) == 1 and np.isnan(t["iou_adj"][0]) and not t["is_tp"][0]
    np.testing.assert_allclose(t["entropy_mean"][0], maps.entropy[seg].mean(), rtol=1e-6)

    labels, n = label_lesions(np.zeros(shape, dtype=bool))
    t = lesion_table(labels, n, maps, np.zeros(shape), np.eye(4), GraphConfig(), "a")
    assert len(t) == 0 and list(t.columns) == list(LESION_TABLE_COLUMNS)
    assert t["is_tp"].dtype == bool and t["n_voxels"].dtype == np.int64


def test_lesion_table_epsilon_threshold_is_inclusive():
    shape = (12, 3, 3)
    gt = _bar(shape, (0, 10))
    seg = _bar(shape, (0, 1))  # IoU_adj = 1/10 exactly
    labels, n = label_lesions(seg)
    maps = _maps(shape)
    t = lesion_table(labels, n, maps, gt, np.eye(4), GraphConfig(epsilon=0.1), "a")
    assert t["iou_adj"][0] == pytest.approx(0.1) and bool(t["is_tp"][0])
