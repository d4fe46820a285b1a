"""The error a fit stops with when its loss or gradients stop being finite."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loop import TrainResult

__all__ = ["TrainingFault"]


class TrainingFault(RuntimeError):
    """Training stopped on a non-finite loss or a failed solve (parameters were restored).

    Attributes:
        result: the :class:`TrainResult` up to the fault (set by :func:`train`).
    """

    result: TrainResult | None = None
