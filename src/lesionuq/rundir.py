"""The run directory (docs/DESIGN.md contract): paths, fold splits and stage stamps.

A *stamp* is a small JSON file written last by a stage; it records the digest of every
setting the stage's outputs depend on. A stage is skipped when its stamp exists and its
digest matches, so a killed run resumes where it stopped and a changed setting reruns
exactly the stages it affects. Every stage's digest is defined here, in the order of
the stages: :func:`preprocess_digest` (a case), :func:`train_digest`,
:func:`sample_digest`, :func:`graphs_digest`, :func:`fit_digest` (a scorer) and
:func:`shift_digest` (a fold's shift reference); each later one chains the earlier.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lesionuq.config import ConfigError, ExperimentConfig, UNetConfig, config_digest
from lesionuq.io import Case, InputError, atomic_write_text
from lesionuq.methods import is_learned, method_spec

__all__ = [
    "SHIFT_RULE",
    "FoldSplit",
    "RunDir",
    "digest_of",
    "fit_digest",
    "graphs_digest",
    "make_folds",
    "preprocess_digest",
    "read_stamp",
    "sample_digest",
    "shift_digest",
    "stamp_ok",
    "train_digest",
    "unet_config",
    "write_stamp",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FoldSplit:
    """Case ids of one fold.

    Attributes:
        fold: Fold index K.
        train: Cases that train the U-Net.
        val: Cases whose lesions train the GCNN and MetaSeg (and select the U-Net epoch).
        test: Cases whose lesions are scored and evaluated.
    """

    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def cases(self, split: str) -> tuple[str, ...]:
        """Case ids of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
        return getattr(self, split)


