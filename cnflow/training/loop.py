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
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..interfaces import CountsEvaluations
from ..ode import ODESolveError
from .checkpoint import FitCheckpoint, restore_rng_state, rng_state
from .distributed import (
    batch_share,
    data_parallel_loss,
    distributed_rank,
    out_of_time,
    shared_loss,
)
from .rows import RowSource, as_row_source
from .types import LossFn, TrainConfig, TrainingFault, TrainResult

if TYPE_CHECKING:
    from tqdm.auto import tqdm

__all__ = ["LR_SCHEDULES", "train"]

#: The learning-rate schedules :class:`TrainConfig` knows.
LR_SCHEDULES = ("constant", "cosine")


def _cosine_factor(progress: float) -> float:
    """(1 + cos(π p)) / 2 for the progress p clipped to [0, 1]: 1 at the start, 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _nfe(model: nn.Module) -> tuple[int | None, int | None]:
    """The model's function evaluations in its last forward solve and backward pass (None
    for a model that counts none, see :class:`cnflow.interfaces.CountsEvaluations`)."""
    if not isinstance(model, CountsEvaluations):
        return None, None
    return int(model.nfe_forward), int(model.nfe_backward)


@torch.no_grad()
def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict, for restoring it later."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, loss_fn: LossFn, batch_size: int) -> float:
    """The row-weighted mean of ``loss_fn`` over ``X`` in batches of ``batch_size``."""
    total = 0.0
    for start in range(0, len(X), batch_size):
        batch = X[start:start + batch_size]
        total += float(loss_fn(model, batch).detach()) * len(batch)
    return total / len(X)


def _learning_rate(config: TrainConfig, iteration: int, elapsed: float | None) -> float:
    """The learning rate of step ``iteration`` (counted from 1).

    ``config.lr`` with the constant schedule; with the cosine one lr · (1 + cos(π p)) / 2,
    where the progress p is (iteration − 1) / max_iter or, when ``elapsed`` (seconds since
    training started) is given and ``config.max_seconds`` is set, the fraction
    elapsed / max_seconds of the time budget if that is larger; p is clipped to [0, 1].
    """
    if config.lr_schedule != "cosine":
        return config.lr
    done = (iteration - 1) / config.max_iter
    if elapsed is not None and config.max_seconds is not None:
        done = max(done, elapsed / config.max_seconds)
    return config.lr * _cosine_factor(done)


class _MinibatchSampler:
    """Row indices, ``batch_size`` at a time, in a random order drawn from ``generator``.

    The first order is drawn on construction; a new one is drawn once fewer than
    ``batch_size`` rows of the current order are left (those rows are skipped), so every row
    appears at most once between two draws.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.order = torch.randperm(n, generator=generator, device="cpu")
        self.cursor = 0

    def next_indices(self) -> torch.Tensor:
        """The indices (on the CPU) of the next minibatch's rows."""
        if self.cursor + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator, device="cpu")
            self.cursor = 0
        indices = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return indices


