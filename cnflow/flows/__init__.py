"""Flows: torch modules with ``log_prob(x)``, ``sample(n)`` and ``sample_with_log_prob(n)``."""

from .base_density import GaussianMixtureBase
from .cnf import CNF, CNFRegularizers
from .conditional import ConditionalCNF
from .dense import DenseFlow
from .discrete import CLOSED_FORMS, DiscreteFlow
from .image import MultiscaleImageCNF
from .mixture import FlowMixture
from .planar import PlanarFlow

__all__ = ["CNF", "CNFRegularizers", "ConditionalCNF", "MultiscaleImageCNF", "DenseFlow",
           "DiscreteFlow", "FlowMixture", "GaussianMixtureBase", "PlanarFlow", "CLOSED_FORMS"]


def __getattr__(name: str):
    """``CNFRegularisers``, the earlier spelling of :class:`CNFRegularizers`, with a
    DeprecationWarning (the public names and option values are spelt "-ize")."""
    if name == "CNFRegularisers":
        import warnings

        warnings.warn("CNFRegularisers is deprecated; use CNFRegularizers", DeprecationWarning,
                      stacklevel=2)
        return CNFRegularizers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
