"""scikit-learn style density estimators over the flows: fit, score_samples, score, sample.

The estimators follow scikit-learn's conventions: ``__init__`` stores parameters only, fitted
state ends in ``_``, use before ``fit`` raises ``NotFittedError``, ``random_state`` makes a CPU
fit repeatable bit for bit, and inputs are validated by scikit-learn's own helpers.

Data are standardised inside, u = (x − μ) / σ, and the model's density q(u) is returned in the
caller's units: log p(x) = log q(u) − Σ_j log σ_j, so densities integrate to 1 over the
caller's space.

The estimators share one base, :class:`~cnflow.estimators.base.FlowDensityEstimator`; each
subclass says how to build its flow and what its loss is.
"""

from .base import FlowDensityEstimator
from .cnf_density import BASES, OBJECTIVES, CNFDensity
from .planar_density import PlanarFlowDensity

__all__ = ["CNFDensity", "PlanarFlowDensity", "FlowDensityEstimator", "OBJECTIVES", "BASES"]
