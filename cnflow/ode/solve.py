"""``odeint``: one Runge–Kutta stepping loop over any tableau, fixed or adaptive.

Adaptive methods (dopri5, bosh3) control the local error with rtol/atol; the step never passes
the last output time, and intermediate output times are read from the method's dense output
(fourth order for dopri5, cubic Hermite for bosh3), so asking for more times costs no extra
evaluations. Fixed-step methods (euler, midpoint, rk4) step exactly onto every output time.

Time is carried as Python floats (float64) whatever the state's dtype; the only host
synchronisation per step is the error ratio that decides acceptance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .control import DFACTOR, error_ratio, initial_step_size, next_step_size
from .errors import MaxStepsExceededError, NonFiniteStateError, StepSizeUnderflowError
from .inputs import FlatFn, FlatProblem, State, prepare
from .stats import SolverStats
from .tableaux import ButcherTableau

__all__ = ["odeint", "integrate", "DEFAULT_MAX_NUM_STEPS"]

#: Default cap on attempted steps of one solve: a solve that needs more raises instead of hanging.
DEFAULT_MAX_NUM_STEPS = 10_000


def _combine(y: torch.Tensor | None, h: float, weights: Sequence[float],
             ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """y + h Σ_j w_j k_j, skipping zero weights (y None: just the sum)."""
    out = y
    for w, k in zip(weights, ks, strict=False):
        if w != 0.0:
            out = k * (h * w) if out is None else torch.add(out, k, alpha=h * w)
    if out is None:
        raise ValueError("all weights are zero")
    return out


class _Counted:
    """Wraps the dynamics to count evaluations into a SolverStats."""

    def __init__(self, fn: FlatFn, stats: SolverStats) -> None:
        self.fn = fn
        self.stats = stats

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        return self.fn(t, y)


def _rk_stages(fn: Callable, t: float, y: torch.Tensor, k1: torch.Tensor, h: float,
               tableau: ButcherTableau) -> tuple[list[torch.Tensor], torch.Tensor]:
    """All stages of one step and the propagated solution y_1."""
    ks = [k1]
    yi = y
    for ci, row in zip(tableau.c[1:], tableau.a[1:], strict=True):
        yi = _combine(y, h, row, ks)
        ks.append(fn(t + ci * h, yi))
    # With FSAL the last stage was evaluated at y_1 itself.
    y1 = yi if tableau.fsal else _combine(y, h, tableau.b, ks)
    return ks, y1


def _integrate_fixed(fn: Callable, y0: torch.Tensor, times: list[float],
                     tableau: ButcherTableau, step_size: float | None, max_num_steps: int,
                     stats: SolverStats, f0: torch.Tensor | None) -> list[torch.Tensor]:
    counts = []
    for a, b in zip(times[:-1], times[1:], strict=True):
        n = 1 if step_size is None else max(1, math.ceil(abs(b - a) / step_size - 1e-9))
        counts.append(n)
    if sum(counts) > max_num_steps:
        raise MaxStepsExceededError(
            f"{tableau.name} with step_size={step_size} needs {sum(counts)} steps, more than "
            f"max_num_steps={max_num_steps}; nothing was integrated", t=times[0])
    outputs = [y0]
    y = y0
    for (a, b), n in zip(zip(times[:-1], times[1:], strict=True), counts, strict=True):
        h = (b - a) / n
        for j in range(n):
            t = a + j * h
            k1 = f0 if f0 is not None and t == times[0] else fn(t, y)
            _, y = _rk_stages(fn, t, y, k1, h, tableau)
            stats.n_accepted += 1
        if not bool(torch.isfinite(y).all()):
            raise NonFiniteStateError(
                f"the state became NaN or infinite between t={a:g} and t={b:g} "
                f"({tableau.name}, step {h:g})", t=a)
        outputs.append(y)
    return outputs


def _integrate_adaptive(fn: Callable, y0: torch.Tensor, times: list[float],
                        tableau: ButcherTableau, rtol: float, atol: float,
                        max_num_steps: int, segments: Sequence[int],
                        stats: SolverStats, f0: torch.Tensor | None,
                        f_out: list | None, first_step: float | None,
                        step_out: list | None) -> list[torch.Tensor]:
    t_end = times[-1]
    direction = 1.0 if t_end > times[0] else -1.0
    n_control = sum(segments)
    t, y = times[0], y0
    if f0 is None:
        f0 = fn(t, y)
    if not bool(torch.isfinite(f0).all()):
        raise NonFiniteStateError(f"f returned NaN or infinite values at t={t:g}", t=t)
    if first_step is None:
        h = initial_step_size(fn, t, y, f0, direction, tableau.order, rtol, atol, segments)
    else:
        h = first_step
    h_free = h  # the controller's step, before any shortening to land on t_end
    outputs = [y0]
    next_out = 1
    steps = 0
    last_was_nonfinite = False
    while next_out < len(times):
        remaining = (t_end - t) * direction
        # Take the rest of the interval when it is within 1% of the step (no sliver steps).
        if h * 1.01 >= remaining:
            h_try, t_new = remaining, t_end
        else:
            h_try, t_new = h, t + direction * h
        h_free = max(h, h_try)
        if not h_try > 16 * math.ulp(max(abs(t), abs(t_new))):  # NaN-safe
            cls = NonFiniteStateError if last_was_nonfinite else StepSizeUnderflowError
            why = ("the state became NaN or infinite and smaller steps did not help"
                   if last_was_nonfinite else "the step size underflowed")
            raise cls(f"{tableau.name} could not meet rtol={rtol:g}, atol={atol:g}: {why} "
                      f"at t={t:.17g} (h={h_try:.3g}) after {steps} steps", t=t)
        if steps >= max_num_steps:
            raise MaxStepsExceededError(
                f"{tableau.name} took max_num_steps={max_num_steps} steps and reached only "
                f"t={t:.17g} of [{times[0]:g}, {t_end:g}] (rtol={rtol:g}, atol={atol:g}); "
                "raise max_num_steps or loosen the tolerances", t=t)
        steps += 1
        hs = direction * h_try
        ks, y1 = _rk_stages(fn, t, y, f0, hs, tableau)
        controlled = ks if n_control == y.numel() else [k[:n_control] for k in ks]
        error = _combine(None, hs, tableau.b_error, controlled)
        ratio = float(error_ratio(error, y, y1, rtol, atol, segments))
        if not math.isfinite(ratio):
            stats.n_rejected += 1
            last_was_nonfinite = True
            h = h_try * DFACTOR
            continue
        last_was_nonfinite = False
        if ratio <= 1.0:
            stats.n_accepted += 1
            while next_out < len(times) and (times[next_out] - t_new) * direction <= 0:
                t_out = times[next_out]
                if t_out == t_new:
                    outputs.append(y1)
                    if f_out is not None and tableau.fsal:  # f(t_new, y1) is the last stage
                        f_out[next_out] = ks[-1]
                else:
                    theta = (t_out - t) / (t_new - t)
                    outputs.append(_combine(y, hs, tableau.dense_weights(theta), ks))
                next_out += 1
            t, y = t_new, y1
            f0 = ks[-1] if tableau.fsal else fn(t, y)
        else:
            stats.n_rejected += 1
        h = next_step_size(h_try, ratio, tableau.order)
        if ratio <= 1.0 and stats.suggested_first_step is None:
            stats.suggested_first_step = h  # after the first accepted step (SolverStats)
    if step_out is not None:  # where a following solve of a similar problem may start
        step_out.append(max(h, h_free))  # (an accepted step never shrinks h)
    return outputs


def integrate(fn: FlatFn, y0: torch.Tensor, times: list[float], tableau: ButcherTableau, *,
              rtol: float, atol: float, step_size: float | None, max_num_steps: int,
              segments: Sequence[int] | None = None,
              stats: SolverStats | None = None, f0: torch.Tensor | None = None,
              f_out: list | None = None, first_step: float | None = None,
              step_out: list | None = None) -> torch.Tensor:
    """Solve a flat, already checked problem; returns the states at ``times``, (len, N).

    ``segments`` (default: the whole state as one part) are the sizes of the parts of the
    state measured by separate RMS norms; entries past ``sum(segments)`` are integrated but
    left out of the error control (the adjoint's seminorm). ``f0``, when given, is
    f(times[0], y0), already evaluated (not evaluated again, nor counted). ``f_out``, a list of
    ``len(times)`` entries, receives f(times[i], y_i) where the solver evaluated it anyway (the
    last stage of a first-same-as-last step ending on an output time); other entries are left.
    Adaptive methods only: ``first_step`` replaces the initial step-size estimate (and its
    evaluation of f), and ``step_out`` receives the step the controller would take next,
    to start a following solve of a similar problem (the adjoint's backward solve); the
    first solve counted by ``stats`` records in ``stats.suggested_first_step`` the step its
    controller chose after its first accepted step.
    """
    stats = SolverStats() if stats is None else stats
    counted = _Counted(fn, stats)
    if len(times) == 1:
        return y0.unsqueeze(0)
    if tableau.adaptive:
        outputs = _integrate_adaptive(counted, y0, times, tableau, rtol, atol, max_num_steps,
                                      [y0.numel()] if segments is None else segments, stats,
                                      f0, f_out, first_step, step_out)
    else:
        outputs = _integrate_fixed(counted, y0, times, tableau, step_size, max_num_steps, stats,
                                   f0)
    return torch.stack(outputs)


#: ``solve(y0_flat, f0, f_out) -> ys``: f0 is f(t_0, y_0) when already known (the solve may use
#: it as its first evaluation), f_out a list that the solve may fill with f(t_i, y_i).
SolveFn = Callable[[torch.Tensor, "torch.Tensor | None", "list | None"], torch.Tensor]


def solve_with_time_gradient(problem: FlatProblem, solve: SolveFn,
                             stats: SolverStats) -> torch.Tensor:
    """Run ``solve`` and, when ``t`` requires grad, attach ∂L/∂t.

    For i ≥ 1, ∂L/∂t_i = ⟨∂L/∂y_i, f(t_i, y_i)⟩; and moving t_0 by δ moves every later output
    as moving y_0 by −δ f(t_0, y_0) would, so ∂L/∂t_0 = −⟨a(t_0), f(t_0, y_0)⟩ with a the
    adjoint of the later outputs. Both are attached as zero-valued terms
    (t − t.detach()) · f, which leave the values untouched and give exactly these gradients.
    f(t_0, y_0) is handed to the solve as its first evaluation, and f(t_i, y_i) is taken from
    the solve where it evaluated it (first same as last), so the time gradients cost only the
    evaluations at output times that fall inside a step.
    """
    t = problem.t
    if not (t.requires_grad and torch.is_grad_enabled()) or len(problem.times) == 1:
        return solve(problem.y0, None, None)
    dtype = problem.y0.dtype
    shift = (t - t.detach()).to(device=problem.y0.device, dtype=dtype)
    with torch.no_grad():
        f0 = problem.fn(problem.times[0], problem.y0)
    stats.nfe += 1
    f_out: list = [None] * len(problem.times)
    ys = solve(problem.y0 - shift[0] * f0, f0, f_out)
    fs = []
    with torch.no_grad():
        for i in range(1, len(problem.times)):
            if f_out[i] is None:
                f_out[i] = problem.fn(problem.times[i], ys[i])
                stats.nfe += 1
            fs.append(f_out[i].detach())
    return torch.cat([problem.y0.unsqueeze(0), ys[1:] + shift[1:, None] * torch.stack(fs)])


def odeint(
    f: Callable[[torch.Tensor, State], State],
    y0: State,
    t: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    stats: SolverStats | None = None,
    first_step: float | None = None,
) -> State:
    """Solve dy/dt = f(t, y), y(t[0]) = y0, and return y at every time in ``t``.

    Gradients flow by backpropagation through the solver's operations (memory grows with the
    number of steps); :func:`cnflow.odeint_adjoint` gives the same values with constant-memory
    adjoint gradients.

    Arguments:
        f: the dynamics f(t, y) → dy/dt; t is a 0-d tensor of the state's dtype. With a tuple
            state f takes and returns tuples of tensors of the same shapes.
        y0: initial state, a floating tensor of any shape (batch axes included) or a tuple.
        t: 1-D tensor of output times, strictly increasing or strictly decreasing (then the
            solve runs backwards in time). ``t[0]`` is the initial time.
        method: ``"dopri5"`` (default), ``"bosh3"`` (adaptive), or ``"euler"``,
            ``"midpoint"``, ``"rk4"`` (fixed step).
        rtol, atol: relative and absolute tolerance of the local error (adaptive methods).
        step_size: fixed-step methods only: the largest step; each interval of ``t`` is cut
            into equal steps no longer than it. None: one step per interval.
        max_num_steps: the most steps (accepted and rejected) one solve may attempt.
        stats: a :class:`SolverStats` that this solve adds its counts to.
        first_step: adaptive methods only (fixed-step methods ignore it): the size of the first
            step tried, instead of Hairer's estimate and its evaluation of f; e.g. the
            ``stats.suggested_first_step`` of a solve of a similar problem. None: the estimate.

    Returns:
        The solution at each time, stacked on a new first axis: shape ``(len(t), *y0.shape)``, or
        a tuple of such tensors for a tuple state.

    Raises:
        ValueError: bad arguments (times not strictly monotone, unknown method, negative
            tolerance, f returning the wrong shape, NaN in y0, ...).
        ODESolveError: a :class:`RuntimeError` when the solve cannot meet its tolerance
            (step size underflow, more than ``max_num_steps`` steps, NaN/inf in the state);
            the message and the ``t`` attribute give the time reached.

    Example:
        >>> import torch
        >>> from cnflow import odeint
        >>> y = odeint(lambda t, y: -y, torch.tensor([1.0]), torch.tensor([0.0, 1.0]),
        ...            rtol=1e-8, atol=1e-8)
        >>> round(y[-1].item(), 6)   # exp(-1)
        0.367879
    """
    problem, tableau = prepare(f, y0, t, method=method, rtol=rtol, atol=atol,
                               step_size=step_size, max_num_steps=max_num_steps,
                               first_step=first_step)
    stats = SolverStats() if stats is None else stats

    def solve(y0_flat: torch.Tensor, f0: torch.Tensor | None, f_out: list | None) -> torch.Tensor:
        # f0 is not reused here: backpropagation needs the first stage's graph from y0_flat
        return integrate(problem.fn, y0_flat, problem.times, tableau, rtol=rtol, atol=atol,
                         step_size=step_size, max_num_steps=max_num_steps,
                         segments=problem.segments, stats=stats, f_out=f_out,
                         first_step=first_step)

    return problem.unflatten(solve_with_time_gradient(problem, solve, stats))
