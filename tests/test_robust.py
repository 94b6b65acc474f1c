"""GCNN variants of issue 31 (lesionuq.scorers.robust)."""

from __future__ import annotations

import numpy as np
import torch

from helpers import random_lesion_set
from lesionuq.config import ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.robust import RobustGCNNScorer, scan_normalised, without_intensities


def _two_scans() -> LesionSet:
    """Two scans; column 0 intensity, column 1 label (1 lesion, 0 ring)."""
    lesions = random_lesion_set(4, seed=0, n_features=5)
    lesions.table["case_id"] = ["s1", "s1", "s2", "s2"]
    xs = [
        [[5.0, 1], [1.0, 0], [3.0, 0]],  # s1 ring: 1, 3, 5 (below)
        [[6.0, 1], [5.0, 0]],
        [[10.0, 1], [2.0, 0]],  # s2 ring: 2, 2 -> MAD 0 -> scale 1
        [[7.0, 1], [2.0, 0]],
    ]
    for g, x in zip(lesions.graphs, xs, strict=True):
        full = torch.zeros(len(x), 5)
        full[:, :2] = torch.tensor(x)
        full[:, 2:] = 0.5
        g.x = full
        chain = torch.arange(len(x) - 1)
        g.edge_index = torch.stack([torch.cat([chain, chain + 1]), torch.cat([chain + 1, chain])])
    return lesions


def test_scan_normalised_hand_values() -> None:
    lesions = _two_scans()
    out = scan_normalised(lesions, n_sequences=1)
    # s1 ring intensities 1, 3, 5: median 3, MAD 2 -> scale 2.9652
    s = 2 * 1.4826
    assert torch.allclose(out.graphs[0].x[:, 0], torch.tensor([2 / s, -2 / s, 0.0]))
    assert torch.allclose(out.graphs[1].x[:, 0], torch.tensor([3 / s, 2 / s]))
    # s2 ring 2, 2: median 2, MAD 0 -> scale 1
    assert torch.allclose(out.graphs[2].x[:, 0], torch.tensor([8.0, 0.0]))
    # other columns and the input untouched
    assert torch.equal(out.graphs[0].x[:, 1:], lesions.graphs[0].x[:, 1:])
    assert lesions.graphs[0].x[0, 0] == 5.0


def test_scan_norm_removes_a_per_scan_gain_and_offset() -> None:
    lesions = _two_scans()
    shifted = _two_scans()
    for g in shifted.graphs[:2]:
        g.x[:, 0] = 3.0 * g.x[:, 0] - 7.0  # scan s1 on another scanner
    a, b = scan_normalised(lesions), scan_normalised(shifted)
    for ga, gb in zip(a.graphs, b.graphs, strict=True):
        assert torch.allclose(ga.x, gb.x, atol=1e-5)


def test_registered_variants_fit_score_and_reload(tmp_path) -> None:
    cfg = ExperimentConfig(gcnn=GCNNConfig(epochs=3))
    lesions = random_lesion_set(24, seed=2)
    lesions.table["case_id"] = [f"s{i % 3}" for i in range(24)]
    for name, norm, aug in [("gcnn_nawm", True, False), ("gcnn_aug", False, True),
                            ("gcnn_robust", True, True)]:  # fmt: skip
        scorer = make_scorer(name, cfg)
        assert isinstance(scorer, RobustGCNNScorer)
        assert (scorer.scan_norm, scorer.augment) == (norm, aug)
        u = scorer.fit(lesions, progress=False).score(lesions)
        assert u.shape == (24,) and np.all((u >= 0) & (u <= 1))
        scorer.save(tmp_path / name)
        again = load_scorer(name, tmp_path / name)
        assert (again.scan_norm, again.augment) == (norm, aug)
        assert np.allclose(again.score(lesions), u)


def test_augmentation_is_seeded_and_off_by_default_in_the_paper_gcnn() -> None:
    cfg = ExperimentConfig(gcnn=GCNNConfig(epochs=3))
    lesions = random_lesion_set(24, seed=3)
    one = make_scorer("gcnn_aug", cfg).fit(lesions, progress=False).score(lesions)
    two = make_scorer("gcnn_aug", cfg).fit(lesions, progress=False).score(lesions)
    assert np.array_equal(one, two)
    plain = make_scorer("gcnn_classif", cfg).fit(lesions, progress=False).score(lesions)
    norm_off = RobustGCNNScorer(cfg=cfg.gcnn, scan_norm=False, augment=False)
    same = norm_off.fit(lesions, progress=False).score(lesions)
    assert np.array_equal(plain, same)  # no option on: exactly the paper's GCNN


def test_catalogue_builds_the_robust_methods_from_the_config():
    """The catalogue's factories give each robust GCNN its switches and the sequences."""
    from lesionuq.config import ExperimentConfig
    from lesionuq.scorers import make_scorer
    from lesionuq.scorers.select import STACK_CANDIDATES

    cfg = ExperimentConfig(sequences=("flair", "t1"))
    expected = {"gcnn_nawm": (True, False), "gcnn_aug": (False, True), "gcnn_robust": (True, True)}
    for name, (scan_norm, augment) in expected.items():
        scorer = make_scorer(name, cfg)
        assert (scorer.name, scorer.scan_norm, scorer.augment) == (name, scan_norm, augment)
        assert scorer.n_sequences == 2
    stack = make_scorer("gcnn_stack_robust", cfg)
    assert stack.candidates == (*STACK_CANDIDATES[:-1], "gcnn_robust")
    inner = stack._factories()["gcnn_robust"]()  # the candidate sees the run's sequences
    assert inner.n_sequences == 2


def test_uncertainty_only_gcnn_ignores_the_intensities(tmp_path) -> None:
    cfg = ExperimentConfig(gcnn=GCNNConfig(epochs=3))
    lesions = random_lesion_set(24, seed=4)
    other = random_lesion_set(24, seed=4)
    for g in other.graphs:  # another scanner: any intensities at all
        g.x[:, 0] = 100.0 * torch.rand(g.x.shape[0]) - 7.0
    assert torch.equal(without_intensities(lesions).graphs[0].x, lesions.graphs[0].x[:, 1:])
    scorer = make_scorer("gcnn_unc", cfg).fit(lesions, progress=False)
    assert scorer.in_features_ == 4  # label + 3 uncertainties of the 5 columns
    u = scorer.score(lesions)
    assert np.array_equal(scorer.score(other), u)
    refit = make_scorer("gcnn_unc", cfg).fit(other, progress=False)
    assert np.array_equal(refit.score(lesions), u)  # the fit never saw them either
    scorer.save(tmp_path / "unc")
    assert np.array_equal(load_scorer("gcnn_unc", tmp_path / "unc").score(lesions), u)
