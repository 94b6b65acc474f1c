"""The scoring methods by name: how to build each, how to label and draw it.

This is the one place that knows the method names. Adding a scorer takes one class
(a :class:`~lesionuq.scorers.base.LesionScorer`) and one line here::

    "toy": ScorerSpec(ToyScorer, "Toy", ("#17becf", "-", 1.4)),

after which ``methods: [toy]`` is accepted in a config, fitted and evaluated by the
experiment, saved and loaded, and drawn in Figure 2 and the report with its label.

Example:
    >>> scorer = make_scorer("entropy_mean", ExperimentConfig())
    >>> u = scorer.fit(val_lesions).score(test_lesions)  # (N,) float64
    >>> scorer.save(folder)
    >>> same = load_scorer("entropy_mean", folder)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionuq.config import ExperimentConfig, did_you_mean
from lesionuq.scorers.base import SCORER_FILE, LesionScorer
from lesionuq.scorers.baselines import ColumnScorer, MetaSegScorer, SizeScorer
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.gcnn_ens import GCNNEnsembleScorer, make_gcnn_ens
from lesionuq.scorers.robust import RobustGCNNScorer
from lesionuq.scorers.select import STACK_CANDIDATES, SelectedScorer, StackedScorer

__all__ = ["REGISTRY", "ScorerSpec", "load_scorer", "make_scorer"]


def _no_params(cfg: ExperimentConfig) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ScorerSpec:
    """One method: its scorer class, constructor arguments, label and plot style.

    Attributes:
        cls: The scorer class.
        label: Name in Figure 2's legend and the report.
        style: Matplotlib (colour, line style, line width) of its curve.
        params: Constructor keyword arguments (besides ``name``) from the experiment
            config, e.g. ``lambda cfg: {"task": "reg", "cfg": cfg.gcnn}``.
    """

    cls: type[LesionScorer]
    label: str
    style: tuple[str, str, float]
    params: Callable[[ExperimentConfig], dict[str, Any]] = _no_params

    def make(self, name: str, cfg: ExperimentConfig) -> LesionScorer:
        """The unfitted scorer of method ``name`` (the factory)."""
        return self.cls(name=name, **self.params(cfg))


def _column(column: str) -> Callable[[ExperimentConfig], dict[str, Any]]:
    return lambda cfg: {"column": column}


def _task(task: str) -> Callable[[ExperimentConfig], dict[str, Any]]:
    return lambda cfg: {"task": task}


def _gcnn(task: str) -> Callable[[ExperimentConfig], dict[str, Any]]:
    return lambda cfg: {"task": task, "cfg": cfg.gcnn}


def _inner(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"gcnn": cfg.gcnn, "n_inner": cfg.calibration.n_inner, "seed": cfg.seed}


def _robust(scan_norm: bool, augment: bool) -> Callable[[ExperimentConfig], dict[str, Any]]:
    return lambda cfg: {
        "task": "classif",
        "cfg": cfg.gcnn,
        "n_sequences": len(cfg.sequences),
        "scan_norm": scan_norm,
        "augment": augment,
    }


def _stack_robust(cfg: ExperimentConfig) -> dict[str, Any]:
    return {**_inner(cfg), "candidates": (*STACK_CANDIDATES[:-1], "gcnn_robust")}


# (colour, line style, line width): one family per colour, mean solid / logsum dashed
REGISTRY: dict[str, ScorerSpec] = {
    "gcnn_classif": ScorerSpec(GCNNScorer, "GCNN classif", ("#d62728", "-", 2.6), _gcnn("classif")),
    "gcnn_reg": ScorerSpec(GCNNScorer, "GCNN reg", ("#ff7f0e", "--", 2.6), _gcnn("reg")),
    "entropy_mean": ScorerSpec(
        ColumnScorer, "Entropy mean", ("#1f77b4", "-", 1.4), _column("entropy_mean")
    ),
    "entropy_logsum": ScorerSpec(
        ColumnScorer, "Entropy logsum", ("#1f77b4", "--", 1.4), _column("entropy_logsum")
    ),
    "variance_mean": ScorerSpec(
        ColumnScorer, "Variance mean", ("#2ca02c", "-", 1.4), _column("variance_mean")
    ),
    "variance_logsum": ScorerSpec(
        ColumnScorer, "Variance logsum", ("#2ca02c", "--", 1.4), _column("variance_logsum")
    ),
    "pcs_mean": ScorerSpec(ColumnScorer, "PCS mean", ("#9467bd", "-", 1.4), _column("pcs_mean")),
    "pcs_logsum": ScorerSpec(
        ColumnScorer, "PCS logsum", ("#9467bd", "--", 1.4), _column("pcs_logsum")
    ),
    "size": ScorerSpec(SizeScorer, "Size", ("#000000", ":", 1.8)),
    "metaseg_classif": ScorerSpec(
        MetaSegScorer, "MetaSeg classif", ("#8c564b", "-.", 1.4), _task("classif")
    ),
    "metaseg_reg": ScorerSpec(MetaSegScorer, "MetaSeg reg", ("#e377c2", "-.", 1.4), _task("reg")),
    # beyond the paper: a seeded ensemble of hybrid lesion GCNNs (scorers/gcnn_ens.py)
    "gcnn_ens": ScorerSpec(
        GCNNEnsembleScorer,
        "GCNN ensemble",
        ("#17becf", "-", 2.6),
        lambda cfg: {"cfg": make_gcnn_ens(cfg).cfg},
    ),
    # beyond the paper: the GCNN only where the validation lesions show it helps
    # (scorers/select.py)
    "gcnn_auto": ScorerSpec(
        SelectedScorer,
        "GCNN or simpler (auto)",
        ("#bcbd22", "-", 2.6),
        _inner,
    ),
    # beyond the paper: the GCNN and MetaSeg's features weighed by their out-of-fold
    # scores, every weight >= 0 (scorers/select.py)
    "gcnn_stack": ScorerSpec(
        StackedScorer, "GCNN + uncertainty means (stacked)", ("#7f7f7f", "-", 2.6), _inner
    ),
    # beyond the paper (issue 31): GCNNs meant to carry over to other data
    # (scorers/robust.py): intensities relative to each scan's perilesional ring,
    # augmented training graphs, both, and both stacked like gcnn_stack
    "gcnn_nawm": ScorerSpec(
        RobustGCNNScorer, "GCNN, ring-normalised", ("#e7969c", "-", 2.0), _robust(True, False)
    ),
    "gcnn_aug": ScorerSpec(
        RobustGCNNScorer, "GCNN, augmented", ("#ad494a", "-", 2.0), _robust(False, True)
    ),
    "gcnn_robust": ScorerSpec(
        RobustGCNNScorer,
        "GCNN, ring-normalised + augmented",
        ("#843c39", "-", 2.0),
        _robust(True, True),
    ),
    "gcnn_stack_robust": ScorerSpec(
        StackedScorer,
        "Robust GCNN + uncertainty means (stacked)",
        ("#525252", "-", 2.6),
        _stack_robust,
    ),
}
"""Method name -> :class:`ScorerSpec`; the default methods are ``config.METHODS``."""


def _check_name(name: str) -> None:
    if name not in REGISTRY:
        hint = did_you_mean(name, list(REGISTRY))
        raise ValueError(f"Unknown scoring method '{name}'{hint} (known: {', '.join(REGISTRY)}).")


def make_scorer(name: str, cfg: ExperimentConfig) -> LesionScorer:
    """An unfitted scorer for method ``name``.

    Args:
        name: A key of :data:`REGISTRY`.
        cfg: Experiment config (the GCNN reads ``cfg.gcnn``).

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    _check_name(name)
    return REGISTRY[name].make(name, cfg)


def load_scorer(name: str, folder: str | Path) -> LesionScorer:
    """Load the fitted scorer of method ``name`` saved in ``folder``.

    Args:
        name: A key of :data:`REGISTRY`; must match the name stored in the folder.
        folder: The scorer's own folder (``RUN/fold_K/scorers/METHOD``).

    Raises:
        ValueError: Unknown name, or the folder holds another method.
        InputError: ``folder/scorer.json`` missing or unreadable.
    """
    _check_name(name)
    folder = Path(folder)
    scorer = LesionScorer.load(folder)
    if scorer.name != name:
        raise ValueError(f"{folder / SCORER_FILE}: holds method '{scorer.name}', not '{name}'.")
    return scorer
