"""The evaluate stage's per-fold steps: the pipeline reads the run, evaluation takes arrays."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from lesionuq.calibration import (
    CALIBRATOR_FILE,
    IoURecalibrator,
    PlattCalibrator,
    load_calibration,
    save_calibration,
)
from lesionuq.evaluation.folds import OPERATING_POINT_COLUMNS, StoredCalibration, calibrate_scores
from lesionuq.pipeline import evaluate
from lesionuq.rundir import FoldSplit, RunDir


def _raw(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    is_tp = rng.random(n) < 0.6
    iou = np.where(is_tp, 0.3 + 0.7 * rng.random(n), 0.05 * rng.random(n))
    return pd.DataFrame(
        {
            "fold": 1,
            "case_id": [f"c{i % 4}" for i in range(n)],
            "lesion_id": np.arange(1, n + 1),
            "n_voxels": rng.integers(3, 50, n),
            "iou_adj": iou,
            "is_tp": is_tp,
            "gcnn_classif": np.clip(1 - iou + 0.1 * rng.standard_normal(n), 0.01, 0.99),
            "gcnn_reg": np.clip(1 - iou + 0.05 * rng.standard_normal(n), 0, 1),
            "entropy_mean": rng.random(n),
        }
    )


def test_calibrate_fold_reads_the_run_and_calibrate_scores_applies_arrays(tmp_path):
    raw = _raw()
    is_fp = ~raw["is_tp"].to_numpy()
    cls = PlattCalibrator().fit(raw["gcnn_classif"].to_numpy(), is_fp)
    reg = PlattCalibrator("identity").fit(raw["gcnn_reg"].to_numpy(), is_fp)
    iou_cal = IoURecalibrator("linear").fit(1 - raw["gcnn_reg"].to_numpy(), raw["iou_adj"])
    rd = RunDir(tmp_path)
    op = {"target": "tp:0.9", "threshold": 0.5}
    save_calibration(
        rd.scorer(1, "gcnn_classif") / CALIBRATOR_FILE, cls, None, {"operating_point": op}
    )
    save_calibration(rd.scorer(1, "gcnn_reg") / CALIBRATOR_FILE, reg, iou_cal)
    split = FoldSplit(fold=1, train=(), val=(), test=("c0", "c1", "c2", "c3"))
    methods = ["gcnn_classif", "gcnn_reg", "entropy_mean"]  # the baseline has no file

    stored = evaluate.load_fold_calibrations(tmp_path, split, methods)
    assert list(stored) == ["gcnn_classif", "gcnn_reg"]
    assert stored["gcnn_classif"].operating_point == op
    assert stored["gcnn_reg"].operating_point is None and stored["gcnn_reg"].iou_calibrator

    lesions, long, ops = evaluate.calibrate_fold(tmp_path, split, raw, methods)
    p = cls.predict(raw["gcnn_classif"].to_numpy())
    np.testing.assert_array_equal(lesions["gcnn_classif"], p)  # replaced by its P(FP)
    np.testing.assert_array_equal(lesions["gcnn_reg"], raw["gcnn_reg"])  # 1 - IoU_hat kept
    np.testing.assert_array_equal(lesions["entropy_mean"], raw["entropy_mean"])
    assert len(long) == 2 * len(raw)
    reg_rows = long[long["method"] == "gcnn_reg"]
    np.testing.assert_array_equal(reg_rows["p_after"], reg.predict(raw["gcnn_reg"].to_numpy()))
    np.testing.assert_array_equal(
        reg_rows["iou_after"], iou_cal.predict(np.clip(1 - raw["gcnn_reg"].to_numpy(), 0, 1))
    )
    assert tuple(ops.columns) == OPERATING_POINT_COLUMNS and list(ops["method"]) == ["gcnn_classif"]
    assert ops["n_flagged"].iloc[0] == int((p >= 0.5).sum())

    # evaluation alone, from what was loaded: the same three frames
    loaded = {
        m: StoredCalibration(*load_calibration(rd.scorer(1, m) / CALIBRATOR_FILE)[:2])
        for m in stored
    }
    loaded["gcnn_classif"] = StoredCalibration(cls, None, op)
    again = calibrate_scores(raw, 1, loaded)
    for a, b in zip((lesions, long, ops), again, strict=True):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("name", ["score_fold", "calibrate_fold", "detection_cases"])
def test_old_import_path_is_a_deprecated_alias(name):
    folds = importlib.import_module("lesionuq.evaluation.folds")
    with pytest.warns(DeprecationWarning, match=f"moved to lesionuq.pipeline.evaluate.{name}"):
        assert getattr(folds, name) is getattr(evaluate, name)
    with pytest.raises(AttributeError):
        folds.no_such_step  # noqa: B018
