"""Flows: torch modules with ``log_prob(x)`` and ``sample(n)``."""

from .cnf import CNF, CNFRegularisers

__all__ = ["CNF", "CNFRegularisers"]
