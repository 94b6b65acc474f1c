"""Patch-based training of the MC-dropout :class:`UNet3D` (paper 3.4).

MONAI ``DiceCELoss`` (softmax, one-hot targets), Adam, patches of ``cfg.patch_size`` of
which a fraction ``cfg.pos_fraction`` is centred on a lesion voxel, MONAI augmentation
(flips, rotations, contrast, Gaussian noise, Gaussian blur) applied to the patch tensors.
After each epoch the Dice of the argmax segmentation (dropout off) is measured on the
full validation volumes (sliding window when a volume exceeds the patch).

Ignore regions (a case's ``ignore`` mask, e.g. WMH 2017 label 2): the training masks
carry them as :data:`IGNORE_LABEL` and they are *masked from the loss*
(:func:`mask_ignored`), not learned as background. "Other pathology" can look like a
lesion; teaching the network that it is background would bias it against real lesions
of the same appearance, and teaching it as lesion would contradict the reference, so the
network gets no gradient there. Validation Dice leaves them out too, and patches are
never centred on them as if they were lesions.

Files written in ``out_dir`` (atomically: temporary file, then rename):

- ``segmenter.pt``: the best epoch by validation Dice, a dict of tensors and plain Python
  types only (``torch.load(path, weights_only=True)`` works): ``state_dict``, ``unet``
  (:class:`UNetConfig` as dict), ``train`` (:class:`TrainConfig` as dict), ``epoch``,
  ``best_dice``, ``format``.
- ``segmenter_last.pt``: the last epoch, plus the optimiser (and AMP scaler) state,
  ``best_epoch``, ``bad_epochs`` and the per-epoch ``history``, to resume after a kill.

Precision (``cfg.precision``, :func:`training_dtype`): float32 by default; ``"auto"``
runs the forward pass under bfloat16 autocast on a CPU with native bf16 units (the
demo's setting; ``benchmarks/train_throughput.py`` on an AVX512-BF16/AMX CPU: 1.85x the
float32 channels-last step). The loss is computed in float32 from the logits, the weights
and Adam's state stay float32, and no gradient scaler is needed (bfloat16 has float32's
exponent range); the validation Dice that picks the best epoch stays float32 on a CPU.
On CUDA, ``cfg.amp`` selects float16 autocast with a gradient scaler, as before.

Reproducibility: the weights are initialised from ``cfg.seed``; patch ``i`` of step ``s``
of an epoch (its position and its augmentation) is drawn from its own generator seeded by
``(cfg.seed, epoch, s, i)``, and every epoch reseeds dropout from ``(cfg.seed, epoch)``, so
a run resumed from ``segmenter_last.pt`` continues exactly like an uninterrupted one (on
CPU) without storing random-generator states.

Several processes (``torchrun``, see :mod:`lesionuq.distributed`): when a process group
is initialised, the model is wrapped in ``DistributedDataParallel``, rank ``r`` draws only
its slice of each global batch of ``cfg.batch_size`` patches (the same patches one
process draws), the loss is the global-batch loss (:class:`~lesionuq.distributed.GatheredLoss`),
validation cases are shared out and their Dice gathered, and only rank 0 writes the
checkpoints and shows the progress bar. Without dropout the result equals one process's up
to float rounding; dropout masks are drawn per rank (seeded by ``(cfg.seed, epoch, rank)``),
so with dropout the runs agree in distribution, not bit for bit.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
)

from lesionuq import distributed
from lesionuq.config import TrainConfig, UNetConfig, config_from_dict
from lesionuq.io import InputError, atomic_torch_save, describe_load_error
from lesionuq.rundir import read_stamp
from lesionuq.segmentation import sampling
from lesionuq.segmentation.unet import UNet3D
from lesionuq.utils import make_progress, resolve_device, torch_threads

__all__ = [
    "MIN_USABLE_DICE",
    "TrainResult",
    "augmentation",
    "learning_rate",
    "load_segmenter",
    "mask_ignored",
    "train_segmenter",
    "training_dtype",
    "training_problem",
    "training_problem_of",
    "validation_dice",
]

BEST_NAME = "segmenter.pt"
LAST_NAME = "segmenter_last.pt"
FORMAT = "lesionuq.segmenter/1"
#: Validation volumes up to this many voxels run in one forward pass (no sliding window).
WHOLE_VOLUME_VOXELS = 2**23
#: Training-mask value of an ignore-region voxel (masked from the loss, see mask_ignored).
IGNORE_LABEL = 2
#: Constant logit margin given to ignored voxels: background with certainty (p ~ 1e-26).
_IGNORE_LOGIT = 30.0
#: On CPU, train in the channels-last 3-D memory layout (oneDNN's fast convolution layout;
#: same fp32 results, measured 1.5x faster forward + backward for 8 x 32^3 patches).
CHANNELS_LAST_ON_CPU = True
#: TrainConfig fields that only decide when to stop; changing them does not void a resume.
_STOP_FIELDS = ("max_epochs", "patience")
#: TrainConfig fields that change rounding only; a run may be resumed in another precision.
_ROUNDING_FIELDS = ("precision",)
#: A U-Net whose best validation Dice stays below this did not learn to segment. Lesion
#: U-Nets reach 0.5-0.8 on MS FLAIR (the project's benches 0.47-0.70), so this flags a
#: failed training, not a weak model.
MIN_USABLE_DICE = 0.2


@dataclass
class TrainResult:
    """Outcome of :func:`train_segmenter`.

    Attributes:
        checkpoint: Path of the best checkpoint (``segmenter.pt``).
        best_dice: Best validation Dice (NaN without a validation set).
        best_epoch: Epoch (1-based) of the best checkpoint.
        epochs: Epochs completed in total (including those before a resume).
        stopped_early: Whether training stopped on patience.
        resumed_from: Epochs already done when this call started (0 = fresh start).
        history: One dict per epoch: ``epoch``, ``loss`` (mean training loss),
            ``val_dice``, ``seconds``.
        arithmetic: Where and how this call trained: ``device``, ``dtype`` (the
            forward pass's, e.g. ``"bfloat16"`` under ``precision: auto`` on a CPU with
            native bf16) and ``threads`` (torch's intra-op CPU threads). Weights trained
            with another dtype or thread count differ in their last bits, and training
            amplifies that into another U-Net.
    """

    checkpoint: Path
    best_dice: float
    best_epoch: int
    epochs: int
    stopped_early: bool
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    arithmetic: dict[str, Any] = field(default_factory=dict)


def training_problem(
    best_dice: float, best_epoch: int | None, epochs: int | None, max_epochs: int
) -> str | None:
    """What is wrong with a finished training, in one clause, or None when nothing is.

    A best validation Dice below :data:`MIN_USABLE_DICE` means the U-Net did not learn to
    segment: its lesions are mostly wrong, and the lesion uncertainty then ranks noise.
    When the best epoch is also the last of ``max_epochs``, the Dice was still rising and
    a longer training is the likely remedy (seen on short recipes whose seed makes the
    first epochs predict nothing).

    Args:
        best_dice: Best validation Dice (NaN without a validation set: nothing to judge).
        best_epoch: Epoch of the best checkpoint (1-based); None when unknown (a stamp
            written before it was kept): the Dice alone is judged.
        epochs: Epochs completed, or None when unknown.
        max_epochs: The configured maximum.

    Returns:
        E.g. ``"best validation Dice 0.083 at epoch 12 of 12, still rising"``, or None.
    """
    if not math.isfinite(best_dice) or best_dice >= MIN_USABLE_DICE:
        return None
    said = f"best validation Dice {best_dice:.3f}"
    if best_epoch is None or epochs is None:
        return said
    rising = best_epoch == epochs >= max_epochs
    return f"{said} at epoch {best_epoch} of {epochs}" + (", still rising" if rising else "")


def training_problem_of(stamp: Path, max_epochs: int) -> str | None:
    """:func:`training_problem` of a fold's ``stamp_train.json``.

    Args:
        stamp: The stamp file; absent or unreadable: nothing to judge (None).
        max_epochs: The configured ``train.max_epochs``.

    Returns:
        The clause of :func:`training_problem`, or None. A stamp written before the
        epochs were kept is judged by its Dice alone.
    """
    info = read_stamp(stamp) or {}
    best_epoch, epochs = info.get("best_epoch"), info.get("epochs")
    return training_problem(
        float(info.get("best_dice", math.nan)),
        None if best_epoch is None else int(best_epoch),
        None if epochs is None else int(epochs),
        max_epochs,
    )


def augmentation(seed: int) -> Compose:
    """MONAI augmentation of ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)}`` tensors.

    Flips on each axis (p = 0.5), a rotation (p = 0.3; up to 15 degrees in the axial
    plane, 6 degrees about the other axes; bilinear image, nearest label), gamma contrast
    (p = 0.3, gamma in [0.7, 1.5], mean and std kept), Gaussian noise (p = 0.3, std 0.1)
    and Gaussian blur (p = 0.2, sigma in [0.5, 1] voxel).

    The transforms run on one torch thread (the caller's thread count is restored after
    each call): on a patch of 32^3 voxels OpenMP's start-up and barriers cost more than the
    work (measured 4.7x less wall time and CPU time per patch than on 2 threads on a
    loaded 2-core machine), and the results are the same bit for bit.

    Args:
        seed: Seed of the transforms' random states.
    """
    keys = ["image", "label"]
    aug = _OneThreadCompose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandRotated(
                keys,
                range_x=0.1,
                range_y=0.1,
                range_z=0.26,
                prob=0.3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
            RandGaussianNoised("image", prob=0.3, std=0.1),
            RandGaussianSmoothd(
                "image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
            ),
        ]
    )
    aug.set_random_state(seed=seed % (2**32))
    return aug


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (counted from 1) under ``cfg.lr_schedule``.

    ``"constant"``: ``cfg.lr``. ``"poly"`` (nnU-Net): ``cfg.lr * (1 - (epoch - 1) /
    cfg.max_epochs) ** 0.9``, from ``cfg.lr`` in the first epoch down to about
    ``cfg.lr * (1 / max_epochs) ** 0.9`` in the last.

    Args:
        cfg: Training settings.
        epoch: Epoch number, 1 to ``cfg.max_epochs``.
    """
    if cfg.lr_schedule == "constant":
        return float(cfg.lr)
    done = min(max(epoch - 1, 0), cfg.max_epochs - 1) / cfg.max_epochs
    return float(cfg.lr * (1.0 - done) ** 0.9)


