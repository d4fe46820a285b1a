"""The training loop's types: its settings (:class:`TrainConfig`), what it returns
(:class:`TrainResult`), the error a fit stops with (:class:`TrainingFault`) and the loss
callables it takes (:data:`LossFn`). Defined here, below the loop, so that nothing in
:mod:`cnflow.training` imports its way back up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["LossFn", "TrainConfig", "TrainResult", "TrainingFault"]

#: A loss: ``loss_fn(model, batch)`` → a scalar tensor to minimise.
LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    """Settings of :func:`train`.

    Attributes:
        max_iter: number of minibatch steps.
        batch_size: rows per step (capped at the number of training rows).
        lr: Adam's learning rate.
        lr_schedule: ``"constant"``, or ``"cosine"``: lr · (1 + cos(π p)) / 2 with p the
            progress, annealing to 0 at the end (Loshchilov & Hutter 2017). p is (i − 1) /
            max_iter at iteration i or, with ``max_seconds`` (in one process), the fraction of
            the time spent if that is larger: a time budget is annealed over in full.
        weight_decay: Adam's L2 penalty.
        n_iter_no_change: with a validation set, stop after this many evaluations without an
            improvement of at least ``tol``; None: never stop early.
        tol: the improvement in validation loss that counts.
        validation_interval: evaluate the validation set every this many iterations.
        validate_at_start: also evaluate it before the first step, so that the starting
            parameters are kept when no step improves on them.
        max_seconds: stop once training has run this long (wall clock, checked before each
            step; stop_reason "time_limit"; across processes, all stop once any one's time is
            up); with held-out rows, the time of the last validation is kept back for scoring
            the last step's parameters (and for ``scorings_after`` more), so that the phase
            ends about on time; None: no limit.
        scorings_after: scorings of the held-out rows that follow the phase (e.g. a stacking
            weight's), whose time ``max_seconds`` keeps back too.
        verbose: show a tqdm progress bar.
    """

    max_iter: int = 1000
    batch_size: int = 512
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    n_iter_no_change: int | None = None
    tol: float = 1e-4
    validation_interval: int = 20
    validate_at_start: bool = False
    max_seconds: float | None = None
    scorings_after: int = 0
    verbose: bool = False


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        history: one dict per recorded step (iteration, loss, lr, nfe_forward, nfe_backward,
            seconds, and val_loss after a validation).
        n_iter: the last iteration whose step was taken.
        best_val_loss: the best validation loss, whose parameters the model holds (None:
            no validation set, or no finite validation loss).
        stop_reason: ``"max_iter"``, ``"time_limit"``, ``"early_stopping"``, ``"fault"`` or
            ``"interrupted"``.
    """

    history: list[dict] = field(default_factory=list)
    n_iter: int = 0
    best_val_loss: float | None = None
    stop_reason: str = "max_iter"



class TrainingFault(RuntimeError):
    """Training stopped on a non-finite loss or a failed solve (parameters were restored).

    Attributes:
        result: the :class:`TrainResult` up to the fault (set by :func:`train`).
    """

    result: TrainResult | None = None
