from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch_geometric.data import Data

from lesionuq.config import METHODS, ExperimentConfig
from lesionuq.io import InputError
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import REGISTRY, LesionScorer, load_scorer, make_scorer
from lesionuq.scorers.baselines import (
    ColumnScorer,
    MetaSegScorer,
    SizeScorer,
    metaseg_features,
    size_uncertainty,
)

EPS = 1e-6  # GraphConfig.logsum_eps

# Three tiny lesions, voxel values (entropy, variance, PCS confidence) listed by hand.
VOXELS = [
    {"entropy": [0.1, 0.3], "variance": [0.01, 0.02], "pcs": [0.9, 0.8]},
    {"entropy": [0.5], "variance": [0.2], "pcs": [0.6]},
    {"entropy": [0.2] * 4, "variance": [0.0] * 4, "pcs": [1.0] * 4},
]
# Expected uncertainties, computed by hand (u = entropy, variance, 1 - PCS).
EXPECTED = {
    "entropy_mean": [0.2, 0.5, 0.2],
    "entropy_logsum": [math.log(0.1 * 0.3), math.log(0.5), 4 * math.log(0.2)],
    "variance_mean": [0.015, 0.2, 0.0],
    "variance_logsum": [math.log(0.01 * 0.02), math.log(0.2), 4 * math.log(EPS)],
    "pcs_mean": [0.15, 0.4, 0.0],
    "pcs_logsum": [math.log(0.1 * 0.2), math.log(0.4), 4 * math.log(EPS)],
    "size": [1 / 2, 1 / 1, 1 / 4],
}


def tiny_lesions() -> LesionSet:
    """The table as ``lesion_table`` writes it, plus tiny chain graphs."""
    rows, graphs = [], []
    for k, vox in enumerate(VOXELS):
        u = {
            "entropy": np.array(vox["entropy"]),
            "variance": np.array(vox["variance"]),
            "pcs": 1 - np.array(vox["pcs"]),
        }
        n = len(vox["entropy"])
        row = {"case_id": "a", "lesion_id": k + 1, "n_voxels": n, "iou_adj": [0.5, 0.0, 0.2][k]}
        row["is_tp"] = row["iou_adj"] >= 0.1
        for m, values in u.items():
            row[f"{m}_mean"] = values.mean()
            row[f"{m}_logsum"] = np.log(np.maximum(values, EPS)).sum()
        rows.append(row)
        x = torch.tensor(
            [[0.0, 1.0, e, v, p] for e, v, p in zip(*vox.values(), strict=True)],
            dtype=torch.float32,
        )
        chain = torch.arange(n - 1)
        edge_index = torch.cat(
            [torch.stack([chain, chain + 1]), torch.stack([chain + 1, chain])], 1
        )
        graphs.append(Data(x=x, edge_index=edge_index, case_id="a", lesion_id=k + 1, size=n))
    return LesionSet(pd.DataFrame(rows), graphs)


def random_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "case_id": "r",
            "lesion_id": np.arange(1, n + 1),
            "n_voxels": rng.integers(1, 500, size=n),
            "entropy_mean": rng.uniform(0, 0.7, size=n),
            "variance_mean": rng.uniform(0, 0.25, size=n),
            "pcs_mean": rng.uniform(0, 0.5, size=n),
        }
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_table_baselines_equal_hand_computations(name: str) -> None:
    lesions = tiny_lesions()
    scorer = make_scorer(name, ExperimentConfig())
    assert scorer.name == name
    u = scorer.fit(lesions).score(lesions)
    assert u.dtype == np.float64 and u.shape == (3,)
    np.testing.assert_allclose(u, EXPECTED[name], rtol=1e-12)


def test_size_has_spearman_minus_one_with_size() -> None:
    table = random_table(50, seed=0)
    u = SizeScorer().score(LesionSet(table))
    rho = spearmanr(u, table["n_voxels"]).statistic
    assert rho == pytest.approx(-1.0)
    np.testing.assert_array_equal(size_uncertainty(np.array([1, 4])), [1.0, 0.25])
    with pytest.raises(ValueError, match=">= 1"):
        size_uncertainty(np.array([3, 0]))


def test_metaseg_reg_recovers_a_linear_iou() -> None:
    table = random_table(40, seed=1)
    x = metaseg_features(table)
    assert x.shape == (40, 4)
    table["iou_adj"] = 0.2 + x @ np.array([0.3, -0.5, 0.4, 0.001])
    table["is_tp"] = table["iou_adj"] >= 0.1
    scorer = MetaSegScorer("reg").fit(LesionSet(table))
    np.testing.assert_allclose(scorer.score(LesionSet(table)), 1 - table["iou_adj"], atol=1e-10)
    np.testing.assert_allclose(scorer.scaler_.mean_, x.mean(0))
    np.testing.assert_allclose(scorer.scaler_.scale_, x.std(0))


