r"""An equal-weight mixture of flows: the density of an ensemble.

.. math:: p(x) = \frac{1}{K} \sum_{k=1}^{K} p_k(x), \qquad
    \log p(x) = \operatorname{logsumexp}_k \log p_k(x) - \log K,

a normalised density whenever every member is one. Sampling draws each row's member
uniformly, then samples that member. Averaging members fitted on different splits of the data
(cross-fitting, or bagging; Breiman 1996) lowers the variance of a density estimate made from
few rows, and together the members have seen every row.

Example:
    >>> import torch
    >>> from cnflow.flows import CNF, FlowMixture
    >>> mixture = FlowMixture([CNF(2, hidden=(8,)), CNF(2, hidden=(8,))])
    >>> mixture.log_prob(torch.randn(5, 2)).shape, mixture.sample(3).shape
    (torch.Size([5]), torch.Size([3, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FlowMixture"]


class FlowMixture(nn.Module):
    """The equal-weight mixture of ``members`` (modules with ``log_prob`` and ``sample``).

    Arguments:
        members: K ≥ 1 flows over the same space.

    Attributes:
        members: the flows, an ``nn.ModuleList``.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a FlowMixture needs at least one member")
        self.members = nn.ModuleList(members)

    def combine(self, member_log_probs: Sequence[Tensor]) -> Tensor:
        """log((1/K) Σ_k exp(log p_k)) from the members' log-densities, each shape (n,)."""
        stacked = torch.stack(list(member_log_probs))
        return torch.logsumexp(stacked, dim=0) - math.log(len(self.members))

    def log_prob(self, x: Tensor) -> Tensor:
        """The mixture's log-density of each row of x, shape (n,)."""
        return self.combine([member.log_prob(x) for member in self.members])

    def sample(self, n: int) -> Tensor:
        """n rows: each from a member drawn uniformly (torch's global generator), shape (n, D)."""
        choice = torch.randint(len(self.members), (n,))
        out = None
        for k, member in enumerate(self.members):
            rows = torch.nonzero(choice == k).flatten()
            if len(rows) == 0:
                continue
            drawn = member.sample(len(rows))
            if out is None:
                out = drawn.new_empty((n, drawn.shape[1]))
            out[rows.to(drawn.device)] = drawn
        return out

    @property
    def nfe_forward(self) -> int:
        """The members' function evaluations in their last forward solves, summed."""
        return sum(int(getattr(m, "nfe_forward", 0)) for m in self.members)

    @property
    def nfe_backward(self) -> int:
        return sum(int(getattr(m, "nfe_backward", 0)) for m in self.members)
