"""Data-parallel training across processes started by ``torchrun`` (PyTorch DDP).

``torchrun --nproc_per_node K -m lesionuq train --run RUN`` starts K processes and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each (torchrun's documented contract);
:meth:`TorchrunEnv.from_environ` reads them and :func:`process_group` joins the group
(NCCL with one GPU per process, ``cuda:LOCAL_RANK``; gloo on CPU). Without those
variables nothing here is used and training runs in one process as before.

The helpers below (:func:`rank`, :func:`world_size`, :func:`barrier`,
:func:`gather_objects`) answer for a single process when no process group is
initialised, so callers need no branches.

Equivalence with one process. A global batch of ``B`` patches is split into ``K``
contiguous slices (:func:`local_items`); patch ``i`` of step ``s`` is drawn from its own
seeded generator, so a rank draws exactly the patches one process would draw for that
slice. This replaces a ``DistributedSampler``: patches are drawn, not indexed from a
dataset, so "each rank its own indices of the global batch" becomes "each rank its own
item indices of the global draw". The batch Dice of ``DiceCELoss(batch=True)`` is not a
sum over items, so :class:`GatheredLoss` gathers the logits and labels of all ranks
(autograd-aware) and evaluates the global-batch loss on every rank. The backward of the
gather sums the ``K`` ranks' (identical) gradients onto each rank's slice (``K`` times its
share of the global gradient) and DDP's all-reduce divides by ``K``: each parameter's
gradient is the single-process gradient of the global batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lesionuq.errors import ConfigError
from lesionuq.utils import resolve_device

__all__ = [
    "GatheredLoss",
    "TorchrunEnv",
    "barrier",
    "gather_batch",
    "gather_objects",
    "is_main_process",
    "local_items",
    "process_group",
    "rank",
    "world_size",
]


@dataclass(frozen=True)
class TorchrunEnv:
    """The process's place in a ``torchrun`` job.

    Attributes:
        rank: Global rank in ``[0, world_size)``.
        world_size: Number of processes.
        local_rank: Rank on this machine (the GPU index on CUDA).
    """

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TorchrunEnv | None:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``).

        Args:
            environ: The process environment (``os.environ``).

        Returns:
            The job position, or None when not started by ``torchrun``.

        Raises:
            ConfigError: Only some of the variables are set, or they are not integers
                with ``0 <= RANK < WORLD_SIZE``.
        """
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        present = [n for n in names if n in environ]
        if not present:
            return None
        if len(present) != len(names):
            missing = sorted(set(names) - set(present))
            raise ConfigError(f"torchrun environment incomplete: {', '.join(missing)} not set.")
        try:
            r, k, local = (int(environ[n]) for n in names)
        except ValueError:
            raise ConfigError(
                f"torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                f"{[environ[n] for n in names]}."
            ) from None
        if not (k >= 1 and 0 <= r < k and local >= 0):
            raise ConfigError(f"torchrun environment: RANK={r} is not in [0, WORLD_SIZE={k}).")
        return cls(rank=r, world_size=k, local_rank=local)


def local_items(batch_size: int, rank: int, world_size: int) -> range:
    """Indices of the global batch's items that ``rank`` draws and trains on.

    Args:
        batch_size: Global batch size (patches per optimiser step over all ranks).
        rank: This process's rank.
        world_size: Number of processes.

    Returns:
        ``range(rank * b, (rank + 1) * b)`` with ``b = batch_size // world_size``.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of ``world_size``.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size = {batch_size} must be a multiple of the number of training "
            f"processes ({world_size}); it is the global batch, split evenly across them."
        )
    b = batch_size // world_size
    return range(rank * b, (rank + 1) * b)


@contextmanager
def process_group(env: TorchrunEnv, device: str = "auto") -> Iterator[torch.device]:
    """Join the ``torchrun`` job's process group for the duration of the block.

    Args:
        env: The job position (:meth:`TorchrunEnv.from_environ`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``: NCCL on ``cuda:LOCAL_RANK`` (made
            the current device) for CUDA, gloo on the CPU.

    Yields:
        This process's device.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {env.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU."
            )
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    try:
        yield dev
    finally:
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """Whether this process writes files and shows progress (rank 0, or no group)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _active() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a group."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_batch(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, keeping the autograd graph.

    The backward sends each rank the sum over ranks of the gradient with respect to its
    own slice (``torch.distributed.nn.functional.all_gather``).

    Args:
        t: (b, ...) this rank's slice; the same shape on every rank.

    Returns:
        (world_size * b, ...) in rank order; ``t`` itself without a group.
    """
    if world_size() == 1:
        return t
    # lazy: only with several processes, as torch.distributed.nn needs a torch build with
    # distributed support
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a compile-only API; kept
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(t)
    return torch.cat(parts, dim=0)


class GatheredLoss(nn.Module):
    """A loss of the global batch: gathers input and target across ranks, then ``loss``.

    For losses that are not a mean over items (batch Dice), this gives every rank the
    loss one process would compute on the whole global batch; with DDP's gradient
    averaging the parameter gradients equal the single-process ones (module docstring).

    Args:
        loss: The loss module, called as ``loss(input, target)`` on the gathered tensors.
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Input (b, C, ...) and target (b, 1, ...) per rank -> the global-batch loss."""
        # the target carries no gradient; gather it through the same collective for order
        return self.loss(gather_batch(input), gather_batch(target.detach()))
