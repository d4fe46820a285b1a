r"""A mixture of flows (or of any densities): the density of an ensemble or a stack.

.. math:: p(x) = \sum_{k=1}^{K} w_k\, p_k(x), \qquad
    \log p(x) = \operatorname{logsumexp}_k \big(\log w_k + \log p_k(x)\big),

with equal weights :math:`w_k = 1/K` unless given; a normalised density whenever every member
is one. Sampling draws each row's member by the weights, then samples that member. Averaging
members fitted on different splits of the data (cross-fitting, or bagging; Breiman 1996)
lowers the variance of a density estimate made from few rows, and together the members have
seen every row; weights chosen on held-out rows combine different models (stacking; Smyth &
Wolpert 1999), see :func:`best_mixture_weight`.

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

import numpy as np
import torch
from torch import Tensor, nn

from ..interfaces import CountsEvaluations
from ..ode import NFECounts, SolverStats
from ..ode.options import check_fixed_method, check_steps
from .flow import sample_options

__all__ = ["FlowMixture", "best_mixture_weight"]

#: The options of fixed-step sampling, which members that sample exactly ignore.
_FIXED_STEPS = ("steps", "method")


class FlowMixture(nn.Module):
    """The mixture of ``members`` (modules with ``log_prob`` and ``sample``).

    Arguments:
        members: K ≥ 1 densities over the same space.
        weights: K non-negative weights summing to 1 (None: 1/K each), held in the buffer
            ``log_weights`` (saved in ``state_dict``, not trained).

    Attributes:
        members: the densities, an ``nn.ModuleList``.
    """

    def __init__(self, members: Sequence[nn.Module],
                 weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a FlowMixture needs at least one member")
        self.members = nn.ModuleList(members)
        if weights is None:
            self.register_buffer("log_weights", None)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten()
            if len(w) != len(members) or not bool(torch.isfinite(w).all() and (w >= 0).all()):
                raise ValueError(f"weights must be {len(members)} non-negative numbers, got "
                                 f"{w.tolist()}")
            if abs(float(w.sum()) - 1.0) > 1e-6:
                raise ValueError(f"weights must sum to 1, got {float(w.sum())}")
            self.register_buffer("log_weights", w.log())

    @property
    def weights(self) -> Tensor:
        """The members' weights, shape (K,)."""
        if self.log_weights is None:
            return torch.full((len(self.members),), 1.0 / len(self.members))
        return self.log_weights.exp()

    def combine(self, member_log_probs: Sequence[Tensor]) -> Tensor:
        """log Σ_k w_k exp(log p_k) from the members' log-densities, each shape (n,)."""
        stacked = torch.stack(list(member_log_probs))
        if self.log_weights is None:
            return torch.logsumexp(stacked, dim=0) - math.log(len(self.members))
        log_w = self.log_weights.to(stacked.dtype).unsqueeze(1)
        return torch.logsumexp(stacked + log_w, dim=0)

    def log_prob(self, x: Tensor) -> Tensor:
        """The mixture's log-density of each row of x, shape (n,)."""
        return self.combine([member.log_prob(x) for member in self.members])

    def choose(self, n: int) -> Tensor:
        """The member each of n draws comes from, drawn by the weights (torch's global
        generator), shape (n,) on the CPU."""
        if self.log_weights is None:
            return torch.randint(len(self.members), (n,))
        return torch.multinomial(self.weights.double().cpu(), n, replacement=True)

    def sample(self, n: int, **options) -> Tensor:
        """n rows: each from a member drawn by the weights (torch's global generator), shape
        (n, D).

        Arguments:
            n: the number of rows.
            options: passed on to every member whose ``sample`` takes them by name
                (:func:`cnflow.flows.flow.sample_options`), e.g. ``steps=K`` and ``method``
                for fixed-step draws of the CNF members (see :meth:`cnflow.CNF.sample`),
                nested mixtures included; a member that samples exactly (a Gaussian mixture)
                ignores them. ``steps`` and ``method`` are checked before anything is drawn.

        Raises:
            ValueError: a bad ``steps`` or ``method``, or another option that no member
                takes.
        """
        if options.get("steps") is not None:
            check_steps(options["steps"])
        if options.get("method") is not None:
            check_fixed_method(options["method"])
        unknown = {name for name, value in options.items()
                   if value is not None and name not in _FIXED_STEPS and not self._takes(name)}
        if unknown:
            raise ValueError(f"no member's sample takes {', '.join(sorted(unknown))}")
        choice = self.choose(n)
        out = None
        for k, member in enumerate(self.members):
            rows = torch.nonzero(choice == k).flatten()
            if len(rows) == 0:
                _forget_counts(member)  # no solve: none of its evaluations count this call
                continue
            drawn = member.sample(len(rows), **sample_options(member, options))
            if out is None:
                out = drawn.new_empty((n, drawn.shape[1]))
            out[rows.to(drawn.device)] = drawn
        return out

    def _takes(self, name: str) -> bool:
        """Whether some member's ``sample`` (a nested mixture's: one of its members') takes
        the option ``name``."""
        return any(member._takes(name) if isinstance(member, FlowMixture)
                   else bool(sample_options(member, {name: True})) for member in self.members)

    @property
    def nfe_forward(self) -> int:
        """The members' function evaluations in their last forward solves, summed."""
        return sum(m.nfe_forward for m in self.members if isinstance(m, CountsEvaluations))

    @property
    def nfe_backward(self) -> int:
        return sum(m.nfe_backward for m in self.members if isinstance(m, CountsEvaluations))


