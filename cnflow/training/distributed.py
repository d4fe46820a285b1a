"""Data-parallel training under ``torch.distributed`` (e.g. ``torchrun``).

When ``torch.distributed`` is initialised with more than one process, :func:`cnflow.training.train`
wraps the loss in :class:`~torch.nn.parallel.DistributedDataParallel`. Every process draws the
same minibatch order, reads only its own contiguous share of each batch's rows
(:func:`batch_share`; of a memory-mapped table, only those rows are read), and DDP averages
the gradients, so a step is the step of one process on the whole batch; only rank 0 shows
progress.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..ode import ODESolveError
from .types import LossFn, TrainingFault

__all__ = ["distributed_rank", "batch_share", "data_parallel_loss", "out_of_time",
           "shared_loss"]



def distributed_rank() -> tuple[int, int] | None:
    """(rank, world size) when ``torch.distributed`` runs more than one process, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def data_parallel_loss(model: nn.Module, loss_fn: LossFn, batch_size: int,
                        device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of this process's share of each batch (the rows :func:`batch_share`
    picked), through DDP (gradients averaged)."""
    rank, world = distributed_rank()  # type: ignore[misc]
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of "
                         f"processes ({world}) so that every process takes an equal share")
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(
        _LossModule(model, loss_fn),
        device_ids=[device.index] if device.type == "cuda" and device.index is not None
        else None)
    # each process its own random draws (e.g. flow matching's noise), from a seed per rank
    torch.manual_seed(torch.initial_seed() + rank)
    return wrapped


def batch_share(indices: torch.Tensor, parallel: tuple[int, int] | None) -> torch.Tensor:
    """The indices of this process's rows among a minibatch's ``indices``: with ``parallel``
    = (rank, world), the rank-th of ``world`` equal contiguous parts (the batch size is a
    multiple of ``world``, see :func:`data_parallel_loss`); all of them in one process."""
    if parallel is None:
        return indices
    rank, world = parallel
    share = len(indices) // world
    return indices[rank * share:(rank + 1) * share]


def out_of_time(over: bool, parallel: tuple[int, int] | None, device: torch.device) -> bool:
    """Whether to stop for time: this process's verdict alone, or across processes the verdict
    of any of them (their clocks differ; a process that stopped alone would leave the others
    waiting for it in DDP's gradient exchange). One scalar all-reduce a step when parallel."""
    if parallel is None:
        return over
    flag = torch.tensor([float(over)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def shared_loss(step_loss: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                 world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's loss and the mean over all processes (one all-reduce), so that every
    process sees the same value and stops together; a failed solve here makes the mean NaN
    everywhere instead of leaving the other processes waiting for gradients."""
    try:
        loss = step_loss(batch)
        local = loss.detach().reshape(1).double()
    except ODESolveError:
        loss, local = None, torch.full((1,), math.nan, dtype=torch.float64, device=batch.device)
    dist.all_reduce(local)
    if loss is None:
        raise TrainingFault("an ODE solve failed in this process's share of the batch")
    return loss, local[0] / world
