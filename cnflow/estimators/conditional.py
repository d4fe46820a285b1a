r"""Conditional density estimation with a continuous normalizing flow:
:class:`ConditionalCNFDensity`, p(y | x) behind scikit-learn's ``fit(X, y)``."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ..checks import check_positive_int
from ..flows.cnf import CNF
from ..flows.mixture import FlowMixture
from ..nn import CONDITIONINGS
from ..preprocessing import TargetContextPreprocessor
from .cnf_estimator import CNFEstimator
from .estimator_base import draw_seed
from .params import Options

__all__ = ["ConditionalCNFDensity"]

#: Draws per row behind :meth:`ConditionalCNFDensity.predict`'s Monte Carlo mean.
_PREDICT_DRAWS = 200


class _Rows(nn.Module):
    """A conditional CNF read on rows [u_y, u_x] (targets, then context), so that the shared
    fit (minibatches of rows, validation, members, checkpoints) trains it as it trains an
    unconditional flow."""

    def __init__(self, flow: CNF) -> None:
        super().__init__()
        self.flow = flow

    @property
    def dim(self) -> int:
        return self.flow.dim

    @property
    def net(self) -> nn.Module:
        return self.flow.net

    @property
    def solve_options(self):
        return self.flow.solve_options

    @property
    def nfe_forward(self) -> int:
        return self.flow.nfe_forward

    @property
    def nfe_backward(self) -> int:
        return self.flow.nfe_backward

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows[:, :self.flow.dim], rows[:, self.flow.dim:]

    def log_prob(self, rows: torch.Tensor, return_regularisers: bool = False, **kwargs):
        return self.flow.log_prob(*self.split(rows), return_regularisers=return_regularisers,
                                  **kwargs)

    def flow_matching_loss(self, rows: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.flow.flow_matching_loss(*self.split(rows), **kwargs)


class ConditionalCNFDensity(CNFEstimator):
    r"""The conditional density p(y | x) of targets y given features x, by a conditional CNF.

    ``fit(X, y)`` follows scikit-learn's convention: X holds the conditioning features (n,
    n_features), y the modelled variables (n,) or (n, n_targets). The targets are mapped by
    ``preprocessing`` (whitening by default) and the features standardised; the flow
    :math:`\dot z = f(z, t; x)` carries each target to N(0, I) with its own row's features as
    context (a :class:`cnflow.CNF` with ``context_features``), so

    .. math:: \log p(y \mid x) = \log \mathcal{N}(z(T); 0, I)
        + \int_0^T \operatorname{tr}\frac{\partial f}{\partial z}\,\mathrm{d}t
        + \log\left|\det \frac{\partial g}{\partial y}\right|,

    exact (by the ODE), in y's own units. It is a sibling of :class:`CNFDensity` over their
    shared base (:class:`cnflow.estimators.cnf_estimator.CNFEstimator`): training,
    validation, members (cross-fitted flows averaged on the smallest tables), time budgets,
    checkpoints, warm starts and devices are the same; flow matching pairs each (y, x) with a
    Gaussian draw and regresses the field on straight paths, keeping x fixed along each path;
    maximum likelihood and the fine-tuning solve the ODE. There is no stacking with a
    Gaussian mixture and the base is N(0, I).

    **Defaults that differ from CNFDensity's** (its own table in the fit policy,
    ``POLICIES["ConditionalCNFDensity"]`` in :mod:`cnflow.estimators.policy`; resolved values
    in ``settings_``): flow matching takes larger batches, and fine-tuning starts at a much
    smaller fraction of ``lr``. At CNFDensity's fraction the first fine-tuning steps moved
    the conditional flow away from what flow matching had found, and fine-tuning ended
    worse than flow matching alone; the measurements are in ``docs/benchmarks.md``
    ("Conditional densities").

    **Where the context enters**: ``conditioning="gates"`` (default) feeds x to every
    layer's gate and shift, :math:`(W h + b) \odot \sigma(a t + G x + e) + d t + H x`, next to
    time (the concat-squash form); ``"concat"`` appends x to the first layer's input only.
    The comparison is in ``docs/benchmarks.md`` ("Conditional densities").

    Arguments:
        preprocessing: the targets' map, ``"standardize"``, ``"whiten"``, ``"log"`` or
            ``"gaussianize"`` (see :class:`cnflow.preprocessing.TabularPreprocessor`);
            ``"auto"``: where rows are held out, the one of whiten, log and
            gaussianize under which a Gaussian mixture of the targets scores the first
            held-out fold best (:func:`cnflow.preprocessing.choose_preprocessing`), else
            whitening. The features are always standardised. Gaussianised targets suit
            bounded data such as pixels (``docs/benchmarks.md``, "Conditional densities").
        conditioning: ``"gates"`` or ``"concat"`` (see above).
        batch_size, fine_tune_lr: as :class:`CNFDensity`, with the ``"auto"`` values above.
        The others: as :class:`CNFDensity`.

    Attributes:
        flow_: the fitted flow over rows [g(y), h(x)] (with several members their
            :class:`cnflow.flows.FlowMixture`).
        n_targets_: the number of target columns.
        n_features_in_: the number of feature columns.
        history_, n_iter_, n_members_, device_: as in :class:`CNFDensity`.
        preprocessor_: the fitted :class:`cnflow.preprocessing.TargetContextPreprocessor`.

    Example:
        >>> import numpy as np
        >>> from cnflow import ConditionalCNFDensity
        >>> rng = np.random.default_rng(0)
        >>> X = rng.uniform(-2, 2, size=(400, 1))
        >>> y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=400)
        >>> est = ConditionalCNFDensity(hidden=(16, 16), max_iter=20, random_state=0)
        >>> est.fit(X, y).score_samples(X[:3], y[:3]).shape
        (3,)
        >>> est.sample(X[:3], n_samples=5, random_state=0).shape   # 1-D y: (rows, draws)
        (3, 5)
        >>> est.predict(X[:3]).shape
        (3,)
    """

    _FITTED = (*CNFEstimator._FITTED, "n_targets_", "targets_1d_")

    def __init__(self, hidden="auto", objective="flow_matching", trace="exact",
                 method="dopri5", rtol=1e-5, atol=1e-5, adjoint=True, max_iter="auto",
                 batch_size="auto", lr="auto", lr_schedule="auto", weight_decay=0.0,
                 kinetic_energy=0.01, jacobian_norm=0.01, time_exponent=1.5,
                 fine_tune_iter="auto", fine_tune_lr="auto", fine_tune_tol=1e-3,
                 fine_tune_adjoint="auto", preprocessing="auto", conditioning="gates",
                 n_members="auto", validation_fraction="auto", regime="auto",
                 n_iter_no_change="auto",
                 max_seconds=None,
                 dtype="float32", device="auto", random_state=None, verbose=False,
                 warm_start=False, checkpoint=None, checkpoint_interval=60.0):
        self.hidden = hidden
        self.objective = objective
        self.trace = trace
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.adjoint = adjoint
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.kinetic_energy = kinetic_energy
        self.jacobian_norm = jacobian_norm
        self.time_exponent = time_exponent
        self.fine_tune_iter = fine_tune_iter
        self.fine_tune_lr = fine_tune_lr
        self.fine_tune_tol = fine_tune_tol
        self.fine_tune_adjoint = fine_tune_adjoint
        self.preprocessing = preprocessing
        self.conditioning = conditioning
        self.n_members = n_members
        self.validation_fraction = validation_fraction
        self.regime = regime
        self.n_iter_no_change = n_iter_no_change
        self.max_seconds = max_seconds
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval

    _parameter_kinds = {"conditioning": [Options(*CONDITIONINGS)]}

    # ------------------------------------------------------------ the shared fit's hooks
    def _modelled_features(self, n_columns: int) -> int:
        return int(self.n_targets_)

    def _columns_to_preprocess(self, X: np.ndarray) -> np.ndarray:
        return X[:, :int(self.n_targets_)]

    _preprocessed_name = "y"

    def _new_preprocessor(self, kind: str, seed: int) -> TargetContextPreprocessor:
        return TargetContextPreprocessor(self.n_targets_, kind, random_state=seed)

    def _preprocessor_from_state(self, state: dict) -> TargetContextPreprocessor:
        return TargetContextPreprocessor.from_state(state)

    def _flow_width(self) -> int:
        return int(self.n_features_in_) + int(self.n_targets_)

    def _saved_extras(self) -> dict:
        return {"n_targets": int(self.n_targets_), "targets_1d": bool(self.targets_1d_)}

    def _restore_extras(self, data: dict) -> None:
        self.n_targets_ = int(data["n_targets"])
        self.targets_1d_ = bool(data["targets_1d"])

    def _build_flow(self, n_features: int, base: nn.Module | None = None) -> nn.Module:
        n_targets = int(self.n_targets_)
        return _Rows(CNF(
            n_targets, context_features=n_features - n_targets, hidden=self.settings_.hidden,
            conditioning=self.conditioning, trace=self.trace, method=self._method(),
            rtol=self.rtol, atol=self.atol, adjoint=self.adjoint))

    # ------------------------------------------------------------ the estimator API
    def _rows(self, X, y, reset: bool) -> tuple[np.ndarray, bool]:
        """Validated [y, X] rows (y as a column block), and whether y is 1-D."""
        X, y = validate_data(self, X, y, reset=reset, multi_output=True, y_numeric=True,
                             dtype=np.float64, ensure_min_samples=1 if not reset else 2)
        y = np.asarray(y, dtype=np.float64)
        targets = y.reshape(len(y), -1)
        if not reset and targets.shape[1] != self.n_targets_:
            raise ValueError(f"y has {targets.shape[1]} columns, but the model was fitted on "
                             f"{self.n_targets_}")
        return np.concatenate([targets, X], axis=1), y.ndim == 1

    def fit(self, X, y):
        """Fit p(y | x) to the pairs (X[i], y[i]).

        Arguments:
            X: the conditioning features, array-like (n_samples, n_features).
            y: the targets, array-like (n_samples,) or (n_samples, n_targets).

        Returns:
            self
        """
        if y is None:
            raise ValueError("ConditionalCNFDensity models y given X: fit(X, y) needs y")
        warm = self._start_fit()
        old_targets = None if warm is None else warm.get("n_targets")
        rows, one_d = self._rows(X, y, reset=True)
        n_targets = rows.shape[1] - self.n_features_in_
        if old_targets is not None and n_targets != old_targets:
            raise ValueError(f"warm_start continues a fit to {old_targets} targets; y has "
                             f"{n_targets}")
        if warm is not None and self.n_features_in_ != warm["n_features"]:
            raise ValueError(f"warm_start continues a fit to {warm['n_features']} features; "
                             f"X has {self.n_features_in_}")
        self.n_targets_, self.targets_1d_ = n_targets, one_d
        return self._fit_rows(rows, warm)

    def _warm_start_state(self) -> dict | None:
        warm = super()._warm_start_state()
        if warm is not None:
            warm["n_targets"] = int(self.n_targets_)
        return warm

    def score_samples(self, X, y, *, batch_size: int | None = None) -> np.ndarray:
        """log p(y_i | x_i) of each pair, in y's units; numpy array (n_samples,).

        ``batch_size``: pairs per solve (None: 4096)."""
        check_is_fitted(self, "flow_")
        rows, _ = self._rows(X, y, reset=False)
        return self._score_rows(rows, self._batch_size(batch_size))

    def score(self, X, y) -> float:
        """The mean of log p(y_i | x_i) (the conditional log-likelihood per pair)."""
        return float(self.score_samples(X, y).mean())

    def sample(self, X, n_samples: int = 1, random_state=None, *,  # type: ignore[override]
               return_log_prob: bool = False, batch_size: int | None = None):
        """Draw targets y ~ p(y | x) for each row x of X.

        Arguments:
            X: features, array-like (n_rows, n_features).
            n_samples: draws per row.
            random_state: None, an int or a numpy RandomState (an int repeats the draws).
            return_log_prob: also return log p(y | x) of each draw in y's units (from the
                sampling solve itself for a single flow; several members score the draws
                under each).
            batch_size: draws per solve (None: 4096); memory is bounded by it.

        Returns:
            Draws of shape (n_rows, n_samples, n_targets), or (n_rows, n_samples) when y was
            1-D at fit; with ``return_log_prob`` the pair ``(draws, log_prob)``, log_prob of
            shape (n_rows, n_samples).
        """
        check_is_fitted(self, "flow_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        n_samples = check_positive_int(n_samples, "n_samples")
        batch_size = self._batch_size(batch_size)
        context = np.repeat(self.preprocessor_.transform_context(X), n_samples, axis=0)
        C = torch.as_tensor(context, dtype=self._torch_dtype(), device=self.device_)
        seed = draw_seed(random_state)
        draws, log_qs = [], []
        self.flow_.eval()
        with self._seeded(seed), torch.no_grad():
            for start in range(0, len(C), batch_size):
                u, log_q = self._draw(C[start:start + batch_size], return_log_prob)
                draws.append(u)
                log_qs.append(log_q)
        U = torch.cat(draws).double().cpu().numpy()
        Y = self.preprocessor_.inverse_transform(U)
        shape = (len(X), n_samples) if self.targets_1d_ else (len(X), n_samples,
                                                               self.n_targets_)
        if not return_log_prob:
            return Y.reshape(shape)
        _, logdet = self.preprocessor_.targets.transform(Y)
        log_p = torch.cat(log_qs).double().cpu().numpy() + logdet
        return Y.reshape(shape), log_p.reshape(len(X), n_samples)

    def _draw(self, C: torch.Tensor, with_log_prob: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One draw u_y per context row of C and (with ``with_log_prob``) its exact-trace
        log q(u_y | u_x)."""
        if not isinstance(self.flow_, FlowMixture):
            if with_log_prob:
                return self.flow_.flow.sample_with_log_prob(context=C, trace="exact")
            return self.flow_.flow.sample(context=C), None
        choice = self.flow_.choose(len(C)).to(C.device)
        U = C.new_empty((len(C), self.n_targets_))
        for k, member in enumerate(self.flow_.members):
            rows = torch.nonzero(choice == k).flatten()
            if len(rows):
                U[rows] = member.flow.sample(context=C[rows])
        if not with_log_prob:
            return U, None
        return U, self._log_prob(self.flow_, torch.cat([U, C], dim=1))

    def predict(self, X) -> np.ndarray:
        """The conditional mean E[y | x] of each row, by the mean of 200 draws (a fixed
        seed, so repeatable); shape (n_rows,) or (n_rows, n_targets), as y at fit. Its Monte
        Carlo error is the conditional standard deviation / √200."""
        return self.sample(X, _PREDICT_DRAWS, random_state=0).mean(axis=1)
