"""Configuration: one frozen dataclass per stage, gathered in :class:`ExperimentConfig`.

Every stage function takes its own config object, never a global. The whole experiment
config round-trips through YAML (:meth:`ExperimentConfig.to_yaml` /
:meth:`ExperimentConfig.from_yaml`), and unknown keys are an error so that a typo in a
user's YAML is never silently ignored.

Example:
    >>> cfg = ExperimentConfig.from_yaml("configs/demo.yaml")
    >>> cfg.sampling.n_samples
    20
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
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
]


class ConfigError(ValueError):
    """A config file or dict is invalid; the message names the offending key."""


@dataclass(frozen=True)
class PreprocessConfig:
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


@dataclass(frozen=True)
class PhantomConfig:
    """The synthetic MS data set on MNI152 anatomy (see ``lesionuq.data.phantom``).

    Attributes:
        n_cases: Number of cases to generate.
        seed: Master seed; case ``i`` uses a seed derived from (seed, i).
        shape: Output grid shape (X, Y, Z), or None for the template's field of view.
        spacing: Output voxel size in mm (isotropic).
        max_lesions: Upper bound of the per-case lesion count.
        params: Overrides of the physical parameters
            (``lesionuq.data.phantom.PhantomParams`` field -> value); None for the defaults.
    """

    n_cases: int = 20
    seed: int = 0
    shape: tuple[int, int, int] | None = None
    spacing: float = 1.0
    max_lesions: int = 40
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class UNetConfig:
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
    norm: str = "instance"


@dataclass(frozen=True)
class TrainConfig:
    """Segmentation training (paper 3.4).

    Attributes:
        patch_size: Training patch (X, Y, Z).
        batch_size: Patches per step.
        lr: Adam learning rate.
        max_epochs: Upper bound of epochs.
        patience: Stop after this many epochs without a better validation Dice.
        steps_per_epoch: Optimiser steps per epoch.
        pos_fraction: Fraction of patches centred on a lesion voxel.
        augment: Whether to apply flips, rotations, contrast, noise and blur.
        seed: Seed of weights init, patch sampling and augmentation.
        amp: Use automatic mixed precision when on CUDA.
    """

    patch_size: tuple[int, int, int] = (160, 192, 32)
    batch_size: int = 5
    lr: float = 1e-4
    max_epochs: int = 200
    patience: int = 20
    steps_per_epoch: int = 50
    pos_fraction: float = 0.5
    augment: bool = True
    seed: int = 0
    amp: bool = True


@dataclass(frozen=True)
class SamplingConfig:
    """Monte Carlo dropout sampling (paper 2.1).

    Attributes:
        n_samples: T, the number of stochastic forward passes.
        batch_size: Samples evaluated together in one forward pass (memory-bounded).
        seed: Seed of the dropout masks.
        roi_size: Sliding-window size for volumes larger than the network should see at
            once, or None to run on the whole volume.
    """

    n_samples: int = 20
    batch_size: int = 4
    seed: int = 0
    roi_size: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class GraphConfig:
    """Lesion detection, labelling and graph construction (paper 2.2).

    Attributes:
        epsilon: IoU_adj threshold: a lesion is TP if IoU_adj >= epsilon, else FP.
        dilation: Number of dilation steps with the 3x3x3 cube before building the graph.
        extra_features: Optional extra node features, any of ``"position"`` (voxel position
            normalised to [0, 1] in the volume) and ``"border_distance"`` (distance to the
            lesion border in voxels, negative outside).
        logsum_eps: Lower clip of voxel uncertainty before taking its log (logsum baselines).
    """

    epsilon: float = 0.1
    dilation: int = 1
    extra_features: tuple[str, ...] = ()
    logsum_eps: float = 1e-6


@dataclass(frozen=True)
class GCNNConfig:
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
    readout: str = "mean"
    lr: float = 1e-2
    lr_min: float = 1e-5
    epochs: int = 60
    batch_size: int = 10
    val_fraction: float = 0.2
    class_weight: bool = True
    seed: int = 0


METHODS: tuple[str, ...] = (
    "gcnn_classif",
    "gcnn_reg",
    "entropy_mean",
    "entropy_logsum",
    "variance_mean",
    "variance_logsum",
    "pcs_mean",
    "pcs_logsum",
    "size",
    "metaseg_classif",
    "metaseg_reg",
)


@dataclass(frozen=True)
class ExperimentConfig:
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
        phantom: Used by ``lesionuq demo`` to generate its data.
    """

    sequences: tuple[str, ...] = ("flair",)
    folds: int = 4
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    methods: tuple[str, ...] = METHODS
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    graphs: GraphConfig = field(default_factory=GraphConfig)
    gcnn: GCNNConfig = field(default_factory=GCNNConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), suitable for YAML or JSON."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Build from a (possibly partial) nested dict; missing keys take defaults.

        Raises:
            ConfigError: On an unknown key or a wrongly typed value, naming it.
        """
        return _from_dict(cls, data or {}, "config")

    def to_yaml(self, path: str | Path) -> None:
        """Write the fully resolved config as YAML."""
        from lesionuq.io import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Read a (possibly partial) YAML config; missing keys take defaults."""
        with open(path) as f:
            data = yaml.safe_load(f)
        return cls.from_dict(data or {})

    def replace(self, **changes: Any) -> ExperimentConfig:
        """Return a copy with top-level fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def config_digest(obj: Any) -> str:
    """Short stable hash of a config (dataclass or dict), used to tell stale outputs.

    Args:
        obj: A dataclass instance or a JSON-serialisable dict.

    Returns:
        The first 16 hex digits of the SHA-256 of its canonical JSON.
    """
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    text = json.dumps(_to_plain(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown key {where}.{unknown[0]} (known: {', '.join(sorted(known))}).")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}.")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}.")
    return value
