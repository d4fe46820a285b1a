"""User mistakes on the command line and the checks of option values.

A :class:`CLIError` is reported by :func:`cnflow.cli.main` as one line on stderr with exit
code 2; every check here raises one, naming the option and the value it got.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..checks import check_positive_int
from ..training import resolve_device

__all__ = ["CLIError", "check_device", "check_positive", "check_targets", "given_options"]


class CLIError(Exception):
    """A user mistake, reported as one line with exit code 2."""


def check_positive(value: int, option: str) -> None:
    """A CLIError unless an integer option is at least 1.

    Arguments:
        value: the option's value.
        option: its name as typed, e.g. ``"--n"``.
    """
    try:
        check_positive_int(value, option)
    except ValueError as err:
        raise CLIError(str(err)) from None


def check_device(device) -> None:
    """A CLIError unless ``device`` ("auto", "cpu", "cuda:1", ...) names a device that this
    machine has."""
    import torch

    try:
        target = resolve_device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CLIError(f"unknown device {device!r}") from err
    if target.type == "cuda" and (not torch.cuda.is_available()
                                  or (target.index or 0) >= torch.cuda.device_count()):
        raise CLIError(f"device {str(target)!r} is not available on this machine; pass "
                       "--device cpu")


def check_targets(columns: list[int], n_columns: int) -> list[int]:
    """The target columns of a conditional fit (distinct and in range, as
    :func:`cnflow.cli.tables.select_columns` returns them), checked to leave a feature.

    Returns:
        the columns, sorted.
    """
    if len(columns) == n_columns:
        raise CLIError("--targets leaves no feature columns to condition on")
    return sorted(columns)


def given_options(**options) -> dict:
    """The estimator parameters that were given on the command line: those not None, lists
    (``nargs="+"`` options such as ``--hidden``) as tuples; the rest keep the estimator's
    defaults.

    Example:
        >>> given_options(max_iter=None, hidden=[8, 8], lr=0.1)
        {'hidden': (8, 8), 'lr': 0.1}
    """
    return {name: tuple(value) if isinstance(value, Sequence) and not isinstance(value, str)
            else value for name, value in options.items() if value is not None}
