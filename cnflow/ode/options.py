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
import warnings
from collections.abc import Callable, Sequence

import torch

from ..checks import check_positive_int
from .adjoint import odeint_adjoint
from .inputs import State, check_first_step, check_tolerances, resolve_method
from .solve import DEFAULT_MAX_NUM_STEPS, odeint
from .stats import SolverStats
from .tableaux import FIXED_METHODS

__all__ = ["SolveOptions", "SolvesODEs", "options_from", "deprecated_solver",
           "FEW_STEP_METHOD"]

#: The fixed-step method of ``sample(steps=K)``: K steps cost K × its stages evaluations
#: (midpoint, second order: 2K).
FEW_STEP_METHOD = "midpoint"


def check_steps(steps: object) -> int:
    """``steps`` as a Python int if it is a number of fixed steps, an integer ≥ 1 (not a
    bool, a float or a string), else a ValueError naming the value."""
    return check_positive_int(steps, "steps")


def check_fixed_method(method: object) -> str:
    """``method`` if it names a fixed-step method (:data:`cnflow.ode.FIXED_METHODS`; None:
    :data:`FEW_STEP_METHOD`), else a ValueError listing them."""
    if method is None:
        return FEW_STEP_METHOD
    if not isinstance(method, str) or method not in FIXED_METHODS:
        raise ValueError(f"method must be a fixed-step method, one of "
                         f"{', '.join(FIXED_METHODS)}; got {method!r}")
    return method


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
        first_step: the adaptive methods' first step (None: Hairer's estimate), e.g. the
            ``suggested_first_step`` of a :class:`~cnflow.SolverStats` of a similar solve.

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
    first_step: float | None = None

    def __post_init__(self) -> None:
        resolve_method(self.method, self.step_size)
        check_tolerances(self.rtol, self.atol)
        check_first_step(self.first_step)
        object.__setattr__(self, "max_num_steps",
                           check_positive_int(self.max_num_steps, "max_num_steps"))
        for name in ("adjoint", "seminorm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **changes) -> SolveOptions:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def with_steps(self, steps: int, span: float, method: str | None = None) -> SolveOptions:
        r"""A copy that solves an interval of length ``span`` in exactly ``steps`` equal
        steps of the fixed-step ``method`` (None: :data:`FEW_STEP_METHOD`).

        The step is h = span / K. The stepping loop cuts an interval of length L into
        :math:`\lceil L/h - 10^{-9} \rceil` steps, so with ``span`` the interval's length
        as the solver reads it (float64 of the output times as given, e.g. float32's
        0.1 is 0.10000000149…) the count is K exactly: L/h is K to a few ulps. ``span``
        computed in another precision could be off by more than the guard and give K + 1;
        the tests count the steps. ``max_num_steps`` is raised to K where it is smaller.
        The tolerances and the gradient settings are kept.

        Arguments:
            steps: K, a positive integer.
            span: the length of the interval, > 0.
            method: ``"euler"``, ``"midpoint"`` or ``"rk4"`` (None: ``"midpoint"``).

        Returns:
            The fixed-step :class:`SolveOptions`; a solve with them costs K × stages
            evaluations.

        Example:
            >>> from cnflow.ode import SolveOptions
            >>> options = SolveOptions().with_steps(4, 1.0)
            >>> options.method, options.step_size
            ('midpoint', 0.25)
        """
        steps = check_steps(steps)
        method = check_fixed_method(method)
        span = abs(float(span))
        if not span > 0 or span == float("inf"):
            raise ValueError(f"span must be a positive finite length, got {span!r}")
        return self.replace(method=method, step_size=span / steps,
                            max_num_steps=max(self.max_num_steps, steps))

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
                   "stats": stats, "first_step": self.first_step}
        if self.adjoint and torch.is_grad_enabled():
            return odeint_adjoint(f, y0, t, adjoint_params=params, seminorm=self.seminorm,
                                  adjoint_stats=adjoint_stats, **options)
        return odeint(f, y0, t, **options)


def options_from(given: SolveOptions | None, defaults: SolveOptions, **settings) -> SolveOptions:
    """The options of a module given either whole (``given``) or setting by setting.

    Arguments:
        given: the caller's :class:`SolveOptions`, or None.
        defaults: the module's defaults of the separate settings.
        settings: the separate settings as given (method, rtol, atol, ...).

    Raises:
        ValueError: both ``given`` and a separate setting other than its default.
    """
    if given is None:
        return SolveOptions(**settings)
    if not isinstance(given, SolveOptions):
        raise ValueError(f"solve_options must be a SolveOptions, got {type(given).__name__}")
    changed = [name for name, value in settings.items() if value != getattr(defaults, name)]
    if changed:
        raise ValueError("give the solve's settings either as solve_options or one by one, "
                         f"not both (also given: {', '.join(changed)})")
    return given


def deprecated_solver(solver: str | None, method: str, owner: str) -> str:
    """``method``, or ``solver`` (the old name, warned about) when it was given instead."""
    if solver is None:
        return method
    warnings.warn(f"{owner}(solver=...) is deprecated and will be removed in the next release; "
                  "use method=... (the name odeint and torchdiffeq use)",
                  DeprecationWarning, stacklevel=3)
    return solver


class SolvesODEs:
    """A module whose solves one :class:`SolveOptions` describes.

    The options live in ``solve_options``; ``method``, ``rtol``, ``atol``, ``step_size``,
    ``max_num_steps``, ``adjoint`` and ``seminorm`` read them, and setting one replaces the
    options with a checked copy (so a bad value fails where it is set). ``solver`` is the
    deprecated name of ``method``.

    Example:
        >>> from cnflow.ode.options import SolveOptions, SolvesODEs
        >>> class Block(SolvesODEs):
        ...     def __init__(self):
        ...         self.solve_options = SolveOptions(method="rk4", step_size=0.1)
        >>> block = Block()
        >>> block.rtol = 1e-3
        >>> block.solve_options.rtol, block.method
        (0.001, 'rk4')
    """

    solve_options: SolveOptions

    @property
    def solver(self) -> str:
        """Deprecated name of ``method``."""
        warnings.warn("solver is deprecated; use method", DeprecationWarning, stacklevel=2)
        return self.solve_options.method


def _forwarded(name: str) -> property:
    def get(self: SolvesODEs):
        return getattr(self.solve_options, name)

    def set_(self: SolvesODEs, value) -> None:
        self.solve_options = self.solve_options.replace(**{name: value})

    return property(get, set_, doc=f"``solve_options.{name}`` (settable; checked).")


for _field in dataclasses.fields(SolveOptions):
    setattr(SolvesODEs, _field.name, _forwarded(_field.name))
