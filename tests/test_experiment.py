"""A tiny end-to-end experiment: every stage runs, every contract file is written, resume."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from helpers import TINY
from lesionuq.config import METHODS, ExperimentConfig, GCNNConfig
from lesionuq.pipeline.evaluate import DEFAULT_METHOD_COLUMNS
from lesionuq.pipeline.experiment import run_experiment
from lesionuq.pipeline.fit import stage_fit
from lesionuq.segmentation import sampling, train


def test_contract_files(tiny_run):
    root, _, result = tiny_run
    run = root / "run"
    assert ExperimentConfig.from_yaml(run / "config.yaml") == TINY
    folds = json.loads((run / "folds.json").read_text())["folds"]
    tested = sorted(c for f in folds for c in f["test"])
    assert tested == sorted(f"{c}" for c in pd.read_csv(root / "data/cases.csv").case_id)
    for f in folds:
        k = f["fold"]
        assert (run / f"fold_{k}/segmenter.pt").is_file()
        for split in ("val", "test"):
            for case in f[split]:
                d = run / f"fold_{k}/{split}/{case}"
                for name in ("prob", "seg", "entropy", "variance", "pcs", "lesions", "gt"):
                    img = nib.load(str(d / f"{name}.nii.gz"))
                    assert img.shape == TINY.preprocess.shape
        for method in METHODS:
            assert any((run / f"fold_{k}/scorers/{method}").iterdir())

    lesions = pd.read_csv(run / "results/lesions.csv")
    assert list(lesions.columns) == [
        "fold",
        "case_id",
        "lesion_id",
        "n_voxels",
        "iou_adj",
        "is_tp",
        *METHODS,
    ]
    np.testing.assert_allclose(lesions["size"], 1.0 / lesions["n_voxels"])
    t1_columns = list(pd.read_csv(run / "results/table1.csv").columns)
    assert t1_columns[:4] == ["fold", "dice", "n_tp", "n_fp"]  # the contract, then issue 13's
    assert t1_columns[4:] == [
        "ndsc",
        *(f"{r}_lesion_{s}" for r in ("iou", "overlap") for s in ("tpr", "ppv", "f1")),
    ]
    table2 = pd.read_csv(run / "results/table2.csv")
    assert list(table2.columns) == [
        "method",
        "auc",
        "spearman_rho",
        "auc_lo",
        "auc_hi",
        "diff_vs_gcnn_classif",
        "diff_lo",
        "diff_hi",
    ]
    assert list(table2.method) == list(METHODS)
    defined = table2.dropna(subset=["auc"])
    assert (defined.auc_lo <= defined.auc + 1e-12).all()
    assert (defined.auc <= defined.auc_hi + 1e-12).all()
    gcnn = table2.set_index("method").loc["gcnn_classif"]
    diff = gcnn[["diff_vs_gcnn_classif", "diff_lo", "diff_hi"]].tolist()
    assert diff == [0.0, 0.0, 0.0] if np.isfinite(gcnn.auc) else np.isnan(diff).all()
    assert (run / "results/figure2.png").stat().st_size > 1000
    # what predict reports by default, per fold, beside the baselines on the test lesions
    chosen = pd.read_csv(run / "results/default_method.csv")
    assert list(chosen.columns) == list(DEFAULT_METHOD_COLUMNS)
    assert sorted(chosen.fold) == sorted(f["fold"] for f in folds)
    per_fold = pd.read_csv(run / "results/table2_folds.csv").set_index(["fold", "method"])
    for r in chosen.itertuples():
        assert (
            r.method
            == json.loads((run / f"fold_{r.fold}/default_method.json").read_text())["method"]
        )
        np.testing.assert_allclose(r.test_auc, per_fold.loc[(r.fold, r.method), "auc"])
        np.testing.assert_allclose(
            r.test_auc_gcnn_classif, per_fold.loc[(r.fold, "gcnn_classif"), "auc"]
        )
    html = (run / "results/report.html").read_text()
    assert "reports, on the test lesions" in html
    assert "data:image/png;base64," in html
    assert result.report == run / "results/report.html"


def test_lesion_rows_match_label_maps(tiny_run):
    root, _, _ = tiny_run
    run = root / "run"
    lesions = pd.read_csv(run / "results/lesions.csv", dtype={"case_id": str})
    folds = json.loads((run / "folds.json").read_text())["folds"]
    for f in folds:
        for case in f["test"]:
            labels = np.asarray(
                nib.load(str(run / f"fold_{f['fold']}/test/{case}/lesions.nii.gz")).dataobj
            )
            rows = lesions[(lesions.fold == f["fold"]) & (lesions.case_id == case)]
            ids, counts = np.unique(labels[labels > 0], return_counts=True)
            assert sorted(rows.lesion_id) == ids.tolist()
            assert rows.sort_values("lesion_id").n_voxels.tolist() == counts.tolist()


def test_resume_skips_finished_stages(tiny_run, monkeypatch):
    root, csv, _ = tiny_run
    run = root / "run"
    mtimes = {p: p.stat().st_mtime_ns for p in run.glob("fold_*/segmenter.pt")}
    maps = {p: p.stat().st_mtime_ns for p in run.glob("fold_*/*/*/prob.nii.gz")}
    called = []

    def forbidden(name):
        return lambda *args, **kwargs: called.append(name)

    monkeypatch.setattr(train, "train_segmenter", forbidden("train_segmenter"))
    monkeypatch.setattr(sampling, "mc_sample", forbidden("mc_sample"))
    monkeypatch.setattr(train, "load_segmenter", forbidden("load_segmenter"))
    result = run_experiment(csv, run, TINY, progress=False)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert {p: p.stat().st_mtime_ns for p in maps} == maps
    assert called == []  # neither the U-Net training nor the MC sampling ran again
    assert set(result.timings) >= {"train", "sample"}


def test_changed_gcnn_setting_refits_only_gcnn(tiny_run):
    root, csv, _ = tiny_run
    run = root / "run"
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("fold_*/scorers/*/stamp.json")}
    cfg = TINY.replace(gcnn=GCNNConfig(epochs=3))
    run_experiment(csv, run, cfg, progress=False, stop_after="graphs")
    stage_fit(run, progress=False)
    changed = {p.parent.name for p in stamps if p.stat().st_mtime_ns != stamps[p]}
    assert changed == {"gcnn_classif", "gcnn_reg"}


def test_a_fold_whose_unet_did_not_learn_is_named_on_every_train_call(tiny_run, tmp_path):
    import shutil
    import warnings

    from lesionuq.errors import TrainingWarning
    from lesionuq.pipeline.train import stage_train
    from lesionuq.rundir import read_stamp, write_stamp

    root, _, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run, ignore=shutil.ignore_patterns("val", "test", "graphs"))
    stamps = {k: read_stamp(run / f"fold_{k}/stamp_train.json") for k in (0, 1)}
    for stamp in stamps.values():  # what training stamps, beside the digest and arithmetic
        assert stamp["epochs"] == TINY.train.max_epochs == 2
        assert 1 <= stamp["best_epoch"] <= 2 and 0 <= stamp["best_dice"] <= 1
    # fold 0 as if its Dice had stayed near 0 up to the last epoch, fold 1 as if it learned
    # (the digests are untouched, so nothing retrains: only the stamps are read)
    failed = {**stamps[0], "best_dice": 0.083, "best_epoch": 2}
    write_stamp(run / "fold_0/stamp_train.json", **failed)
    write_stamp(run / "fold_1/stamp_train.json", **{**stamps[1], "best_dice": 0.6})
    mtime = (run / "fold_0/segmenter.pt").stat().st_mtime_ns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage_train(run, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]
    assert len(said) == 1 and said[0].startswith(
        "fold 0: the U-Net did not learn to segment (best validation Dice 0.083 at epoch 2 of 2, "
        "still rising; below 0.2)"
    )
    assert "train.max_epochs" in said[0] and "fold_0/segmenter_last.pt" in said[0]
    assert (run / "fold_0/segmenter.pt").stat().st_mtime_ns == mtime  # nothing retrained
    # only the folds asked for; a stamp written before the epochs were kept: the Dice alone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage_train(run, [1], progress=False)
        old = {k: v for k, v in stamps[0].items() if k not in ("best_epoch", "epochs")}
        write_stamp(run / "fold_0/stamp_train.json", **{**old, "best_dice": 0.083})
        stage_train(run, [0], progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]
    assert len(said) == 1 and said[0].startswith(
        "fold 0: the U-Net did not learn to segment (best validation Dice 0.083; below 0.2)"
    )
