"""A fitted model folder, loaded: config, MC-dropout U-Net and lesion scorers.

A model folder is a fold of a finished ``lesionuq experiment`` run, ``RUN/fold_K``, with
``config.yaml``, ``segmenter.pt`` and ``scorers/METHOD/`` (see docs/DESIGN.md). :func:`load_model`
checks that it is complete and loads it once, so that a batch of scans shares it.

A model folder fitted since issue 13 also holds ``scorers/gcnn_classif/calibration.json``
(the P(FP) calibrator, the validation lesions' out-of-fold P(FP) and the stored operating
point), ``scorers/gcnn_reg/calibration.json`` (the IoU recalibration) and
``shift_reference.json`` (the validation scans' profiles). An older folder without them
still loads: P(FP) is then the raw GCNN output and the review threshold 0.5.

Example:
    >>> model = load_model("runs/demo/fold_0", n_images=1)
    >>> model.sequences
    ('flair',)
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lesionuq.calibration import (
    CALIBRATOR_FILE,
    Calibrator,
    IoURecalibrator,
    calibrator_from_dict,
    load_calibration,
)
from lesionuq.config import ExperimentConfig, config_digest
from lesionuq.io import InputError, describe_load_error
from lesionuq.methods import PREDICT_METHODS
from lesionuq.operating_point import (
    FEW_VALIDATION_LESIONS,
    choose_threshold,
    operating_point_effect,
    parse_target,
)
from lesionuq.scorers import SCORER_FILE, load_scorer
from lesionuq.scorers.default_method import MethodChoice, load_default_method
from lesionuq.segmentation.train import load_segmenter, training_problem_of
from lesionuq.shift import SHIFT_FILE, ShiftReference
from lesionuq.utils import remove_pyg_codegen_files

__all__ = [
    "DEFAULT_THRESHOLD",
    "REQUIRED_SCORERS",
    "FittedModel",
    "ReviewRule",
    "load_model",
    "load_model_cached",
]

#: Review threshold of a model folder without a calibrator (an old run).
DEFAULT_THRESHOLD = 0.5
UNCALIBRATED_NOTE = (
    "this model folder has no P(FP) calibrator (fitted before lesionuq 0.2?): P(FP) is the "
    "raw GCNN output and the review threshold 0.5; refit with `lesionuq fit` to calibrate."
)


@dataclass(frozen=True)
class ReviewRule:
    """The review threshold of a prediction and how it was chosen.

    Attributes:
        threshold: Lesions with ``p_fp >= threshold`` are flagged for review.
        source: ``"--threshold"`` (given), ``"review target"`` (chosen at predict time on
            the validation lesions' out-of-fold P(FP)), ``"stored operating point"`` or
            ``"default (uncalibrated model)"``.
        target: The review target (``"tp:0.95"``), or None.
        validation: What the threshold did on the validation lesions (``n_tp``,
            ``tp_flagged``, ``fp_flagged``, ...), or None.
    """

    threshold: float
    source: str
    target: str | None = None
    validation: dict[str, Any] | None = None

    def describe(self) -> str:
        """One sentence for reports: the threshold and its meaning."""
        text = f"P(FP) >= {self.threshold:.3g} ({self.source}"
        text += f", target {self.target})" if self.target else ")"
        v = self.validation
        if v and v.get("n_tp"):
            n_tp, n_fp = int(v["n_tp"]), int(v.get("n_fp") or 0)
            text += (
                f"; on the {n_tp + n_fp} validation lesions ({n_tp} true, {n_fp} false "
                f"positives) it flagged {100 * v['tp_flagged']:.0f} % of the true lesions and "
                f"{100 * v['fp_flagged']:.0f} % of the false positives"
                if n_fp
                else f"; it flagged {100 * v['tp_flagged']:.0f} % of the {n_tp} validation "
                "lesions, all true"
            )
            if n_tp + n_fp < FEW_VALIDATION_LESIONS:
                text += " (few validation lesions: the threshold may not carry over)"
        return text + "."


#: Scorers a model folder must hold: P(FP) and the predicted IoU_adj (the catalogue's).
REQUIRED_SCORERS = PREDICT_METHODS


@dataclass
class FittedModel:
    """A loaded model folder: config, MC-dropout U-Net and fitted lesion scorers.

    Attributes:
        folder: The model folder (``RUN/fold_K``).
        cfg: The resolved experiment config of the run.
        segmenter: The U-Net (``lesionuq.segmentation.unet.UNet3D``), or None for a model
            folder of the samples protocol (the user's segmenter: predict needs samples).
        scorers: Fitted scorers by method name; always holds :data:`REQUIRED_SCORERS`.
        device: Device of the U-Net (``"auto"``, ``"cpu"`` or ``"cuda"``).
        calibrator: ``gcnn_classif``'s raw score -> P(FP), or None (old model folder).
        iou_calibrator: ``gcnn_reg``'s predicted IoU_adj -> recalibrated IoU_adj, or None.
        calibration: The whole ``gcnn_classif/calibration.json`` (operating point,
            out-of-fold P(FP) of the validation lesions); empty when absent.
        shift: The validation scans' :class:`~lesionuq.shift.ShiftReference`, or None.
        default: The folder's default P(FP) method and why
            (:mod:`lesionuq.scorers.default_method`), or None (older folder: gcnn_classif).
        training: What is wrong with the U-Net's training, from the folder's
            ``stamp_train.json`` (:func:`~lesionuq.segmentation.train.training_problem_of`),
            or None: nothing, or no stamp to judge (the samples protocol has no U-Net).
    """

    folder: Path
    cfg: ExperimentConfig
    segmenter: Any
    scorers: dict[str, Any]
    device: str = "auto"
    calibrator: Calibrator | None = None
    iou_calibrator: IoURecalibrator | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    shift: ShiftReference | None = None
    default: MethodChoice | None = None
    training: str | None = None

    @property
    def p_fp_method(self) -> str:
        """The method whose P(FP) is reported: ``default_method.json``'s, else gcnn_classif."""
        d = self.default
        if d is not None and d.method in self.scorers and (d.calibrator or not d.is_baseline):
            return d.method
        return "gcnn_classif"

    @property
    def calibrated(self) -> bool:
        """Whether P(FP) is calibrated (the folder holds ``gcnn_classif``'s calibrator)."""
        return self.calibrator is not None

    def p_fp_note(self) -> str:
        """One sentence: the P(FP) method, why, and the baselines' validation AUCs."""
        if self.default is None:
            return "gcnn_classif (the paper's GCNN; this model folder chose no default method)."
        reason = self.default.reason
        # "gcnn_classif ranked ..." names the method itself; other reasons are prefixed
        text = reason if reason.startswith(self.p_fp_method) else f"{self.p_fp_method}: {reason}"
        base = self.default.baselines_text()
        return f"{text} Validation AUC of the untrained baselines: {base}." if base else text

    def p_fp(self, raw: np.ndarray) -> np.ndarray:
        """(N,) P(FP) from the reported method's (N,) raw scores (unchanged when uncalibrated).

        The reported method is :attr:`p_fp_method` (``gcnn_classif`` unless the folder's
        ``default_method.json`` chose another); a baseline's raw score is not clipped.
        """
        raw = np.asarray(raw, dtype=np.float64)
        d = self.default
        if d is None or not (d.is_baseline and self.p_fp_method == d.method):
            raw = np.clip(raw, 0.0, 1.0)  # a probability (a baseline's score is any real)
        if self.calibrator is None or raw.size == 0:
            return raw
        return np.clip(self.calibrator.predict(raw), 0.0, 1.0)

    def iou_pred(self, raw_u: np.ndarray) -> np.ndarray:
        """(N,) predicted IoU_adj from ``gcnn_reg``'s (N,) scores ``u = 1 - IoU_hat``."""
        pred = np.clip(1.0 - np.asarray(raw_u, dtype=np.float64), 0.0, 1.0)
        if self.iou_calibrator is None or pred.size == 0:
            return pred
        return self.iou_calibrator.predict(pred)

    def review_rule(
        self, threshold: float | None = None, review_target: str | None = None
    ) -> ReviewRule:
        """The review threshold and how it was chosen.

        ``threshold`` if given, else ``review_target`` chosen on the stored out-of-fold
        P(FP) of the validation lesions, else the stored operating point, else 0.5.

        Raises:
            InputError: A malformed ``review_target``, or one given to a model folder
                without a calibrator, or one that cannot be met.
        """
        if threshold is not None:
            return ReviewRule(float(threshold), "--threshold")
        if review_target is not None:
            try:
                parse_target(review_target)
            except ValueError as err:
                raise InputError(str(err)) from None
            if "oof_p_fp" not in self.calibration:
                raise InputError(
                    f"{self.folder}: --review-target needs a calibrated model folder "
                    "(refit it with `lesionuq fit`), or give --threshold."
                )
            p = np.asarray(self.calibration["oof_p_fp"], dtype=np.float64)
            tp = np.asarray(self.calibration["oof_is_tp"], dtype=bool)
            try:
                t = choose_threshold(p, tp, review_target)
            except ValueError as err:
                raise InputError(f"{self.folder}: {err}") from None
            return ReviewRule(t, "review target", review_target, operating_point_effect(p, tp, t))
        op = self.calibration.get("operating_point")
        if op:
            return ReviewRule(
                float(op["threshold"]), "stored operating point", op["target"], op["validation"]
            )
        if self.calibrated:
            return ReviewRule(DEFAULT_THRESHOLD, "default (no operating point was stored)")
        return ReviewRule(DEFAULT_THRESHOLD, "default (uncalibrated model)")

    @property
    def sequences(self) -> tuple[str, ...]:
        """Names of the input sequences, in the order the images must be given."""
        return tuple(self.cfg.sequences)

    def check_images(self, n_images: int) -> None:
        """Raise :class:`InputError` unless ``n_images`` matches the model's sequences."""
        n = len(self.sequences)
        if n_images != n:
            names = ", ".join(self.sequences)
            raise InputError(
                f"{self.folder}: the model expects {n} image(s) ({names}, in that order) "
                f"but {n_images} {'was' if n_images == 1 else 'were'} given."
            )

    def digest(self) -> str:
        """Identity of the model: its folder, config and segmenter file (size, mtime)."""
        unet = self.folder / "segmenter.pt"
        st = [unet.stat().st_size, unet.stat().st_mtime_ns] if unet.is_file() else None
        return config_digest(
            {
                "folder": str(self.folder.resolve()),
                "cfg": self.cfg.to_dict(),
                "segmenter": st,
                "scorers": sorted(self.scorers),
            }
        )


def load_model(
    folder: str | Path, n_images: int | None = None, device: str | None = None
) -> FittedModel:
    """Load a fitted model folder after checking that it is complete.

    Args:
        folder: ``RUN/fold_K`` with ``config.yaml``, ``segmenter.pt`` and
            ``scorers/gcnn_classif`` / ``scorers/gcnn_reg`` (other scorers found under
            ``scorers/`` are loaded too). A fold of a samples-protocol run has no
            ``segmenter.pt`` (``protocol: samples`` in its config).
        n_images: Number of images that will be given, checked against the model's
            sequences (None: no check).
        device: Device of the U-Net; default the config's, except that a model trained
            with ``device: cuda`` runs on the CPU where no GPU is present.

    Returns:
        The loaded model.

    Raises:
        InputError: Folder missing or incomplete (listing every missing file), unreadable
            config, checkpoint or scorer, or a sequence count that does not match.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found.")
    needed = ["config.yaml", "segmenter.pt"]
    needed += [f"scorers/{m}/{SCORER_FILE}" for m in REQUIRED_SCORERS]
    missing = [name for name in needed if not (folder / name).is_file()]
    if "segmenter.pt" in missing and _fixed_segmenter(folder / "config.yaml"):
        missing.remove("segmenter.pt")  # the samples protocol: the user's segmenter
    if missing:
        raise InputError(
            f"{folder}: incomplete model folder, missing {', '.join(missing)} "
            "(a fold of a finished `lesionuq experiment` run is a model folder)."
        )
    try:
        cfg = ExperimentConfig.from_yaml(folder / "config.yaml")
    except Exception as exc:  # malformed YAML, unknown keys, bad values
        raise InputError(f"{folder / 'config.yaml'}: not a valid config ({exc}).") from None
    device = device or ("auto" if cfg.device == "cuda" else cfg.device)
    model = FittedModel(folder, cfg, None, {}, device)
    if n_images is not None:
        model.check_images(n_images)
    try:
        if (folder / "segmenter.pt").is_file():
            model.segmenter = load_segmenter(folder / "segmenter.pt", device=device)
    except InputError:
        raise
    except Exception as exc:  # torch raises many types for bad checkpoints
        raise InputError(
            f"{folder / 'segmenter.pt'}: cannot be loaded ({describe_load_error(exc)})."
        ) from None
    if model.segmenter is not None:
        model.training = training_problem_of(folder / "stamp_train.json", cfg.train.max_epochs)
    in_channels = getattr(getattr(model.segmenter, "cfg", None), "in_channels", None)
    if in_channels is not None and in_channels != len(cfg.sequences):
        raise InputError(
            f"{folder / 'segmenter.pt'}: the U-Net takes {in_channels} sequence(s) but "
            f"config.yaml lists {len(cfg.sequences)}."
        )
    scorer_root = folder / "scorers"
    names = list(REQUIRED_SCORERS)
    names += sorted(
        p.name
        for p in scorer_root.iterdir()
        if p.name not in REQUIRED_SCORERS and (p / SCORER_FILE).is_file()
    )
    for name in names:
        try:
            model.scorers[name] = load_scorer(name, scorer_root / name)
        except Exception as exc:
            if name in REQUIRED_SCORERS and isinstance(exc, InputError):
                raise
            if name in REQUIRED_SCORERS:
                raise InputError(
                    f"{scorer_root / name}: cannot load scorer ({describe_load_error(exc)})."
                ) from None
            warnings.warn(
                f"{scorer_root / name}: skipped, cannot load ({describe_load_error(exc)}).",
                stacklevel=2,
            )
    remove_pyg_codegen_files()
    _load_calibration(model)
    return model


def _fixed_segmenter(config_yaml: Path) -> bool:
    """Whether a model folder's config says ``protocol: samples`` (no U-Net of its own)."""
    try:
        data = yaml.safe_load(config_yaml.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("protocol") == "samples"


def load_model_cached(folder: str | Path, device: str | None = None) -> FittedModel:
    """:func:`load_model`, once per process for a model folder that has not changed.

    A Dask worker predicts many scans with one model: the loaded model is kept in a small
    per-process cache keyed by the folder's path and the size and modification time of
    its files (``segmenter.pt``, ``config.yaml``, the scorers), so a refitted folder is
    loaded again. The model is shared: do not modify it.

    Args:
        folder: The model folder.
        device: As :func:`load_model`.

    Returns:
        The loaded model.
    """
    folder = Path(folder).resolve()
    files = [folder / "segmenter.pt", folder / "config.yaml"]
    if (folder / "scorers").is_dir():
        files += sorted(p for p in (folder / "scorers").rglob("*") if p.is_file())
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file())
    return _load_model_once(str(folder), device, stats)


@functools.lru_cache(maxsize=4)
def _load_model_once(
    folder: str, device: str | None, stats: tuple[tuple[str, int, int], ...]
) -> FittedModel:
    del stats  # part of the cache key only
    return load_model(folder, device=device)


def _load_calibration(model: FittedModel) -> None:
    """Attach the calibrators and the shift reference when the folder has them."""
    root = model.folder / "scorers"
    model.default = load_default_method(model.folder)
    method = model.p_fp_method
    path = root / method / CALIBRATOR_FILE
    if model.default is not None and model.default.is_baseline and model.default.calibrator:
        # an untrained baseline's Platt map is stored with the choice; a learned scorer's
        # calibrator is in its own folder (scorers/METHOD/calibration.json)
        payload = dict(model.default.calibrator or {})
        model.calibrator = calibrator_from_dict(payload["calibrator"])
        model.calibration = payload
    elif path.is_file():
        model.calibrator, _, model.calibration = load_calibration(path)
    path = root / "gcnn_reg" / CALIBRATOR_FILE
    if path.is_file():
        model.iou_calibrator = load_calibration(path)[1]
    path = model.folder / SHIFT_FILE
    if path.is_file():
        model.shift = ShiftReference.load(path)
