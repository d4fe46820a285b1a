"""Training objectives that are not a flow's own method: density matching (reverse KL)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .loop import TrainConfig, TrainResult, train

__all__ = ["reverse_kl_loss", "fit_density_matching"]


def reverse_kl_loss(flow: nn.Module, log_target: Callable[[torch.Tensor], torch.Tensor],
                    n: int) -> torch.Tensor:
    r"""The density-matching loss :math:`\mathbb{E}_{x \sim q}[\log q(x) - \log \tilde p(x)]`
    on n reparametrised draws of the flow q.

    With :math:`\tilde p = Z p` unnormalised, this is :math:`\mathrm{KL}(q \,\|\, p) - \log Z
    \ge -\log Z`, with equality only when q = p (Rezende & Mohamed 2015; Chen et al. 2018,
    section 4.1). ``flow.sample_with_log_prob(n)`` must give draws and their log-densities,
    differentiable in the parameters.

    Arguments:
        flow: a flow with ``sample_with_log_prob`` (:class:`cnflow.CNF`, the discrete flows).
        log_target: :math:`\log \tilde p`, rows (n, D) to (n,).
        n: the number of draws.
    """
    x, log_q = flow.sample_with_log_prob(n)
    return (log_q - log_target(x)).mean()


def fit_density_matching(flow: nn.Module, log_target: Callable[[torch.Tensor], torch.Tensor],
                         config: TrainConfig) -> TrainResult:
    """Fit ``flow`` to an unnormalised log-density by minimising :func:`reverse_kl_loss`
    with ``config.batch_size`` fresh draws a step, in :func:`train`'s loop (history, faults,
    Ctrl-C). Draws come from torch's global generator; seed it for a repeatable fit.

    Example:
        >>> import torch
        >>> from cnflow.flows import PlanarFlow
        >>> from cnflow.training import TrainConfig, fit_density_matching
        >>> flow = PlanarFlow(2, n_layers=2, closed_form="sample")
        >>> target = lambda x: -0.5 * ((x - 1) ** 2).sum(-1)
        >>> result = fit_density_matching(flow, target, TrainConfig(max_iter=3, batch_size=8))
        >>> result.n_iter
        3
    """
    ref = next(flow.parameters())
    # No data: each "batch" only says how many draws to take.
    placeholder = torch.empty(config.batch_size, 0, dtype=ref.dtype, device=ref.device)
    return train(flow, placeholder, lambda model, batch: reverse_kl_loss(
        model, log_target, len(batch)), config)
