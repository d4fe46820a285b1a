r"""Latent ODEs for irregularly-sampled time series (Chen et al. 2018, section 5; Rubanova,
Chen & Duvenaud 2019).

A series is a list of observations :math:`x_1, \dots, x_n \in \mathbb{R}^D` at strictly
increasing times :math:`t_1 < \dots < t_n`, with n and the times free to differ from series
to series. The generative model puts the whole series in one latent initial state:

.. math::
    z_{t_0} \sim \mathcal{N}(0, I), \qquad
    z(t) = z_{t_0} + \int_{t_0}^{t} f_\theta(z(s))\, \mathrm{d}s, \qquad
    x_j \mid z(t_j) \sim \mathcal{N}\big(g_\phi(z(t_j)), \sigma^2 I\big),

an ODE (:math:`f_\theta`, a small MLP, solved by :func:`cnflow.odeint`) carrying
:math:`z_{t_0}` to every time at which x is observed or wanted, and a decoder
:math:`g_\phi`. A recognition network, a GRU run backwards in time over the observations and
the time gaps between them, gives the approximate posterior
:math:`q(z_{t_0} \mid x) = \mathcal{N}(\mu, \operatorname{diag} s^2)`, and training maximises
the evidence lower bound (a variational auto-encoder)

.. math::
    \operatorname{ELBO}(x) = \mathbb{E}_{z_{t_0} \sim q}\Big[\sum_{j=1}^n
    \log \mathcal{N}\big(x_j; g_\phi(z(t_j)), \sigma^2 I\big)\Big]
    - \mathrm{KL}\big(q(z_{t_0} \mid x) \,\|\, \mathcal{N}(0, I)\big) \le \log p(x),

with the expectation by reparameterised draws :math:`z_{t_0} = \mu + s \odot \varepsilon` and
the KL term in closed form, :math:`\tfrac12 \sum_l (\mu_l^2 + s_l^2 - 1 - \log s_l^2)`.
Because z(t) is defined at every t, the fitted model interpolates between observations and
extrapolates past them (and before them, by solving backwards) at any times asked for.

:class:`LatentODE` is the estimator (``fit``, ``predict``, ``sample``, ``elbo``, ``score``);
:class:`LatentODENet` is the torch module it trains.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from .estimators.estimator_base import DTYPES, EstimatorBase, draw_seed
from .estimators.params import Boolean, InstanceOf, Integer, Options, Real
from .ode import ADAPTIVE_METHODS, NFECounts, SolveOptions, SolverStats
from .ode.inputs import check_tolerances
from .ode.options import SolvesODEs, deprecated_solver
from .training import (
    LR_SCHEDULES,
    FitCheckpoint,
    TrainConfig,
    TrainingFault,
    TrainResult,
    resolve_device,
    train,
)
from .training.checkpoint import data_digest

__all__ = ["LatentODE", "LatentODENet", "LatentDynamics"]

_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------- input checking
def _check_series(series, n_features: int | None = None,
                  name: str = "series") -> list[tuple[np.ndarray, np.ndarray]]:
    """Each (times, values) pair as float64 arrays of shapes (n,) and (n, D), checked.

    Raises ValueError naming the series and what is wrong: not a list of pairs, empty,
    shapes, NaN/inf, times not strictly increasing (unsorted or duplicated), D mismatch.
    """
    if isinstance(series, (str, bytes)) or not isinstance(series, Sequence):
        raise ValueError(f"{name} must be a list of (times, values) pairs, got "
                         f"{type(series).__name__}")
    if len(series) == 0:
        raise ValueError(f"{name} is empty: give at least one (times, values) pair")
    out = []
    for i, pair in enumerate(series):
        where = f"{name}[{i}]"
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"{where} must be a (times, values) pair, got "
                             f"{type(pair).__name__}"
                             + (f" of length {len(pair)}" if hasattr(pair, "__len__") else ""))
        try:
            times = np.asarray(pair[0], dtype=np.float64)
            values = np.asarray(pair[1], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: times and values must be numeric arrays ({err})") from None
        if times.ndim != 1:
            raise ValueError(f"{where}: times must be 1-D, got shape {times.shape}")
        if len(times) == 0:
            raise ValueError(f"{where} has no observations")
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != len(times):
            raise ValueError(f"{where}: values must have shape ({len(times)},) or "
                             f"({len(times)}, n_features) to match {len(times)} times, got "
                             f"{values.shape}")
        if not np.isfinite(times).all():
            raise ValueError(f"{where}: times contain NaN or infinite values")
        if not np.isfinite(values).all():
            raise ValueError(f"{where}: values contain NaN or infinite values")
        steps = np.diff(times)
        if (steps <= 0).any():
            j = int(np.argmax(steps <= 0))
            kind = "duplicate time" if steps[j] == 0 else "times not increasing"
            raise ValueError(f"{where}: {kind}: t[{j + 1}] = {times[j + 1]:g} follows t[{j}] = "
                             f"{times[j]:g}; times must be strictly increasing (sort them and "
                             "merge duplicates)")
        if n_features is None:
            n_features = values.shape[1]
        elif values.shape[1] != n_features:
            raise ValueError(f"{where} has {values.shape[1]} features, expected {n_features}")
        out.append((times, values))
    return out


def _check_query_times(times, n_series: int) -> tuple[list[np.ndarray], bool]:
    """Query times: one 1-D array for every series, or one per series (any order)."""
    def one(t, where: str) -> np.ndarray:
        try:
            arr = np.asarray(t, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where} must be a 1-D array of numbers ({err})") from None
        if arr.ndim != 1 or len(arr) == 0:
            raise ValueError(f"{where} must be a non-empty 1-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{where} contain NaN or infinite values")
        return arr

    if isinstance(times, (list, tuple)) and len(times) > 0 and all(
            np.ndim(t) == 1 for t in times):
        if len(times) != n_series:
            raise ValueError(f"times: got {len(times)} arrays for {n_series} series; give one "
                             "1-D array shared by all series, or one per series")
        return [one(t, f"times[{i}]") for i, t in enumerate(times)], True
    shared = one(times, "times")
    return [shared] * n_series, False


# ---------------------------------------------------------------------- the torch module
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
        return self.net(z)


@dataclass
class _Padded:
    """A batch of series as padded tensors (internal units: standardised values, times
    measured from t0 in units of the training span)."""

    times: Tensor  # (B, N), padding repeats each series' last time
    values: Tensor  # (B, N, D), padding 0
    mask: Tensor  # (B, N) bool
    lengths: Tensor  # (B,) int64, on the CPU (pack_padded_sequence wants it there)

    def __getitem__(self, index: Tensor) -> _Padded:
        lengths = self.lengths[index.cpu()]
        n = int(lengths.max())
        index = index.to(self.times.device)
        return _Padded(self.times[index, :n], self.values[index, :n], self.mask[index, :n],
                       lengths)


def _pad(series: list[tuple[np.ndarray, np.ndarray]], t0: float, time_scale: float,
         mean: np.ndarray, scale: np.ndarray, dtype: torch.dtype,
         device: torch.device) -> _Padded:
    lengths = [len(t) for t, _ in series]
    b, n, d = len(series), max(lengths), series[0][1].shape[1]
    times = np.zeros((b, n))
    values = np.zeros((b, n, d))
    mask = np.zeros((b, n), dtype=bool)
    for i, (t, x) in enumerate(series):
        k = len(t)
        times[i, :k] = (t - t0) / time_scale
        times[i, k:] = times[i, k - 1]
        values[i, :k] = (x - mean) / scale
        mask[i, :k] = True
    return _Padded(torch.as_tensor(times, dtype=dtype, device=device),
                   torch.as_tensor(values, dtype=dtype, device=device),
                   torch.as_tensor(mask, device=device), torch.as_tensor(lengths))


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

    def encode(self, batch: _Padded) -> tuple[Tensor, Tensor]:
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

    def elbo_terms(self, batch: _Padded, n_samples: int = 1,
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


# ---------------------------------------------------------------------- the estimator
#: The latent ODE's methods: one solve serves a batch's observation times, which a fixed-step
#: method would have to step onto.
_ADAPTIVE = Options(*ADAPTIVE_METHODS, label=f"an adaptive method ({', '.join(ADAPTIVE_METHODS)}): "
                    "a fixed-step method would step onto every observation time")


class LatentODE(EstimatorBase):
    r"""A latent ODE for irregularly-sampled time series, fitted by maximising the ELBO.

    See the module docstring for the model. Values are standardised per feature and times
    measured from t0 (the earliest training time) in units of the training time span inside;
    predictions, samples and the ELBO are in the caller's units.

    Arguments:
        latent_dim: the size L of the latent state z.
        rec_hidden: the GRU encoder's hidden size.
        ode_hidden: the width of the dynamics MLP.
        dec_hidden: the width of the decoder MLP.
        obs_std: σ, the observation noise's standard deviation, in standardised units (a
            fraction of each feature's standard deviation).
        n_samples: draws of z_t0 per series in the training ELBO.
        method, rtol, atol: how the latent ODE is solved (an adaptive method of
            :func:`cnflow.odeint`; ``solver``, the old name of ``method``, is deprecated).
        adjoint: gradients by the adjoint method. Off by default: one solve serves the union
            of a batch's observation times, and the adjoint's backward pass solves once per
            interval between them, which costs more than backpropagation here.
        max_iter, batch_size, lr, lr_schedule: Adam's settings (batch_size in series).
        dtype: ``"float32"`` or ``"float64"``. device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        random_state: None, an int or a numpy RandomState; an int makes fits repeatable.
        verbose: show a progress bar.
        checkpoint, checkpoint_interval: a file to write the fit's state to every
            ``checkpoint_interval`` seconds, resumed by a later ``fit`` with the same
            parameters and series (as in :class:`cnflow.CNFDensity`; a checkpoint of
            another fit is a :class:`cnflow.CheckpointMismatchError`).

    Attributes:
        module_: the fitted :class:`LatentODENet`.
        t0_, time_scale_: the reference time and the time unit.
        mean_, scale_: the per-feature standardisation.
        n_features_in_: D.
        history_: one dict per iteration (loss, i.e. minus the ELBO per observed value in
            standardised units; nfe_forward, nfe_backward; seconds).
        n_iter_: iterations run.

    Example:
        >>> import numpy as np
        >>> from cnflow.latent import LatentODE
        >>> rng = np.random.default_rng(0)
        >>> series = []
        >>> for _ in range(20):
        ...     t = np.sort(rng.uniform(0, 5, size=rng.integers(5, 15)))
        ...     series.append((t, np.sin(t + rng.uniform(0, 6.3))))
        >>> model = LatentODE(max_iter=5, random_state=0).fit(series)
        >>> model.predict(series[:3], np.linspace(0, 8, 50)).shape  # (series, times, features)
        (3, 50, 1)
        >>> model.elbo(series[:3]).shape
        (3,)

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations",
        section 5 (a generative latent function time-series model).
        Rubanova, Chen & Duvenaud (2019), "Latent ODEs for irregularly-sampled time series".
        Kingma & Welling (2014), "Auto-encoding variational Bayes".
    """

    def __init__(self, latent_dim: int = 4, rec_hidden: int = 32, ode_hidden: int = 32,
                 dec_hidden: int = 32, obs_std: float = 0.1, n_samples: int = 1,
                 method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-5,
                 adjoint: bool = False, max_iter: int = 500, batch_size: int = 32,
                 lr: float = 1e-2, lr_schedule: str = "cosine", dtype: str = "float32",
                 device: str = "auto", random_state=None, verbose: bool = False,
                 checkpoint=None, checkpoint_interval: float = 60.0,
                 solver: str = "deprecated") -> None:
        self.latent_dim = latent_dim
        self.rec_hidden = rec_hidden
        self.ode_hidden = ode_hidden
        self.dec_hidden = dec_hidden
        self.obs_std = obs_std
        self.n_samples = n_samples
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.adjoint = adjoint
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval
        self.solver = solver

    # ------------------------------------------------------------ checks and helpers
    _parameter_kinds = {
        **{name: [Integer(1)] for name in ("latent_dim", "rec_hidden", "ode_hidden",
                                           "dec_hidden", "n_samples", "max_iter",
                                           "batch_size")},
        "obs_std": [Real(0, None)],
        "lr": [Real(0, None)],
        "method": [_ADAPTIVE],
        "solver": ["deprecated", _ADAPTIVE],
        "rtol": [Real(0, None, closed="left")],
        "atol": [Real(0, None, closed="left")],
        "adjoint": [Boolean()],
        "lr_schedule": [Options(*LR_SCHEDULES)],
        "dtype": [Options(*DTYPES)],
        "device": [InstanceOf(str, torch.device)],
        "verbose": [Boolean(), Integer(0)],
        "checkpoint": [None, InstanceOf(str, os.PathLike)],
        "checkpoint_interval": [Real(0, None, closed="left")],
    }

    def _check_related_parameters(self) -> None:
        check_tolerances(self.rtol, self.atol)

    def _open_checkpoint(self, checked: list) -> FitCheckpoint | None:
        """The fit's checkpoint (None without ``checkpoint``), identified by the parameters
        and a digest of the series."""
        digest = data_digest(np.concatenate(
            [np.concatenate([t[:, None], x], axis=1).ravel() for t, x in checked]
            + [np.array([len(t) for t, _ in checked], dtype=np.float64)]))
        return self._fit_checkpoint({"series": len(checked), "data digest": digest[:16]})

    def _solve_options(self) -> SolveOptions:
        """The latent solves' options (``solver``, the deprecated name of ``method``, where
        that was set)."""
        solver = None if self.solver == "deprecated" else self.solver
        method = deprecated_solver(solver, self.method, "LatentODE")
        return SolveOptions(method=method, rtol=self.rtol, atol=self.atol,
                            adjoint=self.adjoint)

    def _padded(self, series) -> _Padded:
        checked = _check_series(series, self.n_features_in_)
        return _pad(checked, self.t0_, self.time_scale_, self.mean_, self.scale_,
                    DTYPES[self.dtype], self.device_)

    def _fitted(self) -> None:
        check_is_fitted(self, "module_", msg="This LatentODE is not fitted yet: call fit(series) "
                        "before predict, sample, elbo, score or posterior.")

    # ------------------------------------------------------------ fitting
    def fit(self, series, y=None) -> LatentODE:
        """Fit the model to a list of series by maximising the mean ELBO.

        Arguments:
            series: a list of ``(times, values)`` pairs: times of shape (n_i,), strictly
                increasing; values of shape (n_i,) (one feature) or (n_i, D). Lengths and
                times may differ between series.
            y: ignored.

        Returns:
            self
        """
        self._validate_parameters()
        for name in ("module_", "history_", "n_iter_", "t0_", "time_scale_", "mean_", "scale_",
                     "n_features_in_", "device_"):
            self.__dict__.pop(name, None)
        checked = _check_series(series)
        seed = draw_seed(self.random_state)
        options = self._solve_options()
        all_times = np.concatenate([t for t, _ in checked])
        all_values = np.concatenate([x for _, x in checked])
        t0, span = float(all_times.min()), float(all_times.max() - all_times.min())
        scale = all_values.std(axis=0)
        device = resolve_device(self.device)
        dtype = DTYPES[self.dtype]
        mean, scale = all_values.mean(axis=0), np.where(scale > 0, scale, 1.0)
        data = _pad(checked, t0, span if span > 0 else 1.0, mean, scale, dtype, device)
        self.device_ = device
        checkpoint = self._open_checkpoint(checked)
        if checkpoint is not None and checkpoint.resumed:
            seed = int(checkpoint.progress["seed"])  # the first run's (random_state=None)
        generator = torch.Generator(device=device).manual_seed(seed)
        obs_std, n_samples = float(self.obs_std), int(self.n_samples)

        def loss_fn(module: LatentODENet, index: Tensor) -> Tensor:
            batch = data[index.long()]
            log_lik, kl = module.elbo_terms(batch, n_samples, generator, obs_std)
            return -(log_lik - kl).sum() / batch.mask.sum()

        config = TrainConfig(max_iter=self.max_iter, batch_size=self.batch_size, lr=self.lr,
                             lr_schedule=self.lr_schedule, verbose=self.verbose)
        fault, result = None, None
        with self._seeded(seed):
            module = LatentODENet(all_values.shape[1], self.latent_dim, self.rec_hidden,
                                  self.ode_hidden, self.dec_hidden,
                                  solve_options=options).to(device, dtype)
            saved = None
            if checkpoint is not None:
                saved = checkpoint.progress.get("finished")
                if "elbo_noise" in checkpoint.saved_extra_state:
                    generator.set_state(checkpoint.saved_extra_state["elbo_noise"])
                checkpoint.progress["seed"] = seed
                checkpoint.extra_state["elbo_noise"] = generator.get_state
            if saved is not None:  # a finished fit: no training
                module.load_state_dict(saved["module"])
                result = TrainResult(history=list(saved["history"]),
                                     n_iter=int(saved["n_iter"]))
            else:
                try:
                    result = train(module, torch.arange(len(checked), dtype=dtype), loss_fn,
                                   config, generator=torch.Generator().manual_seed(seed),
                                   checkpoint=checkpoint)
                except TrainingFault as err:
                    fault, result = err, err.result
                if (checkpoint is not None and fault is None
                        and result.stop_reason != "interrupted"):
                    checkpoint.progress["finished"] = {
                        "module": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                        "history": result.history, "n_iter": result.n_iter}
                    checkpoint.write()
        self.module_ = module
        self.t0_, self.time_scale_ = t0, span if span > 0 else 1.0
        self.mean_, self.scale_ = mean, scale
        self.n_features_in_ = all_values.shape[1]
        self.history_ = [] if result is None else result.history
        self.n_iter_ = 0 if result is None else result.n_iter
        if fault is not None:
            raise fault  # the module keeps its last good parameters
        return self

    # ------------------------------------------------------------ using the fitted model
    def posterior(self, series) -> tuple[np.ndarray, np.ndarray]:
        """The mean and standard deviation of q(z_t0 | x) for each series, each (B, L)."""
        self._fitted()
        batch = self._padded(series)
        self.module_.eval()
        with torch.no_grad():
            mu, logvar = self.module_.encode(batch)
        return mu.double().cpu().numpy(), (0.5 * logvar).exp().double().cpu().numpy()

    def _decode(self, series, times, z0_fn) -> np.ndarray | list[np.ndarray]:
        self._fitted()
        batch = self._padded(series)
        queries, per_series = _check_query_times(times, len(batch.lengths))
        m = max(len(q) for q in queries)
        grid = np.zeros((len(queries), m))
        for i, q in enumerate(queries):
            grid[i, :len(q)] = (q - self.t0_) / self.time_scale_
            grid[i, len(q):] = grid[i, len(q) - 1]
        tau = torch.as_tensor(grid, dtype=batch.times.dtype, device=batch.times.device)
        self.module_.eval()
        with torch.no_grad():
            mu, logvar = self.module_.encode(batch)
            x_hat = self.module_.decode_at(z0_fn(mu, logvar), tau)  # (S, B, M, D)
        x = x_hat.double().cpu().numpy() * self.scale_ + self.mean_
        if per_series:
            return [x[:, i, :len(q)] for i, q in enumerate(queries)]
        return x

    def predict(self, series, times) -> np.ndarray | list[np.ndarray]:
        r"""Reconstruct, interpolate and extrapolate: :math:`g(z(t))` at the given times,
        from :math:`z_{t_0}` = the posterior mean of each series.

        Arguments:
            series: the observed series to condition on, as in :meth:`fit`.
            times: the times wanted, any order, inside or outside the observed window
                (before t0 too): one 1-D array for every series, or a list of one array per
                series.

        Returns:
            For shared times, an array (n_series, len(times), n_features); for one array per
            series, a list of arrays (len(times[i]), n_features).
        """
        out = self._decode(series, times, lambda mu, logvar: mu.unsqueeze(0))
        return [x[0] for x in out] if isinstance(out, list) else out[0]

    def sample(self, series, times, n_samples: int = 100,
               random_state=None) -> np.ndarray | list[np.ndarray]:
        r"""Trajectories :math:`g(z(t))` for draws :math:`z_{t_0} \sim q(z_{t_0} \mid x)`
        (the posterior's spread, without the observation noise).

        Returns:
            An array (n_samples, n_series, len(times), n_features) for shared times, else a
            list of (n_samples, len(times[i]), n_features) arrays.
        """
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        self._fitted()
        seed = draw_seed(random_state)
        generator = torch.Generator(device=self.device_).manual_seed(seed)

        def draw(mu: Tensor, logvar: Tensor) -> Tensor:
            eps = torch.randn((int(n_samples), *mu.shape), generator=generator,
                              dtype=mu.dtype, device=mu.device)
            return mu + (0.5 * logvar).exp() * eps

        return self._decode(series, times, draw)

    def elbo(self, series, n_samples: int = 16, random_state=None) -> np.ndarray:
        r"""The evidence lower bound of each series, in the caller's units (nats).

        .. math:: \operatorname{ELBO}(x) = \mathbb{E}_q[\log p(x \mid z_{t_0})]
            - \mathrm{KL}(q(z_{t_0} \mid x) \,\|\, \mathcal{N}(0, I)) \le \log p(x),

        the expectation over ``n_samples`` reparameterised draws. The density of the raw
        values differs from the standardised one by :math:`-n_i \sum_d \log \text{scale}_d`.

        Returns:
            An array (n_series,).
        """
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        self._fitted()
        batch = self._padded(series)
        seed = draw_seed(random_state)
        generator = torch.Generator(device=self.device_).manual_seed(seed)
        self.module_.eval()
        with torch.no_grad():
            log_lik, kl = self.module_.elbo_terms(batch, int(n_samples), generator,
                                                  float(self.obs_std))
        elbo = (log_lik - kl).double().cpu().numpy()
        return elbo - batch.lengths.numpy() * np.log(self.scale_).sum()

    def score(self, series, y=None) -> float:
        """The mean ELBO of the series (higher is better)."""
        return float(self.elbo(series).mean())
