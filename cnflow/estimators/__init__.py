"""scikit-learn style density estimators over the flows: fit, score_samples, score, sample.

Every estimator derives from :class:`~cnflow.estimators.estimator_base.EstimatorBase`
(parameters checked against their declared kinds, dtype, seeding); the density estimators
from :class:`~cnflow.estimators.estimator_base.FlowDensityEstimator`, whose conventions
(scikit-learn's, and densities in the caller's units) its docstring states. Each subclass
declares its parameters' kinds, builds its flow and says what its loss is.
:class:`~cnflow.estimators.latent.LatentODE`, for irregularly-sampled time series, derives from
``EstimatorBase`` alone.
"""

from .cnf_density import BASES, OBJECTIVES, CNFDensity
from .conditional import ConditionalCNFDensity
from .estimator_base import EstimatorBase, FlowDensityEstimator
from .image import ImageCNFDensity
from .latent import LatentODE
from .planar_density import PlanarFlowDensity

__all__ = ["CNFDensity", "ConditionalCNFDensity", "ImageCNFDensity", "PlanarFlowDensity",
           "LatentODE", "EstimatorBase", "FlowDensityEstimator", "OBJECTIVES", "BASES"]
