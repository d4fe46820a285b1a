"""Flows: torch modules with ``log_prob(x)``, ``sample(n)`` and ``sample_with_log_prob(n)``."""

from .base_density import GaussianMixtureBase
from .cnf import CNF, CNFRegularizers, deprecated_names
from .conditional import ConditionalCNF
from .dense import DenseFlow
from .discrete import CLOSED_FORMS, DiscreteFlow
from .image import MultiscaleImageCNF
from .mixture import FlowMixture
from .planar import PlanarFlow

__all__ = ["CNF", "CNFRegularizers", "ConditionalCNF", "MultiscaleImageCNF", "DenseFlow",
           "DiscreteFlow", "FlowMixture", "GaussianMixtureBase", "PlanarFlow", "CLOSED_FORMS"]


__getattr__ = deprecated_names(__name__)
