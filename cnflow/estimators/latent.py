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

:class:`LatentODE` is the estimator (``fit``, ``predict``, ``sample``, ``elbo``, ``score``,
``save``, ``load``); the torch module it trains is :class:`cnflow.nn.latent.LatentODENet`, and
the caller's series are checked and padded by :mod:`cnflow.estimators.series`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from ..checks import check_positive_int
from ..nn.latent import LatentODENet, PaddedSeries
from ..ode import ADAPTIVE_METHODS, SolveOptions
from ..ode.inputs import check_tolerances
from ..ode.options import deprecated_solver
from ..training import (
    LR_SCHEDULES,
    FitCheckpoint,
    TrainConfig,
    TrainResult,
    resolve_device,
    train,
)
from ..training.checkpoint import data_digest
from ..training.stages import Stage, StagedFit, StageRun
from .estimator_base import DTYPES, EstimatorBase
from .fitting.persistence import load_fitted, save_fitted
from .fitting.run import draw_seed, finish_fit, forget_fitted, run_stages
from .params import Boolean, InstanceOf, Integer, Options, Real
from .series import check_query_times, check_series, pad_series

__all__ = ["LatentODE"]

_FORMAT = "cnflow-latent-ode/1"

#: The latent ODE's methods: one solve serves a batch's observation times, which a fixed-step
#: method would have to step onto.
_ADAPTIVE = Options(*ADAPTIVE_METHODS, label=f"an adaptive method ({', '.join(ADAPTIVE_METHODS)}): "
                    "a fixed-step method would step onto every observation time")


