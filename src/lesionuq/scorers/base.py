"""The interface of every lesion scorer and its save/load mechanics (no pickle).

A scorer maps a :class:`~lesionuq.lesions.dataset.LesionSet` to one uncertainty per
lesion, higher meaning less trustworthy. Learned scorers are fitted on the lesions of the
validation cases (``fit``) and then applied to the test lesions (``score``). The
conventions are scikit-learn's: the constructor only stores its arguments (so
:meth:`LesionScorer.get_params` reads them back from the signature), learned state lives
in attributes ending with ``_`` (so :func:`check_is_fitted` can tell a fitted scorer),
and ``fit`` returns ``self``.

A fitted scorer is saved to its own folder (``RUN/fold_K/scorers/METHOD``):
``scorer.json`` holds the class name, the method name, the constructor parameters (a
config dataclass as a dict; a scorer, such as a selector's candidates, as its own class,
name and parameters) and the JSON-able learned state; the GCNN adds a ``model.pt`` state
dict loaded with ``torch.load(weights_only=True)``.

This module imports no implementation; the method names live in the catalogue,
:mod:`lesionuq.methods`.

Example:
    >>> scorer = MyScorer().fit(val_lesions)
    >>> scorer.save(folder)
    >>> same = LesionScorer.load(folder)  # a MyScorer, same scores
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import pandas as pd

from lesionuq.config import config_from_dict
from lesionuq.errors import InputError, NotFittedError
from lesionuq.io import atomic_write_text
from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import CATALOGUE

__all__ = ["SCORER_FILE", "LesionScorer", "NotFittedError", "check_is_fitted", "table_column"]

SCORER_FILE = "scorer.json"
_FORMAT = 1


class LesionScorer(ABC):
    """Base class: ``fit`` on labelled lesions, ``score`` any lesions.

    Subclasses implement :meth:`fit` and :meth:`score`; a constructor that stores every
    argument under its own name; and, when they learn something, :meth:`_state` /
    :meth:`_set_state` for saving. Scorers that learn nothing set ``requires_fit = False``.

    Attributes:
        name: Method name (a column of ``results/lesions.csv``), e.g. ``"gcnn_classif"``.
        requires_fit: Whether :meth:`score` needs :meth:`fit` first (class attribute).
        self_calibrated: Whether :meth:`score` is already a P(FP) fitted on out-of-fold
            scores (class attribute). Such a scorer also has ``n_inner`` and
            ``fit_predict_oof(lesions, progress) -> (N,) out-of-fold P(FP)``
            (:class:`lesionuq.calibration.SelfCalibratedScorer`), which
            :class:`~lesionuq.calibration.CalibratedScorer` uses instead of cross-fitting
            a calibrator around the scorer.
    """

    name: str
    requires_fit: ClassVar[bool] = True
    self_calibrated: ClassVar[bool] = False

    if TYPE_CHECKING:
        # The constructor contract of every concrete scorer: it takes the method name as
        # the keyword ``name`` (the registry's factory relies on it). Not defined at run
        # time, so that ``get_params`` reads each subclass's own signature.
        def __init__(self, *args: Any, name: str | None = ..., **kwargs: Any) -> None: ...

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
            NotFittedError: A learned scorer that was not fitted.
            ValueError: The lesions lack what the scorer reads (a table column, graphs,
                the fitted number of node features).
        """

    @classmethod
    def _param_names(cls) -> list[str]:
        """Constructor argument names (scikit-learn's ``_get_param_names``)."""
        return list(_init_hints(cls))

    def get_params(self) -> dict[str, Any]:
        """Constructor keyword arguments, read back from the attributes of the same name."""
        return {name: getattr(self, name) for name in self._param_names()}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """Rebuild an unfitted scorer from (JSON-loaded) :meth:`get_params` output.

        A parameter typed as a config dataclass (``GCNNConfig``) may be given as a dict;
        it is built and checked by :func:`lesionuq.config.config_from_dict`. A scorer
        given as its :meth:`describe` dict, also inside a list (a selector's
        ``[name, scorer]`` pairs), is rebuilt unfitted.
        """
        hints = _init_hints(cls)
        kwargs = {}
        for key, value in params.items():
            config_cls = _dataclass_in(hints.get(key))
            if config_cls is not None and isinstance(value, dict):
                value = config_from_dict(config_cls, value, f"{SCORER_FILE} params.{key}")
            else:
                value = _from_json(value)
            kwargs[key] = value
        return cls(**kwargs)

    def describe(self) -> dict[str, Any]:
        """``{"class", "name", "params"}``, JSON-able: what rebuilds this scorer unfitted.

        Parameters that are config dataclasses become dicts, and scorers their own
        ``describe()`` (:meth:`from_params` reads both back).
        """
        params = {k: _to_json(v) for k, v in self.get_params().items()}
        return {"class": type(self).__name__, "name": self.name, "params": params}

    @classmethod
    def from_description(cls, d: dict[str, Any], where: str = SCORER_FILE) -> LesionScorer:
        """A new, unfitted scorer from :meth:`describe` output.

        Args:
            d: ``{"class", "name", "params"}``.
            where: The file it came from, for messages.

        Raises:
            InputError: An unknown class.
            ValueError: A scorer of another class than ``cls``.
        """
        target = _class_of(d, where)
        if not issubclass(target, cls):
            raise ValueError(f"{where}: holds a {d['class']}, not a {cls.__name__}.")
        scorer = target.from_params(d["params"])
        scorer.name = str(d["name"])
        return scorer

    def _state(self, folder: Path) -> dict[str, Any] | None:
        """JSON-able learned state (may also write extra files into ``folder``)."""
        return None

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        """Restore what :meth:`_state` returned (and wrote into ``folder``)."""
        return None

    def save(self, folder: str | Path) -> None:
        """Write the scorer to ``folder`` (``scorer.json`` last, so it marks completion).

        Raises:
            NotFittedError: A learned scorer that was not fitted.
        """
        check_is_fitted(self)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self._state(folder)
        meta = {"format": _FORMAT, **self.describe(), "state": state}
        atomic_write_text(folder / SCORER_FILE, json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path, template: LesionScorer | None = None) -> LesionScorer:
        """Read a scorer written by :meth:`save` (no pickle).

        The stored class is looked up among the imported subclasses of ``cls``, then
        among those of the stored method's catalogue entry (imported now).

        Args:
            folder: The scorer's folder (``scorer.json`` and what its state wrote).
            template: An unfitted scorer of the stored class that takes the stored state,
                instead of one rebuilt from the stored parameters (the registry's way to
                read parameters an older version wrote,
                :func:`lesionuq.scorers.registry.load_scorer`).

        Raises:
            InputError: ``scorer.json`` missing or unreadable, or an unknown class.
            ValueError: The file holds a scorer of another class than ``cls`` or than
                ``template``.
        """
        folder = Path(folder)
        meta = _read_meta(folder)
        if template is None:
            scorer = cls.from_description(meta, str(folder / SCORER_FILE))
        elif type(template).__name__ != meta["class"] or not isinstance(template, cls):
            raise ValueError(
                f"{folder / SCORER_FILE}: holds a {meta['class']}, not a {type(template).__name__}."
            )
        else:
            scorer = template
            scorer.name = str(meta["name"])
        scorer._set_state(meta.get("state"), folder)
        return scorer

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def check_is_fitted(scorer: LesionScorer) -> None:
    """Raise unless ``scorer`` learns nothing or has a learned attribute (name ending ``_``).

    Raises:
        NotFittedError: ``"scorer 'NAME' is not fitted; call fit() first."``
    """
    if not scorer.requires_fit:
        return
    if not any(k.endswith("_") and not k.startswith("__") for k in vars(scorer)):
        raise NotFittedError(f"scorer '{scorer.name}' is not fitted; call fit() first.")


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


