"""A fitted model folder, loaded: config, MC-dropout U-Net and lesion scorers.

A model folder is a fold of a finished ``lesionuq experiment`` run, ``RUN/fold_K``, with
``config.yaml``, ``segmenter.pt`` and ``scorers/METHOD/`` (see docs/DESIGN.md). :func:`load_model`
checks that it is complete and loads it once, so that a batch of scans shares it.

Example:
    >>> model = load_model("runs/demo/fold_0", n_images=1)
    >>> model.sequences
    ('flair',)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionuq.config import ExperimentConfig, config_digest
from lesionuq.io import InputError, describe_load_error
from lesionuq.utils import remove_pyg_codegen_files

__all__ = ["REQUIRED_SCORERS", "FittedModel", "load_model"]

#: Scorers a model folder must hold: P(FP) and the predicted IoU_adj.
REQUIRED_SCORERS = ("gcnn_classif", "gcnn_reg")


@dataclass
class FittedModel:
    """A loaded model folder: config, MC-dropout U-Net and fitted lesion scorers.

    Attributes:
        folder: The model folder (``RUN/fold_K``).
        cfg: The resolved experiment config of the run.
        segmenter: The U-Net (``lesionuq.segmentation.unet.UNet3D``).
        scorers: Fitted scorers by method name; always holds :data:`REQUIRED_SCORERS`.
        device: Device of the U-Net (``"auto"``, ``"cpu"`` or ``"cuda"``).
    """

    folder: Path
    cfg: ExperimentConfig
    segmenter: Any
    scorers: dict[str, Any]
    device: str = "auto"

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
        st = (self.folder / "segmenter.pt").stat()
        return config_digest(
            {
                "folder": str(self.folder.resolve()),
                "cfg": self.cfg.to_dict(),
                "segmenter": [st.st_size, st.st_mtime_ns],
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
            ``scorers/`` are loaded too).
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
    from lesionuq.scorers import SCORER_FILE, load_scorer
    from lesionuq.segmentation.train import load_segmenter

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found.")
    needed = ["config.yaml", "segmenter.pt"]
    needed += [f"scorers/{m}/{SCORER_FILE}" for m in REQUIRED_SCORERS]
    missing = [name for name in needed if not (folder / name).is_file()]
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
        model.segmenter = load_segmenter(folder / "segmenter.pt", device=device)
    except InputError:
        raise
    except Exception as exc:  # torch raises many types for bad checkpoints
        raise InputError(
            f"{folder / 'segmenter.pt'}: cannot be loaded ({describe_load_error(exc)})."
        ) from None
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
    return model
