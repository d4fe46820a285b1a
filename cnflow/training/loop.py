"""The one training loop that estimators and scripts share.

Minibatch SGD (Adam by default) on a loss computed by a callable, usually the negative mean
log-likelihood of a flow, −(1/B) Σ_b log p_θ(x_b), plus optional regularisers. The loop keeps
a per-iteration history (loss, forward/backward NFE, seconds), evaluates an optional held-out
set with early stopping that keeps the best parameters, and survives faults: a non-finite loss
or a failed solve stops training at the last good parameters (never NaN weights), and
Ctrl-C stops it cleanly with a warning.

Data-parallel training is in :mod:`cnflow.training.distributed`.

Example:
    >>> import torch
    >>> from cnflow.training import TrainConfig, train
    >>> model = torch.nn.Linear(2, 1)
    >>> X = torch.randn(64, 2)
    >>> result = train(model, X, lambda m, x: m(x).square().mean(), TrainConfig(max_iter=5))
    >>> len(result.history)
    5
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..ode import ODESolveError
from .distributed import data_parallel_loss, distributed_rank, out_of_time, shared_loss
from .faults import TrainingFault

__all__ = ["LR_SCHEDULES", "TrainConfig", "TrainResult", "train"]

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

#: The learning-rate schedules :class:`TrainConfig` knows.
LR_SCHEDULES = ("constant", "cosine")


def _cosine_factor(progress: float) -> float:
    """(1 + cos(π p)) / 2 for the progress p clipped to [0, 1]: 1 at the start, 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


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
            up); None: no limit.
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
    verbose: bool = False


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    n_iter: int = 0
    best_val_loss: float | None = None
    stop_reason: str = "max_iter"


def _nfe(model: nn.Module, name: str) -> int | None:
    value = getattr(model, name, None)
    return int(value) if value is not None else None


@torch.no_grad()
def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, loss_fn: LossFn, batch_size: int) -> float:
    total = 0.0
    for start in range(0, len(X), batch_size):
        batch = X[start:start + batch_size]
        total += float(loss_fn(model, batch).detach()) * len(batch)
    return total / len(X)


