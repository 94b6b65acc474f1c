"""Site adaptation: a lesion scorer fitted elsewhere, re-weighted on a few local scans.

A lesion scorer fitted on one data set learns that data set's mechanism of false
positives; on another (another scanner, population or phantom family) it can rank worse
than the untrained voxel-uncertainty aggregates (issue 31's cross-family bench: the
paper's GCNN fitted on family B scores family A's lesions 9 points below the best
baseline). Retraining the GCNN needs a few hundred local lesions; re-weighting it needs
far fewer. :func:`site_stack` keeps the fitted scorer as it is (:class:`FrozenScorer`,
scikit-learn's ``FrozenEstimator``) and stacks it with the paper's untrained baselines
(the six voxel aggregates and size) by :class:`~lesionuq.scorers.select.StackedScorer`'s
monotone logistic fit on the labelled lesions of a few local scans: a weight per input,
none negative, so where the local scans show that the frozen scorer's ranking does not
hold, the aggregates carry the score.

Example:
    >>> source = load_scorer("gcnn_classif", "model/scorers/gcnn_classif")
    >>> adapted = site_stack(source).fit(local_lesions)  # 2-5 labelled local scans
    >>> adapted.weights_["gcnn_classif"], adapted.weights_["entropy_mean"]
    (0.41, 1.7)
    >>> p_fp = adapted.score(new_lesions)  # (N,) in (0, 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np

from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import METHODS, is_learned
from lesionuq.scorers.base import LesionScorer, check_is_fitted
from lesionuq.scorers.baselines import ColumnScorer, SizeScorer
from lesionuq.scorers.select import StackedScorer

__all__ = ["SITE_BASELINES", "FrozenScorer", "site_stack"]

#: The untrained inputs of :func:`site_stack`: the paper's baselines that learn nothing
#: (the voxel aggregates and size, from the catalogue).
SITE_BASELINES: tuple[str, ...] = tuple(m for m in METHODS if not is_learned(m))
_FROZEN_DIR = "frozen"


class FrozenScorer(LesionScorer):
    """A fitted scorer that fitting leaves as it is (scikit-learn's ``FrozenEstimator``).

    ``requires_fit`` is False, so a stack scores it directly instead of refitting it on
    inner folds, and :func:`lesionuq.calibration.clone` (which rebuilds from
    :meth:`get_params`) returns a new wrapper around the *same* fitted scorer.

    Args:
        scorer: A fitted scorer.
        name: Method name; default the wrapped scorer's (a stack reads from the name
            whether the output is a P(FP), :func:`lesionuq.methods.outputs_p_fp`).

    Raises:
        NotFittedError: ``scorer`` is a learned scorer that was not fitted.
    """

    requires_fit = False

    def __init__(self, scorer: LesionScorer, name: str | None = None) -> None:
        check_is_fitted(scorer)
        self.scorer = scorer
        self.name = name or scorer.name

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Nothing: the wrapped scorer stays as it was fitted."""
        return self

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: the wrapped scorer's scores."""
        return np.asarray(self.scorer.score(lesions), dtype=np.float64)

    def _state(self, folder: Path) -> dict[str, Any]:
        self.scorer.save(folder / _FROZEN_DIR)
        return {"frozen": _FROZEN_DIR}

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self.scorer = LesionScorer.load(folder / str(state["frozen"]))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """A wrapper around ``params["scorer"]``.

        That is the fitted scorer itself (a clone), or its JSON description
        (:meth:`LesionScorer.load`, which restores the fitted state next through
        :meth:`_set_state`; until then the wrapped scorer is unfitted).
        """
        inner = params["scorer"]
        if isinstance(inner, LesionScorer):
            return cls(inner, params.get("name"))
        new = cls.__new__(cls)
        new.scorer = LesionScorer.from_description(inner)
        new.name = params.get("name") or new.scorer.name
        return new


def site_stack(
    source: LesionScorer,
    baselines: tuple[str, ...] = SITE_BASELINES,
    n_inner: int = 3,
    seed: int = 0,
    name: str = "site_stack",
) -> StackedScorer:
    """An unfitted stack of ``source`` (frozen) and the untrained baselines.

    Fit it on the labelled lesions of a few local scans; nothing in ``source`` changes.
    The inputs are ``source`` under its own method name (a P(FP) enters as its logit)
    and each baseline's uncertainty; the fitted weights (``weights_``) say how much of the
    ranking each carries on the local scans, and the out-of-fold AUC of each
    (``inner_auc_``, by case) how well it ranked them alone.

    Args:
        source: A fitted lesion scorer (e.g. a model's ``gcnn_classif``).
        baselines: Names among :data:`SITE_BASELINES`.
        n_inner: Inner folds by case, for the reported AUCs (see
            :class:`~lesionuq.scorers.select.StackedScorer`).
        seed: Seed of the inner split.
        name: Method name of the stack.

    Returns:
        A :class:`~lesionuq.scorers.select.StackedScorer`.

    Raises:
        ValueError: An unknown baseline, or ``source`` under one of the baselines' names.
        NotFittedError: ``source`` is not fitted.
    """
    bad = [b for b in baselines if b not in SITE_BASELINES]
    if bad or source.name in baselines:
        raise ValueError(
            f"site_stack: baselines must be among {', '.join(SITE_BASELINES)} and differ "
            f"from the source scorer's name; got {list(baselines)} and {source.name!r}."
        )
    inputs: list[tuple[str, LesionScorer]] = [(source.name, FrozenScorer(source))]
    inputs += [(b, SizeScorer() if b == "size" else ColumnScorer(b)) for b in baselines]
    return StackedScorer(inputs, n_inner=n_inner, seed=seed, name=name)
