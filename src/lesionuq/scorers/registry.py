"""Build and load scorers by method name, from the catalogue (:mod:`lesionuq.methods`).

The method names, labels, styles and flags live in :data:`lesionuq.methods.CATALOGUE`;
this module turns a name into a scorer: it imports the entry's ``"module:Class"``
implementation (checked to be a :class:`~lesionuq.scorers.base.LesionScorer`) and calls
it with the entry's constant arguments, the config values its ``settings`` name and, for
a selector (``gcnn_auto``, ``gcnn_stack``), its ``candidates`` built from the same config
as (name, scorer) pairs (:func:`make_estimators`). :data:`REGISTRY` is the catalogue
itself, kept under its old name.

Example:
    >>> scorer = make_scorer("entropy_mean", ExperimentConfig())
    >>> u = scorer.fit(val_lesions).score(test_lesions)  # (N,) float64
    >>> scorer.save(folder)
    >>> same = load_scorer("entropy_mean", folder)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lesionuq.config import ExperimentConfig, GCNNConfig, config_from_dict
from lesionuq.methods import CATALOGUE, MethodSpec, method_spec, resolve
from lesionuq.scorers.base import SCORER_FILE, LesionScorer

__all__ = [
    "REGISTRY",
    "ScorerSpec",
    "load_scorer",
    "make_estimators",
    "make_scorer",
    "scorer_class",
]

REGISTRY = CATALOGUE
"""Method name -> spec: :data:`lesionuq.methods.CATALOGUE` (the same dict)."""
ScorerSpec = MethodSpec
"""The old name of :class:`lesionuq.methods.MethodSpec`."""


def scorer_class(name: str) -> type[LesionScorer]:
    """The implementation class of method ``name``, imported now.

    Raises:
        ValueError: Unknown name, or an implementation that is not a ``LesionScorer``
            subclass or whose ``requires_fit`` / ``self_calibrated`` disagree with the
            catalogue's ``learned`` / ``self_calibrated``.
    """
    spec = method_spec(name)
    cls = spec.cls
    if not (isinstance(cls, type) and issubclass(cls, LesionScorer)):
        raise ValueError(f"method '{name}': {spec.implementation!r} is not a LesionScorer.")
    if cls.requires_fit != spec.learned or cls.self_calibrated != spec.self_calibrated:
        raise ValueError(
            f"method '{name}': the catalogue says learned={spec.learned}, "
            f"self_calibrated={spec.self_calibrated}; {cls.__name__} says "
            f"requires_fit={cls.requires_fit}, self_calibrated={cls.self_calibrated}."
        )
    return cls


def _setting(cfg: ExperimentConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def make_scorer(name: str, cfg: ExperimentConfig) -> LesionScorer:
    """An unfitted scorer for method ``name``.

    Args:
        name: A key of the catalogue.
        cfg: Experiment config (the entry's ``settings`` name what is read, e.g.
            ``cfg.gcnn``).

    Raises:
        ValueError: Unknown name (the message lists the known ones), or a bad
            implementation (:func:`scorer_class`).
    """
    cls = scorer_class(name)
    spec = CATALOGUE[name]
    if spec.factory is not None:
        scorer = resolve(spec.factory)(cfg)
        if not isinstance(scorer, cls):
            raise ValueError(f"method '{name}': {spec.factory} made no {cls.__name__}.")
        return scorer
    params = dict(spec.kwargs) | {k: _setting(cfg, p) for k, p in spec.settings.items()}
    if spec.candidates:
        params["estimators"] = make_estimators(spec.candidates, cfg)
    return cls(name=name, **params)


def make_estimators(names: Iterable[str], cfg: ExperimentConfig) -> list[tuple[str, LesionScorer]]:
    """(name, unfitted scorer) of each method: a selector's ``estimators``.

    Args:
        names: Keys of the catalogue.
        cfg: Experiment config each scorer is built from (:func:`make_scorer`).

    Raises:
        ValueError: Unknown name.
    """
    return [(name, make_scorer(name, cfg)) for name in names]


def load_scorer(name: str, folder: str | Path) -> LesionScorer:
    """Load the fitted scorer of method ``name`` saved in ``folder``.

    Args:
        name: A key of the catalogue; must match the name stored in the folder.
        folder: The scorer's own folder (``RUN/fold_K/scorers/METHOD``).

    Raises:
        ValueError: Unknown name, or the folder holds another method.
        InputError: ``folder/scorer.json`` missing or unreadable.
    """
    scorer_class(name)  # imports the implementation, so that its class is known
    folder = Path(folder)
    scorer = LesionScorer.load(folder, template=_saved_by_name(name, folder))
    if scorer.name != name:
        raise ValueError(f"{folder / SCORER_FILE}: holds method '{scorer.name}', not '{name}'.")
    return scorer


def _saved_by_name(name: str, folder: Path) -> LesionScorer | None:
    """The unfitted selector of a folder that names its candidates, else None.

    Before the selectors took their candidates as instances, ``scorer.json`` stored a
    selector's candidates as method names with the settings they were built from
    (``gcnn``, ``seed``, ``sequences``; the old constructor's defaults where absent). The
    same candidates are built from them here, as the selector then built them. Any other
    folder, or an unreadable one (which :meth:`LesionScorer.load` reports), gives None.
    """
    if not CATALOGUE[name].candidates:
        return None
    try:
        params = json.loads((folder / SCORER_FILE).read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(params, dict) or "candidates" not in params:
        return None
    where = f"{folder / SCORER_FILE} params.gcnn"
    seed = int(params.get("seed", 0))
    cfg = ExperimentConfig(
        gcnn=config_from_dict(GCNNConfig, params.get("gcnn") or {}, where),
        seed=seed,
        sequences=tuple(params.get("sequences", ("flair",))),
    )
    estimators = make_estimators(params["candidates"], cfg)
    n_inner = int(params.get("n_inner", 3))
    return scorer_class(name)(estimators=estimators, n_inner=n_inner, seed=seed, name=name)