def training_dtype(precision: str, device: torch.device | str, amp: bool = True) -> torch.dtype:
    """The autocast dtype of the training forward pass (``torch.float32``: no autocast).

    Uses the MC sampling path's choice (:func:`lesionuq.segmentation.sampling.sampling_dtype`
    and its CPU check :func:`~lesionuq.segmentation.sampling.bf16_native`), except that on
    CUDA ``"fp32"`` keeps the ``amp`` switch (float16 autocast when True), as training
    did before ``precision`` existed.

    Args:
        precision: ``TrainConfig.precision``: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        device: Where training runs.
        amp: ``TrainConfig.amp`` (CUDA only; False = float32 on CUDA).

    Returns:
        CPU: ``float32`` for ``"fp32"``, ``bfloat16`` for ``"bf16"``, and for ``"auto"``
        ``bfloat16`` where the CPU has native bf16 units, else ``float32``. CUDA:
        ``float16`` (``bfloat16`` for ``"bf16"``) when ``amp``, else ``float32``.

    Warns:
        UserWarning: ``"bf16"`` forced on a CPU without native bf16 (runs, emulated, slowly).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and precision == "fp32":
        return torch.float16 if amp else torch.float32
    dtype = sampling.sampling_dtype(precision, dev, amp)
    if dev.type == "cpu" and dtype == torch.bfloat16 and not sampling.bf16_native():
        warnings.warn(
            "precision bf16: this CPU has no native bfloat16 units (AVX512-BF16 or AMX); "
            "training runs emulated and slower than fp32.",
            stacklevel=2,
        )
    return dtype


class _OneThreadCompose(Compose):
    """MONAI :class:`Compose` whose calls run on one torch thread (see :func:`augmentation`)."""

    # Compose's own __call__ already differs from Transform's (data) -> Any in MONAI
    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with torch_threads(1):
            return super().__call__(input_, *args, **kwargs)


def _plain(t: Any) -> torch.Tensor:
    """MONAI MetaTensor -> plain tensor."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


