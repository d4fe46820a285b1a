"""The numerical core: ODE solvers and adjoint gradients. Knows nothing of densities."""

from .adjoint import odeint_adjoint
from .errors import (
    MaxStepsExceededError,
    NonFiniteStateError,
    ODESolveError,
    StepSizeUnderflowError,
)
from .options import FEW_STEP_METHOD, SolveOptions
from .solve import odeint
from .stats import NFECounts, SolverStats
from .tableaux import ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUX, ButcherTableau

__all__ = [
    "odeint", "odeint_adjoint", "SolveOptions", "SolverStats", "NFECounts", "ODESolveError",
    "StepSizeUnderflowError", "MaxStepsExceededError", "NonFiniteStateError", "ButcherTableau",
    "TABLEAUX", "ADAPTIVE_METHODS", "FIXED_METHODS", "FEW_STEP_METHOD",
]
