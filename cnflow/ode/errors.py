"""Why a solve stopped short: exceptions that carry the time the solver reached.

All derive from :class:`ODESolveError`, itself a :class:`RuntimeError`, so ``except
RuntimeError`` catches every failed solve while bad arguments raise :class:`ValueError`.
"""

from __future__ import annotations

__all__ = ["ODESolveError", "StepSizeUnderflowError", "MaxStepsExceededError",
           "NonFiniteStateError"]


class ODESolveError(RuntimeError):
    """A solve that could not meet its tolerance.

    Attributes:
        t: the time the solver had reached (float).
    """

    def __init__(self, message: str, t: float) -> None:
        super().__init__(message)
        self.t = t


class StepSizeUnderflowError(ODESolveError):
    """The step size the tolerance asks for fell below what float64 time can resolve."""


class MaxStepsExceededError(ODESolveError):
    """The solve took more than ``max_num_steps`` steps."""


class NonFiniteStateError(ODESolveError):
    """The state or its derivative became NaN or infinite."""
