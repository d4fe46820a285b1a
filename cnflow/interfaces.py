r"""The interfaces the package relies on, written down as :class:`typing.Protocol`\ s.

Code that accepts a velocity field, a base density or a flow checks for these (they are
``runtime_checkable``: ``isinstance`` tests that the methods exist) instead of probing for
attributes one by one. A new network, base or flow satisfies them by having the methods; it
need not inherit from anything.

- :class:`VelocityField`: ``f(t, z) -> dz/dt``, what a CNF integrates.
- :class:`AnalyticDivergence`: a field that returns its exact divergence with its value
  (:meth:`cnflow.nn.ConcatSquashMLP.forward_with_divergence`), used by
  :func:`cnflow.divergence.exact` instead of autograd.
- :class:`DivergencePullback`: a field with a hand-written vector-Jacobian product of
  (f, tr ∂f/∂z), which the adjoint method calls at every backward stage
  (:meth:`cnflow.nn.ConcatSquashMLP.divergence_vjp`).
- :class:`BaseDensity`: a CNF's base at t = T (log_prob, sample, draw_coupled), e.g.
  :class:`cnflow.flows.base_density.GaussianMixtureBase`.
- :class:`DensityModel`: ``log_prob`` and ``sample``; every flow, and mixtures of them.
- :class:`CountsEvaluations`: ``nfe_forward`` and ``nfe_backward`` of the last call, which the
  training loop records.

Example:
    >>> from cnflow import CNF
    >>> from cnflow.interfaces import AnalyticDivergence, DensityModel, DivergencePullback
    >>> flow = CNF(2, hidden=(8, 8))
    >>> isinstance(flow, DensityModel), isinstance(flow.net, AnalyticDivergence)
    (True, True)
    >>> isinstance(flow.net, DivergencePullback)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["VelocityField", "AnalyticDivergence", "DivergencePullback", "BaseDensity",
           "DensityModel", "CountsEvaluations"]


@runtime_checkable
class VelocityField(Protocol):
    """``f(t, z)``: t a 0-d tensor (or one time per row), z of shape (n, D); returns dz/dt of
    z's shape, row by row."""

    def __call__(self, t: Tensor, z: Tensor) -> Tensor: ...


@runtime_checkable
class AnalyticDivergence(Protocol):
    """A field that computes its exact divergence with its value.

    ``has_analytic_divergence`` says whether it applies to this instance (e.g. a built-in
    activation); ``forward_with_divergence(t, z, frobenius)`` returns ``(f, tr ∂f/∂z)`` or,
    with ``frobenius``, ``(f, tr, ‖∂f/∂z‖²_F)``, each row's.
    """

    has_analytic_divergence: bool

    def forward_with_divergence(self, t: Tensor, z: Tensor,
                                frobenius: bool = False) -> tuple[Tensor, ...]: ...


@runtime_checkable
class DivergencePullback(Protocol):
    """A field with a hand-written pullback of (f, tr ∂f/∂z[, ‖∂f/∂z‖²_F]) at one time.

    ``divergence_vjp(t, z, frobenius)`` returns None where it does not apply, else
    ``(outputs, pullback)`` with ``pullback(f̄, τ̄, r̄) -> (z̄, {parameter: gradient})``.
    """

    def divergence_vjp(self, t: Tensor, z: Tensor, frobenius: bool = False
                       ) -> tuple[tuple[Tensor, ...], Callable] | None: ...


@runtime_checkable
class BaseDensity(Protocol):
    """A CNF's base density at t = T.

    ``log_prob(z)`` per row; ``sample(n, generator)`` draws; ``draw_coupled(x, generator)``
    one base draw per data row whose law is the base's (flow matching's pairing).
    """

    def log_prob(self, z: Tensor) -> Tensor: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def draw_coupled(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


@runtime_checkable
class DensityModel(Protocol):
    """A normalised density on R^D: ``log_prob(x)`` per row, ``sample(n)`` draws."""

    def log_prob(self, x: Tensor) -> Tensor: ...

    def sample(self, n: int) -> Tensor: ...


@runtime_checkable
class CountsEvaluations(Protocol):
    """The function evaluations of the last forward solve and of its backward pass."""

    @property
    def nfe_forward(self) -> int: ...

    @property
    def nfe_backward(self) -> int: ...
