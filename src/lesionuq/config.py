"""Configuration: one frozen dataclass per stage, gathered in :class:`ExperimentConfig`.

Every stage function takes its own config object, never a global. The whole experiment
config round-trips through YAML (:meth:`ExperimentConfig.to_yaml` /
:meth:`ExperimentConfig.from_yaml`), and unknown keys are an error so that a typo in a
user's YAML is never silently ignored. Every value is checked when a config is made
(loaded, constructed or ``replace``-d), not when a stage first uses it: closed sets are
``Literal`` types (a typo gets a "did you mean"), ranges are checked in ``__post_init__``
and ``methods`` against the method catalogue (:mod:`lesionuq.methods`), each error naming
the dotted key::

    config.gcnn.readout must be one of mean, max, sum, got 'maen' (did you mean 'mean'?).

Importing this module, and making a config, imports no scorer and no torch: the method
check reads the catalogue.

Example:
    >>> cfg = ExperimentConfig.from_yaml("configs/demo.yaml")
    >>> cfg.sampling.n_samples
    20
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import reprlib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from lesionuq.errors import ConfigError, did_you_mean
from lesionuq.io import atomic_write_text
from lesionuq.methods import CATALOGUE, METHODS
from lesionuq.operating_point import parse_target

__all__ = [
    "METHODS",
    "CalibrationConfig",
    "ConfigError",
    "ExperimentConfig",
    "GCNNConfig",
    "GraphConfig",
    "PhantomConfig",
    "PreprocessConfig",
    "SamplingConfig",
    "TrainConfig",
    "UNetConfig",
    "config_digest",
    "config_from_dict",
    "did_you_mean",
    "one_of",
    "shown",
    "yaml_load",
]

C = TypeVar("C")

Device = Literal["auto", "cpu", "cuda"]
Norm = Literal["instance", "batch"]
Readout = Literal["mean", "max", "sum"]
ExtraFeature = Literal["position", "border_distance"]
Precision = Literal["auto", "fp32", "bf16"]
CalibrationMethod = Literal["platt", "isotonic"]
LRSchedule = Literal["constant", "poly"]
Protocol = Literal["unet", "samples"]


def one_of(value: Any, options: Iterable[str], where: str) -> None:
    """Check that ``value`` is one of ``options``, suggesting the closest on a typo.

    Args:
        value: The value given.
        options: The allowed values, in the order the message lists them.
        where: Dotted key used in the message, e.g. ``"config.gcnn.readout"``.

    Raises:
        ConfigError: ``"config.gcnn.readout must be one of mean, max, sum, got 'maen'
            (did you mean 'mean'?)."``
    """
    options = [str(o) for o in options]
    if value not in options:
        rule = f"one of {', '.join(options)}"
        raise ConfigError(
            f"{where} must be {rule}, got {shown(value)}{did_you_mean(value, options)}."
        )


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


def shown(value: Any) -> str:
    """``repr(value)`` cut short (60 characters of text, 6 items, 3 levels).

    Every message that quotes a config value uses it, so that a huge or deeply nested
    value (a 1-million-item list) gives a one-line message, not megabytes.
    """
    return _REPR.repr(value)


class _Invalid(ConfigError):
    """A check of ``__post_init__`` failed; the loader re-raises it with the dotted key."""

    def __init__(self, owner: object, key: str, rule: str, value: Any, hint: str = "") -> None:
        self.key, self.rule, self.value, self.hint = key, rule, value, hint
        super().__init__(f"{type(owner).__name__}.{self.describe()}")

    def describe(self) -> str:
        """The message without the owner: ``KEY must be RULE, got VALUE (hint).``."""
        return f"{self.key} must be {self.rule}, got {shown(self.value)}{self.hint}."


def _require(ok: bool, owner: object, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise _Invalid(owner, key, rule, value)


def _positive(owner: object, key: str, values: Iterable[float], minimum: float = 0.0) -> None:
    """Every value > ``minimum`` (0: strictly positive sizes, spacings, rates)."""
    for v in values:
        _require(v > minimum, owner, key, f"> {minimum:g}", v)


def _at_least(owner: object, key: str, values: Iterable[int], minimum: int) -> None:
    for v in values:
        _require(v >= minimum, owner, key, f">= {minimum}", v)


class _Section:
    """Mixin of the config dataclasses: checks made whenever an instance is created.

    ``Literal`` fields (closed sets) are checked generically from the type hints, so
    ``dataclasses.replace`` and the YAML loader check the same things; subclasses add
    their ranges in :meth:`_check`.
    """

    def __post_init__(self) -> None:
        cls: type = type(self)
        for name, options in _literal_fields(cls).items():
            value = getattr(self, name)
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if item not in options:
                    rule = f"one of {', '.join(options)}"
                    if isinstance(value, tuple):  # "a list of extra features among ..."
                        rule = f"a list of {name.replace('_', ' ')} among {', '.join(options)}"
                    raise _Invalid(self, name, rule, item, did_you_mean(item, list(options)))
        self._check()

    def _check(self) -> None:
        """Range checks of the subclass (raise via ``_require``)."""


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for fields typed ``Literal`` or ``tuple[Literal, ...]``."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) is Literal:
            out[name] = tuple(typing.get_args(tp))
    return out


@dataclass(frozen=True)
class PreprocessConfig(_Section):
    """How raw scans are brought onto the common grid (paper 3.1).

    Attributes:
        spacing: Target voxel size in mm, (x, y, z) in RAS order.
        shape: Target grid shape (X, Y, Z) after crop/pad around the brain bounding box.
        brain_threshold: Voxels with intensity > threshold (in the first sequence) count as
            brain for the bounding box and the z-score statistics.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shape: tuple[int, int, int] = (160, 192, 160)
    brain_threshold: float = 0.0

    def _check(self) -> None:
        _positive(self, "spacing", self.spacing)
        _at_least(self, "shape", self.shape, 1)


