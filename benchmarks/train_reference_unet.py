"""Train the reference U-Net shipped in ``src/lesionuq/weights/`` (issue 28).

The demo's default (scorer-only) protocol samples every phantom case once with a fixed
segmenter; this script makes that segmenter. Phantom family A on the 1.5 mm grid with the
quality bench's lesion load (``max_lesions`` 180), preprocessed onto the quality bench's
grid (1.5 mm, 112 x 128 x 112), master seed :data:`lesionuq.segmentation.reference.REFERENCE_SEED`
(2028), whose case seeds are disjoint from those of every demo and bench data set
(``tests/test_reference_unet.py`` checks it). Cases ``0 .. train-1`` train, the next
``val`` cases pick the best epoch by validation Dice and give the card's Dice.

The U-Net and training settings are the quality bench's (``configs/quality.yaml``:
channels 8-16-32-64, dropout 0.2, patches of 32^3, batches of 8, Adam at 3e-3, constant
learning rate), only longer. A constant learning rate means the first N epochs are the same
whatever ``--epochs`` says, so a run stopped early and the card's command agree.

Writes ``--work`` (the generated cases as ``data.npz`` and the training checkpoints; a
killed run resumes) and, at the end, the float16 weights and their model card into
``--dest`` (default the package's ``weights`` folder).

Usage:
    python benchmarks/train_reference_unet.py [--train 40] [--val 8] [--epochs 40]
        [--work runs/reference_unet] [--dest src/lesionuq/weights]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lesionuq.config import TrainConfig, UNetConfig
from lesionuq.data.phantom import case_seed, generate_case
from lesionuq.data.preprocess import preprocess
from lesionuq.segmentation.reference import (
    REFERENCE_CARD,
    REFERENCE_MAX_LESIONS,
    REFERENCE_SEED,
    REFERENCE_SPACING,
    REFERENCE_WEIGHTS,
    reference_preprocess,
)
from lesionuq.segmentation.train import train_segmenter, validation_dice
from lesionuq.segmentation.unet import UNet3D


def make_cases(n: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Generate and preprocess cases ``0 .. n-1`` (cached in ``work/data.npz``).

    Returns:
        images (n, 1, X, Y, Z) float32 and masks (n, X, Y, Z) uint8.
    """
    cache = work / "data.npz"
    if cache.exists():
        data = np.load(cache)
        if len(data["images"]) == n:
            return data["images"], data["masks"]
    pre_cfg = reference_preprocess()
    images, masks = [], []
    for i in range(n):
        t0 = time.perf_counter()
        case = generate_case(
            case_seed(REFERENCE_SEED, i), REFERENCE_SPACING, None, REFERENCE_MAX_LESIONS
        )
        pre = preprocess([case.flair], case.mask, pre_cfg)
        assert pre.mask is not None
        images.append(pre.image.astype(np.float32))
        masks.append(pre.mask.astype(np.uint8))
        print(f"case {i}: {len(case.info['lesions'])} lesions, {time.perf_counter() - t0:.1f} s")
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=np.stack(images), masks=np.stack(masks))
    return np.stack(images), np.stack(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40, help="epochs of 50 steps")
    parser.add_argument("--work", type=Path, default=Path("runs/reference_unet"))
    parser.add_argument("--dest", type=Path, default=Path("src/lesionuq/weights"))
    args = parser.parse_args()

    t_start = time.perf_counter()
    images, masks = make_cases(args.train + args.val, args.work)
    t_data = time.perf_counter() - t_start
    pairs = list(zip(images, masks, strict=True))
    train, val = pairs[: args.train], pairs[args.train :]
    unet_cfg = UNetConfig(channels=(8, 16, 32, 64), dropout=0.2)
    train_cfg = TrainConfig(
        patch_size=(32, 32, 32),
        batch_size=8,
        lr=0.003,
        lr_schedule="constant",
        max_epochs=args.epochs,
        patience=args.epochs,
        steps_per_epoch=50,
        seed=0,
        precision="fp32",
    )
    t0 = time.perf_counter()
    result = train_segmenter(train, val, unet_cfg, train_cfg, args.work, device="cpu")
    t_train = time.perf_counter() - t0

    ck = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    model = UNet3D(unet_cfg)
    model.load_state_dict({k: v.float() for k, v in half.items()})
    dice16 = validation_dice(model, val, (32, 32, 32), torch.device("cpu"))
    args.dest.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "lesionuq.segmenter/1",
        "state_dict": half,
        "unet": dataclasses.asdict(unet_cfg),
        "train": dataclasses.asdict(train_cfg),
        "epoch": int(ck["epoch"]),
        "best_dice": float(dice16),
    }
    torch.save(payload, args.dest / REFERENCE_WEIGHTS)
    card = {
        "name": "lesionuq reference U-Net for the phantom (family A, FLAIR, 1.5 mm)",
        "command": " ".join(["python", "benchmarks/train_reference_unet.py", *sys.argv[1:]]),
        "data": {
            "generator": "lesionuq.data.phantom.generate_case (family A)",
            "master_seed": REFERENCE_SEED,
            "case_seeds": "case_seed(master_seed, i), i = 0 .. train + val - 1",
            "train_cases": list(range(args.train)),
            "val_cases": list(range(args.train, args.train + args.val)),
            "spacing_mm": REFERENCE_SPACING,
            "max_lesions": REFERENCE_MAX_LESIONS,
            "preprocess": dataclasses.asdict(reference_preprocess()),
        },
        "unet": dataclasses.asdict(unet_cfg),
        "train": dataclasses.asdict(train_cfg),
        "steps": result.epochs * train_cfg.steps_per_epoch,
        "best_epoch": result.best_epoch,
        "val_dice_fp32": round(float(result.best_dice), 4),
        "val_dice_fp16_weights": round(float(dice16), 4),
        "history": [{k: round(float(v), 4) for k, v in h.items()} for h in result.history],
        "seconds": {
            "data": round(t_data, 1),
            "train": round(sum(h["seconds"] for h in result.history), 1),
            "this_call": round(t_train, 1),
        },
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads (shared machine; times are indicative)",
        "weights": REFERENCE_WEIGHTS,
        "dtype": "float16 (loaded as float32)",
    }
    (args.dest / REFERENCE_CARD).write_text(json.dumps(card, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: card[k]
                for k in (
                    "steps",
                    "best_epoch",
                    "val_dice_fp32",
                    "val_dice_fp16_weights",
                    "seconds",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
