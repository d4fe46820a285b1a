r"""``ConditionalCNF``: the former conditional CNF class, now a factory of a conditional
:class:`cnflow.CNF` (deprecated; kept so that older code runs).

Conditioning is composition: ``CNF(dim, context_features=k)`` models p(y | c), and every call
takes the context as an argument (``flow.log_prob(y, c)``, ``flow.sample(context=c)``, see
:class:`cnflow.CNF`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

from .cnf import CNF

__all__ = ["ConditionalCNF"]


def ConditionalCNF(dim: int, context_features: int,  # noqa: N802
                   hidden: Sequence[int] = (64, 64, 64), *, conditioning: str = "gates",
                   activation: str | nn.Module = "tanh", **kwargs) -> CNF:
    r"""Deprecated: ``CNF(dim, hidden, context_features=context_features,
    conditioning=conditioning, activation=activation, **kwargs)``, which it returns.

    The returned flow takes the context per call as its second argument
    (``log_prob(y, c)``, ``transform(y, c)``, ``flow_matching_loss(y, c)``,
    ``trajectory(z, c)``) and draws one y per context row with ``sample(context=c)`` and
    ``sample_with_log_prob(context=c)``.

    Example:
        >>> import warnings
        >>> import torch
        >>> from cnflow.flows import ConditionalCNF
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     flow = ConditionalCNF(1, context_features=2, hidden=(16, 16))
        >>> flow.context_features
        2
    """
    warnings.warn("ConditionalCNF is deprecated; use CNF(dim, context_features=..., ...)",
                  DeprecationWarning, stacklevel=2)
    return CNF(dim, hidden, context_features=context_features, conditioning=conditioning,
               activation=activation, **kwargs)