def _batch_loss(model: nn.Module, loss_fn: LossFn, batch_size: int,
                parallel: tuple[int, int] | None,
                device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of a minibatch: ``loss_fn(model, batch)``, or this process's share of it
    through DDP when ``parallel`` (see :func:`~cnflow.training.distributed.data_parallel_loss`)."""
    if parallel is None:
        def batch_loss(batch: torch.Tensor) -> torch.Tensor:
            return loss_fn(model, batch)

        return batch_loss
    return data_parallel_loss(model, loss_fn, batch_size, device)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer,
          batch_loss: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
          parallel: tuple[int, int] | None, lr: float, iteration: int) -> torch.Tensor:
    """One optimiser step on ``batch`` at learning rate ``lr``; returns the detached loss
    (across processes, their mean).

    Raises:
        TrainingFault: the loss or a gradient is not finite (no step was taken).
        ODESolveError: a solve failed (no step was taken).
    """
    optimizer.zero_grad(set_to_none=True)
    if parallel is None:
        loss = batch_loss(batch)
        loss_value = loss.detach()
    else:
        loss, loss_value = shared_loss(batch_loss, batch, parallel[1])
    if not torch.isfinite(loss_value):
        raise TrainingFault(f"the training loss became {loss_value.item()} at "
                            f"iteration {iteration}")
    loss.backward()
    finite = [torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]
    if finite and not torch.stack(finite).all():  # one host sync
        raise TrainingFault(f"non-finite gradients at iteration {iteration}")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return loss_value


def _as_fault(err: TrainingFault | ODESolveError, iteration: int) -> TrainingFault:
    """``err`` as a :class:`TrainingFault`: itself, or the failed solve of ``iteration``."""
    if isinstance(err, TrainingFault):
        return err
    return TrainingFault(f"the ODE solve failed at iteration {iteration}: {err}")


class _Validation:
    """Held-out scoring with early stopping.

    Attributes:
        best_state: the parameters with the best validation loss so far (None: none yet).
        best_loss: that loss (inf until a finite one is seen).
        evals_no_change: evaluations in a row that did not improve on it by ``config.tol``.
        seconds: how long the last evaluation took (0 before the first): the time a time
            budget keeps back for the evaluation after the last step.
    """

    def __init__(self, X_val: torch.Tensor, loss_fn: LossFn, batch_size: int,
                 config: TrainConfig) -> None:
        self.X_val, self.loss_fn, self.batch_size, self.config = X_val, loss_fn, batch_size, config
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_loss = math.inf
        self.evals_no_change = 0
        self.seconds = 0.0

    def _loss(self, model: nn.Module) -> float:
        """The held-out loss of ``model`` (its time kept as :attr:`seconds`)."""
        start = time.perf_counter()
        try:
            return _evaluate(model, self.X_val, self.loss_fn, self.batch_size)
        finally:
            self.seconds = time.perf_counter() - start

    def due(self, iteration: int) -> bool:
        """Whether to evaluate after ``iteration``: every ``validation_interval`` iterations
        and after the last."""
        return (iteration % self.config.validation_interval == 0
                or iteration == self.config.max_iter)

    def start(self, model: nn.Module) -> None:
        """Score the starting parameters and keep them if the loss is finite (a failed solve
        or a non-finite loss is not an error here)."""
        try:
            loss = self._loss(model)
        except ODESolveError:
            loss = math.nan
        if math.isfinite(loss):
            self.best_loss, self.best_state = loss, _snapshot(model)

    def update(self, model: nn.Module, iteration: int, entry: dict,
               last_good: dict[str, torch.Tensor]) -> str | None:
        """Score the model after ``iteration``; returns the reason to stop, or None.

        ``"fault"``: the loss is not finite or the solve failed; a warning is given, and when
        nothing was validated yet the model goes back to ``last_good``. Otherwise the loss is
        recorded as ``entry["val_loss"]``, the parameters are kept if they improve on the best
        by more than ``tol``, and ``"early_stopping"`` is returned after ``n_iter_no_change``
        evaluations in a row without such an improvement.
        """
        try:
            loss = self._loss(model)
        except ODESolveError as err:
            loss, why = math.nan, f"the validation solve failed: {err}"
        else:
            why = f"the validation loss became {loss}"
        if not math.isfinite(loss):
            warnings.warn(f"{why} at iteration {iteration}; stopping and keeping the best "
                          "parameters so far", RuntimeWarning, stacklevel=3)
            if self.best_state is None:  # nothing validated yet: undo this step
                model.load_state_dict(last_good)
            return "fault"
        entry["val_loss"] = loss
        if loss < self.best_loss - self.config.tol:
            self.best_loss, self.best_state, self.evals_no_change = loss, _snapshot(model), 0
        else:
            self.evals_no_change += 1
        patience = self.config.n_iter_no_change
        if patience is not None and self.evals_no_change >= patience:
            return "early_stopping"
        return None

    def restore_best(self, model: nn.Module) -> float | None:
        """Load the best parameters into ``model``; returns their loss (None: none kept)."""
        if self.best_state is None:
            return None
        model.load_state_dict(self.best_state)
        return self.best_loss


def _validate_last_step(validation: _Validation | None, model: nn.Module,
                        result: TrainResult, last_good: dict[str, torch.Tensor] | None) -> None:
    """Score the parameters of the last step taken if they were not scored yet (the time
    ran out between two validations), so that the steps since the last validation, at the
    lowest learning rates of a schedule annealed over the time, are not thrown away."""
    if (validation is None or not result.history or last_good is None
            or validation.due(result.n_iter)):
        return
    entry = result.history[-1]
    if entry.get("iteration") != result.n_iter:
        return
    if validation.update(model, result.n_iter, entry, last_good) == "fault":
        entry.pop("val_loss", None)


def _time_is_up(config: TrainConfig, started: float, parallel: tuple[int, int] | None,
                device: torch.device, reserve: float = 0.0) -> bool:
    """Whether ``config.max_seconds`` less ``reserve`` (the time kept back for scoring the
    last step's parameters) have passed since ``started`` (a time.perf_counter() reading);
    across processes, whether they have for any of them."""
    return config.max_seconds is not None and out_of_time(
        time.perf_counter() - started + reserve >= config.max_seconds, parallel, device)


def _history_entry(iteration: int, loss_value: torch.Tensor, optimizer: torch.optim.Optimizer,
                   model: nn.Module, start: float) -> dict:
    """The record of one step: its loss, learning rate, solver NFE and seconds since
    ``start``."""
    nfe_forward, nfe_backward = _nfe(model)
    return {"iteration": iteration, "loss": float(loss_value),
            "lr": optimizer.param_groups[0]["lr"],
            "nfe_forward": nfe_forward, "nfe_backward": nfe_backward,
            "seconds": time.perf_counter() - start}


def _progress_bar(config: TrainConfig, parallel: tuple[int, int] | None) -> tqdm | None:
    """A tqdm bar over the iterations when ``config.verbose`` (rank 0 only), else None."""
    if not config.verbose or (parallel is not None and parallel[0] != 0):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.max_iter, desc="training", unit="it")


def _loop_state(iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                sampler: _MinibatchSampler, validation: _Validation | None,
                result: TrainResult, elapsed: float, generator: torch.Generator | None,
                device: torch.device) -> dict:
    """What :func:`train` needs to continue after ``iteration`` (tensors and plain values,
    for a checkpoint)."""
    return {
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": {"order": sampler.order, "cursor": sampler.cursor},
        "validation": None if validation is None else {
            "best_state": validation.best_state, "best_loss": validation.best_loss,
            "evals_no_change": validation.evals_no_change},
        "result": {"history": result.history, "n_iter": result.n_iter},
        "elapsed": elapsed,
        "rng": rng_state(generator, device),
    }


def _restore_loop_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                        sampler: _MinibatchSampler, validation: _Validation | None,
                        result: TrainResult, generator: torch.Generator | None,
                        device: torch.device) -> None:
    """Put the loop back where :func:`_loop_state` recorded it."""
    if len(state["sampler"]["order"]) != sampler.n:
        raise ValueError(f"the checkpoint's loop drew from {len(state['sampler']['order'])} "
                         f"rows, this one from {sampler.n}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    sampler.order, sampler.cursor = state["sampler"]["order"], int(state["sampler"]["cursor"])
    if validation is not None and state["validation"] is not None:
        saved = state["validation"]
        validation.best_state = saved["best_state"]
        validation.best_loss = float(saved["best_loss"])
        validation.evals_no_change = int(saved["evals_no_change"])
    result.history = list(state["result"]["history"])
    result.n_iter = int(state["result"]["n_iter"])
    restore_rng_state(state["rng"], generator, device)


def train(model: nn.Module, X: torch.Tensor | RowSource, loss_fn: LossFn,
          config: TrainConfig, *,
          X_val: torch.Tensor | None = None, val_loss_fn: LossFn | None = None,
          generator: torch.Generator | None = None,
          checkpoint: FitCheckpoint | None = None) -> TrainResult:
    """Fit ``model`` by minimising ``loss_fn(model, batch)`` over minibatches of ``X``.

    Arguments:
        model: the module to train (its parameters, on X's device).
        X: training rows: an (n, d) tensor, or a row source
            (:mod:`cnflow.training.rows`) whose minibatches are read by index, such as
            the rows of a memory-mapped table.
        loss_fn: the minibatch loss, e.g. ``lambda flow, x: -flow.log_prob(x).mean()``.
        config: the loop's settings.
        X_val: optional held-out rows, scored with ``val_loss_fn`` (default ``loss_fn``)
            every ``config.validation_interval`` iterations; the best parameters are kept.
        generator: the torch.Generator that draws minibatches (repeatable fits).
        checkpoint: where to write the loop's state while training (every
            ``checkpoint.interval`` seconds, by rank 0 only); if it holds a saved loop state
            (:meth:`~cnflow.training.checkpoint.FitCheckpoint.take_loop_state`), training
            continues from it instead of starting: on a CPU the result equals that of the
            uninterrupted run.

    Returns:
        A :class:`TrainResult`; the model holds the best (validation) or last good parameters.

    Raises:
        TrainingFault: a non-finite loss or a failed solve without a validation set (with one,
            a warning is given instead and the best parameters are kept).

    Under ``torch.distributed`` with several processes (see the module's docstring) every
    process must call :func:`train` with the same X, config and generator seed; the batch size
    must be a multiple of the number of processes; each process reads only its own share of
    every minibatch's rows; the reported loss is the mean over them.
    """
    rows = as_row_source(X)
    device = rows.device
    batch_size = min(config.batch_size, len(rows))
    parallel = distributed_rank()
    batch_loss = _batch_loss(model, loss_fn, batch_size, parallel, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; valid: "
                         f"{', '.join(LR_SCHEDULES)}")
    # the cosine schedule follows the time budget too, except across processes (whose clocks
    # differ, while their learning rates must agree)
    timed_schedule = config.max_seconds is not None and parallel is None
    result = TrainResult()
    validation = None if X_val is None else _Validation(
        X_val, loss_fn if val_loss_fn is None else val_loss_fn, max(batch_size, 1024), config)
    progress = _progress_bar(config, parallel)
    sampler = _MinibatchSampler(len(rows), batch_size, generator)
    last_good = None
    writes_checkpoints = checkpoint is not None and (parallel is None or parallel[0] == 0)
    resumed = None if checkpoint is None else checkpoint.take_loop_state()
    try:
        started = time.perf_counter()
        first_iteration = 1
        if resumed is not None:
            _restore_loop_state(resumed, model, optimizer, sampler, validation, result,
                                generator, device)
            first_iteration = int(resumed["iteration"]) + 1
            started -= float(resumed["elapsed"])
            if progress is not None:
                progress.update(first_iteration - 1)
        elif validation is not None and config.validate_at_start:
            validation.start(model)
        for iteration in range(first_iteration, config.max_iter + 1):
            # the budget keeps back the time of one validation, for the last step's, and of
            # the scorings that follow the phase
            reserve = (0.0 if validation is None
                       else validation.seconds * (1 + config.scorings_after))
            if _time_is_up(config, started, parallel, device, reserve):
                result.stop_reason = "time_limit"
                _validate_last_step(validation, model, result, last_good)
                break
            batch = rows.batch(batch_share(sampler.next_indices(), parallel))
            last_good = _snapshot(model)
            start = time.perf_counter()
            lr = _learning_rate(config, iteration, start - started if timed_schedule else None)
            try:
                loss_value = _step(model, optimizer, batch_loss, batch, parallel, lr, iteration)
            except (TrainingFault, ODESolveError) as err:
                model.load_state_dict(last_good)
                fault = _as_fault(err, iteration)
                result.stop_reason = "fault"
                if validation is None:
                    fault.result = result  # the history so far, for the caller
                    raise fault from err
                warnings.warn(f"{fault}; stopping and keeping the best parameters so far",
                              RuntimeWarning, stacklevel=2)
                break
            entry = _history_entry(iteration, loss_value, optimizer, model, start)
            result.n_iter = iteration
            stop = None
            if validation is not None and validation.due(iteration):
                stop = validation.update(model, iteration, entry, last_good)
            if stop != "fault":  # a step whose validation failed is not recorded
                result.history.append(entry)
            if stop is not None:
                result.stop_reason = stop
                break
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", nfe=entry["nfe_forward"])
            if writes_checkpoints:
                checkpoint.tick(lambda done=iteration: _loop_state(
                    done, model, optimizer, sampler, validation, result,
                    time.perf_counter() - started, generator, device))
    except KeyboardInterrupt:
        warnings.warn(f"training interrupted after {result.n_iter} iterations; the model keeps "
                      "its best parameters so far", RuntimeWarning, stacklevel=2)
        result.stop_reason = "interrupted"
        if last_good is not None:  # the interrupted step may have been half applied
            model.load_state_dict(last_good)
    finally:
        if progress is not None:
            progress.close()
    result.best_val_loss = None if validation is None else validation.restore_best(model)
    return result