@dataclass(frozen=True)
class PhantomConfig(_Section):
    """The synthetic MS data set on MNI152 anatomy (see ``lesionuq.data.phantom``).

    Attributes:
        n_cases: Number of cases to generate.
        seed: Master seed; case ``i`` uses a seed derived from (seed, i).
        shape: Output grid shape (X, Y, Z), or None for the template's field of view.
        spacing: Output voxel size in mm (isotropic).
        max_lesions: Upper bound of the per-case lesion count.
        params: Overrides of the physical parameters
            (``lesionuq.data.phantom.PhantomParams`` field -> value); None for the defaults.
        family: Generator: ``"a"`` (``lesionuq.data.phantom``, MNI152), ``"b"``
            (``lesionuq.data.family_b``, fsaverage, other rules) or ``"c"``
            (``lesionuq.data.family_c``, procedural, no template); b and c take no
            ``params``.
    """

    n_cases: int = 20
    seed: int = 0
    shape: tuple[int, int, int] | None = None
    spacing: float = 1.0
    max_lesions: int = 40
    params: dict[str, Any] | None = None
    family: str = "a"

    def _check(self) -> None:
        if self.family not in ("a", "b", "c"):
            raise ConfigError(f"phantom.family must be 'a', 'b' or 'c', got {self.family!r}.")
        _at_least(self, "n_cases", [self.n_cases], 1)
        _at_least(self, "seed", [self.seed], 0)
        _at_least(self, "shape", self.shape or (), 1)
        _positive(self, "spacing", [self.spacing])
        _at_least(self, "max_lesions", [self.max_lesions], 0)


