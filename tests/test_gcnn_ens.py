from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lesionuq.config import METHODS, ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.gcnn_ens import (
    GCNNEnsConfig,
    GCNNEnsembleScorer,
    HybridLesionGCN,
    lesion_features,
    member_seed,
)
from test_gcnn import synthetic_lesions

FAST = GCNNEnsConfig(n_models=3, epochs=8, lr=1e-2, lr_min=1e-4, seed=0)


@pytest.fixture(scope="module")
def train_set() -> LesionSet:
    return synthetic_lesions(50, seed=1)


@pytest.fixture(scope="module")
def test_set() -> LesionSet:
    return synthetic_lesions(30, seed=2)


@pytest.fixture(scope="module")
def fitted(train_set: LesionSet) -> GCNNEnsembleScorer:
    return GCNNEnsembleScorer(FAST).fit(train_set, progress=False)


def test_ensemble_beats_every_baseline_on_spatial_arrangement(
    fitted: GCNNEnsembleScorer, train_set: LesionSet, test_set: LesionSet
) -> None:
    y_fp = ~test_set.is_tp
    best = 0.0
    for name in METHODS:
        if not name.startswith("gcnn"):
            u = make_scorer(name, ExperimentConfig()).fit(train_set, progress=False)
            auc = roc_auc_score(y_fp, u.score(test_set))
            best = max(best, auc, 1 - auc)
    u = fitted.score(test_set)
    assert u.shape == (len(test_set),) and u.dtype == np.float64
    assert np.all((u >= 0) & (u <= 1))
    auc = roc_auc_score(y_fp, u)
    assert auc >= 0.85 and auc >= best + 0.3
    assert len(fitted.models_) == 3 and all(1 <= e <= 8 for e in fitted.best_epochs_)


def test_score_is_the_mean_of_the_members(fitted: GCNNEnsembleScorer, test_set) -> None:
    data = fitted._to_data(test_set)
    batch = next(iter(__import__("torch_geometric").loader.DataLoader(data, batch_size=500)))
    probs = []
    with torch.no_grad():
        for m in fitted.models_:
            out = m(batch.x, batch.edge_index, batch.batch, batch.z)
            probs.append(torch.softmax(out, 1)[:, 1].double().numpy())
    np.testing.assert_allclose(fitted.score(test_set), np.mean(probs, axis=0), rtol=1e-6)
    assert not np.allclose(probs[0], probs[1])  # members differ (own seeds)


def test_registered_save_load_identical(train_set, test_set, tmp_path) -> None:
    cfg = ExperimentConfig(gcnn=GCNNConfig(epochs=3, seed=5))
    scorer = make_scorer("gcnn_ens", cfg)
    assert isinstance(scorer, GCNNEnsembleScorer) and scorer.cfg.seed == 5
    assert scorer.fit(train_set, progress=False) is scorer
    scorer.save(tmp_path)
    meta = json.loads((tmp_path / "scorer.json").read_text())
    assert meta["class"] == "GCNNEnsembleScorer" and meta["state"]["n_lesion"] == 4
    loaded = load_scorer("gcnn_ens", tmp_path)
    np.testing.assert_array_equal(loaded.score(test_set), scorer.score(test_set))


def test_fit_is_seeded() -> None:
    lesions = synthetic_lesions(10, seed=3)
    cfg = GCNNEnsConfig(n_models=2, epochs=3, seed=7)
    a = GCNNEnsembleScorer(cfg).fit(lesions, progress=False).score(lesions)
    b = GCNNEnsembleScorer(cfg).fit(lesions, progress=False).score(lesions)
    np.testing.assert_array_equal(a, b)
    c = GCNNEnsConfig(n_models=2, epochs=3, seed=8)
    assert not np.array_equal(a, GCNNEnsembleScorer(c).fit(lesions, progress=False).score(lesions))
    assert member_seed(7, 0) == 7 and member_seed(7, 1) != member_seed(8, 0)


def test_hybrid_head_without_graph_weights_is_a_logistic_model() -> None:
    # graph head zeroed: logit difference is linear in z, whatever the graph is
    model = HybridLesionGCN(in_features=5, n_lesion=4, hidden=8, readout="meanmax")
    with torch.no_grad():
        model.head_graph.weight.zero_()
        model.head_graph.bias.zero_()
    g = synthetic_lesions(1, seed=0).graphs[0]
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    out = model(g.x, g.edge_index, None, z)
    w = model.head_lesion.weight
    torch.testing.assert_close(out, z @ w.T)
    other = model(g.x * 3 + 1, g.edge_index, None, z)
    torch.testing.assert_close(out, other)


def test_hybrid_alone_recovers_a_linear_signal() -> None:
    # labels depend on the lesion mean entropy only: the hybrid matches logistic regression
    lesions = synthetic_lesions(40, seed=6)
    table = lesions.table.copy()
    rng = np.random.default_rng(0)
    table["entropy_mean"] = rng.normal(size=len(table)) + 1.5 * (~table["is_tp"])
    lesions = LesionSet(table, lesions.graphs)
    train, test = lesions.subset(np.arange(0, 60)), lesions.subset(np.arange(60, 80))
    cfg = GCNNEnsConfig(n_models=2, epochs=10, hidden=8)
    u = GCNNEnsembleScorer(cfg).fit(train, progress=False).score(test)
    z = lesion_features(train.table)
    lr = LogisticRegression().fit((z - z.mean(0)) / z.std(0), ~train.is_tp)
    zt = lesion_features(test.table)
    auc_lr = roc_auc_score(~test.is_tp, lr.predict_proba((zt - z.mean(0)) / z.std(0))[:, 1])
    assert roc_auc_score(~test.is_tp, u) >= auc_lr - 0.1


def test_degenerate_and_errors(tmp_path) -> None:
    lesions = synthetic_lesions(3, seed=4)
    only_fp = lesions.subset(np.flatnonzero(~lesions.is_tp))
    with pytest.warns(UserWarning, match="single class"):
        scorer = GCNNEnsembleScorer(FAST).fit(only_fp, progress=False)
    np.testing.assert_array_equal(scorer.score(lesions), np.ones(len(lesions)))
    scorer.save(tmp_path)
    np.testing.assert_array_equal(load_scorer("gcnn_ens", tmp_path).score(lesions), 1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        GCNNEnsembleScorer().score(lesions)
    with pytest.raises(ValueError, match="readout"):
        GCNNEnsConfig(readout="attention")
    with pytest.raises(ValueError, match="position needs"):
        GCNNEnsConfig(position=True, lesion_features=False)
    with pytest.raises(ValueError, match="centroid_x"):
        lesion_features(lesions.table, position=True)
