"""cnflow: continuous normalizing flows on PyTorch.

The public names, re-exported (nothing else is defined here but a deprecated spelling's
alias). Importing the package sets the C allocator's thresholds once
(:mod:`cnflow.allocator`; ``CNFLOW_TUNE_MALLOC=0`` keeps glibc's defaults).
"""

from .allocator import tune_allocator_unless_switched_off
from .estimators import (
    CNFDensity,
    ConditionalCNFDensity,
    ImageCNFDensity,
    LatentODE,
    PlanarFlowDensity,
)
from .files import ModelFileError
from .flows import CNF, CNFRegularizers, DenseFlow, PlanarFlow
from .flows.cnf import deprecated_names
from .nn import ODEBlock
from .ode import (
    MaxStepsExceededError,
    NonFiniteStateError,
    ODESolveError,
    SolveOptions,
    SolverStats,
    StepSizeUnderflowError,
    odeint,
    odeint_adjoint,
)
from .training import CheckpointMismatchError, TrainingFault

__version__ = "0.1.0"

tune_allocator_unless_switched_off()

__all__ = [
    "CNF", "CNFRegularizers", "CNFDensity", "ConditionalCNFDensity", "ImageCNFDensity",
    "PlanarFlow", "DenseFlow",
    "PlanarFlowDensity",
    "odeint", "odeint_adjoint", "SolveOptions", "SolverStats", "ODESolveError",
    "StepSizeUnderflowError", "MaxStepsExceededError", "NonFiniteStateError", "ODEBlock",
    "LatentODE", "ModelFileError", "CheckpointMismatchError", "TrainingFault",
]


__getattr__ = deprecated_names(__name__)
