"""Devices and seeded random streams for the fits."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["resolve_device", "seeded_rng"]


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" → CUDA when available, else CPU; anything else as torch.device understands it."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Torch's global RNG forked and seeded with ``seed`` inside the block (CPU and, for a CUDA
    device, that device's generator); the caller's RNG state is untouched after it."""
    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
