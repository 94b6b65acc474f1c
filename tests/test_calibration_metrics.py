from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from monai.metrics import CalibrationErrorMetric

from lesionuq.evaluation.calibration_metrics import (
    CALIBRATION_COLUMNS,
    brier_score,
    calibration_rows,
    expected_calibration_error,
    log_loss,
    mean_absolute_error,
    reliability_diagram,
)
from lesionuq.evaluation.figures import plot_reliability


def test_hand_case():
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    y = np.array([0, 1, 0, 1, 1])
    rel = reliability_diagram(p, y, n_bins=10)
    assert rel.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # p = 1 in the last bin
    np.testing.assert_allclose(rel.mean_predicted[[0, 1, 9]], [0.05, 0.15, 0.975])
    np.testing.assert_allclose(rel.observed[[0, 1, 9]], [0.0, 0.5, 1.0])
    assert np.isnan(rel.observed[2])
    # ECE = (1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5
    assert expected_calibration_error(p, y) == pytest.approx(0.8 / 5)
    assert brier_score(p, y) == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2) / 5)
    ll = -(np.log(0.95) + np.log(0.15) + np.log(0.85) + np.log(0.95) + np.log(1 - 1e-7)) / 5
    assert log_loss(p, y) == pytest.approx(ll)
    assert mean_absolute_error([0.2, np.nan, 1.0], [0.0, 0.5, 0.5]) == pytest.approx(0.35)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_monai(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(np.float64)  # miscalibrated
    metric = CalibrationErrorMetric(num_bins=10, calibration_reduction="expected")
    metric(torch.tensor(p).view(1, 1, -1), torch.tensor(y).view(1, 1, -1))
    ours = expected_calibration_error(p, y, n_bins=10)
    assert ours > 0.05
    assert ours == pytest.approx(float(metric.aggregate()), abs=1e-5)


def test_perfectly_calibrated_score_has_ece_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = rng.random(p.size) < p  # labels ~ Bernoulli(p)
    assert expected_calibration_error(p, y) < 0.01
    assert brier_score(p, y) == pytest.approx(1 / 6, abs=0.005)  # E[p(1 - p)]


def test_calibration_rows_and_figure():
    rng = np.random.default_rng(0)
    iou = rng.random(50)
    is_fp = iou < 0.1
    rows = calibration_rows(0, "gcnn_reg", is_fp, 1 - iou, rng.random(50), iou, iou + 0.1, iou)
    assert [r["stage"] for r in rows] == ["before", "after"]
    assert all(list(r) == list(CALIBRATION_COLUMNS) for r in rows)
    assert rows[0]["mae"] == pytest.approx(0.1) and rows[1]["mae"] == 0.0
    assert rows[0]["n"] == 50
    none = calibration_rows(1, "size", is_fp, None, None)
    assert np.isnan(none[0]["ece"]) and np.isnan(none[1]["mae"])
    no_truth = calibration_rows(2, "gcnn_reg", is_fp, None, None, None, iou, iou)
    assert np.isnan(no_truth[0]["mae"]) and np.isnan(no_truth[1]["mae"])
    rel = reliability_diagram(1 - iou, is_fp)
    fig = plot_reliability({"gcnn_reg": (rel, rel), "other": (rel, rel)}, title="fold 0")
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error(np.array([1.5]), np.array([1]))


@pytest.mark.parametrize("name", ["plot_reliability", "plot_calibration"])
def test_moved_diagrams_are_deprecated_aliases(name):
    from lesionuq.evaluation import calibration_metrics, figures

    with pytest.warns(DeprecationWarning, match=f"moved to lesionuq.evaluation.figures.{name}"):
        assert getattr(calibration_metrics, name) is getattr(figures, name)
    with pytest.raises(AttributeError):
        calibration_metrics.no_such_name  # noqa: B018
