r"""Declared constraints on estimator parameters, checked in one place.

Each estimator lists, for every parameter, the kinds of value it accepts
(``_parameter_kinds``, as scikit-learn's estimators list ``_parameter_constraints``; a
different name, so that scikit-learn's own checks do not read ours); :func:`check_parameters`
checks them all at the start of ``fit`` and names the first parameter that fits none, with
what it accepts:

    max_iter must be a positive integer or 'auto', got -1

Booleans are never numbers here (``True`` is not a positive integer), and numbers must be
finite: :mod:`cnflow.checks` decides what an integer and a number are, and words the kinds as
every other argument check in the package does.

Example:
    >>> from cnflow.estimators.params import Integer, Options, Real, check_parameters
    >>> class Model:
    ...     _parameter_kinds = {"n_layers": [Integer(1)], "lr": [Real(0, None), "auto"],
    ...                               "dtype": [Options("float32", "float64")]}
    ...     def __init__(self, n_layers=4, lr="auto", dtype="float32"):
    ...         self.n_layers, self.lr, self.dtype = n_layers, lr, dtype
    >>> check_parameters(Model())
    >>> check_parameters(Model(n_layers=True))
    Traceback (most recent call last):
    ...
    ValueError: n_layers must be a positive integer, got True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import integer_description, integer_in_range, real_description, real_in_range

__all__ = ["Constraint", "Integer", "Real", "Options", "Boolean", "InstanceOf", "IntegerSequence",
           "check_parameters"]


class Constraint:
    """A kind of value a parameter accepts: :meth:`accepts` and a description for errors."""

    description: str

    def accepts(self, value: object) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer (not a bool) in [low, high] (``None``: unbounded)."""

    low: int | None = None
    high: int | None = None

    def accepts(self, value: object) -> bool:
        return integer_in_range(value, self.low, self.high)

    @property
    def description(self) -> str:
        return integer_description(self.low, self.high)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number (not a bool) between low and high; ``closed`` says which ends
    belong: "neither" (default, so ``Real(0, None)`` is a positive number), "left", "right",
    "both"."""

    low: float | None = None
    high: float | None = None
    closed: str = "neither"

    def accepts(self, value: object) -> bool:
        return real_in_range(value, self.low, self.high, self.closed)

    @property
    def description(self) -> str:
        return real_description(self.low, self.high, self.closed)


class Options(Constraint):
    """One of the given strings (``label``: what to call them in errors)."""

    def __init__(self, *values: str, label: str | None = None) -> None:
        self.values = tuple(values)
        self.label = label

    def accepts(self, value: object) -> bool:
        return isinstance(value, str) and value in self.values

    @property
    def description(self) -> str:
        return self.label or f"one of {', '.join(self.values)}"


@dataclass(frozen=True)
class Boolean(Constraint):
    """True or False (a Python or numpy bool)."""

    def accepts(self, value: object) -> bool:
        return isinstance(value, (bool, np.bool_))

    @property
    def description(self) -> str:
        return "True, False"


@dataclass(frozen=True)
class IntegerSequence(Constraint):
    """A sequence (not a string) of integers, each at least ``low`` (e.g. layer widths)."""

    low: int = 1

    def accepts(self, value: object) -> bool:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            return False
        return all(Integer(self.low).accepts(item) for item in value)  # type: ignore[attr-defined]

    @property
    def description(self) -> str:
        return f"a sequence of {Integer(self.low).description[2:]}s"


class InstanceOf(Constraint):
    """An instance of one of the given types."""

    def __init__(self, *types: type) -> None:
        self.types = types

    def accepts(self, value: object) -> bool:
        return isinstance(value, self.types)

    @property
    def description(self) -> str:
        names = [t.__module__ + "." + t.__name__ if t.__module__ != "builtins" else t.__name__
                 for t in self.types]
        return f"an instance of {' or '.join(names)}"


def _as_constraint(item: Any) -> Constraint:
    """A constraint from its short forms: a string is that literal value, None is None."""
    if isinstance(item, Constraint):
        return item
    if item is None:
        return _Literal(None)
    if isinstance(item, str):
        return _Literal(item)
    raise TypeError(f"not a parameter constraint: {item!r}")


@dataclass(frozen=True)
class _Literal(Constraint):
    value: str | None

    def accepts(self, value: object) -> bool:
        return value is None if self.value is None else (
            isinstance(value, str) and value == self.value)

    @property
    def description(self) -> str:
        return "None" if self.value is None else repr(self.value)


def _joined(descriptions: list[str]) -> str:
    if len(descriptions) == 1:
        return descriptions[0]
    return f"{', '.join(descriptions[:-1])} or {descriptions[-1]}"


def check_parameters(estimator: object,
                     constraints: dict[str, list] | None = None) -> None:
    """Check every parameter of ``estimator`` against its declared constraints.

    Arguments:
        estimator: an object whose attributes hold the parameters.
        constraints: parameter name → accepted kinds (:class:`Constraint` objects, a string
            for that literal value, None for None); default: the estimator's
            ``_parameter_kinds``.

    Raises:
        ValueError: naming the first parameter that fits none of its kinds, what it accepts
            and the value given.
    """
    if constraints is None:
        constraints = type(estimator)._parameter_kinds  # type: ignore[attr-defined]
    for name, kinds in constraints.items():
        value = getattr(estimator, name)
        checks = [_as_constraint(kind) for kind in kinds]
        if not any(check.accepts(value) for check in checks):
            raise ValueError(f"{name} must be {_joined([c.description for c in checks])}, "
                             f"got {value!r}")
