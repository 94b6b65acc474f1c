"""``gcnn_seeds``: the mean P(FP) of paper GCNNs that differ only in their seed (issue 31)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import random_lesion_set
from lesionuq.config import ExperimentConfig, GCNNConfig
from lesionuq.scorers import ColumnScorer, MetaSegScorer, load_scorer, make_scorer
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.seeds import SeedEnsembleScorer, reseeded

CFG = GCNNConfig(epochs=4, seed=7)


def test_reseeded_moves_the_gcnn_config_seed_and_nothing_else() -> None:
    template = GCNNScorer("classif", CFG, name="gcnn_classif")
    clone2 = reseeded(template, 2)
    assert isinstance(clone2, GCNNScorer)
    assert clone2.cfg.seed == 9 and template.cfg.seed == 7
    assert clone2.name == "gcnn_classif"
    assert {k: v for k, v in vars(clone2.cfg).items() if k != "seed"} == {
        k: v for k, v in vars(CFG).items() if k != "seed"
    }


def test_reseeded_refuses_a_scorer_without_a_seed() -> None:
    with pytest.raises(ValueError, match="no seed to vary"):
        reseeded(MetaSegScorer("classif"), 1)


def test_an_untrained_template_is_refused() -> None:
    with pytest.raises(ValueError, match="learns nothing"):
        SeedEnsembleScorer(ColumnScorer("entropy_mean", name="entropy_mean"))
    with pytest.raises(ValueError, match="at least 1"):
        SeedEnsembleScorer(GCNNScorer(cfg=CFG), n_members=0)


def test_the_score_is_the_mean_of_gcnns_fitted_with_consecutive_seeds() -> None:
    val, test = random_lesion_set(40, seed=1), random_lesion_set(15, seed=2)
    bag = SeedEnsembleScorer(GCNNScorer("classif", CFG), n_members=3).fit(val, progress=False)
    singles = [
        GCNNScorer("classif", GCNNConfig(epochs=4, seed=s)).fit(val, progress=False).score(test)
        for s in (7, 8, 9)
    ]
    got = bag.score(test)
    assert got.shape == (15,) and got.dtype == np.float64
    np.testing.assert_allclose(got, np.mean(singles, axis=0), rtol=0, atol=1e-12)
    # the seeds matter: the members are not one model three times
    assert np.abs(singles[0] - singles[1]).max() > 1e-4
    assert np.all((got > 0) & (got < 1))


def test_registered_gcnn_seeds_member_0_is_gcnn_classif_and_it_round_trips(tmp_path) -> None:
    cfg = ExperimentConfig(gcnn=CFG)
    val, test = random_lesion_set(30, seed=3), random_lesion_set(10, seed=4)
    bag = make_scorer("gcnn_seeds", cfg)
    assert isinstance(bag, SeedEnsembleScorer) and bag.n_members == 5
    bag.fit(val, progress=False)
    paper = make_scorer("gcnn_classif", cfg).fit(val, progress=False)
    np.testing.assert_array_equal(bag.members_[0].score(test), paper.score(test))
    bag.save(tmp_path / "gcnn_seeds")
    same = load_scorer("gcnn_seeds", tmp_path / "gcnn_seeds")
    np.testing.assert_array_equal(same.score(test), bag.score(test))
    assert [m.cfg.seed for m in same.members_] == [7, 8, 9, 10, 11]


def test_gcnn_stack_seeds_stacks_the_seed_ensemble_with_the_uncertainty_means() -> None:
    stack = make_scorer("gcnn_stack_seeds", ExperimentConfig(gcnn=CFG))
    names = [name for name, _ in stack.estimators]
    assert names == ["entropy_mean", "variance_mean", "pcs_mean", "size", "gcnn_seeds"]
    bag = dict(stack.estimators)["gcnn_seeds"]
    assert isinstance(bag, SeedEnsembleScorer) and bag.estimator.cfg == CFG