def test_metaseg_classif_outputs_the_fp_probability() -> None:
    table = random_table(60, seed=2)
    table["is_tp"] = table["entropy_mean"] < 0.35  # FP = uncertain lesions
    table["iou_adj"] = np.where(table["is_tp"], 0.6, 0.0)
    scorer = MetaSegScorer("classif").fit(LesionSet(table))
    u = scorer.score(LesionSet(table))
    # hand computation: sigmoid of the linear model on the standardised features
    x = metaseg_features(table)
    z = (x - x.mean(0)) / x.std(0)
    logit = z @ scorer.model_.coef_[0] + scorer.model_.intercept_[0]
    np.testing.assert_allclose(u, 1 / (1 + np.exp(-logit)), rtol=1e-10)
    assert scorer.model_.coef_[0][0] > 0  # more entropy, more likely FP
    fp = ~table["is_tp"].to_numpy()
    assert u[fp].min() > u[~fp].max()  # separable: every FP above every TP


@pytest.mark.parametrize("task", ["classif", "reg"])
def test_metaseg_save_load_gives_identical_scores(task: str, tmp_path) -> None:
    table = random_table(30, seed=3)
    table["iou_adj"] = np.clip(1 - 2 * table["entropy_mean"], 0, 1)
    table["is_tp"] = table["iou_adj"] >= 0.1
    lesions = LesionSet(table)
    scorer = make_scorer(f"metaseg_{task}", ExperimentConfig()).fit(lesions)
    scorer.save(tmp_path)
    meta = json.loads((tmp_path / "scorer.json").read_text())
    assert meta["class"] == "MetaSegScorer" and meta["name"] == f"metaseg_{task}"
    assert len(meta["state"]["scaler_mean"]) == 4
    loaded = load_scorer(f"metaseg_{task}", tmp_path)
    np.testing.assert_array_equal(loaded.score(lesions), scorer.score(lesions))
    with pytest.raises(ValueError, match="holds method"):
        load_scorer("entropy_mean", tmp_path)


def test_stateless_baselines_round_trip(tmp_path) -> None:
    lesions = tiny_lesions()
    for name in ("pcs_logsum", "size"):
        make_scorer(name, ExperimentConfig()).save(tmp_path / name)
        loaded = load_scorer(name, tmp_path / name)
        assert isinstance(loaded, ColumnScorer | SizeScorer) and loaded.name == name
        np.testing.assert_allclose(loaded.score(lesions), EXPECTED[name], rtol=1e-12)
    assert isinstance(LesionScorer.load(tmp_path / "size"), SizeScorer)
    with pytest.raises(ValueError, match="not a MetaSegScorer"):
        MetaSegScorer.load(tmp_path / "size")


def test_metaseg_degenerate_training_set_warns_and_uses_the_prior() -> None:
    table = random_table(10, seed=4)
    table["iou_adj"], table["is_tp"] = 0.5, True
    with pytest.warns(UserWarning, match="single class"):
        scorer = MetaSegScorer("classif").fit(LesionSet(table))
    np.testing.assert_array_equal(scorer.score(LesionSet(table)), np.zeros(10))


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    table = random_table(5, seed=5)
    with pytest.raises(ValueError, match="'entropy_logsum'"):
        make_scorer("entropy_logsum", ExperimentConfig()).score(LesionSet(table))
    with pytest.raises(ValueError, match="'is_tp'"):
        MetaSegScorer("classif").fit(LesionSet(table))
    table["iou_adj"], table["is_tp"] = np.nan, False
    with pytest.raises(ValueError, match="NaN"):
        MetaSegScorer("reg").fit(LesionSet(table))
    with pytest.raises(RuntimeError, match="not fitted"):
        MetaSegScorer("reg").score(LesionSet(table))
    with pytest.raises(ValueError, match="task"):
        MetaSegScorer("ranking")
    with pytest.raises(InputError, match=r"scorer\.json: file not found"):
        load_scorer("size", tmp_path)


def test_registry_covers_every_method() -> None:
    # the paper's methods, plus the documented extras beyond the paper
    assert set(REGISTRY) - set(METHODS) == {
        "gcnn_ens",
        "gcnn_auto",
        "gcnn_stack",
        "gcnn_stack_all",
        "gcnn_pair",
        "gcnn_nawm",
        "gcnn_aug",
        "gcnn_robust",
        "gcnn_unc",
        "gcnn_stack_robust",
        "gcnn_mt",
        "gcnn_scancv",
        "gcnn_seeds",
        "gcnn_stack_seeds",
        "gcnn_loc",
        "gcnn_loc_mni",
        "metaseg_loc",
    }
    assert set(METHODS) <= set(REGISTRY)
    cfg = ExperimentConfig()
    for name in METHODS:
        assert make_scorer(name, cfg).name == name
    with pytest.raises(ValueError, match="known: gcnn_classif, gcnn_reg, entropy_mean"):
        make_scorer("entropy_median", cfg)
    with pytest.raises(ValueError, match="Unknown scoring method"):
        load_scorer("entropy_median", ".")