def _scaling(checked: list, all_values: np.ndarray) -> tuple[float, float, np.ndarray,
                                                              np.ndarray]:
    """The first time and the time span (1 where every time is equal), and each feature's
    mean and scale (1 where it is constant): times and values are fitted scaled by them."""
    all_times = np.concatenate([t for t, _ in checked])
    t0, span = float(all_times.min()), float(all_times.max() - all_times.min())
    scale = all_values.std(axis=0)
    return (t0, span if span > 0 else 1.0, all_values.mean(axis=0),
            np.where(scale > 0, scale, 1.0))


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
        module_: the fitted :class:`cnflow.nn.LatentODENet`.
        t0_, time_scale_: the reference time and the time unit.
        mean_, scale_: the per-feature standardisation.
        n_features_in_: D.
        settings_: the fit's settings (:class:`cnflow.estimators.policy.FitSettings`; saved
            with the model).
        history_: one dict per iteration (loss, i.e. minus the ELBO per observed value in
            standardised units; nfe_forward, nfe_backward; seconds).
        n_iter_: iterations run.
        device_: the device the network is on.

    Example:
        >>> import numpy as np
        >>> from cnflow import LatentODE
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

    _policy_kind = "LatentODE"

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

    def _new_module(self, n_features: int, options: SolveOptions) -> LatentODENet:
        """An untrained network for series of ``n_features`` features (on the CPU)."""
        return LatentODENet(n_features, self.latent_dim, self.rec_hidden, self.ode_hidden,
                            self.dec_hidden, solve_options=options)

    def _padded(self, series) -> PaddedSeries:
        checked = check_series(series, self.n_features_in_)
        return pad_series(checked, self.t0_, self.time_scale_, self.mean_, self.scale_,
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
        forget_fitted(self, ("module_", "history_", "n_iter_", "t0_", "time_scale_", "mean_",
                             "scale_", "n_features_in_", "device_", "settings_"))
        checked = check_series(series)
        seed = draw_seed(self.random_state)
        options = self._solve_options()
        all_values = np.concatenate([x for _, x in checked])
        t0, span, mean, scale = _scaling(checked, all_values)
        device, dtype = resolve_device(self.device), DTYPES[self.dtype]
        data = pad_series(checked, t0, span, mean, scale, dtype, device)
        self.device_ = device
        self.settings_ = settings = self._resolve_settings(len(checked), all_values.shape[1])
        fit = StagedFit(self._open_checkpoint(checked), None)
        seed = fit.seed(seed)  # a resumed fit's first seed (random_state=None)
        generator = torch.Generator(device=device).manual_seed(seed)
        obs_std, n_samples = float(self.obs_std), int(self.n_samples)

        def loss_fn(module: LatentODENet, index: Tensor) -> Tensor:
            batch = data[index.long()]
            log_lik, kl = module.elbo_terms(batch, n_samples, generator, obs_std)
            return -(log_lik - kl).sum() / batch.mask.sum()

        config = TrainConfig(max_iter=settings.max_iter, batch_size=settings.batch_size,
                             lr=settings.lr, lr_schedule=settings.lr_schedule,
                             verbose=self.verbose)
        with self._seeded(seed):
            module = self._new_module(all_values.shape[1], options).to(device, dtype)
            checkpoint = fit.checkpoint
            if checkpoint is not None:  # the ELBO's noise stream resumes where it was
                if "elbo_noise" in checkpoint.saved_extra_state:
                    generator.set_state(checkpoint.saved_extra_state["elbo_noise"])
                checkpoint.extra_state["elbo_noise"] = generator.get_state

            def train_elbo(run: StageRun) -> TrainResult:
                return train(module, torch.arange(len(checked), dtype=dtype), loss_fn, config,
                             generator=torch.Generator().manual_seed(seed),
                             checkpoint=run.checkpoint)

            result, fault = run_stages(fit, [Stage("elbo")], train_elbo, module=module)
        self.module_ = module
        self.t0_, self.time_scale_ = t0, span
        self.mean_, self.scale_ = mean, scale
        self.n_features_in_ = all_values.shape[1]
        finish_fit(self, result, fault)  # the module keeps its last good parameters
        return self

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the fitted estimator to a ``torch.save`` file that loads with
        ``weights_only=True`` (tensors and plain values only; no code runs on load): the
        parameters, the network's weights, the scaling of times and values, and the history.

        The file is written atomically (:func:`cnflow.files.atomic_write`): an interrupted
        save leaves the file that was at ``path`` before.

        Raises:
            sklearn.exceptions.NotFittedError: before :meth:`fit`.
        """
        self._fitted()
        save_fitted(self, path, _FORMAT, self.module_, t0=float(self.t0_),
                    time_scale=float(self.time_scale_), mean=torch.from_numpy(self.mean_),
                    scale=torch.from_numpy(self.scale_),
                    n_features_in=int(self.n_features_in_))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> LatentODE:
        """Read a file written by :meth:`save`; ``device`` overrides the saved device.

        Raises:
            FileNotFoundError: no file at ``path``.
            cnflow.ModelFileError: (a ValueError) the file is truncated, empty, not a file
                of :meth:`save`, of another estimator, or has parts missing or malformed;
                the message names the file and says which.
        """
        def rebuild(est: LatentODE, data: dict) -> LatentODENet:
            n_features = int(data["n_features_in"])
            mean, scale = data["mean"].numpy(), data["scale"].numpy()
            if mean.shape != (n_features,) or scale.shape != (n_features,):
                raise ValueError(f"mean and scale of shapes {tuple(mean.shape)} and "
                                 f"{tuple(scale.shape)} for {n_features} features")
            est.t0_, est.time_scale_ = float(data["t0"]), float(data["time_scale"])
            est.mean_, est.scale_, est.n_features_in_ = mean, scale, n_features
            return est._new_module(n_features, est._solve_options())

        est, module = load_fitted(cls, path, _FORMAT, device, rebuild)
        est.module_ = module
        return est

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
        queries, per_series = check_query_times(times, len(batch.lengths))
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
        n_samples = check_positive_int(n_samples, "n_samples")
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
        n_samples = check_positive_int(n_samples, "n_samples")
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