def train(model: nn.Module, X: torch.Tensor, loss_fn: LossFn, config: TrainConfig, *,
          X_val: torch.Tensor | None = None, val_loss_fn: LossFn | None = None,
          generator: torch.Generator | None = None) -> TrainResult:
    """Fit ``model`` by minimising ``loss_fn(model, batch)`` over minibatches of ``X``.

    Arguments:
        model: the module to train (its parameters, on X's device).
        X: training rows, (n, d) tensor.
        loss_fn: the minibatch loss, e.g. ``lambda flow, x: -flow.log_prob(x).mean()``.
        config: the loop's settings.
        X_val: optional held-out rows, scored with ``val_loss_fn`` (default ``loss_fn``)
            every ``config.validation_interval`` iterations; the best parameters are kept.
        generator: the torch.Generator that draws minibatches (repeatable fits).

    Returns:
        A :class:`TrainResult`; the model holds the best (validation) or last good parameters.

    Raises:
        TrainingFault: a non-finite loss or a failed solve without a validation set (with one,
            a warning is given instead and the best parameters are kept).

    Under ``torch.distributed`` with several processes (see the module's docstring) every
    process must call :func:`train` with the same X, config and generator seed; the batch size
    must be a multiple of the number of processes; the reported loss is the mean over them.
    """
    n = len(X)
    batch_size = min(config.batch_size, n)
    parallel = distributed_rank()
    if parallel is None:
        def step_loss(batch: torch.Tensor) -> torch.Tensor:
            return loss_fn(model, batch)
    else:
        step_loss = data_parallel_loss(model, loss_fn, batch_size, X.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; valid: "
                         f"{', '.join(LR_SCHEDULES)}")
    # the cosine schedule follows the time budget too, except across processes (whose clocks
    # differ, while their learning rates must agree)
    timed_schedule = config.max_seconds is not None and parallel is None
    result = TrainResult()
    best_state, best_val, evals_no_change = None, math.inf, 0
    val_loss_fn = loss_fn if val_loss_fn is None else val_loss_fn
    progress = None
    if config.verbose and (parallel is None or parallel[0] == 0):
        from tqdm.auto import tqdm

        progress = tqdm(total=config.max_iter, desc="training", unit="it")
    order = torch.randperm(n, generator=generator, device="cpu")
    cursor, last_good = 0, None
    try:
        started = time.perf_counter()
        if X_val is not None and config.validate_at_start:
            try:
                best_val = _evaluate(model, X_val, val_loss_fn, max(batch_size, 1024))
            except ODESolveError:
                best_val = math.nan
            if math.isfinite(best_val):
                best_state = _snapshot(model)
            else:
                best_val = math.inf
        for iteration in range(1, config.max_iter + 1):
            if config.max_seconds is not None and out_of_time(
                    time.perf_counter() - started >= config.max_seconds, parallel, X.device):
                result.stop_reason = "time_limit"
                break
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=generator, device="cpu"), 0
            batch = X[order[cursor:cursor + batch_size].to(X.device)]
            cursor += batch_size
            last_good = _snapshot(model)
            start = time.perf_counter()
            try:
                optimizer.zero_grad(set_to_none=True)
                if parallel is None:
                    loss = step_loss(batch)
                    loss_value = loss.detach()
                else:
                    loss, loss_value = shared_loss(step_loss, batch, parallel[1])
                if not torch.isfinite(loss_value):
                    raise TrainingFault(f"the training loss became {loss_value.item()} at "
                                        f"iteration {iteration}")
                loss.backward()
                finite = [torch.isfinite(p.grad).all() for p in model.parameters()
                          if p.grad is not None]
                if finite and not torch.stack(finite).all():  # one host sync
                    raise TrainingFault(f"non-finite gradients at iteration {iteration}")
                if config.lr_schedule == "cosine":
                    done = (iteration - 1) / config.max_iter
                    if timed_schedule:
                        done = max(done, (start - started) / config.max_seconds)
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * _cosine_factor(done)
                optimizer.step()
            except (TrainingFault, ODESolveError) as err:
                model.load_state_dict(last_good)
                fault = err if isinstance(err, TrainingFault) else TrainingFault(
                    f"the ODE solve failed at iteration {iteration}: {err}")
                if X_val is None:
                    result.stop_reason = "fault"
                    fault.result = result  # the history so far, for the caller
                    raise fault from err
                warnings.warn(f"{fault}; stopping and keeping the best parameters so far",
                              RuntimeWarning, stacklevel=2)
                result.stop_reason = "fault"
                break
            entry = {"iteration": iteration, "loss": float(loss_value),
                     "lr": optimizer.param_groups[0]["lr"],
                     "nfe_forward": _nfe(model, "nfe_forward"),
                     "nfe_backward": _nfe(model, "nfe_backward"),
                     "seconds": time.perf_counter() - start}
            result.n_iter = iteration
            if X_val is not None and (iteration % config.validation_interval == 0
                                      or iteration == config.max_iter):
                try:
                    val = _evaluate(model, X_val, val_loss_fn, max(batch_size, 1024))
                except ODESolveError as err:
                    val, why = math.nan, f"the validation solve failed: {err}"
                else:
                    why = f"the validation loss became {val}"
                if not math.isfinite(val):
                    warnings.warn(f"{why} at iteration {iteration}; stopping and keeping the "
                                  "best parameters so far", RuntimeWarning, stacklevel=2)
                    result.stop_reason = "fault"
                    if best_state is None:  # nothing validated yet: undo this step
                        model.load_state_dict(last_good)
                    break
                entry["val_loss"] = val
                if val < best_val - config.tol:
                    best_val, best_state, evals_no_change = val, _snapshot(model), 0
                else:
                    evals_no_change += 1
                if (config.n_iter_no_change is not None
                        and evals_no_change >= config.n_iter_no_change):
                    result.history.append(entry)
                    result.stop_reason = "early_stopping"
                    break
            result.history.append(entry)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", nfe=entry["nfe_forward"])
    except KeyboardInterrupt:
        warnings.warn(f"training interrupted after {result.n_iter} iterations; the model keeps "
                      "its best parameters so far", RuntimeWarning, stacklevel=2)
        result.stop_reason = "interrupted"
        if last_good is not None:  # the interrupted step may have been half applied
            model.load_state_dict(last_good)
    finally:
        if progress is not None:
            progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    result.best_val_loss = None if best_state is None else best_val
    return result