def _forget_counts(member: nn.Module) -> None:
    """Zero the last-call evaluation counts of a member (and of its own members) that drew
    no rows, so that the mixture's ``nfe_forward`` counts this call's solves only."""
    if isinstance(member, FlowMixture):
        for inner in member.members:
            _forget_counts(inner)
    elif isinstance(member, NFECounts):
        member.stats_forward, member.stats_backward = SolverStats(), SolverStats()


def best_mixture_weight(log_p: np.ndarray, log_q: np.ndarray, tol: float = 1e-6) -> float:
    r"""The weight w ∈ [0, 1] that maximises the mean held-out log-likelihood of the
    two-member mixture :math:`w\,p + (1 - w)\,q`,

    .. math:: \max_{w \in [0, 1]} \frac1n \sum_i \log\big(w\, p(x_i) + (1 - w)\, q(x_i)\big),

    from the rows' log-densities under each member. The objective is concave in w, so the
    maximiser is an end point when the derivative there says so, and otherwise the root of
    the derivative :math:`\sum_i (p_i - q_i)/(w p_i + (1 - w) q_i)`, found by bisection to
    ``tol``.

    Arguments:
        log_p, log_q: log-densities of the same rows under the two members, shape (n,).

    Returns:
        w, a float in [0, 1].
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    if log_p.shape != log_q.shape or log_p.ndim != 1 or len(log_p) == 0:
        raise ValueError(f"log_p and log_q must be equal-length 1-D arrays, got shapes "
                         f"{log_p.shape} and {log_q.shape}")
    if np.isnan(log_p).any() or np.isnan(log_q).any():
        raise ValueError("log_p and log_q must not contain NaN")
    if (log_p == np.inf).any() or (log_q == np.inf).any():
        raise ValueError("log_p and log_q must not contain +inf")
    shift = np.maximum(log_p, log_q)
    informative = shift > -np.inf  # a row of density 0 under both says nothing about w
    if not informative.any():
        return 1.0
    shift = shift[informative]
    # each row rescaled by its larger density: the same maximiser, no underflow
    p, q = np.exp(log_p[informative] - shift), np.exp(log_q[informative] - shift)

    def slope(w: float) -> float:
        mix = w * p + (1 - w) * q
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(mix > 0, (p - q) / mix, np.where(p > q, np.inf, -np.inf))
        return float(terms.mean())

    if slope(1.0) >= 0:
        return 1.0
    if slope(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)
