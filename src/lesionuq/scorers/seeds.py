"""``gcnn_seeds``: the mean score of one scorer fitted with several seeds.

A GCNN trained on a few hundred validation lesions depends on its seed (initial weights,
batch order, the held-out lesions that choose its epoch): on the phantom's family C the
paper's GCNN moves its accuracy-confidence AUC by 1.8 points (SD over 5 seeds) on one
fold. :class:`SeedEnsembleScorer` is the wrapper estimator that removes that variance
the standard way, as scikit-learn's ``BaggingClassifier`` averages its members (here with
no resampling: every member sees all the lesions, and only the seed differs).

Member ``i`` is a clone of ``estimator`` whose seed is the template's plus ``i``
(:func:`reseeded`), so member 0 *is* the template's fit, and the ensemble's score is the
mean of the members' scores. For a P(FP) scorer the mean is a P(FP) too.

Example:
    >>> bag = SeedEnsembleScorer(GCNNScorer("classif"), n_members=5).fit(val_lesions)
    >>> p_fp = bag.score(test_lesions)  # (N,) mean P(FP) of 5 GCNNs
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Self

import numpy as np

from lesionuq.config import ExperimentConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.base import LesionScorer, check_is_fitted
from lesionuq.scorers.gcnn import GCNNScorer

__all__ = ["SeedEnsembleScorer", "make_gcnn_seeds", "reseeded"]

_MEMBERS_DIR = "members"


def reseeded(estimator: LesionScorer, offset: int) -> LesionScorer:
    """An unfitted clone of ``estimator`` whose seed is its own plus ``offset``.

    The seed is the constructor parameter ``seed``, else the ``seed`` field of a config
    dataclass parameter ``cfg`` (the GCNNs' ``GCNNConfig.seed``).

    Raises:
        ValueError: ``estimator`` has neither.
    """
    params = estimator.get_params()
    if "seed" in params:
        params["seed"] = int(params["seed"]) + offset
    elif dataclasses.is_dataclass(params.get("cfg")) and hasattr(params["cfg"], "seed"):
        params["cfg"] = dataclasses.replace(params["cfg"], seed=params["cfg"].seed + offset)
    else:
        raise ValueError(
            f"scorer '{estimator.name}' has no seed to vary (no parameter 'seed', no "
            "'cfg.seed'); a seed ensemble of it would repeat one model."
        )
    new = type(estimator).from_params(params)
    new.name = estimator.name
    return new


class SeedEnsembleScorer(LesionScorer):
    """The mean score of ``n_members`` fits of one scorer that differ only in their seed.

    Args:
        estimator: The unfitted template (a learned scorer with a seed, :func:`reseeded`);
            it is never fitted itself.
        n_members: Number of members (seeds ``s``, ``s + 1``, ... of the template's ``s``).
        name: Method name.

    Attributes:
        members_: The fitted members, member ``i`` with seed offset ``i``.
    """

    def __init__(
        self, estimator: LesionScorer, n_members: int = 5, name: str | None = None
    ) -> None:
        if n_members < 1:
            raise ValueError(f"n_members must be at least 1, got {n_members}.")
        if not estimator.requires_fit:
            raise ValueError(
                f"scorer '{estimator.name}' learns nothing; every seed gives the same score."
            )
        self.estimator = estimator
        self.n_members = n_members
        self.name = name or f"{estimator.name}_seeds"

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Fit ``n_members`` reseeded clones of the template on the same lesions.

        Args:
            lesions: N labelled lesions.
            progress: Passed to each member's fit.
        """
        members = [reseeded(self.estimator, i) for i in range(self.n_members)]
        self.members_ = [m.fit(lesions, progress=progress) for m in members]
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: the mean of the members' scores.

        Raises:
            NotFittedError: Not fitted.
        """
        check_is_fitted(self)
        scores = [np.asarray(m.score(lesions), dtype=np.float64) for m in self.members_]
        return np.asarray(np.mean(scores, axis=0), dtype=np.float64)

    def _state(self, folder: Path) -> dict[str, Any]:
        check_is_fitted(self)
        for i, member in enumerate(self.members_):
            member.save(folder / _MEMBERS_DIR / str(i))
        return {"members": len(self.members_)}

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self.members_ = [
            LesionScorer.load(folder / _MEMBERS_DIR / str(i)) for i in range(int(state["members"]))
        ]


def make_gcnn_seeds(cfg: ExperimentConfig) -> SeedEnsembleScorer:
    """The registered ``gcnn_seeds``: 5 paper GCNNs (``gcnn_classif``, ``cfg.gcnn``).

    The members' seeds are ``cfg.gcnn.seed`` to ``cfg.gcnn.seed + 4``: member 0 is the
    run's ``gcnn_classif``.
    """
    return SeedEnsembleScorer(GCNNScorer("classif", cfg.gcnn), n_members=5, name="gcnn_seeds")
