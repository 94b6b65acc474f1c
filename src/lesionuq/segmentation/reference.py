"""The reference U-Net shipped with the package (``lesionuq/weights/``, issue 28).

A :class:`~lesionuq.segmentation.unet.UNet3D` trained once by
``benchmarks/train_reference_unet.py`` on phantom cases (family A, FLAIR, 1.5 mm grid,
the quality bench's lesion load) whose seeds no demo or bench data set uses: master seed
:data:`REFERENCE_SEED`, case ``i`` seeded by ``case_seed(REFERENCE_SEED, i)``. Its
weights are stored in float16 (``reference_unet.pt``, a dict of tensors and plain types,
loaded with ``torch.load(weights_only=True)``) with a model card beside them
(``reference_unet.json``: data, seeds, steps, validation Dice, the command that made them).

The demo's default protocol MC-samples every phantom case once with it and copies it into
each fold's model folder as ``segmenter.pt`` (:mod:`lesionuq.demo`), so ``lesionuq predict``
segments a new scan with it like with any fold's U-Net.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from lesionuq.config import PreprocessConfig
from lesionuq.segmentation.train import load_segmenter
from lesionuq.segmentation.unet import UNet3D

__all__ = [
    "REFERENCE_CARD",
    "REFERENCE_MAX_LESIONS",
    "REFERENCE_SEED",
    "REFERENCE_SPACING",
    "REFERENCE_WEIGHTS",
    "load_reference_unet",
    "reference_card",
    "reference_preprocess",
    "reference_weights_path",
]

#: Master phantom seed of the reference U-Net's training and validation cases.
REFERENCE_SEED = 2028
#: Phantom voxel size (mm) and preprocessing grid spacing of the reference U-Net.
REFERENCE_SPACING = 1.5
#: Phantom lesion bound of the training cases (the quality bench's lesion load).
REFERENCE_MAX_LESIONS = 180
#: File names inside the package's ``weights`` folder.
REFERENCE_WEIGHTS = "reference_unet.pt"
REFERENCE_CARD = "reference_unet.json"


def reference_preprocess() -> PreprocessConfig:
    """The common grid the reference U-Net was trained on: 1.5 mm, 112 x 128 x 112."""
    s = REFERENCE_SPACING
    return PreprocessConfig(spacing=(s, s, s), shape=(112, 128, 112))


def reference_weights_path() -> Path:
    """Path of the shipped float16 weights (``lesionuq/weights/reference_unet.pt``)."""
    return Path(str(resources.files("lesionuq") / "weights" / REFERENCE_WEIGHTS))


def reference_card() -> dict[str, Any]:
    """The model card (``reference_unet.json``) as a dict."""
    path = Path(str(resources.files("lesionuq") / "weights" / REFERENCE_CARD))
    return dict(json.loads(path.read_text()))


def load_reference_unet(device: str = "auto") -> UNet3D:
    """The shipped reference U-Net, float32, in eval mode (dropout off until MC sampling).

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    return load_segmenter(reference_weights_path(), device=device)
