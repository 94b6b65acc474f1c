"""One interface for every lesion scorer, a registry of the paper's methods, save/load.

A scorer maps a :class:`~lesionuq.lesions.dataset.LesionSet` to one uncertainty per
lesion, higher meaning less trustworthy. Learned scorers are fitted on the lesions of the
validation cases (``fit``) and then applied to the test lesions (``score``); learned
state lives in attributes ending with ``_`` (scikit-learn style).

A fitted scorer is saved to its own folder (``RUN/fold_K/scorers/METHOD``) without any
pickle: ``scorer.json`` holds the class name, the method name, the constructor
parameters and the JSON-able learned state; the GCNN adds a ``model.pt`` state dict
loaded with ``torch.load(weights_only=True)``.

Example:
    >>> scorer = make_scorer("entropy_mean", ExperimentConfig())
    >>> u = scorer.fit(val_lesions).score(test_lesions)  # (N,) float64
    >>> scorer.save(folder)
    >>> same = load_scorer("entropy_mean", folder)
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from lesionuq.config import ExperimentConfig
from lesionuq.io import InputError, atomic_write_text
from lesionuq.lesions.dataset import LesionSet

__all__ = [
    "REGISTRY",
    "SCORER_FILE",
    "LesionScorer",
    "load_scorer",
    "make_scorer",
    "table_column",
]

SCORER_FILE = "scorer.json"
_FORMAT = 1
# Modules that define scorer classes; imported lazily by ``load`` (they import this one).
_SCORER_MODULES = (
    "lesionuq.scorers.baselines",
    "lesionuq.scorers.gcnn",
    "lesionuq.scorers.gcnn_ens",
)


class LesionScorer(ABC):
    """Base class: ``fit`` on labelled lesions, ``score`` any lesions.

    Subclasses implement :meth:`fit`, :meth:`score` and :meth:`get_params`, and, when
    they learn something, :meth:`_state` / :meth:`_set_state` for saving.

    Attributes:
        name: Method name (a column of ``results/lesions.csv``), e.g. ``"gcnn_classif"``.
    """

    name: str
    _classes: ClassVar[dict[str, type[LesionScorer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LesionScorer._classes[cls.__name__] = cls

    @abstractmethod
    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Learn from labelled lesions (table ``is_tp`` / ``iou_adj``); returns ``self``.

        Args:
            lesions: Training lesions (N lesions; graphs needed by the GCNN only).
            progress: Show a progress bar for long fits (the GCNN).
        """

    @abstractmethod
    def score(self, lesions: LesionSet) -> np.ndarray:
        """Uncertainty of each lesion.

        Args:
            lesions: N lesions.

        Returns:
            (N,) float64, higher = less trusted.

        Raises:
            ValueError: The lesions lack what the scorer reads (a table column, graphs,
                the fitted number of node features).
        """

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """Constructor keyword arguments as a JSON-able dict (``cls(**params)``)."""

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """Rebuild an unfitted scorer from :meth:`get_params` output."""
        return cls(**params)

    def _state(self, folder: Path) -> dict[str, Any] | None:
        """JSON-able learned state (may also write extra files into ``folder``)."""
        return None

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        """Restore what :meth:`_state` returned (and wrote into ``folder``)."""
        return None

    def save(self, folder: str | Path) -> None:
        """Write the scorer to ``folder`` (``scorer.json`` last, so it marks completion).

        Raises:
            RuntimeError: A learned scorer that was not fitted.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self._state(folder)
        meta = {
            "format": _FORMAT,
            "class": type(self).__name__,
            "name": self.name,
            "params": self.get_params(),
            "state": state,
        }
        atomic_write_text(folder / SCORER_FILE, json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> LesionScorer:
        """Read a scorer written by :meth:`save` (no pickle).

        Raises:
            InputError: ``scorer.json`` missing or unreadable.
            ValueError: The file holds a scorer of another class than ``cls``.
        """
        folder = Path(folder)
        meta = _read_meta(folder)
        target = _scorer_class(meta["class"], folder)
        if not issubclass(target, cls):
            raise ValueError(
                f"{folder / SCORER_FILE}: holds a {meta['class']}, not a {cls.__name__}."
            )
        scorer = target.from_params(meta["params"])
        scorer.name = str(meta["name"])
        scorer._set_state(meta.get("state"), folder)
        return scorer

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def table_column(table: pd.DataFrame, column: str, scorer: str) -> np.ndarray:
    """Column ``column`` of the lesion table as (N,) float64, with a clear error if absent.

    Raises:
        ValueError: The column is missing (naming the scorer that needs it).
    """
    if column not in table.columns:
        raise ValueError(
            f"scorer '{scorer}' needs the lesion-table column '{column}', which is missing "
            f"(columns: {', '.join(map(str, table.columns))})."
        )
    return table[column].to_numpy(dtype=np.float64)


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / SCORER_FILE
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}).") from err
    missing = [k for k in ("class", "name", "params") if k not in meta]
    if missing:
        raise InputError(f"{path}: missing key '{missing[0]}'.")
    return meta


def _scorer_class(class_name: str, folder: Path) -> type[LesionScorer]:
    for module in _SCORER_MODULES:
        importlib.import_module(module)
    try:
        return LesionScorer._classes[class_name]
    except KeyError:
        known = ", ".join(sorted(LesionScorer._classes))
        raise InputError(
            f"{folder / SCORER_FILE}: unknown scorer class '{class_name}' (known: {known})."
        ) from None


def _column(name: str) -> Callable[[ExperimentConfig], LesionScorer]:
    def factory(cfg: ExperimentConfig) -> LesionScorer:
        from lesionuq.scorers.baselines import ColumnScorer

        return ColumnScorer(column=name, name=name)

    return factory


def _size(cfg: ExperimentConfig) -> LesionScorer:
    from lesionuq.scorers.baselines import SizeScorer

    return SizeScorer()


def _metaseg(task: str) -> Callable[[ExperimentConfig], LesionScorer]:
    def factory(cfg: ExperimentConfig) -> LesionScorer:
        from lesionuq.scorers.baselines import MetaSegScorer

        return MetaSegScorer(task=task, name=f"metaseg_{task}")

    return factory


def _gcnn(task: str) -> Callable[[ExperimentConfig], LesionScorer]:
    def factory(cfg: ExperimentConfig) -> LesionScorer:
        from lesionuq.scorers.gcnn import GCNNScorer

        return GCNNScorer(task=task, cfg=cfg.gcnn, name=f"gcnn_{task}")

    return factory


REGISTRY: dict[str, Callable[[ExperimentConfig], LesionScorer]] = {
    "gcnn_classif": _gcnn("classif"),
    "gcnn_reg": _gcnn("reg"),
    "entropy_mean": _column("entropy_mean"),
    "entropy_logsum": _column("entropy_logsum"),
    "variance_mean": _column("variance_mean"),
    "variance_logsum": _column("variance_logsum"),
    "pcs_mean": _column("pcs_mean"),
    "pcs_logsum": _column("pcs_logsum"),
    "size": _size,
    "metaseg_classif": _metaseg("classif"),
    "metaseg_reg": _metaseg("reg"),
    "gcnn_ens": lambda cfg: importlib.import_module("lesionuq.scorers.gcnn_ens").make_gcnn_ens(cfg),
}
"""Method name (every name of ``config.METHODS``) -> factory of an unfitted scorer."""


def _check_name(name: str) -> None:
    if name not in REGISTRY:
        raise ValueError(f"Unknown scoring method '{name}' (known: {', '.join(REGISTRY)}).")


def make_scorer(name: str, cfg: ExperimentConfig) -> LesionScorer:
    """An unfitted scorer for method ``name``.

    Args:
        name: One of ``config.METHODS``.
        cfg: Experiment config (the GCNN reads ``cfg.gcnn``).

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    _check_name(name)
    return REGISTRY[name](cfg)


def load_scorer(name: str, folder: str | Path) -> LesionScorer:
    """Load the fitted scorer of method ``name`` saved in ``folder``.

    Args:
        name: One of ``config.METHODS``; must match the name stored in the folder.
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
