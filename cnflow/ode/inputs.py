"""All argument checking and normalisation for ``odeint`` and ``odeint_adjoint``, in one place.

A user problem (f, y0, t) with y0 a tensor of any shape or a tuple of tensors becomes a flat
problem: one 1-D state vector, a dynamics ``fn(t: float, y: Tensor) -> Tensor`` on it, and
the output times as Python floats (float64 whatever the state's dtype). Every mistake a user
can make with the arguments raises :class:`ValueError` here, with what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..checks import (
    check_finite_array,
    check_nonnegative_real,
    check_positive_int,
    check_positive_real,
)
from .tableaux import TABLEAUX, ButcherTableau

__all__ = ["State", "FlatProblem", "prepare", "resolve_method", "check_tolerances"]

#: An ODE state: a tensor, or a tuple of tensors integrated together.
State = torch.Tensor | tuple[torch.Tensor, ...]
FlatFn = Callable[[float, torch.Tensor], torch.Tensor]
#: ``vjp(t, y, v, params) -> (f(t, y), vᵀ∂f/∂y, [vᵀ∂f/∂p or None for p in params])`` on the
#: flat state, or None from the call where the user's ``f.vjp`` declines.
FlatVJP = Callable[[float, torch.Tensor, torch.Tensor, Sequence[torch.Tensor]],
                   "tuple[torch.Tensor, torch.Tensor, list] | None"]


@dataclass
class FlatProblem:
    """An initial-value problem on a flat state.

    Attributes:
        fn: the dynamics on the flat state; its time argument is a Python float.
        y0: the flat initial state, shape (N,).
        t: the output times as given (a tensor; kept for gradients with respect to t).
        times: the output times as Python floats.
        segments: sizes of the parts of the flat state (one per tuple element), each measured
            by its own RMS norm in the error control.
        shapes: the shape of each part; ``is_tuple`` says whether the user gave a tuple.
        vjp: the flat form of ``f.vjp`` when f has one (see :func:`cnflow.odeint_adjoint`).
    """

    fn: FlatFn
    y0: torch.Tensor
    t: torch.Tensor
    times: list[float]
    segments: list[int]
    shapes: list[torch.Size]
    is_tuple: bool
    vjp: FlatVJP | None = None

    def unflatten(self, ys: torch.Tensor) -> State:
        """(len(t), N) flat solutions → the user's layout with a leading time axis."""
        if not self.is_tuple:
            return ys.reshape(ys.shape[0], *self.shapes[0])
        parts = torch.split(ys, self.segments, dim=1)
        return tuple(p.reshape(ys.shape[0], *s) for p, s in zip(parts, self.shapes, strict=True))


def resolve_method(method: str, step_size: float | None) -> ButcherTableau:
    """The tableau for ``method``, checking that ``step_size`` fits it."""
    if method not in TABLEAUX:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(TABLEAUX)}")
    tableau = TABLEAUX[method]
    if step_size is not None:
        if tableau.adaptive:
            raise ValueError(
                f"step_size applies to fixed-step methods only; {method!r} chooses its own "
                "steps from rtol and atol"
            )
        check_positive_real(step_size, "step_size")
    return tableau


def check_tolerances(rtol: float, atol: float) -> None:
    check_nonnegative_real(rtol, "rtol")
    check_nonnegative_real(atol, "atol")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be zero")


def check_end_time(T: object) -> float:
    """T as a float if it is a positive finite number (not a bool), else ValueError."""
    return check_positive_real(T, "T")


def _check_times(t: torch.Tensor | Sequence[float]) -> tuple[torch.Tensor, list[float]]:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 1:
        raise ValueError(f"t must be a 1-D tensor of output times, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"t must hold real numbers, got dtype {t.dtype}")
    times = t.detach().to("cpu", torch.float64).tolist()
    check_finite_array(times, "t")
    if len(times) > 1:
        steps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
        if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
            raise ValueError(f"t must be strictly increasing or strictly decreasing, got {times}")
    return t, times


def _check_state(y0: State) -> tuple[list[torch.Tensor], bool]:
    is_tuple = isinstance(y0, (tuple, list))
    parts = list(y0) if is_tuple else [y0]
    if not parts:
        raise ValueError("y0 is an empty tuple")
    for i, p in enumerate(parts):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"y0{f'[{i}]' if is_tuple else ''} must be a tensor, got {type(p)}")
        if not p.is_floating_point():
            raise ValueError(f"y0 must be floating point, got dtype {p.dtype}")
    dtypes = {p.dtype for p in parts}
    devices = {p.device for p in parts}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(
            "the tensors of a tuple state must share dtype and device, got "
            f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}"
        )
    if sum(p.numel() for p in parts) == 0:
        raise ValueError("y0 is empty (no elements to integrate)")
    for p in parts:
        check_finite_array(p, "y0")
    return parts, is_tuple


def _split(y: torch.Tensor, shapes: list[torch.Size], segments: list[int],
           is_tuple: bool) -> State:
    """A flat state (N,) as the user's layout: one tensor, or a tuple of views."""
    if not is_tuple:
        return y.view(shapes[0])
    return tuple(p.view(s) for p, s in zip(torch.split(y, segments), shapes, strict=True))


