"""One training loop for the lesion GCNNs, seeded so that a CPU fit is bit-reproducible.

:func:`fit_graph_model` trains one graph model (Adam, cosine decay of the learning rate
per step, shuffled batches of graphs) and keeps the weights of its best epoch on held-out
graphs. What differs between the GCNN scorers comes in as functions: how a batch goes
through the model (``forward``), the loss, the validation metrics and the key that ranks
the epochs, and an optional augmentation of each training batch.

Everything random is drawn from ``seed``: the initial weights and dropout from the global
generator forked and seeded inside the loop (the caller's global state is left as it
was), the batch order from a generator of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.progress import TaskID
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

__all__ = [
    "FittedModel",
    "NullProgress",
    "Schedule",
    "balanced_class_weight",
    "fit_graph_model",
    "predict",
    "split_train_val",
]

Forward = Callable[[nn.Module, Batch], torch.Tensor]
"""``forward(model, batch) -> (B, out)``: one batch of graphs through a model."""


@dataclass(frozen=True)
class Schedule:
    """Optimiser and schedule of :func:`fit_graph_model`.

    Attributes:
        lr: Initial Adam learning rate.
        lr_min: Final learning rate (cosine decay, one step per batch).
        epochs: Training epochs.
        batch_size: Graphs per batch.
        weight_decay: Adam's L2 penalty.
    """

    lr: float
    lr_min: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.0


@dataclass
class FittedModel:
    """What :func:`fit_graph_model` returns.

    Attributes:
        model: The model with its kept epoch's weights, on the CPU, in eval mode.
        best_epoch: 1-based kept epoch (the last one when no epoch was ranked).
        history: One dict per epoch: ``epoch``, (``lr``,) ``train_loss`` and the
            validation metrics.
    """

    model: nn.Module
    best_epoch: int
    history: list[dict[str, Any]]


def split_train_val(y_fp: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class, keeping at least one of each class for training.

    Args:
        y_fp: (N,) int labels (1 = FP).
        fraction: Share of each class held out (rounded per class).
        seed: Seed of the permutation.

    Returns:
        (train_idx, val_idx), sorted int64 arrays; ``val_idx`` may be empty.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y_fp):
        idx = rng.permutation(np.flatnonzero(y_fp == c))
        n_val = min(round(fraction * len(idx)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    if not train:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(
        np.int64
    )


def balanced_class_weight(y: np.ndarray) -> torch.Tensor:
    """Inverse class frequencies ``N / (2 N_c)`` of binary labels, for the cross-entropy.

    Args:
        y: (N,) int labels in {0, 1}, both present.

    Returns:
        (2,) float32.
    """
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return torch.tensor(len(y) / (2.0 * counts), dtype=torch.float32)


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Sequence[Data],
    forward: Forward,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The model's outputs for graphs, in order, in eval mode.

    Args:
        model: A graph model (already on ``device``).
        data: N graphs as the model reads them.
        forward: How a batch goes through ``model``.
        batch_size: Graphs per forward pass.
        device: Where the batches go.

    Returns:
        (N, out) on the CPU.
    """
    model.eval()
    loader = DataLoader(list(data), batch_size=batch_size, shuffle=False)
    return torch.cat([forward(model, batch.to(device)).cpu() for batch in loader])


def fit_graph_model(
    build: Callable[[], nn.Module],
    train: Sequence[Data],
    val: Sequence[Data],
    *,
    schedule: Schedule,
    seed: int,
    forward: Forward,
    loss: Callable[[torch.Tensor, Batch], torch.Tensor],
    validate: Callable[[nn.Module, list[Data]], dict[str, Any]],
    rank: Callable[[dict[str, Any]], tuple[float, ...]] | None,
    augment: Callable[[Batch], Batch] | None = None,
    device: torch.device | str = "cpu",
    log_lr: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> FittedModel:
    """Train a graph model and keep its best epoch's weights.

    Each epoch: shuffled batches of ``schedule.batch_size`` graphs (from a generator
    seeded with ``seed``), Adam and one cosine step per batch; then, when there are
    held-out graphs and ``rank`` is given, ``validate`` adds its metrics to the epoch's
    record and the epoch with the smallest ``rank(record)`` (compared as tuples, strictly
    below ``(inf, ...)``) is kept. Otherwise the last epoch is kept. With ``stop_after``
    training ends after that epoch, whose weights are kept, while the learning rate
    follows the schedule of ``schedule.epochs`` epochs: the same trajectory as a full
    run up to that epoch (how a refit reproduces an epoch chosen by cross-validation).

    Args:
        build: Returns the new, untrained model (called once, under the seed).
        train: Training graphs with their labels.
        val: Held-out graphs (may be empty).
        schedule: Optimiser settings.
        seed: Seed of the initial weights, dropout and batch order.
        forward: How a batch goes through the model: ``(model, batch) -> (B, out)``.
        loss: ``(outputs (B, out), batch) -> scalar`` training loss.
        validate: ``(model, val) -> metrics`` (at least what ``rank`` reads).
        rank: Epoch key from the epoch's record (smaller is better), or None to keep the
            last epoch without validating.
        augment: A training batch as the model sees it (after moving it to ``device``).
        device: Training device.
        log_lr: Record the epoch's starting learning rate as ``lr``.
        on_epoch: Called with each epoch's record (progress bars).
        stop_after: Last epoch to train (1..``schedule.epochs``); None for all of them.

    Returns:
        A :class:`FittedModel`.

    Raises:
        ValueError: ``stop_after`` outside 1..``schedule.epochs``.
    """
    if stop_after is not None and not 1 <= stop_after <= schedule.epochs:
        raise ValueError(f"stop_after must be in 1..{schedule.epochs}, got {stop_after}.")
    last = schedule.epochs if stop_after is None else stop_after
    train = list(train)
    val = list(val)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build().to(device)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            train, batch_size=schedule.batch_size, shuffle=True, generator=generator
        )
        optimiser = torch.optim.Adam(
            model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, T_max=max(1, schedule.epochs * len(loader)), eta_min=schedule.lr_min
        )
        best_key: tuple[float, ...] | None = None
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch = last
        history: list[dict[str, Any]] = []
        for epoch in range(1, last + 1):
            lr = optimiser.param_groups[0]["lr"]
            model.train()
            loss_sum, n_seen = 0.0, 0
            for batch in loader:
                batch = batch.to(device)
                if augment is not None:
                    batch = augment(batch)
                optimiser.zero_grad()
                value = loss(forward(model, batch), batch)
                value.backward()
                optimiser.step()
                scheduler.step()
                loss_sum += value.detach().item() * batch.num_graphs
                n_seen += batch.num_graphs
            record: dict[str, Any] = {"epoch": epoch}
            if log_lr:
                record["lr"] = lr
            record["train_loss"] = loss_sum / max(n_seen, 1)
            if val and rank is not None:
                record.update(validate(model, val))
                key = rank(record)
                if key < (best_key if best_key is not None else (math.inf,) * len(key)):
                    best_key, best_epoch = key, epoch
                    best_state = {
                        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                    }
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = last
    model.zero_grad(set_to_none=True)
    return FittedModel(model.cpu().eval(), best_epoch, history)


class NullProgress:
    """Stand-in for a Rich progress bar when ``progress=False``."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        """A dummy task id."""
        return TaskID(0)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to update."""
        return None
