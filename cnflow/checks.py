r"""Argument checks shared by the whole package: one meaning of "a positive integer", one
message for each kind of bad value.

An *integer* is any :class:`numbers.Integral` (a Python int, ``numpy.int64``, …) that is not a
bool; a *number* is any :class:`numbers.Real` that is not a bool and is finite. Each
``check_*`` function returns the value converted to a plain Python ``int`` or ``float`` (so
that it can be stored, compared and written to JSON), or raises a :class:`ValueError` of the
form ``"{name} must be {what it accepts}, got {value!r}"``:

    n_samples must be a positive integer, got True
    alpha must be a number in [0, 0.5), got 0.7

:func:`integer_description` and :func:`real_description` give the "what it accepts" part, so
that :mod:`cnflow.estimators.params` words the estimators' parameter errors the same way.

Example:
    >>> import numpy as np
    >>> from cnflow.checks import check_positive_int, check_real
    >>> check_positive_int(np.int64(3), "n_samples")
    3
    >>> check_real(0.25, "alpha", 0, 0.5, closed="left")
    0.25
    >>> check_positive_int(True, "n_samples")
    Traceback (most recent call last):
    ...
    ValueError: n_samples must be a positive integer, got True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import TypeVar

import numpy as np

__all__ = [
    "is_integer", "is_real", "integer_in_range", "real_in_range",
    "integer_description", "real_description",
    "check_int", "check_positive_int", "check_nonnegative_int", "check_positive_int_sequence",
    "check_real", "check_positive_real", "check_nonnegative_real", "check_finite_array",
]

#: Which ends of an interval belong to it, by the name of ``closed``.
_CLOSED = {"neither": (False, False), "left": (True, False), "right": (False, True),
           "both": (True, True)}

_T = TypeVar("_T")


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer: a :class:`numbers.Integral` that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: object) -> bool:
    """Whether ``value`` is a finite real number that is not a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def integer_in_range(value: object, low: int | None = None, high: int | None = None) -> bool:
    """Whether ``value`` is an integer with low ≤ value ≤ high (``None``: unbounded)."""
    return (is_integer(value) and (low is None or value >= low)  # type: ignore[operator]
            and (high is None or value <= high))  # type: ignore[operator]


def real_in_range(value: object, low: float | None = None, high: float | None = None,
                  closed: str = "neither") -> bool:
    """Whether ``value`` is a finite number between ``low`` and ``high`` (``None``:
    unbounded); ``closed`` ("neither", "left", "right", "both") says which ends belong."""
    left, right = _closed(closed)
    if not is_real(value):
        return False
    x = float(value)  # type: ignore[arg-type]
    if low is not None and (x < low or (x == low and not left)):
        return False
    return not (high is not None and (x > high or (x == high and not right)))


def integer_description(low: int | None = None, high: int | None = None) -> str:
    """How an error names the integers in [low, high]: "a positive integer", "an integer of
    at least 2", "an integer in [0, 9]", …"""
    if high is None:
        if low is None:
            return "an integer"
        return {1: "a positive integer", 0: "a non-negative integer"}.get(
            low, f"an integer of at least {low}")
    if low is None:
        return f"an integer of at most {high}"
    return f"an integer in [{low}, {high}]"


def real_description(low: float | None = None, high: float | None = None,
                     closed: str = "neither") -> str:
    """How an error names the finite numbers between low and high: "a positive number", "a
    non-negative number", "a number in (0, 1]", …"""
    left, right = _closed(closed)
    if low == 0 and high is None:
        return "a non-negative number" if left else "a positive number"
    if low is None and high is None:
        return "a finite number"
    opening = "[" if left and low is not None else "("
    ending = "]" if right and high is not None else ")"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"a number in {opening}{lo}, {hi}{ending}"


def check_int(value: object, name: str, low: int | None = None,
              high: int | None = None) -> int:
    """``value`` as a Python int if it is an integer (not a bool) in [low, high].

    Arguments:
        value: the argument to check.
        name: its name, for the error.
        low, high: the smallest and largest values allowed (``None``: unbounded).

    Returns:
        ``int(value)``.

    Raises:
        ValueError: "{name} must be {integer_description(low, high)}, got {value!r}".
    """
    if not integer_in_range(value, low, high):
        raise ValueError(f"{name} must be {integer_description(low, high)}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_positive_int(value: object, name: str) -> int:
    """``value`` as a Python int if it is an integer ≥ 1 (not a bool), else
    ``ValueError("{name} must be a positive integer, got {value!r}")``."""
    return check_int(value, name, 1)


def check_nonnegative_int(value: object, name: str) -> int:
    """``value`` as a Python int if it is an integer ≥ 0 (not a bool), else
    ``ValueError("{name} must be a non-negative integer, got {value!r}")``."""
    return check_int(value, name, 0)


def check_positive_int_sequence(values: object, name: str) -> tuple[int, ...]:
    """``values`` as a tuple of Python ints if it is a sequence (any iterable but a string)
    of positive integers (e.g. layer widths; it may be empty), else ``ValueError("{name}
    must be a sequence of positive integers, got {values!r}")``."""
    items = None if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) \
        else tuple(values)
    if items is None or not all(integer_in_range(v, 1) for v in items):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}")
    return tuple(int(v) for v in items)


def check_real(value: object, name: str, low: float | None = None,
               high: float | None = None, closed: str = "neither") -> float:
    """``value`` as a Python float if it is a finite number (not a bool) between low and
    high.

    Arguments:
        value: the argument to check.
        name: its name, for the error.
        low, high: the ends of the interval (``None``: unbounded).
        closed: which ends belong to it: "neither" (default), "left", "right" or "both".

    Returns:
        ``float(value)``.

    Raises:
        ValueError: "{name} must be {real_description(low, high, closed)}, got {value!r}".
    """
    if not real_in_range(value, low, high, closed):
        raise ValueError(f"{name} must be {real_description(low, high, closed)}, "
                         f"got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_positive_real(value: object, name: str) -> float:
    """``value`` as a Python float if it is a finite number > 0 (not a bool), else
    ``ValueError("{name} must be a positive number, got {value!r}")``."""
    return check_real(value, name, 0, None)


def check_nonnegative_real(value: object, name: str) -> float:
    """``value`` as a Python float if it is a finite number ≥ 0 (not a bool), else
    ``ValueError("{name} must be a non-negative number, got {value!r}")``."""
    return check_real(value, name, 0, None, closed="left")


def check_finite_array(values: _T, name: str) -> _T:
    """``values`` unchanged if every entry is finite, else ``ValueError("{name} contains NaN
    or infinite values")``.

    Arguments:
        values: a torch tensor (anything with an ``isfinite()`` method), a numpy array or a
            sequence of numbers.
        name: its name, for the error.
    """
    isfinite = getattr(values, "isfinite", None)
    finite = bool(isfinite().all()) if callable(isfinite) \
        else bool(np.isfinite(np.asarray(values)).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    return values


def _closed(closed: str) -> tuple[bool, bool]:
    if closed not in _CLOSED:
        raise ValueError(f"closed must be one of {', '.join(_CLOSED)}, got {closed!r}")
    return _CLOSED[closed]