@functools.cache
def _init_hints(cls: type[LesionScorer]) -> dict[str, Any]:
    """Constructor parameter name -> resolved type hint (``Any`` when unannotated)."""
    hints = typing.get_type_hints(cls.__init__)
    return {
        p.name: hints.get(p.name, Any)
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in ``X`` or ``X | None``, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [
            a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)
        ]
        return found[0] if found else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _to_json(value: Any) -> Any:
    """A parameter as JSON: a config dataclass as a dict, a scorer as its ``describe()``."""
    if isinstance(value, LesionScorer):
        return value.describe()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    """:func:`_to_json`'s scorers rebuilt, unfitted; lists item by item; the rest as is."""
    if isinstance(value, dict) and set(value) == {"class", "name", "params"}:
        return LesionScorer.from_description(value)
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _class_of(meta: dict[str, Any], where: str) -> type[LesionScorer]:
    """The scorer class named by ``meta["class"]``, importing its catalogue entry if needed.

    Raises:
        InputError: No such scorer class.
    """
    target = _subclass(LesionScorer, meta["class"])
    spec = CATALOGUE.get(meta["name"]) if isinstance(meta.get("name"), str) else None
    if target is None and spec is not None:
        _ = spec.cls  # imports the method's implementation module
        target = _subclass(LesionScorer, meta["class"])
    if target is None:
        known = ", ".join(sorted(c.__name__ for c in _concrete(LesionScorer)))
        raise InputError(f"{where}: unknown scorer class '{meta['class']}' (known: {known}).")
    return target


def _concrete(base: type) -> list[type]:
    out: list[type] = []
    subs: list[type] = base.__subclasses__()
    for sub in subs:
        if not inspect.isabstract(sub):
            out.append(sub)
        out.extend(_concrete(sub))
    return out


def _subclass(base: type, name: str) -> type[LesionScorer] | None:
    for sub in _concrete(base):
        if sub.__name__ == name and issubclass(sub, LesionScorer):
            return sub
    return None


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / SCORER_FILE
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}).") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}.")
    missing = [k for k in ("class", "name", "params") if k not in meta]
    if missing:
        raise InputError(f"{path}: missing key '{missing[0]}'.")
    return meta