def make_folds(
    case_ids: Sequence[str],
    k: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    fixed_segmenter: bool = False,
) -> list[FoldSplit]:
    """The paper's k-fold protocol: each case is in exactly one test fold.

    Cases are shuffled once with ``seed`` and cut into k near-equal test chunks; within a
    fold the remaining cases are shuffled again and ``val_fraction`` of them (at least
    one) form the validation set, the rest train the U-Net.

    With ``fixed_segmenter`` (the ``samples`` protocol: the segmentation comes from a
    model trained elsewhere) nothing is trained here: the test chunks are the same as
    without it, and every other case is a validation case (``train`` is empty).

    Args:
        case_ids: All case ids (unique).
        k: Number of folds (>= 2).
        val_fraction: Fraction of the non-test cases used for validation.
        seed: Seed of both shuffles.
        fixed_segmenter: No U-Net split: validation = every non-test case.

    Returns:
        k splits, fold 0 first.
    """
    ids = list(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique.")
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {k}.")
    largest_test = -(-len(ids) // k)
    if len(ids) < k or len(ids) - largest_test < (1 if fixed_segmenter else 2):
        need = "one validation case" if fixed_segmenter else "one validation and one training case"
        raise InputError(
            f"{len(ids)} cases are too few for {k}-fold cross-validation "
            f"(every fold needs at least one test case and {need})."
        )
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    chunks = np.array_split(np.arange(len(order)), k)
    folds = []
    for f, chunk in enumerate(chunks):
        test = [order[i] for i in chunk]
        rest = [c for c in order if c not in set(test)]
        if fixed_segmenter:
            folds.append(FoldSplit(f, (), tuple(sorted(rest)), tuple(test)))
            continue
        rest = [rest[i] for i in rng.permutation(len(rest))]
        n_val = max(1, round(val_fraction * len(rest)))
        n_val = min(n_val, len(rest) - 1)
        folds.append(
            FoldSplit(f, tuple(sorted(rest[n_val:])), tuple(sorted(rest[:n_val])), tuple(test))
        )
    return folds


@dataclass(frozen=True)
class RunDir:
    """Paths of a run directory ``RUN`` (see docs/DESIGN.md)."""

    root: Path

    @property
    def config_yaml(self) -> Path:
        """``RUN/config.yaml``: the fully resolved config."""
        return self.root / "config.yaml"

    @property
    def folds_json(self) -> Path:
        """``RUN/folds.json``: case ids per fold and split, and the data manifest."""
        return self.root / "folds.json"

    @property
    def results(self) -> Path:
        """``RUN/results``."""
        return self.root / "results"

    @property
    def preprocessed(self) -> Path:
        """``RUN/preprocessed``: every case on the common grid (cache shared by folds)."""
        return self.root / "preprocessed"

    @property
    def registrations(self) -> Path:
        """``RUN/registrations``: each scan's MNI152 registration (cache shared by folds)."""
        return self.root / "registrations"

    def registration(self, case_id: str) -> Path:
        """``RUN/registrations/CASE``: ``transform.tfm`` and ``registration.json``.

        Written by the graphs stage with ``graphs.location`` on
        (:func:`lesionuq.location.register.cached_registration`).
        """
        return self.registrations / case_id

    def fold(self, k: int) -> Path:
        """``RUN/fold_K``: a self-contained model folder once fitted."""
        return self.root / f"fold_{k}"

    def case_dir(self, k: int, split: str, case_id: str) -> Path:
        """``RUN/fold_K/SPLIT/CASE``: maps on the preprocessed grid."""
        return self.fold(k) / split / case_id

    def lesion_set(self, k: int, split: str) -> Path:
        """``RUN/fold_K/graphs/SPLIT``: the saved :class:`LesionSet` of a split."""
        return self.fold(k) / "graphs" / split

    def scorer(self, k: int, method: str) -> Path:
        """``RUN/fold_K/scorers/METHOD``: one fitted scorer."""
        return self.fold(k) / "scorers" / method

    def write_plan(self, cfg: ExperimentConfig, data: Path, folds: Sequence[FoldSplit]) -> None:
        """Write ``config.yaml`` and ``folds.json``."""
        self.root.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(self.config_yaml)
        payload = {
            "data": str(Path(data).resolve()),
            "seed": cfg.seed,
            "folds": [
                {"fold": f.fold, "train": list(f.train), "val": list(f.val), "test": list(f.test)}
                for f in folds
            ],
        }
        atomic_write_text(self.folds_json, json.dumps(payload, indent=2) + "\n")

    def read_plan(self) -> tuple[ExperimentConfig, Path, list[FoldSplit]]:
        """Read ``config.yaml`` and ``folds.json`` of an existing run."""
        if not self.config_yaml.is_file() or not self.folds_json.is_file():
            raise InputError(
                f"{self.root}: not a run directory (config.yaml or folds.json missing); "
                "start it with `lesionuq experiment`."
            )
        try:
            cfg = ExperimentConfig.from_yaml(self.config_yaml)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{self.config_yaml}: not valid YAML ({exc.__class__.__name__})."
            ) from None
        try:
            payload = json.loads(self.folds_json.read_text())
            folds = [
                FoldSplit(d["fold"], tuple(d["train"]), tuple(d["val"]), tuple(d["test"]))
                for d in payload["folds"]
            ]
            data = Path(payload["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{self.folds_json}: damaged ({exc.__class__.__name__}); "
                "start the run again in a new folder."
            ) from None
        return cfg, data, folds


def write_stamp(path: Path, digest: str, **info: Any) -> None:
    """Mark a stage finished with the digest of its inputs (written last, atomically)."""
    atomic_write_text(path, json.dumps({"digest": digest, **info}, indent=2) + "\n")


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp's content, or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def stamp_ok(path: Path, digest: str) -> bool:
    """Whether a stage's stamp exists with this digest (its outputs are current)."""
    stamp = read_stamp(path)
    return stamp is not None and stamp.get("digest") == digest


def digest_of(*parts: Any) -> str:
    """Digest of several config parts (dataclasses, dicts, lists, strings)."""
    plain = [
        dataclasses.asdict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else p
        for p in parts
    ]
    return config_digest({"parts": plain})


def unet_config(cfg: ExperimentConfig) -> UNetConfig:
    """The U-Net settings of a run: ``cfg.unet`` with one input channel per sequence."""
    return dataclasses.replace(cfg.unet, in_channels=len(cfg.sequences))


def preprocess_digest(cfg: ExperimentConfig, case: Case) -> str:
    """Digest of everything a case's preprocessed images (and, for samples, maps) depend on.

    The case's input paths (images, ignore region and, in the samples protocol, its
    samples), the preprocessing settings and the sequences.
    """
    paths = [str(p) for p in (*case.images, *([case.ignore] if case.ignore else []))]
    if cfg.protocol == "samples":
        paths.append(f"samples={case.samples}")
    return digest_of(cfg.preprocess, list(cfg.sequences), paths)


def train_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of everything a fold's U-Net depends on."""
    return digest_of(
        cfg.preprocess, unet_config(cfg), cfg.train, list(split.train), list(split.val)
    )


def sample_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of everything a fold's voxel maps depend on."""
    if cfg.protocol == "samples":  # the maps of the preprocess stage, copied per fold
        return digest_of(cfg.preprocess, "samples", list(split.val), list(split.test))
    return digest_of(train_digest(cfg, split), cfg.sampling)


def graphs_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of everything a fold's lesion tables and graphs depend on.

    ``graphs.location`` enters only when on, so runs made before it existed keep their
    digest (and are not redone).
    """
    graphs = dataclasses.asdict(cfg.graphs)
    if not graphs["location"]:
        del graphs["location"]
    return digest_of(sample_digest(cfg, split), graphs)


def fit_digest(graphs: str, method: str, cfg: ExperimentConfig) -> str:
    """Digest of a fitted scorer (and, for learned ones, its calibrator).

    The review target is not part of it: a new target only re-chooses the operating
    point from the stored out-of-fold P(FP) (:func:`lesionuq.calibration.update_operating_point`).

    Args:
        graphs: The fold's :func:`graphs_digest`.
        method: The method name (a key of :data:`lesionuq.methods.CATALOGUE`).
        cfg: The run's config.
    """
    learned = cfg.gcnn if "gcnn" in method_spec(method).sections else None
    if not is_learned(method):
        return digest_of(graphs, learned, method)
    cal: dict[str, Any] = {
        "method": cfg.calibration.method,
        "n_inner": cfg.calibration.n_inner,
        "seed": cfg.seed,
    }
    if cfg.calibration.half_fits and method_spec(method).output == "p_fp":
        cal["half_fits"] = True  # a classifier's half-size fits (a regressor has none)
        if cfg.calibration.half_splits != 1:  # one cut: the digest of the runs before it
            cal["half_splits"] = cfg.calibration.half_splits
        if "half_fits" in method_spec(method).settings:  # a chooser judges with them too
            cal["selector_half_fits"] = True
    return digest_of(graphs, learned, method, cal)


SHIFT_RULE = "min-max or t prediction interval, alpha 0.05, from 5 scans"
"""The shift reference's rule, in its digest (:data:`lesionuq.shift.SHIFT_ALPHA` is 0.05,
:data:`lesionuq.shift.INTERVAL_MIN_SCANS` 5)."""


def shift_digest(cfg: ExperimentConfig, split: FoldSplit) -> str:
    """Digest of a fold's shift reference (its validation scans' profiles).

    It names the rule, :data:`SHIFT_RULE`: since the continuous features' prediction
    interval (2026-12-03), ``fit`` recomputes an earlier run's reference.
    """
    return digest_of(sample_digest(cfg, split), "shift", cfg.preprocess.brain_threshold, SHIFT_RULE)
