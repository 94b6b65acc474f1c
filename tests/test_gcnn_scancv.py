"""``gcnn_scancv``: the paper's GCNN with its epochs chosen by scan-grouped CV (issue 31).

That the paper's GCNNs are unchanged by the refactored fit (``_train``) is checked by
test_scorer_pins.py: their pinned scores stay the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import random_lesion_set
from lesionuq.calibration import scan_folds
from lesionuq.config import ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.gcnn import GCNNScorer, _forward
from lesionuq.scorers.nn import LesionGCN, Schedule, fit_graph_model

CFG = GCNNConfig(epochs=6, seed=3)


def _on_scans(lesions: LesionSet, scans: list[str]) -> LesionSet:
    """The lesions with case ids ``scans[i % len(scans)]``."""
    table = lesions.table.copy()
    table["case_id"] = [scans[i % len(scans)] for i in range(len(table))]
    return LesionSet(table, lesions.graphs)


def _labels(lesions: LesionSet) -> tuple[np.ndarray, np.ndarray]:
    y_fp = (~lesions.is_tp).astype(np.int64)
    return y_fp, lesions.table["iou_adj"].to_numpy(np.float64)


def test_stop_after_keeps_that_epoch_of_the_whole_schedule() -> None:
    lesions = random_lesion_set(20, seed=2)
    scorer = GCNNScorer(cfg=CFG)
    scorer.feature_mean_, scorer.feature_std_ = torch.zeros(5), torch.ones(5)
    data = scorer._to_data(lesions, *_labels(lesions))
    run = {
        "build": lambda: LesionGCN(5, 8, 2),
        "schedule": Schedule(1e-2, 1e-5, 6, 4),
        "seed": 0,
        "forward": _forward,
        "loss": lambda out, batch: F.cross_entropy(out, batch.y_fp),
        "validate": lambda model, held_out: {},
        "log_lr": True,
    }
    # the whole 6-epoch run, keeping epoch 3 (ranked best), against a run stopped after 3
    whole = fit_graph_model(
        train=data, val=data, rank=lambda r: (0.0 if r["epoch"] == 3 else 1.0,), **run
    )
    stopped = fit_graph_model(train=data, val=[], rank=None, stop_after=3, **run)
    assert whole.best_epoch == stopped.best_epoch == 3
    assert len(whole.history) == 6 and len(stopped.history) == 3
    lrs = [r["lr"] for r in stopped.history]
    assert lrs == [r["lr"] for r in whole.history[:3]]
    # the learning rate follows the 6-epoch cosine: 5 steps per epoch, epoch 3 starts at
    # step 10 of 30, where a schedule of 3 epochs would be at its end
    expected = 1e-5 + (1e-2 - 1e-5) * (1 + np.cos(np.pi * 10 / 30)) / 2
    assert lrs[2] == pytest.approx(expected, rel=1e-9)
    a, b = whole.model.state_dict(), stopped.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for bad in (0, 7):
        with pytest.raises(ValueError, match=r"stop_after must be in 1\.\.6"):
            fit_graph_model(train=data, val=[], rank=None, stop_after=bad, **run)


def test_scan_folds_never_split_a_scan() -> None:
    six = _on_scans(random_lesion_set(24, seed=0), [f"s{k}" for k in range(6)])
    fold = scan_folds(six, 3, seed=0)
    cases = six.table["case_id"].to_numpy()
    assert sorted(set(fold.tolist())) == [0, 1, 2]
    assert all(len(set(fold[cases == c].tolist())) == 1 for c in set(cases))
    two = _on_scans(random_lesion_set(24, seed=0), ["a", "b"])
    fold = scan_folds(two, 3, seed=0)  # 2 scans: 2 folds, one scan each
    assert sorted(set(fold.tolist())) == [0, 1]
    assert set(fold[::2].tolist()) != set(fold[1::2].tolist())
    one = random_lesion_set(24, seed=0)  # one scan: 3 folds over its lesions
    assert sorted(set(scan_folds(one, 3, seed=0).tolist())) == [0, 1, 2]


def test_the_epoch_is_the_first_minimum_of_the_lesion_weighted_cv_loss() -> None:
    lesions = _on_scans(random_lesion_set(40, seed=4), ["s0", "s1", "s2", "s3"])
    scorer = GCNNScorer(cfg=CFG, epoch_cv=3).fit(lesions, progress=False)
    curve = np.asarray(scorer.cv_loss_)
    assert curve.shape == (6,)
    assert scorer.best_epoch_ == int(np.argmin(curve)) + 1
    # the refit trains on every lesion, stops at that epoch and validates on none
    assert scorer.n_train_ == 40 and scorer.n_val_ == 0
    assert [r["epoch"] for r in scorer.history_] == list(range(1, scorer.best_epoch_ + 1))
    assert "val_loss" not in scorer.history_[0]
    nodes = torch.cat([g.x for g in lesions.graphs]).double()
    assert torch.allclose(scorer.feature_mean_, nodes.mean(0).float())
    # the curve, recomputed: one fit per scan fold, held-out losses weighted by lesions
    fold = scan_folds(lesions, 3, CFG.seed)
    assert fold.max() == 2
    helper, total = GCNNScorer(cfg=CFG), np.zeros(6)
    for k in range(3):
        split = (np.flatnonzero(fold != k), np.flatnonzero(fold == k))
        fit = helper._train(lesions, _labels(lesions), split, torch.device("cpu"))
        total += split[1].size * np.array([r["val_loss"] for r in fit.history])
    np.testing.assert_allclose(curve, total / 40, rtol=1e-12)


def test_same_seed_same_scores_and_a_reload_keeps_the_curve(tmp_path) -> None:
    lesions = _on_scans(random_lesion_set(30, seed=6), ["a", "b", "c"])
    cfg = ExperimentConfig(gcnn=CFG)
    one = make_scorer("gcnn_scancv", cfg)
    assert isinstance(one, GCNNScorer) and one.epoch_cv == 3 and one.task == "classif"
    u = one.fit(lesions, progress=False).score(lesions)
    again = make_scorer("gcnn_scancv", cfg).fit(lesions, progress=False).score(lesions)
    np.testing.assert_array_equal(u, again)
    assert np.all((u > 0) & (u < 1))
    one.save(tmp_path / "m")
    loaded = load_scorer("gcnn_scancv", tmp_path / "m")
    assert isinstance(loaded, GCNNScorer) and loaded.epoch_cv == 3
    assert loaded.cv_loss_ == one.cv_loss_ and loaded.best_epoch_ == one.best_epoch_
    np.testing.assert_array_equal(loaded.score(lesions), u)


def test_without_a_fittable_inner_fold_it_keeps_the_held_out_rule() -> None:
    lesions = random_lesion_set(20, seed=8)
    table = lesions.table.copy()
    # scan "tp" holds every true lesion, scan "fp" every false one: each inner training
    # part (one scan) has a single class
    table["case_id"] = np.where(table["is_tp"], "tp", "fp")
    both = LesionSet(table, lesions.graphs)
    with_cv = GCNNScorer(cfg=CFG, epoch_cv=3).fit(both, progress=False)
    plain = GCNNScorer(cfg=CFG).fit(both, progress=False)
    assert with_cv.cv_loss_ is None and with_cv.n_val_ == plain.n_val_ > 0
    np.testing.assert_array_equal(with_cv.score(both), plain.score(both))
    for bad in (1, -1):
        with pytest.raises(ValueError, match="epoch_cv must be 0 or at least 2"):
            GCNNScorer(epoch_cv=bad)
