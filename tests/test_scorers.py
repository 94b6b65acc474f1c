"""The contract every registered scorer keeps, and how a new scorer is added."""

from __future__ import annotations

import warnings
from typing import Self

import numpy as np
import pytest

from helpers import random_lesion_set
from lesionuq.config import ConfigError, ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import (
    REGISTRY,
    GCNNScorer,
    LesionScorer,
    MetaSegScorer,
    NotFittedError,
    ScorerSpec,
    check_is_fitted,
    load_scorer,
    make_scorer,
    table_column,
)

CFG = ExperimentConfig(gcnn=GCNNConfig(hidden=8, epochs=2, batch_size=4))


@pytest.fixture(scope="module")
def lesions() -> tuple[LesionSet, LesionSet]:
    sets = random_lesion_set(12, seed=0), random_lesion_set(7, seed=1)
    for k, s in enumerate(sets):  # the location columns that gcnn_loc / metaseg_loc read
        n = len(s)
        classes = ("periventricular", "juxtacortical", "infratentorial", "deep")
        s.table["location"] = [classes[(i + k) % 4] for i in range(n)]
        for a, axis in enumerate("xyz"):
            s.table[f"mni_{axis}_mm"] = np.linspace(-40.0, 40.0, n) * (a + 1)
    return sets


def _fit(scorer: LesionScorer, lesions: LesionSet) -> LesionScorer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # degenerate fits warn; tested elsewhere
        return scorer.fit(lesions, progress=False)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_scorer_contract(method, lesions, tmp_path, one_thread) -> None:
    train, test = lesions
    spec = REGISTRY[method]
    scorer = make_scorer(method, CFG)
    assert type(scorer) is spec.cls and scorer.name == method
    assert spec.label and len(spec.style) == 3

    # unfitted: a learned scorer refuses to score or save; a stateless one just works
    if spec.cls.requires_fit:
        with pytest.raises(NotFittedError, match=f"scorer '{method}' is not fitted"):
            scorer.score(test)
        with pytest.raises(NotFittedError):
            scorer.save(tmp_path / "unfitted")
        assert not (tmp_path / "unfitted" / "scorer.json").exists()
    else:
        check_is_fitted(scorer)

    assert _fit(scorer, train) is scorer
    u = scorer.score(test)
    assert u.shape == (len(test),) and u.dtype == np.float64 and np.isfinite(u).all()

    # save / load: same class, same parameters, bit-identical scores
    scorer.save(tmp_path / method)
    loaded = load_scorer(method, tmp_path / method)
    assert type(loaded) is type(scorer) and repr(loaded) == repr(scorer)
    np.testing.assert_array_equal(loaded.score(test), u)

    # an empty lesion set: scoring it gives (0,), and fitting on it works too
    empty = LesionSet(test.table.iloc[:0], [])
    assert loaded.score(empty).shape == (0,) and loaded.score(empty).dtype == np.float64
    on_empty = _fit(make_scorer(method, CFG), empty)
    u_empty = on_empty.score(test)
    assert u_empty.shape == (len(test),) and np.isfinite(u_empty).all()


def test_get_params_reads_the_constructor_signature() -> None:
    gcnn = GCNNScorer("reg", GCNNConfig(hidden=8), num_threads=None)
    assert gcnn.get_params() == {
        "task": "reg",
        "cfg": GCNNConfig(hidden=8),
        "name": "gcnn_reg",
        "device": "cpu",
        "num_threads": None,
        "epoch_cv": 0,
    }
    assert MetaSegScorer("reg", max_iter=5).get_params() == {
        "task": "reg",
        "name": "metaseg_reg",
        "max_iter": 5,
    }
    again = GCNNScorer.from_params({**gcnn.get_params(), "cfg": {"hidden": 8}})
    assert again.cfg == GCNNConfig(hidden=8)
    with pytest.raises(ConfigError, match=r"scorer\.json params\.cfg\.readout"):
        GCNNScorer.from_params({"cfg": {"readout": "avg"}})


# --- adding a scorer: one class ------------------------------------------------------
class ToyScorer(LesionScorer):
    """u = n_voxels / (largest training lesion): a toy learned scorer."""

    def __init__(self, name: str = "toy", scale: float = 1.0) -> None:
        self.name = name
        self.scale = scale

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        sizes = table_column(lesions.table, "n_voxels", self.name)
        self.largest_ = float(sizes.max()) if len(sizes) else 1.0
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        check_is_fitted(self)
        return self.scale * table_column(lesions.table, "n_voxels", self.name) / self.largest_

    def _state(self, folder):
        return {"largest": self.largest_}

    def _set_state(self, state, folder):
        self.largest_ = state["largest"]


def test_a_new_scorer_is_one_class_and_one_registry_line(monkeypatch, lesions, tmp_path) -> None:
    train, test = lesions
    with pytest.raises(ConfigError, match="got 'toy'"):
        ExperimentConfig(methods=("size", "toy"))
    # --- ... and one registry line (in lesionuq/scorers/registry.py: REGISTRY = {...})
    monkeypatch.setitem(REGISTRY, "toy", ScorerSpec(ToyScorer, "Toy", ("#17becf", "-", 1.4)))

    cfg = ExperimentConfig(methods=("size", "toy"))
    scorer = make_scorer("toy", cfg)
    with pytest.raises(NotFittedError):
        scorer.score(test)
    u = scorer.fit(train).score(test)
    np.testing.assert_allclose(u, test.sizes / train.sizes.max())
    scorer.save(tmp_path)
    assert isinstance(LesionScorer.load(tmp_path), ToyScorer)
    np.testing.assert_array_equal(load_scorer("toy", tmp_path).score(test), u)
