"""``odeint_adjoint``: gradients by the adjoint sensitivity method, in constant memory.

For a loss L of the outputs y(t_i), the adjoint a(t) = ∂L/∂y(t) and the parameter adjoint
a_θ(t) solve, backwards in time between output times,

    d/dt [y, a, a_θ] = [f(t, y), −aᵀ ∂f/∂y, −aᵀ ∂f/∂θ],

starting at each output time t_i from the stored forward state y(t_i), a += ∂L/∂y(t_i).
At t_0, a(t_0) = ∂L/∂y_0 and a_θ(t_0) = ∂L/∂θ. Each vector-Jacobian product is one
reverse-mode pass through f. Only the outputs y(t_i) are stored, never the solver's steps, so
memory does not grow with the number of steps (Pontryagin et al. 1962; Chen et al. 2018).

With ``seminorm=True`` the backward error control measures y and a only, not a_θ: a_θ is a
pure quadrature whose error does not feed back into the solve, so controlling it only costs
steps (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .inputs import FlatFn, FlatVJP, State, check_tolerances, prepare, resolve_method
from .solve import DEFAULT_MAX_NUM_STEPS, integrate, solve_with_time_gradient
from .stats import SolverStats
from .tableaux import ButcherTableau

__all__ = ["odeint_adjoint"]


@dataclass
class _Settings:
    """What the forward and backward solves need, passed through the autograd.Function."""

    fn: FlatFn
    times: list[float]
    segments: list[int]
    tableau: ButcherTableau
    rtol: float
    atol: float
    step_size: float | None
    adjoint_tableau: ButcherTableau
    adjoint_rtol: float
    adjoint_atol: float
    adjoint_step_size: float | None
    max_num_steps: int
    seminorm: bool
    stats: SolverStats
    adjoint_stats: SolverStats
    f0: torch.Tensor | None = None  # f(t_0, y_0) when already evaluated
    f_out: list | None = None  # receives f(t_i, y_i) where the forward solve evaluated it
    vjp: FlatVJP | None = None  # f's own vector-Jacobian product, when it has one
    last_step: float | None = None  # the forward solve's next step: the backward's first
    first_step: float | None = None  # the forward solve's first step (None: estimated)


def _augmented_dynamics(fn: FlatFn, n: int, params: Sequence[torch.Tensor],
                        dtype: torch.dtype, vjp: FlatVJP | None = None) -> FlatFn:
    """The backward system on the flat state [y, a, a_θ] (a_θ: all parameters, flattened).

    The vector-Jacobian products come from ``vjp`` (f's own) where it gives them, else from
    autograd through f.
    """

    def zeros(p: torch.Tensor) -> torch.Tensor:
        return torch.zeros(p.numel(), dtype=dtype, device=p.device)

    def autograd_vjp(t: float, y: torch.Tensor, v: torch.Tensor):
        y = y.detach().requires_grad_(True)
        with torch.enable_grad():
            dy = fn(t, y)
        if dy.requires_grad:
            vjps = torch.autograd.grad(dy, (y, *params), grad_outputs=v, allow_unused=True)
        else:  # f ignores both y and θ
            vjps = (None,) * (1 + len(params))
        return dy.detach(), vjps[0], vjps[1:]

    def aug_fn(t: float, state: torch.Tensor) -> torch.Tensor:
        y, a = state[:n], state[n:2 * n]
        got = None if vjp is None else vjp(t, y, -a, params)
        dy, vjp_y, vjp_params = autograd_vjp(t, y, -a) if got is None else got
        pieces = [dy, torch.zeros_like(a) if vjp_y is None else vjp_y]
        for p, g in zip(params, vjp_params, strict=True):
            pieces.append(zeros(p) if g is None else g.reshape(-1).to(dtype))
        return torch.cat(pieces)

    return aug_fn


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0: torch.Tensor, settings: _Settings, *params: torch.Tensor):
        step_out: list = []
        with torch.no_grad():
            ys = integrate(settings.fn, y0, settings.times, settings.tableau,
                           rtol=settings.rtol, atol=settings.atol,
                           step_size=settings.step_size, max_num_steps=settings.max_num_steps,
                           segments=settings.segments, stats=settings.stats,
                           f0=settings.f0, f_out=settings.f_out, step_out=step_out,
                           first_step=settings.first_step)
        settings.f0 = settings.f_out = None  # the backward pass needs ys and params only
        settings.last_step = step_out[-1] if step_out else None
        ctx.settings = settings
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable  # double backward raises instead of lying
    def backward(ctx, grad_ys: torch.Tensor):
        settings: _Settings = ctx.settings
        ys, *params = ctx.saved_tensors
        n, dtype = ys.shape[1], ys.dtype
        aug_fn = _augmented_dynamics(settings.fn, n, params, dtype, settings.vjp)
        # Error control: y and a, each part by itself; the parameter adjoint only without seminorm.
        segments = list(settings.segments) * 2
        if not settings.seminorm:
            segments += [p.numel() for p in params if p.numel() > 0]
        a_y = torch.zeros_like(ys[0])
        a_params = torch.cat([torch.zeros(p.numel(), dtype=dtype, device=ys.device)
                              for p in params]) if params else ys.new_zeros(0)
        times = settings.times
        # Each backward interval starts from the step the previous solve (the forward's last
        # interval, then the backward's) would have taken next: the backward solve retraces
        # the forward path, so this spares the initial step-size probe, one evaluation.
        # (Only with the forward's method and tolerances: else the forward's steps say little.)
        same = (settings.adjoint_tableau is settings.tableau and settings.adjoint_rtol ==
                settings.rtol and settings.adjoint_atol == settings.atol)
        first_step = settings.last_step if same else None
        for i in range(len(times) - 1, 0, -1):
            a_y = a_y + grad_ys[i]
            state = torch.cat([ys[i], a_y, a_params])
            step_out: list = []
            state = integrate(aug_fn, state, [times[i], times[i - 1]], settings.adjoint_tableau,
                              rtol=settings.adjoint_rtol, atol=settings.adjoint_atol,
                              step_size=settings.adjoint_step_size,
                              max_num_steps=settings.max_num_steps, segments=segments,
                              stats=settings.adjoint_stats, first_step=first_step,
                              step_out=step_out)[-1]
            first_step = step_out[-1] if step_out else None
            a_y, a_params = state[n:2 * n], state[2 * n:]
        a_y = a_y + grad_ys[0]
        grads = []
        for p, g in zip(params, torch.split(a_params, [p.numel() for p in params]),
                        strict=True):
            grads.append(g.reshape(p.shape).to(p.dtype))
        return (a_y, None, *grads)


def odeint_adjoint(
    f: Callable[[torch.Tensor, State], State],
    y0: State,
    t: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    adjoint_method: str | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_step_size: float | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    seminorm: bool = True,
    stats: SolverStats | None = None,
    adjoint_stats: SolverStats | None = None,
    first_step: float | None = None,
) -> State:
    """``odeint`` with gradients from the adjoint method: same values, constant memory.

    Arguments:
        f, y0, t, method, rtol, atol, step_size, max_num_steps, stats, first_step: as
            :func:`odeint` (``first_step``: the forward solve's).
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_step_size: the backward solve's
            settings (default: the forward ones).
        adjoint_params: the tensors that get gradients. Default: ``f.parameters()``, which
            needs ``f`` to be an ``nn.Module``; a plain function must list its tensors, or pass
            ``()`` when it has none.
        seminorm: leave the parameter adjoint out of the backward error control.
        adjoint_stats: a :class:`SolverStats` that the backward pass adds its counts to.

    Returns:
        As :func:`odeint`. Gradients reach ``y0``, the parameters and, when it requires grad,
        ``t``.

    The backward pass needs f and the products vᵀ∂f/∂y, vᵀ∂f/∂θ at every stage; by default
    autograd gives them. Dynamics that can compute them faster may define a method
    ``f.vjp(t, y, v, params)`` returning ``(f(t, y), vᵀ∂f/∂y, [vᵀ∂f/∂p for p in params])``
    (y, v and the first two results in the state's layout; ``None`` for a zero part or an
    unused parameter), or ``None`` to fall back to autograd for that call. :class:`cnflow.CNF`
    does so for its built-in networks.

    Example:
        >>> import torch
        >>> from cnflow import odeint_adjoint
        >>> f = torch.nn.Linear(2, 2).double()
        >>> y0 = torch.ones(5, 2, dtype=torch.float64, requires_grad=True)
        >>> ys = odeint_adjoint(lambda t, y: f(y), y0, torch.tensor([0.0, 1.0]),
        ...                     adjoint_params=tuple(f.parameters()))
        >>> ys[-1].sum().backward()
        >>> f.weight.grad.shape
        torch.Size([2, 2])

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations".
        Kidger, Chen & Lyons (2021), "'Hey, that's not an ODE': faster ODE adjoints via
        seminorms".
    """
    if adjoint_params is None:
        if not isinstance(f, nn.Module):
            raise ValueError(
                "odeint_adjoint needs to know which tensors get gradients: make f an nn.Module, "
                "or pass adjoint_params=(tensors...) (adjoint_params=() when f has none)"
            )
        adjoint_params = tuple(f.parameters())
    adjoint_params = tuple(adjoint_params)
    for p in adjoint_params:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"adjoint_params must be tensors, got {type(p).__name__}")
    # Each tensor once (tied weights, repeated entries), else its gradient would be counted twice.
    params = tuple({id(p): p for p in adjoint_params if p.requires_grad}.values())
    problem, tableau = prepare(f, y0, t, method=method, rtol=rtol, atol=atol,
                               step_size=step_size, max_num_steps=max_num_steps,
                               first_step=first_step)
    adjoint_tableau = resolve_method(method if adjoint_method is None else adjoint_method,
                                     adjoint_step_size)
    if adjoint_step_size is None and not adjoint_tableau.adaptive:
        adjoint_step_size = step_size
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    check_tolerances(adjoint_rtol, adjoint_atol)
    stats = SolverStats() if stats is None else stats
    settings = _Settings(
        fn=problem.fn, vjp=problem.vjp, times=problem.times, segments=problem.segments,
        tableau=tableau,
        rtol=rtol, atol=atol, step_size=step_size, adjoint_tableau=adjoint_tableau,
        adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
        adjoint_step_size=adjoint_step_size,
        max_num_steps=max_num_steps, seminorm=seminorm, stats=stats,
        adjoint_stats=SolverStats() if adjoint_stats is None else adjoint_stats,
        first_step=first_step,
    )

    def solve(y0_flat: torch.Tensor, f0: torch.Tensor | None, f_out: list | None) -> torch.Tensor:
        # the forward solve runs without a graph, so the known f(t_0, y_0) can be its first stage
        settings.f0, settings.f_out = f0, f_out
        return _AdjointSolve.apply(y0_flat, settings, *params)

    return problem.unflatten(solve_with_time_gradient(problem, solve, stats))