@dataclass(frozen=True)
class UNetConfig(_Section):
    """3D U-Net with ``Dropout3d`` at the end of every encoder and decoder block (paper 2.1).

    Attributes:
        in_channels: Number of input sequences n.
        out_channels: Number of classes (2: background, lesion).
        channels: Feature channels per resolution level, shallow to deep; the last one is
            the bottleneck.
        dropout: Dropout3d probability p.
        norm: Normalisation layer name understood by MONAI (``"instance"``, ``"batch"``).
    """

    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.2
    norm: Norm = "instance"

    def _check(self) -> None:
        _at_least(self, "in_channels", [self.in_channels], 1)
        _at_least(self, "out_channels", [self.out_channels], 1)
        _require(len(self.channels) >= 1, self, "channels", "at least one level", self.channels)
        _at_least(self, "channels", self.channels, 1)
        _require(0.0 <= self.dropout < 1.0, self, "dropout", "in [0, 1)", self.dropout)


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Segmentation training (paper 3.4).

    Attributes:
        patch_size: Training patch (X, Y, Z).
        batch_size: Patches per optimiser step (under torchrun the global batch, split
            evenly over the processes).
        lr: Adam learning rate (the initial one under ``lr_schedule: poly``).
        lr_schedule: ``"constant"`` (default, the paper's) or ``"poly"``: nnU-Net's
            polynomial decay ``lr * (1 - (epoch - 1) / max_epochs) ** 0.9`` per epoch
            (epochs count from 1), a function of the epoch alone, so a resumed run
            continues on the same curve.
        max_epochs: Upper bound of epochs.
        patience: Stop after this many epochs without a better validation Dice.
        steps_per_epoch: Optimiser steps per epoch.
        pos_fraction: Fraction of patches centred on a lesion voxel.
        augment: Whether to apply flips, rotations, contrast, noise and blur.
        seed: Seed of weights init, patch sampling and augmentation.
        amp: Use automatic mixed precision (float16 autocast) when on CUDA.
        precision: Arithmetic of the forward pass on a CPU (the loss and the weights
            stay float32). ``"fp32"`` (default): float32, the reference;
            ``"auto"``: bfloat16 autocast on a CPU with native bf16 units (AVX512-BF16 or
            AMX), float32 on other CPUs; ``"bf16"``: bfloat16 autocast on any CPU
            (emulated and slow where not native; a warning says so). On CUDA ``amp``
            decides as before (float16 autocast, or float32 when False); ``"bf16"`` picks
            bfloat16 autocast instead of float16. Not part of the resume key: a run may
            be continued in another precision.
    """

    patch_size: tuple[int, int, int] = (160, 192, 32)
    batch_size: int = 5
    lr: float = 1e-4
    lr_schedule: LRSchedule = "constant"
    max_epochs: int = 200
    patience: int = 20
    steps_per_epoch: int = 50
    pos_fraction: float = 0.5
    augment: bool = True
    seed: int = 0
    amp: bool = True
    precision: Precision = "fp32"

    def _check(self) -> None:
        _at_least(self, "patch_size", self.patch_size, 1)
        _at_least(self, "batch_size", [self.batch_size], 1)
        _require(self.lr >= 0.0, self, "lr", ">= 0", self.lr)
        _at_least(self, "max_epochs", [self.max_epochs], 1)
        _at_least(self, "patience", [self.patience], 1)
        _at_least(self, "steps_per_epoch", [self.steps_per_epoch], 1)
        ok = 0.0 <= self.pos_fraction <= 1.0
        _require(ok, self, "pos_fraction", "in [0, 1]", self.pos_fraction)
        _at_least(self, "seed", [self.seed], 0)


@dataclass(frozen=True)
class SamplingConfig(_Section):
    """Monte Carlo dropout sampling (paper 2.1).

    Attributes:
        n_samples: T, the number of stochastic forward passes.
        batch_size: Samples evaluated together in one forward pass (memory-bounded).
        seed: Seed of the dropout masks.
        roi_size: Sliding-window size for volumes larger than the network should see at
            once, or None to run on the whole volume.
        precision: Arithmetic of the network passes. ``"auto"``: bfloat16 on a CPU with
            native bf16 units (AVX512-BF16 or AMX), float32 on other CPUs, float16
            autocast on CUDA; ``"fp32"``: float32 everywhere (the exact reference);
            ``"bf16"``: bfloat16 on CPU (emulated, slow, where not native) and bfloat16
            autocast on CUDA. Moments are always accumulated in float32.
    """

    n_samples: int = 20
    batch_size: int = 4
    seed: int = 0
    roi_size: tuple[int, int, int] | None = None
    precision: Precision = "auto"

    def _check(self) -> None:
        _at_least(self, "n_samples", [self.n_samples], 1)
        _at_least(self, "batch_size", [self.batch_size], 1)
        _at_least(self, "seed", [self.seed], 0)
        _at_least(self, "roi_size", self.roi_size or (), 1)


@dataclass(frozen=True)
class GraphConfig(_Section):
    """Lesion detection, labelling and graph construction (paper 2.2).

    Attributes:
        epsilon: IoU_adj threshold: a lesion is TP if IoU_adj >= epsilon, else FP.
        dilation: Number of dilation steps with the 3x3x3 cube before building the graph.
        extra_features: Optional extra node features, any of ``"position"`` (voxel position
            normalised to [0, 1] in the volume) and ``"border_distance"`` (distance to the
            lesion border in voxels, negative outside).
        logsum_eps: Lower clip of voxel uncertainty before taking its log (logsum baselines).
        location: Also locate every lesion (registration of each scan to MNI152, about
            10 s, once per run: kept in ``RUN/registrations/CASE``;
            :func:`lesionuq.location.features.locate_lesions`): the lesion tables
            gain ``location`` and the MNI centroid, which the location-aware methods
            (``gcnn_loc``, ``metaseg_loc``) read. Off by default.
    """

    epsilon: float = 0.1
    dilation: int = 1
    extra_features: tuple[ExtraFeature, ...] = ()
    logsum_eps: float = 1e-6
    location: bool = False

    def _check(self) -> None:
        _require(0.0 <= self.epsilon <= 1.0, self, "epsilon", "in [0, 1]", self.epsilon)
        _at_least(self, "dilation", [self.dilation], 0)
        _positive(self, "logsum_eps", [self.logsum_eps])


@dataclass(frozen=True)
class GCNNConfig(_Section):
    """The lesion GCNN and its training (paper 2.3, 3.4).

    Attributes:
        hidden: Hidden size h of both GCNConv layers.
        readout: Graph readout, ``"mean"``, ``"max"`` or ``"sum"``.
        lr: Initial Adam learning rate.
        lr_min: Final learning rate (cosine decay from ``lr``).
        epochs: Training epochs.
        batch_size: Graphs per batch.
        val_fraction: Fraction of the training graphs held out to choose the best epoch.
        class_weight: Weight the cross-entropy by inverse class frequency (classification).
        seed: Seed of init, batching and the held-out split.
    """

    hidden: int = 64
    readout: Readout = "mean"
    lr: float = 1e-2
    lr_min: float = 1e-5
    epochs: int = 60
    batch_size: int = 10
    val_fraction: float = 0.2
    class_weight: bool = True
    seed: int = 0

    def _check(self) -> None:
        _at_least(self, "hidden", [self.hidden], 1)
        _require(self.lr >= 0.0, self, "lr", ">= 0", self.lr)
        _require(self.lr_min >= 0.0, self, "lr_min", ">= 0", self.lr_min)
        _at_least(self, "epochs", [self.epochs], 1)
        _at_least(self, "batch_size", [self.batch_size], 1)
        ok = 0.0 <= self.val_fraction < 1.0
        _require(ok, self, "val_fraction", "in [0, 1)", self.val_fraction)
        _at_least(self, "seed", [self.seed], 0)


@dataclass(frozen=True)
class CalibrationConfig(_Section):
    """Calibration of the learned scorers' P(FP) and the review threshold (issue 13).

    Attributes:
        method: ``"platt"`` (logistic on the logit of the score) or ``"isotonic"``.
        n_inner: Inner folds of the cross-fitting inside each fold's validation lesions.
        review_target: How ``predict`` chooses its review threshold on the validation
            lesions: ``"tp:q"`` keeps at least a share ``q`` of the true lesions
            unflagged, ``"fp:q"`` flags at least a share ``q`` of the false positives.
        half_fits: Fit each learned classifier also on halves of the inner folds'
            training cases (2 more fits per inner fold, at half the size), so the
            default-method rule judges it by its out-of-fold AUC extrapolated to the fit
            on all validation lesions (issue 31); off: by the out-of-fold AUC itself.
        half_splits: With ``half_fits``, distinct cuts of each inner fold's training
            cases into halves (2 fits each); the half-size AUC is their mean, so more
            cuts make the extrapolation less noisy at 2 more fits per cut and inner fold.
    """

    method: CalibrationMethod = "platt"
    n_inner: int = 5
    review_target: str = "tp:0.95"
    half_fits: bool = True
    half_splits: int = 1

    def _check(self) -> None:
        _at_least(self, "n_inner", [self.n_inner], 2)
        _at_least(self, "half_splits", [self.half_splits], 1)
        try:
            parse_target(self.review_target)
        except ValueError:
            rule = "'tp:Q' or 'fp:Q' with Q in (0, 1]"
            _require(False, self, "review_target", rule, self.review_target)


@dataclass(frozen=True)
class ExperimentConfig(_Section):
    """Everything a run needs; written in full to ``RUN/config.yaml``.

    Attributes:
        sequences: Names of the input sequences, the image columns of ``cases.csv``.
        folds: k of the k-fold cross-validation.
        val_fraction: Fraction of the non-test cases used as the validation set.
        seed: Seed of the fold split.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        methods: Scoring methods to fit and evaluate.
        preprocess: See :class:`PreprocessConfig`.
        unet: See :class:`UNetConfig`.
        train: See :class:`TrainConfig`.
        sampling: See :class:`SamplingConfig`.
        graphs: See :class:`GraphConfig`.
        gcnn: See :class:`GCNNConfig`.
        calibration: See :class:`CalibrationConfig`.
        phantom: Used by ``lesionuq demo`` to generate its data.
        protocol: Set by the run from its manifest (a value given here is replaced):
            ``"unet"`` (the paper's: each fold trains an MC-dropout U-Net on its train
            cases) or ``"samples"`` (a fixed segmenter: every case's ``samples`` column
            holds T probability maps made elsewhere; no U-Net, the scorers learn from
            every non-test case; see :mod:`lesionuq.samples`).
        samples_source: Where the samples came from (``"samples"`` protocol), in words.
    """

    sequences: tuple[str, ...] = ("flair",)
    folds: int = 4
    val_fraction: float = 0.2
    seed: int = 0
    device: Device = "auto"
    methods: tuple[str, ...] = METHODS
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    graphs: GraphConfig = field(default_factory=GraphConfig)
    gcnn: GCNNConfig = field(default_factory=GCNNConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    protocol: Protocol = "unet"
    samples_source: str = ""

    def _check(self) -> None:
        _require(len(self.sequences) >= 1, self, "sequences", "at least one name", self.sequences)
        _at_least(self, "folds", [self.folds], 2)
        ok = 0.0 <= self.val_fraction < 1.0
        _require(ok, self, "val_fraction", "in [0, 1)", self.val_fraction)
        _at_least(self, "seed", [self.seed], 0)
        _require(len(self.methods) >= 1, self, "methods", "at least one method", self.methods)
        for method in self.methods:
            if method not in CATALOGUE:
                known = list(CATALOGUE)
                rule = f"one of {', '.join(known)}"
                raise _Invalid(self, "methods", rule, method, did_you_mean(method, known))
            if CATALOGUE[method].needs_location and not self.graphs.location:
                raise ConfigError(
                    f"config.methods: '{method}' reads the lesions' locations; set "
                    "graphs.location: true (each scan is registered to MNI152, about 10 s)."
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), suitable for YAML or JSON."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ExperimentConfig:
        """Build from a (possibly partial) nested dict; missing keys take defaults.

        Raises:
            ConfigError: On an unknown key, a wrongly typed value, a value outside its
                closed set or range, or an unknown method, naming the dotted key.
        """
        return config_from_dict(cls, data or {}, "config")

    def to_yaml(self, path: str | Path) -> None:
        """Write the fully resolved config as YAML."""
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Read a (possibly partial) YAML config; missing keys take defaults.

        Raises:
            ConfigError: The file is not valid YAML, not a mapping, or holds an invalid
                key or value (see :meth:`from_dict`).
        """
        with open(path) as f:
            try:
                data = yaml_load(f)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                line = f" at line {mark.line + 1}" if mark is not None else ""
                problem = getattr(err, "problem", None) or "syntax error"
                raise ConfigError(f"{path}: not valid YAML ({problem}{line}).") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                f"{path}: a config must be a mapping of keys to values, "
                f"got a {type(data).__name__}."
            )
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """Return a copy with top-level fields replaced, checked like a loaded config."""
        return dataclasses.replace(self, **changes)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (``*name``), which a config never needs.

    An alias repeats a whole node, so a few lines can stand for billions of items (the
    "billion laughs"); any alias is refused while composing, before it is expanded.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in a config", event.start_mark
            )
        return super().compose_node(parent, index)


