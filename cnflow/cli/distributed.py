"""The process group of a data-parallel ``train`` launched by ``torchrun``.

``torchrun --nproc_per_node=N -m cnflow train ...`` starts N processes with WORLD_SIZE,
RANK and LOCAL_RANK set; each joins one process group (NCCL with one GPU a process, else gloo
on the CPU) and trains on a share of every batch (see :mod:`cnflow.training`). Without
torchrun nothing is started.
"""

from __future__ import annotations

import os

import torch

__all__ = ["start_distributed", "stop_distributed"]


def start_distributed(device: str) -> tuple[int, int, str]:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group: NCCL with one GPU per
    process (cuda:LOCAL_RANK) when CUDA is asked for or "auto" finds it, else gloo on CPU.

    Arguments:
        device: the ``--device`` option ("auto", "cpu", "cuda", ...).

    Returns:
        (rank, world size, the device this process trains on); (0, 1, device) without torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def stop_distributed(world: int) -> None:
    """Leave the process group that :func:`start_distributed` joined (nothing when
    ``world`` is 1)."""
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
