"""The multi-task GCNN ``gcnn_mt`` (lesionuq.scorers.multitask, issue 31).

That the paper's GCNNs are unchanged by the hooks it uses (``_out_features``,
``_fp_logits``) is checked by test_scorer_pins.py: their pinned scores stay the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from torch_geometric.data import Batch, Data

from helpers import random_lesion_set
from lesionuq.config import METHODS, ExperimentConfig, GCNNConfig
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.multitask import IOU_WEIGHT, MultiTaskGCNNScorer, multitask_loss
from lesionuq.scorers.nn import LesionGCN

CFG = GCNNConfig(epochs=3, seed=5)


def test_the_head_has_three_outputs_and_the_score_reads_the_logits() -> None:
    lesions = random_lesion_set(16, seed=1)
    scorer = MultiTaskGCNNScorer(CFG).fit(lesions, progress=False)
    assert isinstance(scorer.model_, LesionGCN) and scorer.model_.head.out_features == 3
    assert scorer.name == "gcnn_mt" and scorer.task == "classif"
    assert all("val_iou_mse" in r for r in scorer.history_)
    g = lesions.graphs[0]
    x = (g.x - scorer.feature_mean_) / scorer.feature_std_
    with torch.no_grad():
        out = scorer.model_(x, g.edge_index)
    assert out.shape == (1, 3)
    p_fp = float(torch.softmax(out[:, :2], dim=1)[0, 1])
    assert scorer.score(lesions)[0] == pytest.approx(p_fp, abs=1e-6)


def test_the_loss_is_weighted_cross_entropy_plus_the_iou_mse_by_hand() -> None:
    out = torch.tensor([[0.5, -1.0, 0.3], [2.0, 1.0, 0.9], [-0.2, 0.4, 0.1]])
    y_fp = torch.tensor([1, 0, 1])
    y_iou = torch.tensor([0.0, 0.8, 0.05])
    weight = torch.tensor([0.75, 1.5])
    # weighted CE: sum_i w_{y_i} (-log softmax_{y_i}) / sum_i w_{y_i}
    logp = out[:, :2] - torch.logsumexp(out[:, :2], dim=1, keepdim=True)
    nll = -logp[torch.arange(3), y_fp]
    w = weight[y_fp]
    ce = float((w * nll).sum() / w.sum())
    mse = ((0.3 - 0.0) ** 2 + (0.9 - 0.8) ** 2 + (0.1 - 0.05) ** 2) / 3
    assert IOU_WEIGHT == 1.0
    expected = ce + mse
    assert float(multitask_loss(out, y_fp, y_iou, weight)) == pytest.approx(expected, rel=1e-6)
    # the scorer's hook gives the same on a batch of labelled graphs
    graphs = [
        Data(x=torch.zeros(1, 2), edge_index=torch.zeros(2, 0, dtype=torch.long),
             y_fp=y_fp[i : i + 1], y_iou=y_iou[i : i + 1])
        for i in range(3)
    ]  # fmt: skip
    batch = Batch.from_data_list(graphs)
    hook = MultiTaskGCNNScorer()._loss(out, batch, weight)
    assert float(hook) == pytest.approx(expected, rel=1e-6)
    assert float(multitask_loss(out, y_fp, y_iou)) == pytest.approx(
        float(F.cross_entropy(out[:, :2], y_fp)) + mse, rel=1e-6
    )


def test_same_seed_same_scores_in_unit_interval_and_reload(tmp_path) -> None:
    cfg = ExperimentConfig(gcnn=CFG)
    lesions = random_lesion_set(24, seed=2)
    one = make_scorer("gcnn_mt", cfg)
    assert isinstance(one, MultiTaskGCNNScorer) and "gcnn_mt" not in METHODS
    u = one.fit(lesions, progress=False).score(lesions)
    two = make_scorer("gcnn_mt", cfg).fit(lesions, progress=False).score(lesions)
    assert u.shape == (24,) and u.dtype == np.float64
    assert np.all((u >= 0) & (u <= 1)) and np.array_equal(u, two)
    # not the plain classifier: the IoU task changes the fit
    plain = GCNNScorer("classif", CFG).fit(lesions, progress=False).score(lesions)
    assert not np.allclose(u, plain)
    one.save(tmp_path / "mt")
    again = load_scorer("gcnn_mt", tmp_path / "mt")
    assert isinstance(again, MultiTaskGCNNScorer)
    assert np.array_equal(again.score(lesions), u)


def test_missing_iou_is_refused() -> None:
    lesions = random_lesion_set(8, seed=3)
    lesions.table.loc[3, "iou_adj"] = np.nan
    with pytest.raises(ValueError, match="gcnn_mt: iou_adj has NaN"):
        MultiTaskGCNNScorer(CFG).fit(lesions, progress=False)


def test_learns_a_feature_that_marks_the_false_positives() -> None:
    lesions = random_lesion_set(40, seed=4)
    fp = np.arange(40) % 2 == 1  # every other lesion an FP, with a low IoU_adj
    iou = lesions.table["iou_adj"].to_numpy()
    lesions.table["iou_adj"] = np.where(fp, 0.05 * iou, 0.3 + 0.7 * iou)
    lesions.table["is_tp"] = ~fp
    for g, is_fp in zip(lesions.graphs, fp, strict=True):
        g.x[:, 2] += 1.0 if is_fp else 0.0  # the FP graphs' entropy column is higher
    scorer = MultiTaskGCNNScorer(GCNNConfig(epochs=30, seed=0)).fit(lesions, progress=False)
    assert roc_auc_score(fp, scorer.score(lesions)) > 0.9
