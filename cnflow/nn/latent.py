r"""The networks of a latent ODE for irregularly-sampled time series (Chen et al. 2018,
section 5; Rubanova, Chen & Duvenaud 2019).

A series' latent initial state :math:`z_{t_0}` is carried to every time wanted by the ODE
:math:`\mathrm{d}z/\mathrm{d}t = f_\theta(z)` (:class:`LatentDynamics`), and decoded to the
observation space; a GRU run backwards over the observations and their time gaps gives the
approximate posterior :math:`q(z_{t_0} \mid x) = \mathcal{N}(\mu, \operatorname{diag} s^2)`.
:class:`LatentODENet` holds the three parts and the terms of the evidence lower bound,

.. math::
    \operatorname{ELBO}(x) = \mathbb{E}_{z_{t_0} \sim q}\Big[\sum_{j=1}^n
    \log \mathcal{N}\big(x_j; g_\phi(z(t_j)), \sigma^2 I\big)\Big]
    - \mathrm{KL}\big(q(z_{t_0} \mid x) \,\|\, \mathcal{N}(0, I)\big),

on a batch of series padded to one length (:class:`PaddedSeries`). The estimator that fits it,
with the checks and scaling of the caller's series, is :class:`cnflow.LatentODE`.

Example:
    >>> import torch
    >>> from cnflow.nn.latent import LatentODENet, PaddedSeries
    >>> net = LatentODENet(obs_dim=2, latent_dim=3)
    >>> times = torch.tensor([[0.1, 0.4, 0.9], [0.2, 0.5, 0.5]])  # the second: 2 observations
    >>> batch = PaddedSeries(times, torch.randn(2, 3, 2),
    ...                      torch.tensor([[True, True, True], [True, True, False]]),
    ...                      torch.tensor([3, 2]))
    >>> log_lik, kl = net.elbo_terms(batch, n_samples=4)
    >>> log_lik.shape, kl.shape
    (torch.Size([2]), torch.Size([2]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..ode import NFECounts, SolveOptions, SolverStats
from ..ode.options import SolvesODEs

__all__ = ["LatentDynamics", "LatentODENet", "PaddedSeries"]

_LOG_2PI = math.log(2 * math.pi)


class LatentDynamics(nn.Module):
    r"""The latent vector field :math:`f_\theta(z)`: an autonomous MLP
    ``Linear(L, H) → tanh → Linear(H, H) → tanh → Linear(H, L)``, called as ``f(t, z)``.

    Autonomous dynamics make the model invariant to shifting all times together, and let one
    solve serve series whose observations start at different times.
    """

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, latent_dim))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """f(z) at any t, shape of z."""
        return self.net(z)


@dataclass
class PaddedSeries:
    """A batch of B series padded to the longest, N observations, as tensors in the network's
    units (what :class:`LatentODENet` reads; the estimator's standardised values and times
    relative to t0).

    Indexing by a tensor of series indices gives the sub-batch, cut to its longest series.
    """

    times: Tensor  # (B, N), padding repeats each series' last time
    values: Tensor  # (B, N, D), padding 0
    mask: Tensor  # (B, N) bool
    lengths: Tensor  # (B,) int64, on the CPU (pack_padded_sequence wants it there)

    def __getitem__(self, index: Tensor) -> PaddedSeries:
        lengths = self.lengths[index.cpu()]
        n = int(lengths.max())
        index = index.to(self.times.device)
        return PaddedSeries(self.times[index, :n], self.values[index, :n],
                            self.mask[index, :n], lengths)


class LatentODENet(SolvesODEs, NFECounts, nn.Module):
    r"""Encoder, latent dynamics and decoder of a latent ODE; all times are relative to t0.

    - Encoder: a GRU reads the observations backwards in time, from :math:`(x_n, \Delta_n)`
      to :math:`(x_1, \Delta_1)`, with :math:`\Delta_j = t_j - t_{j-1}` the gap to the
      previous observation (:math:`t_0` the reference time, so :math:`\Delta_1` says how far
      the first observation lies from it); its last state h gives
      :math:`(\mu, \log s^2) = W h + b`.
    - Dynamics: :class:`LatentDynamics`.
    - Decoder: ``Linear(L, H) → tanh → Linear(H, D)``.

    Arguments:
        obs_dim: D. latent_dim: L. rec_hidden, ode_hidden, dec_hidden: the widths of the GRU,
        the dynamics MLP and the decoder.
        solve_options: how the latent ODE is solved and differentiated (a
            :class:`cnflow.SolveOptions`; default: dopri5 at rtol 1e-4, atol 1e-5, no adjoint).

    Attributes:
        stats_forward, stats_backward, nfe_forward, nfe_backward: as :class:`cnflow.CNF`'s,
            for the last latent solve.
    """

    def __init__(self, obs_dim: int, latent_dim: int = 4, rec_hidden: int = 32,
                 ode_hidden: int = 32, dec_hidden: int = 32, *,
                 solve_options: SolveOptions | None = None) -> None:
        super().__init__()
        self.obs_dim, self.latent_dim = obs_dim, latent_dim
        self.gru = nn.GRU(obs_dim + 1, rec_hidden, batch_first=True)
        self.to_posterior = nn.Linear(rec_hidden, 2 * latent_dim)
        self.dynamics = LatentDynamics(latent_dim, ode_hidden)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, dec_hidden), nn.Tanh(),
                                     nn.Linear(dec_hidden, obs_dim))
        self.solve_options = (SolveOptions(rtol=1e-4, atol=1e-5, adjoint=False)
                              if solve_options is None else solve_options)
        self.stats_forward, self.stats_backward = SolverStats(), SolverStats()

    def encode(self, batch: PaddedSeries) -> tuple[Tensor, Tensor]:
        """(μ, log s²) of q(z_t0 | x), each (B, L), from the GRU run backwards in time."""
        lengths = batch.lengths
        steps = torch.arange(batch.times.shape[1], device=batch.times.device)
        gaps = torch.diff(batch.times, dim=1, prepend=torch.zeros_like(batch.times[:, :1]))
        # Position s of the reversed sequence reads observation n − 1 − s (padding: index 0).
        rev = (lengths.to(steps.device)[:, None] - 1 - steps[None, :]).clamp(min=0)
        inputs = torch.cat([batch.values, gaps.unsqueeze(-1)], dim=-1)
        inputs = torch.gather(inputs, 1, rev.unsqueeze(-1).expand(-1, -1, inputs.shape[-1]))
        packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        mu, logvar = self.to_posterior(h[-1]).chunk(2, dim=-1)
        return mu, logvar

    def latent_path(self, z0: Tensor, tau: Tensor) -> Tensor:
        """z at the sorted, distinct relative times tau (t0 at 0; earlier times by a backward
        solve), from z0 (..., L) at 0: shape (len(tau), ..., L)."""
        self.stats_forward, self.stats_backward = SolverStats(), SolverStats()
        pieces = []
        negative, positive = tau[tau < 0], tau[tau > 0]
        if len(negative):
            pieces.append(self._solve(z0, negative.flip(0)).flip(0))
        if bool((tau == 0).any()):
            pieces.append(z0.unsqueeze(0))
        if len(positive):
            pieces.append(self._solve(z0, positive))
        return torch.cat(pieces)

    def _solve(self, z0: Tensor, times: Tensor) -> Tensor:
        t = torch.cat([times.new_zeros(1), times])
        ys = self.solve_options.solve(self.dynamics, z0, t, stats=self.stats_forward,
                                      adjoint_stats=self.stats_backward)
        return ys[1:]

    def decode_at(self, z0: Tensor, times: Tensor) -> Tensor:
        """g(z(t)) for z0 of shape (S, B, L) at per-series times (B, M): (S, B, M, D).

        One solve over the union of all the batch's times serves every series; each series
        then reads its own times from it."""
        union, index = torch.unique(times, sorted=True, return_inverse=True)
        path = self.latent_path(z0, union)  # (U, S, B, L)
        b = torch.arange(times.shape[0], device=times.device)[:, None]
        z = path.permute(2, 0, 1, 3)[b, index]  # (B, M, S, L)
        return self.decoder(z.permute(2, 0, 1, 3))

    def elbo_terms(self, batch: PaddedSeries, n_samples: int = 1,
                   generator: torch.Generator | None = None,
                   obs_std: float = 0.1) -> tuple[Tensor, Tensor]:
        r"""Monte Carlo :math:`\mathbb{E}_q[\log p(x \mid z)]` (mean over ``n_samples``
        draws) and the closed-form KL, each (B,), in the module's (standardised) units."""
        mu, logvar = self.encode(batch)
        eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype,
                          device=mu.device)
        z0 = mu + (0.5 * logvar).exp() * eps
        x_hat = self.decode_at(z0, batch.times)  # (S, B, N, D)
        var = obs_std ** 2
        log_lik = -0.5 * ((batch.values - x_hat).square() / var + math.log(var) + _LOG_2PI)
        log_lik = (log_lik.sum(-1) * batch.mask).sum(-1).mean(0)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
        return log_lik, kl