class _PatchSampler:
    """Random patches; a fraction ``pos_fraction`` centred on a lesion voxel.

    Args:
        cases: (image (C, X, Y, Z), mask (X, Y, Z)) pairs.
        patch: Patch size (already clipped to every volume).
        pos_fraction: Probability that a patch is centred on a random lesion voxel (cases
            without lesions give a uniformly placed patch instead).
    """

    def __init__(
        self,
        cases: Sequence[tuple[np.ndarray, np.ndarray]],
        patch: tuple[int, int, int],
        pos_fraction: float,
    ):
        self.cases = cases
        self.patch = np.asarray(patch)
        self.pos_fraction = pos_fraction
        self.lesion_voxels = [np.flatnonzero(m == 1) for _, m in cases]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (image (C, *patch), mask (*patch)) pair."""
        i = int(rng.integers(len(self.cases)))
        image, mask = self.cases[i]
        shape = np.asarray(mask.shape)
        fg = self.lesion_voxels[i]
        if fg.size and rng.random() < self.pos_fraction:
            centre = np.asarray(np.unravel_index(fg[rng.integers(fg.size)], mask.shape))
        else:
            centre = np.asarray([rng.integers(s) for s in shape])
        start = np.clip(centre - self.patch // 2, 0, shape - self.patch)
        sl = tuple(slice(int(a), int(a + p)) for a, p in zip(start, self.patch, strict=True))
        return image[(slice(None), *sl)], mask[sl]


def _check_cases(cases: Sequence[tuple[np.ndarray, np.ndarray]], in_ch: int, what: str) -> None:
    for k, (image, mask) in enumerate(cases):
        if image.ndim != 4 or image.shape[0] != in_ch:
            raise ValueError(
                f"{what} case {k}: image must be (C={in_ch}, X, Y, Z), got {image.shape}."
            )
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"{what} case {k}: mask shape {mask.shape} != image {image.shape}.")


def _clip_patch(
    patch: Sequence[int], cases: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[int, int, int]:
    smallest = np.min([m.shape for _, m in cases], axis=0)
    clipped = tuple(int(min(p, s)) for p, s in zip(patch, smallest, strict=True))
    if clipped != tuple(patch):
        warnings.warn(
            f"patch size {tuple(patch)} exceeds the volume {tuple(smallest)}; using {clipped}.",
            stacklevel=3,
        )
    return clipped  # type: ignore[return-value]


def _resume_key(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    for k in (*_STOP_FIELDS, *_ROUNDING_FIELDS):
        d.pop(k)
    return d


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights as contiguous CPU tensors (whatever layout training used)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


@torch.inference_mode()
def validation_dice(
    model: UNet3D,
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    roi_size: Sequence[int],
    device: torch.device,
    amp: bool = False,
) -> float:
    """Mean Dice of the argmax segmentation (dropout off) over full volumes.

    Args:
        model: The network (set to eval mode).
        cases: (image (C, X, Y, Z), mask (X, Y, Z)) pairs.
        roi_size: Sliding-window size, used for volumes of more than
            ``WHOLE_VOLUME_VOXELS`` voxels (smaller ones run in one pass, which is much
            faster than many overlapping windows).
        device: Where to run.
        amp: Autocast (float16) on CUDA.

    Returns:
        Mean over cases of Dice(lesion); a case with empty prediction and empty mask
        scores 1. NaN when ``cases`` is empty.
    """
    if not cases:
        return math.nan
    return float(np.mean(_dice_scores(model, cases, roi_size, device, amp)))


@torch.inference_mode()
def _dice_scores(
    model: UNet3D,
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    roi_size: Sequence[int],
    device: torch.device,
    amp: bool = False,
) -> list[float]:
    """Dice(lesion) of each case, in order (see :func:`validation_dice`)."""
    model.eval()
    scores = []
    use_amp = amp and device.type == "cuda"
    for image, mask in cases:
        x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)[None]
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            if x[0, 0].numel() > WHOLE_VOLUME_VOXELS:
                logits = sliding_window_inference(x, tuple(roi_size), 1, model, overlap=0.25)
            else:
                logits = model(x)
        pred = _plain(logits).argmax(1)
        gt = torch.as_tensor(np.asarray(mask), device=device).long()[None]
        ignore = gt == IGNORE_LABEL  # left out of Dice: neither lesion nor background
        pred, gt = pred.masked_fill(ignore, 0), gt.masked_fill(ignore, 0)
        onehot = [F.one_hot(t, 2).permute(0, 4, 1, 2, 3) for t in (pred, gt)]
        d = compute_dice(onehot[0], onehot[1], include_background=False, ignore_empty=False)
        scores.append(float(d.mean()))
    return scores


def _shared_validation_dice(
    model: UNet3D,
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    roi_size: Sequence[int],
    device: torch.device,
    amp: bool,
) -> float:
    """:func:`validation_dice` with the cases shared out over the ranks.

    Rank ``r`` scores cases ``r, r + K, ...``; the scores are gathered and averaged in
    case order, so every rank gets the same value (the one a single process gets) and
    takes the same keep/stop decision.
    """
    k = distributed.world_size()
    if k == 1 or not cases:
        return validation_dice(model, cases, roi_size, device, amp)
    mine = _dice_scores(model, list(cases[distributed.rank() :: k]), roi_size, device, amp)
    parts = distributed.gather_objects(mine)
    ordered = [parts[i % k][i // k] for i in range(len(cases))]
    return float(np.mean(ordered))


def train_segmenter(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    val: Sequence[tuple[np.ndarray, np.ndarray]],
    unet_cfg: UNetConfig,
    cfg: TrainConfig,
    out_dir: Path,
    device: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train the U-Net, keep the best epoch by validation Dice, resume after a kill.

    Args:
        train: Training (image (C, X, Y, Z) float32, mask (X, Y, Z) {0, 1}) pairs.
        val: Validation pairs (full volumes); may be empty (then the last epoch is kept).
        unet_cfg: Architecture.
        cfg: Optimisation, patches, augmentation, stopping and seed.
        out_dir: Folder for ``segmenter.pt`` and ``segmenter_last.pt``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (AMP on CUDA when ``cfg.amp``).
        progress: Show a progress bar with the loss and validation Dice.

    Returns:
        The :class:`TrainResult`. If ``segmenter_last.pt`` exists with the same
        architecture and training settings (``max_epochs`` and ``patience`` may differ),
        training continues from its epoch; if it already met a stopping rule nothing is
        trained. Under a process group (``torchrun``), every rank must call this with the
        same arguments; each gets the same result.

    Raises:
        ConfigError: Under a process group, ``cfg.batch_size`` is not a multiple of the
            number of processes.
    """
    if not train:
        raise ValueError("train_segmenter needs at least one training case.")
    _check_cases(train, unet_cfg.in_channels, "train")
    _check_cases(val, unet_cfg.in_channels, "val")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    rank, world = distributed.rank(), distributed.world_size()
    items = distributed.local_items(cfg.batch_size, rank, world)
    if world > 1 and dev.type == "cuda":  # the GPU process_group made current
        dev = torch.device("cuda", torch.cuda.current_device())
    patch = _clip_patch(cfg.patch_size, train)
    dtype = training_dtype(cfg.precision, dev, cfg.amp)
    use_amp = dtype == torch.float16  # gradient scaler: float16 only (bf16 has fp32's range)

    torch.manual_seed(cfg.seed)
    model = UNet3D(unet_cfg).to(dev)
    if _channels_last(dev):
        # torch's Module.to overloads omit the memory_format keyword it accepts
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # Batch Dice over the lesion channel (nnU-Net style): patches without lesion do not
    # each reward an empty prediction, which otherwise stalls early training on small lesions.
    loss_fn: torch.nn.Module = DiceCELoss(
        to_onehot_y=True, softmax=True, include_background=False, batch=True
    )
    sampler = _PatchSampler(train, patch, cfg.pos_fraction)

    state: dict[str, Any] = {"epoch": 0, "best_dice": -math.inf, "best_epoch": 0}
    state.update(bad_epochs=0, history=[])
    resumed = _try_resume(out_dir / LAST_NAME, model, opt, scaler, unet_cfg, cfg, dev)
    if resumed is not None:
        state.update(resumed)
    start = int(state["epoch"])
    net: torch.nn.Module = model
    if world > 1:  # after the resume: DDP broadcasts rank 0's weights to all ranks
        ids = [dev.index] if dev.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        loss_fn = distributed.GatheredLoss(loss_fn)

    def done() -> bool:
        return state["epoch"] >= cfg.max_epochs or state["bad_epochs"] >= cfg.patience

    bar = make_progress() if progress and rank == 0 else None
    total = max(0, cfg.max_epochs - start) * cfg.steps_per_epoch
    task = bar.add_task("train U-Net", total=total, info="") if bar else None
    if bar:
        bar.start()
    try:
        while not done():
            epoch = state["epoch"] + 1
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
            loss = _train_epoch(
                net, opt, scaler, loss_fn, sampler, cfg, epoch, dev, dtype, bar, task,
                items=items, rank=rank,
            )  # fmt: skip
            dice = _shared_validation_dice(model, val, patch, dev, use_amp)
            improved = not val or dice > state["best_dice"]  # no validation: keep the last
            state["epoch"] = epoch
            seconds = time.perf_counter() - t0
            state["history"].append(
                {"epoch": epoch, "loss": loss, "val_dice": dice, "seconds": seconds}
            )
            if improved:
                state["best_dice"], state["best_epoch"], state["bad_epochs"] = dice, epoch, 0
                if rank == 0:
                    ck = _checkpoint(model, unet_cfg, cfg, state)
                    atomic_torch_save(ck, out_dir / BEST_NAME)
            else:
                state["bad_epochs"] += 1
            if rank == 0:
                last = _checkpoint(model, unet_cfg, cfg, state)
                last.update(optimizer=opt.state_dict(), scaler=scaler.state_dict())
                last.update(bad_epochs=state["bad_epochs"], history=state["history"])
                last.update(best_epoch=state["best_epoch"])
                atomic_torch_save(last, out_dir / LAST_NAME)
            distributed.barrier()  # the checkpoints exist for every rank from here on
            if bar and task is not None:
                bar.update(
                    task,
                    info=f"loss {loss:.4f} | val Dice {dice:.3f} "
                    f"(best {state['best_dice']:.3f} @ {state['best_epoch']})",
                )
    finally:
        if bar:
            bar.stop()
    best = state["best_dice"]
    return TrainResult(
        checkpoint=out_dir / BEST_NAME,
        best_dice=float(best) if math.isfinite(best) else math.nan,
        best_epoch=int(state["best_epoch"]),
        epochs=int(state["epoch"]),
        stopped_early=state["bad_epochs"] >= cfg.patience and state["epoch"] < cfg.max_epochs,
        resumed_from=start,
        history=list(state["history"]),
        arithmetic={
            "device": str(dev),
            "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        },
    )


def _train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: torch.nn.Module,
    sampler: _PatchSampler,
    cfg: TrainConfig,
    epoch: int,
    dev: torch.device,
    dtype: torch.dtype,
    bar: Any,
    task: Any,
    items: Sequence[int] | None = None,
    rank: int = 0,
) -> float:
    """One epoch of ``cfg.steps_per_epoch`` steps; returns the mean loss.

    The forward pass runs under ``dtype`` autocast (none for float32), the loss in float32.
    ``items`` are this process's indices of each global batch (all ``cfg.batch_size`` by
    default); ``rank`` offsets the dropout seed so ranks draw different masks.
    """
    items = range(cfg.batch_size) if items is None else items
    # dropout masks of this epoch (rank 0: the single-process seed)
    torch.manual_seed(cfg.seed * 1_000_003 + epoch + rank * 2**40)
    aug = augmentation(cfg.seed * 1_000_003 + epoch) if cfg.augment else None
    model.train()
    losses = []
    for step in range(cfg.steps_per_epoch):
        images, labels = _draw_batch(sampler, aug, cfg.seed, epoch, step, items)
        x = images.to(dev)
        if _channels_last(dev):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        y = labels.to(dev)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x)
        logits, y = mask_ignored(logits.float(), y)  # float32 loss (no-op in float32)
        loss = loss_fn(logits, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(task, advance=1, info=f"epoch {epoch} | loss {losses[-1]:.4f}")
    return float(np.mean(losses))


def mask_ignored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Take the voxels labelled :data:`IGNORE_LABEL` out of the loss.

    At those voxels the label becomes background and the logits a constant that predicts
    background with certainty (:data:`_IGNORE_LOGIT`), detached from the network: they add
    no gradient (the network is taught neither lesion nor background there) and only a
    constant, near-zero term to Dice and cross-entropy.

    Args:
        logits: (B, 2, X, Y, Z) float32.
        labels: (B, 1, X, Y, Z) in {0, 1, IGNORE_LABEL}.

    Returns:
        The logits and labels to pass to the loss (unchanged without ignored voxels).
    """
    ignore = labels == IGNORE_LABEL
    if not bool(ignore.any()):
        return logits, labels
    fixed = torch.tensor([_IGNORE_LOGIT, -_IGNORE_LOGIT], dtype=logits.dtype, device=logits.device)
    logits = torch.where(ignore, fixed.view(1, 2, 1, 1, 1), logits)
    return logits, labels.masked_fill(ignore, 0)


def _draw_batch(
    sampler: _PatchSampler,
    aug: Compose | None,
    seed: int,
    epoch: int,
    step: int,
    items: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Items ``items`` of a step's global batch: a seeded draw, then a deterministic apply.

    Item ``i`` takes its patch position and then its augmentation seed from a generator
    seeded by ``(seed, epoch, step, i)`` alone, so any subset of a batch (one rank's
    slice) holds exactly the patches the whole batch holds at those indices.

    Returns:
        Images (len(items), C, *patch) float32 and labels (len(items), 1, *patch) in {0, 1}.
    """
    images, labels = [], []
    for i in items:
        rng = np.random.default_rng([seed, epoch, step, i])
        image, mask = sampler.sample(rng)
        item = {
            "image": torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.as_tensor(np.ascontiguousarray(mask, dtype=np.float32))[None],
        }
        if aug is not None:
            aug.set_random_state(seed=int(rng.integers(2**32)))
            item = aug(item)
        images.append(_plain(item["image"]))
        labels.append(_plain(item["label"]).round())
    return torch.stack(images), torch.stack(labels)


def _channels_last(dev: torch.device) -> bool:
    return CHANNELS_LAST_ON_CPU and dev.type == "cpu"


def _checkpoint(model: UNet3D, unet_cfg: UNetConfig, cfg: TrainConfig, state: dict) -> dict:
    return {
        "format": FORMAT,
        "state_dict": _cpu_state(model),
        "unet": asdict(unet_cfg),
        "train": asdict(cfg),
        "epoch": int(state["epoch"]),
        "best_dice": float(state["best_dice"]),
    }


def _try_resume(
    path: Path,
    model: UNet3D,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    unet_cfg: UNetConfig,
    cfg: TrainConfig,
    dev: torch.device,
) -> dict | None:
    """Load ``segmenter_last.pt`` into model/optimiser when its settings match."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location=dev, weights_only=True)
    except Exception as exc:  # a torn or foreign file: start afresh
        warnings.warn(f"{path}: cannot resume ({exc}); training from scratch.", stacklevel=3)
        return None
    same = ck.get("unet") == asdict(unet_cfg) and _resume_key(
        config_from_dict(TrainConfig, ck.get("train", {}), "checkpoint train")
    ) == _resume_key(cfg)
    if not same:
        warnings.warn(f"{path}: saved with other settings; training from scratch.", stacklevel=3)
        return None
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    if ck.get("scaler"):  # empty when saved without a float16 scaler
        scaler.load_state_dict(ck["scaler"])
    return {
        "epoch": int(ck["epoch"]),
        "best_dice": float(ck["best_dice"]),
        "best_epoch": int(ck["best_epoch"]),
        "bad_epochs": int(ck["bad_epochs"]),
        "history": [dict(h) for h in ck["history"]],
    }


def load_segmenter(path: str | Path, device: str = "auto") -> UNet3D:
    """Load a checkpoint written by :func:`train_segmenter` (no pickle of objects).

    Args:
        path: ``segmenter.pt`` (or ``segmenter_last.pt``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        The :class:`UNet3D` with its weights, in eval mode, on the device.

    Raises:
        InputError: The file is missing or not a segmenter checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model = UNet3D(config_from_dict(UNetConfig, ck["unet"], "checkpoint unet"))
        model.load_state_dict(ck["state_dict"])
    except Exception as exc:
        raise InputError(
            f"{path}: not a lesionuq segmenter checkpoint ({describe_load_error(exc)})."
        ) from None
    return model.to(resolve_device(device)).eval()
