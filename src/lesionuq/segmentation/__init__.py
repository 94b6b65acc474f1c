"""Segmentation: the MC-dropout 3D U-Net, its training and Monte Carlo sampling."""

from __future__ import annotations

from lesionuq.segmentation.sampling import dropout_masks, fg_prob, mc_sample, mc_sample_naive
from lesionuq.segmentation.train import (
    TrainResult,
    augmentation,
    load_segmenter,
    train_segmenter,
    validation_dice,
)
from lesionuq.segmentation.unet import DecoderBlock, EncoderBlock, UNet3D, enable_mc_dropout

__all__ = [
    "DecoderBlock",
    "EncoderBlock",
    "TrainResult",
    "UNet3D",
    "augmentation",
    "dropout_masks",
    "enable_mc_dropout",
    "fg_prob",
    "load_segmenter",
    "mc_sample",
    "mc_sample_naive",
    "train_segmenter",
    "validation_dice",
]
