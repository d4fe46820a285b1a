"""The one maximum-likelihood training loop that estimators and scripts share.

Minibatch SGD (Adam by default) on a loss computed by a callable, usually the negative mean
log-likelihood of a flow, −(1/B) Σ_b log p_θ(x_b), plus optional regularisers. The loop keeps
a per-iteration history (loss, forward/backward NFE, seconds), evaluates an optional held-out
set with early stopping that keeps the best parameters, and survives faults: a non-finite loss
or a failed solve stops training at the last good parameters (never NaN weights), and
Ctrl-C stops it cleanly with a warning.

Data-parallel training: when ``torch.distributed`` is initialised with more than one process
(e.g. under ``torchrun``), :func:`train` wraps the loss in
:class:`~torch.nn.parallel.DistributedDataParallel`. Every process draws the same minibatch
order, takes its own contiguous share of each batch, and DDP averages the gradients, so a step
is the step of one process on the whole batch; only rank 0 shows progress.

Example:
    >>> import torch
    >>> from cnflow.train import TrainConfig, train
    >>> model = torch.nn.Linear(2, 1)
    >>> X = torch.randn(64, 2)
    >>> result = train(model, X, lambda m, x: m(x).square().mean(), TrainConfig(max_iter=5))
    >>> len(result.history)
    5
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .ode import ODESolveError

__all__ = ["LR_SCHEDULES", "TrainConfig", "TrainResult", "TrainingFault", "train",
           "resolve_device", "seeded_rng", "distributed_rank", "reverse_kl_loss",
           "fit_density_matching"]

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

#: The learning-rate schedules :class:`TrainConfig` knows.
LR_SCHEDULES = ("constant", "cosine")


class TrainingFault(RuntimeError):
    """Training stopped on a non-finite loss or a failed solve (parameters were restored).

    Attributes:
        result: the :class:`TrainResult` up to the fault (set by :func:`train`).
    """

    result: TrainResult | None = None


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


def _data_parallel_loss(model: nn.Module, loss_fn: LossFn, batch_size: int,
                        device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of this process's share of each batch, through DDP (gradients averaged)."""
    rank, world = distributed_rank()  # type: ignore[misc]
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of "
                         f"processes ({world}) so that every process takes an equal share")
    from torch.nn.parallel import DistributedDataParallel

    share = batch_size // world
    wrapped = DistributedDataParallel(
        _LossModule(model, loss_fn),
        device_ids=[device.index] if device.type == "cuda" and device.index is not None
        else None)
    # each process its own random draws (e.g. flow matching's noise), from a seed per rank
    torch.manual_seed(torch.initial_seed() + rank)
    return lambda batch: wrapped(batch[rank * share:(rank + 1) * share])


def _out_of_time(over: bool, parallel: tuple[int, int] | None, device: torch.device) -> bool:
    """Whether to stop for time: this process's verdict alone, or across processes the verdict
    of any of them (their clocks differ; a process that stopped alone would leave the others
    waiting for it in DDP's gradient exchange). One scalar all-reduce a step when parallel."""
    if parallel is None:
        return over
    flag = torch.tensor([float(over)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


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


def _shared_loss(step_loss: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
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
        step_loss = _data_parallel_loss(model, loss_fn, batch_size, X.device)
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
            if config.max_seconds is not None and _out_of_time(
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
                    loss, loss_value = _shared_loss(step_loss, batch, parallel[1])
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



def reverse_kl_loss(flow: nn.Module, log_target: Callable[[torch.Tensor], torch.Tensor],
                    n: int) -> torch.Tensor:
    r"""The density-matching loss :math:`\mathbb{E}_{x \sim q}[\log q(x) - \log \tilde p(x)]`
    on n reparametrised draws of the flow q.

    With :math:`\tilde p = Z p` unnormalised, this is :math:`\mathrm{KL}(q \,\|\, p) - \log Z
    \ge -\log Z`, with equality only when q = p (Rezende & Mohamed 2015; Chen et al. 2018,
    section 4.1). ``flow.sample_with_log_prob(n)`` must give draws and their log-densities,
    differentiable in the parameters.

    Arguments:
        flow: a flow with ``sample_with_log_prob`` (:class:`cnflow.CNF`, the discrete flows).
        log_target: :math:`\log \tilde p`, rows (n, D) to (n,).
        n: the number of draws.
    """
    x, log_q = flow.sample_with_log_prob(n)
    return (log_q - log_target(x)).mean()


def fit_density_matching(flow: nn.Module, log_target: Callable[[torch.Tensor], torch.Tensor],
                         config: TrainConfig) -> TrainResult:
    """Fit ``flow`` to an unnormalised log-density by minimising :func:`reverse_kl_loss`
    with ``config.batch_size`` fresh draws a step, in :func:`train`'s loop (history, faults,
    Ctrl-C). Draws come from torch's global generator; seed it for a repeatable fit.

    Example:
        >>> import torch
        >>> from cnflow.flows import PlanarFlow
        >>> from cnflow.train import TrainConfig, fit_density_matching
        >>> flow = PlanarFlow(2, n_layers=2, closed_form="sample")
        >>> target = lambda x: -0.5 * ((x - 1) ** 2).sum(-1)
        >>> result = fit_density_matching(flow, target, TrainConfig(max_iter=3, batch_size=8))
        >>> result.n_iter
        3
    """
    ref = next(flow.parameters())
    # No data: each "batch" only says how many draws to take.
    placeholder = torch.empty(config.batch_size, 0, dtype=ref.dtype, device=ref.device)
    return train(flow, placeholder, lambda model, batch: reverse_kl_loss(
        model, log_target, len(batch)), config)
