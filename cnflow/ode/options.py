"""One validated description of an ODE solve, and the one place that picks the gradient method.

Every module above the numerical core (the CNF, ``ODEBlock``, the latent ODE, the estimators)
describes its solves by a :class:`SolveOptions` and runs them by :meth:`SolveOptions.solve`,
which calls :func:`cnflow.odeint_adjoint` when gradients are wanted by the adjoint method and
:func:`cnflow.odeint` otherwise. The names follow :func:`cnflow.odeint` (and torchdiffeq's).

Example:
    >>> import torch
    >>> from cnflow.ode import SolveOptions
    >>> options = SolveOptions(method="rk4", step_size=0.1, adjoint=False)
    >>> ys = options.solve(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]))
    >>> round(float(ys[-1, 0]), 4)
    0.3679
    >>> options.replace(rtol=1e-3).rtol
    0.001
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import torch

from .adjoint import odeint_adjoint
from .inputs import State, check_tolerances, resolve_method
from .solve import DEFAULT_MAX_NUM_STEPS, odeint
from .stats import SolverStats

__all__ = ["SolveOptions"]


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """How to solve an ODE and how to take gradients through the solve.

    Arguments:
        method: a method of :func:`cnflow.odeint` (``"dopri5"``, ``"bosh3"``, ``"euler"``,
            ``"midpoint"``, ``"rk4"``).
        rtol, atol: the adaptive methods' tolerances, > 0.
        step_size: a fixed-step method's step (None: one step over each output interval).
        max_num_steps: the most steps one solve may take.
        adjoint: gradients by the adjoint method (constant memory) when autograd is recording;
            backpropagation through the solver otherwise.
        seminorm: leave the parameter adjoint out of the adjoint's error control (Kidger et
            al. 2021).

    Every argument is checked when the options are made, so a bad setting fails where it is
    written, not at the first solve.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    adjoint: bool = True
    seminorm: bool = True

    def __post_init__(self) -> None:
        resolve_method(self.method, self.step_size)
        check_tolerances(self.rtol, self.atol)
        steps = self.max_num_steps
        if not (isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
                and steps > 0):
            raise ValueError(f"max_num_steps must be a positive integer, got {steps!r}")
        for name in ("adjoint", "seminorm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **changes) -> SolveOptions:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def solve(self, f: Callable[[torch.Tensor, State], State], y0: State, t: torch.Tensor, *,
              params: Sequence[torch.Tensor] | None = None,
              stats: SolverStats | None = None,
              adjoint_stats: SolverStats | None = None) -> State:
        """Solve dy/dt = f(t, y) from y0 at the times t (as :func:`cnflow.odeint`).

        With ``adjoint`` and autograd recording, by :func:`cnflow.odeint_adjoint` with
        ``params`` the tensors that get gradients (None: ``f.parameters()``); otherwise by
        :func:`cnflow.odeint`. ``stats`` collects the forward solve's counts,
        ``adjoint_stats`` the backward solve's.
        """
        options = {"method": self.method, "rtol": self.rtol, "atol": self.atol,
                   "step_size": self.step_size, "max_num_steps": self.max_num_steps,
                   "stats": stats}
        if self.adjoint and torch.is_grad_enabled():
            return odeint_adjoint(f, y0, t, adjoint_params=params, seminorm=self.seminorm,
                                  adjoint_stats=adjoint_stats, **options)
        return odeint(f, y0, t, **options)
