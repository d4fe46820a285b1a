r"""The ODE-Net layer h ↦ h(T) of Chen et al. (2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_finite_array
from ..ode import NFECounts, SolveOptions, SolverStats
from ..ode.inputs import check_end_time
from ..ode.options import SolvesODEs, deprecated_solver, options_from
from ..ode.solve import DEFAULT_MAX_NUM_STEPS

__all__ = ["ODEBlock"]


class ODEBlock(SolvesODEs, NFECounts, nn.Module):
    r"""An ODE-Net layer: the map :math:`h \mapsto h(T)` of the solution of an ODE.

    A residual block computes :math:`h_{k+1} = h_k + f(h_k, \theta_k)`, one Euler step of
    :math:`\mathrm{d}h/\mathrm{d}t = f(h, t, \theta)`. An ODE block takes the limit: it
    returns the state at time T of

    .. math:: \frac{\mathrm{d}h}{\mathrm{d}t} = f(t, h(t); \theta), \qquad h(0) = h_{in},
        \qquad \operatorname{ODEBlock}(h_{in}) = h(T)
        = h_{in} + \int_0^T f(t, h(t); \theta)\, \mathrm{d}t,

    with one set of parameters θ for the whole depth, and the number of evaluations of f (the
    "depth") chosen by the adaptive solver to meet rtol/atol. Gradients come from the adjoint
    method (memory constant in the number of steps) or, with ``adjoint=False``, from
    backpropagation through the solver's operations.

    Arguments:
        func: the dynamics, an ``nn.Module`` called as ``func(t, h)`` with t a 0-d tensor of
            h's dtype, returning a tensor of h's shape. Its parameters are the block's.
        T: the end time, a positive finite number.
        method: a method of :func:`cnflow.odeint` (``"dopri5"`` default, ``"bosh3"``,
            ``"euler"``, ``"midpoint"``, ``"rk4"``; ``solver``, its old name, is deprecated).
        rtol, atol: the adaptive solver's tolerances. The default 1e-3 suits a classifier,
            whose features need no more accuracy than its decisions; a density model (whose
            log-determinant is integrated too) needs tighter ones.
        adjoint: gradients by the adjoint method (True) or by backpropagation (False).
        step_size: the largest step of a fixed-step solver (None: one step over [0, T]).
        max_num_steps: the most steps one solve may attempt.
        seminorm: leave the parameter adjoint out of the adjoint's error control (Kidger,
            Chen & Lyons 2021).
        solve_options: all of the above solve settings at once, as a
            :class:`cnflow.SolveOptions` (then leave those at their defaults).

    Attributes:
        solve_options: the :class:`~cnflow.SolveOptions` of the block's solves (``method``,
            ``rtol``, ``atol``, ``adjoint``, ... read it; setting one replaces it, checked).
        stats_forward: :class:`~cnflow.SolverStats` of the forward solve of the last call.
        stats_backward: those of the adjoint solve of that call's backward pass (filled by
            ``backward()``; zero with ``adjoint=False``, where backpropagation re-evaluates
            nothing).
        nfe_forward, nfe_backward: their numbers of function evaluations.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from cnflow.nn import ODEBlock
        >>> class Dynamics(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
        ...     def forward(self, t, h):
        ...         return self.net(h)
        >>> block = ODEBlock(Dynamics())
        >>> h = torch.randn(8, 4)
        >>> block(h).shape
        torch.Size([8, 4])
        >>> block(h).sum().backward()
        >>> block.nfe_forward > 0 and block.nfe_backward > 0
        True

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations",
        section 3 (replacing residual networks with ODEs for supervised learning).
    """

    #: The separate solve settings' defaults (a classifier's tolerances).
    DEFAULT_OPTIONS = SolveOptions(rtol=1e-3, atol=1e-3)

    def __init__(self, func: nn.Module, T: float = 1.0, method: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-3, adjoint: bool = True, *,
                 step_size: float | None = None, max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
                 seminorm: bool = True, solve_options: SolveOptions | None = None,
                 solver: str | None = None) -> None:
        super().__init__()
        method = deprecated_solver(solver, method, "ODEBlock")
        if not isinstance(func, nn.Module):
            raise ValueError("func must be an nn.Module called as func(t, h) (its parameters "
                             f"are the block's), got {type(func).__name__}")
        self.T = check_end_time(T)
        self.solve_options = options_from(
            solve_options, self.DEFAULT_OPTIONS, method=method, rtol=rtol, atol=atol,
            adjoint=adjoint, step_size=step_size, max_num_steps=max_num_steps,
            seminorm=seminorm)
        self.func = func
        self.stats_forward = SolverStats()
        self.stats_backward = SolverStats()

    def extra_repr(self) -> str:
        return (f"T={self.T:g}, method={self.method!r}, rtol={self.rtol:g}, "
                f"atol={self.atol:g}, adjoint={self.adjoint}")

    def forward(self, h: Tensor) -> Tensor:
        """h(T) from h(0) = h: a floating tensor of any shape (batch axes included)."""
        if not isinstance(h, Tensor):
            raise ValueError(f"h must be a torch.Tensor, got {type(h).__name__}")
        if not h.is_floating_point():
            raise ValueError(f"h must be a floating tensor, got dtype {h.dtype}")
        if h.numel() == 0:
            raise ValueError(f"h is empty (shape {tuple(h.shape)})")
        check_finite_array(h, "h")
        t = torch.tensor([0.0, self.T], dtype=h.dtype, device=h.device)
        self.stats_forward, self.stats_backward = SolverStats(), SolverStats()
        ys = self.solve_options.solve(self.func, h, t, params=tuple(self.func.parameters()),
                           stats=self.stats_forward, adjoint_stats=self.stats_backward)
        return ys[-1]