def yaml_load(stream: Any) -> Any:
    """``yaml.safe_load`` refusing aliases (see :class:`_NoAliasLoader`).

    Args:
        stream: YAML text or an open file.

    Returns:
        The plain Python data.

    Raises:
        yaml.YAMLError: Invalid YAML, or an alias (a ``ComposerError`` with its line).
    """
    loader = _NoAliasLoader(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def config_digest(obj: Any) -> str:
    """Short stable hash of a config (dataclass or dict), used to tell stale outputs.

    Args:
        obj: A dataclass instance or a JSON-serialisable dict.

    Returns:
        The first 16 hex digits of the SHA-256 of its canonical JSON.
    """
    is_instance = dataclasses.is_dataclass(obj) and not isinstance(obj, type)
    data = dataclasses.asdict(obj) if is_instance else obj
    text = json.dumps(_to_plain(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], where: str = "config") -> C:
    """Build a config dataclass from a plain dict, checked.

    This is the one loader of YAML files (:meth:`ExperimentConfig.from_dict`),
    checkpoints (``UNetConfig``, ``TrainConfig``) and ``scorer.json`` (``GCNNConfig``).
    Lists become tuples, ints become floats where a float is expected, nested dicts
    become nested configs, missing keys take defaults, and the instance is checked by its
    ``__post_init__`` (closed sets and ranges).

    Args:
        cls: A config dataclass, e.g. :class:`GCNNConfig`.
        data: Its fields as a (possibly partial) mapping.
        where: Dotted name of ``data`` used in messages (``"config.gcnn"``).

    Returns:
        The instance.

    Raises:
        ConfigError: An unknown key, a wrong type, a value outside its set or range,
            naming the dotted key (``config.gcnn.readout must be one of ...``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        hint = did_you_mean(unknown[0], sorted(known))
        name = unknown[0] if len(str(unknown[0])) <= 60 else shown(unknown[0])
        raise ConfigError(f"Unknown key {where}.{name}{hint} (known: {', '.join(sorted(known))}).")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except _Invalid as err:
        raise ConfigError(f"{where}.{err.describe()}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value or {}, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(tp) if a is not type(None))
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is Literal:
        one_of(value, typing.get_args(tp), where)
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {shown(value)}.")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}.")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if tp in (int, float):
        return _number(tp, value, where)
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where} must be {tp.__name__}, got {shown(value)}.")
    return value


_INT_TEXT = re.compile(r"[+-]?\d+")


def _number(tp: type, value: Any, where: str) -> int | float:
    """``value`` as an int or float: a number, or text that reads as one unambiguously.

    YAML 1.1 reads ``3e-3`` (no dot) as text, and a quoted ``"0.003"`` is text too; both
    are taken as the number they spell. An int field takes only whole-number text.

    Raises:
        ConfigError: A bool, a list, a mapping or text that is not a number, naming the key.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            if tp is int and _INT_TEXT.fullmatch(text):
                return int(text)
            if tp is float and len(text) <= 64:
                return float(text)
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if tp is float:
            return float(value)
        if isinstance(value, int):
            return value
    kind = "an integer" if tp is int else "a number"
    raise ConfigError(f"{where} must be {kind}, got {shown(value)}.")
