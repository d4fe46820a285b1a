r"""A field with its context bound: :class:`WithContext` turns a field ``net(t, z, context)``
into dynamics ``f(t, z)`` for one solve, the context held by the call, never by the network.

A conditional CNF integrates :math:`\dot z = f(z, t; c)` with c fixed along each row's path;
the solvers and the trace estimators take ``f(t, z)``, so :class:`cnflow.CNF` binds each call's
context with this wrapper (built anew per call). The context is data, not state: the
divergence is with respect to z only.

``ConditionalConcatSquashMLP`` and ``ConditionalConcatSquashLinear`` are the former names of
the context-aware concat-squash network and layer, now :class:`cnflow.nn.ConcatSquashMLP` and
:class:`cnflow.nn.ConcatSquashLinear` with ``context_features`` (deprecated; kept so that
older code runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

from torch import Tensor

from .concat_squash import CONDITIONINGS, ConcatSquashLinear, ConcatSquashMLP

__all__ = ["CONDITIONINGS", "ConditionalConcatSquashLinear", "ConditionalConcatSquashMLP",
           "WithContext"]

#: Deprecated: :class:`ConcatSquashLinear` takes ``context_features`` itself.
ConditionalConcatSquashLinear = ConcatSquashLinear


def ConditionalConcatSquashMLP(in_features: int, context_features: int,  # noqa: N802
                               hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh",
                               conditioning: str = "gates") -> ConcatSquashMLP:
    """Deprecated: ``ConcatSquashMLP(in_features, hidden, activation=activation,
    context_features=context_features, conditioning=conditioning)``, which it returns."""
    warnings.warn("ConditionalConcatSquashMLP is deprecated; use ConcatSquashMLP(in_features, "
                  "hidden, context_features=..., conditioning=...)", DeprecationWarning,
                  stacklevel=2)
    return ConcatSquashMLP(in_features, hidden, activation=activation,
                           context_features=context_features, conditioning=conditioning)


class WithContext:
    """A field ``net(t, z, context)`` with its context bound: callable as ``f(t, z)`` like any
    dynamics. Where the network computes its own exact divergence
    (``net.forward_with_divergence(t, z, context, frobenius=...)``, as
    :class:`~cnflow.nn.ConcatSquashMLP` does), so does the wrapper
    (:class:`cnflow.interfaces.AnalyticDivergence`); for any other network
    ``has_analytic_divergence`` is False and the trace estimators use autograd.

    Arguments:
        net: the field, called as ``net(t, z, context)`` with z of shape (n, D) and the
            context (n, k), row i of the context belonging to row i of z.
        context: the context of this call, shape (n, k).

    Example:
        >>> import torch
        >>> from cnflow.nn import ConcatSquashMLP, WithContext
        >>> net = ConcatSquashMLP(2, hidden=(8,), context_features=1)
        >>> f = WithContext(net, torch.zeros(4, 1))
        >>> f(torch.tensor(0.0), torch.randn(4, 2)).shape
        torch.Size([4, 2])
    """

    def __init__(self, net: Callable[[Tensor, Tensor, Tensor], Tensor], context: Tensor) -> None:
        self.net, self.context = net, context

    @property
    def has_analytic_divergence(self) -> bool:
        """Whether the network's own ``forward_with_divergence`` applies."""
        return bool(getattr(self.net, "has_analytic_divergence", False)) and callable(
            getattr(self.net, "forward_with_divergence", None))

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(t, z, self.context)

    def forward_with_divergence(self, t: Tensor, z: Tensor,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        """``net.forward_with_divergence(t, z, context, frobenius=frobenius)``."""
        return self.net.forward_with_divergence(t, z, self.context, frobenius=frobenius)