def _flat_dynamics(f, shapes: list[torch.Size], segments: list[int], is_tuple: bool,
                   dtype: torch.dtype, device: torch.device) -> FlatFn:
    """Wrap the user's f(t, y) as fn(t: float, y_flat) -> dy_flat, checking what f returns."""

    def check(out, shape: torch.Size, where: str) -> None:
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"f must return a tensor{where}, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(
                f"f returned shape {tuple(out.shape)}{where}, expected the state's shape "
                f"{tuple(shape)}"
            )
        if out.dtype != dtype:
            raise ValueError(f"f returned dtype {out.dtype}{where}, expected {dtype}")

    if not is_tuple:
        shape = shapes[0]

        def fn(t: float, y: torch.Tensor) -> torch.Tensor:
            out = f(torch.full((), t, dtype=dtype, device=device),
                    _split(y, shapes, segments, False))
            check(out, shape, "")
            return out.reshape(-1)

        return fn

    def fn_tuple(t: float, y: torch.Tensor) -> torch.Tensor:
        out = f(torch.full((), t, dtype=dtype, device=device),
                _split(y, shapes, segments, True))
        if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
            got = type(out).__name__
            if isinstance(out, (tuple, list)):
                got += f" of length {len(out)}"
            raise ValueError(
                f"f must return a tuple of {len(shapes)} tensors for a tuple state, got {got}"
            )
        for i, (o, s) in enumerate(zip(out, shapes, strict=True)):
            check(o, s, f" at position {i}")
        return torch.cat([o.reshape(-1) for o in out])

    return fn_tuple


def _flat_vjp(f, shapes: list[torch.Size], segments: list[int], is_tuple: bool,
              dtype: torch.dtype, device: torch.device) -> FlatVJP | None:
    """Wrap the user's ``f.vjp(t, y, v, params)`` (if any) for the flat state."""
    user_vjp = getattr(f, "vjp", None)
    if not callable(user_vjp):
        return None

    def flat(parts, like: torch.Tensor, what: str) -> torch.Tensor:
        parts = (parts,) if not is_tuple else tuple(parts)
        if len(parts) != len(shapes):
            raise ValueError(f"f.vjp returned {len(parts)} parts for {what}, expected "
                             f"{len(shapes)}")
        pieces = []
        for part, shape, size in zip(parts, shapes, segments, strict=True):
            if part is None:
                pieces.append(like.new_zeros(size))
            elif part.shape != shape:
                raise ValueError(f"f.vjp returned shape {tuple(part.shape)} for {what}, "
                                 f"expected {tuple(shape)}")
            else:
                pieces.append(part.reshape(-1))
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def vjp(t: float, y: torch.Tensor, v: torch.Tensor, params: Sequence[torch.Tensor]):
        got = user_vjp(torch.full((), t, dtype=dtype, device=device),
                       _split(y, shapes, segments, is_tuple),
                       _split(v, shapes, segments, is_tuple), params)
        if got is None:
            return None
        value, vjp_y, vjp_params = got
        if len(vjp_params) != len(params):
            raise ValueError(f"f.vjp returned {len(vjp_params)} parameter gradients for "
                             f"{len(params)} parameters")
        return flat(value, y, "f(t, y)"), flat(vjp_y, y, "vᵀ∂f/∂y"), list(vjp_params)

    return vjp


def check_first_step(first_step: float | None) -> None:
    """None, or a positive finite step size."""
    if first_step is None:
        return
    if isinstance(first_step, bool) or not isinstance(first_step, (int, float)):
        raise ValueError(f"first_step must be a positive number or None, got {first_step!r}")
    if not (math.isfinite(first_step) and first_step > 0):
        raise ValueError(f"first_step must be positive and finite, got {first_step!r}")


def prepare(f, y0: State, t, *, method: str, rtol: float, atol: float,
            step_size: float | None, max_num_steps: int,
            first_step: float | None = None) -> tuple[FlatProblem, ButcherTableau]:
    """Check every argument and build the flat problem and the method's tableau."""
    if not callable(f):
        raise ValueError(f"f must be callable as f(t, y), got {type(f).__name__}")
    tableau = resolve_method(method, step_size)
    check_tolerances(rtol, atol)
    check_positive_int(max_num_steps, "max_num_steps")
    check_first_step(first_step)
    t, times = _check_times(t)
    parts, is_tuple = _check_state(y0)
    shapes = [p.shape for p in parts]
    segments = [p.numel() for p in parts]
    flat = torch.cat([p.reshape(-1) for p in parts]) if is_tuple else parts[0].reshape(-1)
    fn = _flat_dynamics(f, shapes, segments, is_tuple, flat.dtype, flat.device)
    problem = FlatProblem(fn=fn, y0=flat, t=t, times=times, segments=segments, shapes=shapes,
                          is_tuple=is_tuple,
                          vjp=_flat_vjp(f, shapes, segments, is_tuple, flat.dtype, flat.device))
    return problem, tableau
