r"""Conditional density estimation with a continuous normalizing flow:
:class:`ConditionalCNFDensity`, p(y | x) behind scikit-learn's ``fit(X, y)``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y, validate_data
from torch import nn

from ..checks import check_positive_int
from ..files import ModelFileError
from ..flows.cnf import CNF
from ..flows.mixture import FlowMixture
from ..nn import CONDITIONINGS
from ..nn.registry import registered_module
from ..ode.options import check_steps
from ..preprocessing import TargetContextPreprocessor
from .cnf_estimator import CNFEstimator
from .fitting.persistence import reading_parts_of
from .fitting.run import draw_seed
from .params import Options
from .policy import FitSettings, _is_auto
from .user_modules import (
    ModuleSpec,
    build_module,
    context_width,
    missing_module_error,
    module_reference,
)

__all__ = ["ConditionalCNFDensity"]

#: Draws per row behind :meth:`ConditionalCNFDensity.predict`'s Monte Carlo mean.
_PREDICT_DRAWS = 200


class _Rows(nn.Module):
    """A conditional CNF read on rows [u_y, u_x] (targets, then features), so that the shared
    fit (minibatches of rows, validation, members, checkpoints) trains it as it trains an
    unconditional flow.

    The context is the features themselves, or with an ``embedding`` e(u_x) of the
    features reshaped to ``feature_shape``: the embedding is a submodule, so its parameters
    are among the module's (trained with the flow, saved in its state_dict)."""

    def __init__(self, flow: CNF, embedding: nn.Module | None = None,
                 feature_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.flow = flow
        self.embedding = embedding  # a submodule, or None (registers nothing)
        self.feature_shape = None if feature_shape is None else tuple(feature_shape)

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

    def context(self, u_x: torch.Tensor) -> torch.Tensor:
        """The context of flattened features u_x (n, n_features): u_x, or e(u_x) (n, k)."""
        if self.embedding is None:
            return u_x
        return self.embedding(u_x.reshape(len(u_x), *self.feature_shape))

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_y and the context of rows [u_y, u_x]."""
        return rows[:, :self.flow.dim], self.context(rows[:, self.flow.dim:])

    def sample(self, u_x: torch.Tensor, *, steps: int | None = None,
               method: str | None = None) -> torch.Tensor:
        """One u_y per row of features u_x (``steps``, ``method``: fixed-step draws, as
        :meth:`cnflow.CNF.sample`)."""
        return self.flow.sample(context=self.context(u_x), steps=steps, method=method)

    def sample_with_log_prob(self, u_x: torch.Tensor, **kwargs
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One u_y per row of features u_x and its log q(u_y | u_x), from one solve."""
        return self.flow.sample_with_log_prob(context=self.context(u_x), **kwargs)

    def log_prob(self, rows: torch.Tensor, return_regularizers: bool = False, **kwargs):
        return self.flow.log_prob(*self.split(rows), return_regularizers=return_regularizers,
                                  **kwargs)

    def flow_matching_loss(self, rows: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.flow.flow_matching_loss(*self.split(rows), **kwargs)

    def encode(self, rows: torch.Tensor, **kwargs) -> torch.Tensor:
        """Base points of rows [u_y, u_x]: u_y carried to t = T given its context."""
        return self.flow.encode(*self.split(rows), **kwargs)


def _target_names(y) -> np.ndarray | None:
    """The column names of targets given as a data frame (or the name of a named series),
    as scikit-learn records ``feature_names_in_``: only when they are all strings."""
    columns = getattr(y, "columns", None)
    if columns is None:
        name = getattr(y, "name", None)
        columns = None if name is None else [name]
    if columns is None or not all(isinstance(c, str) for c in columns):
        return None
    return np.asarray(list(columns), dtype=object)


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

    **Raw features through an embedding.** With ``embedding``, a network e maps the
    features to the context, :math:`\dot z = f(z, t; e(x))`, and is trained with the flow
    (its parameters are the fitted module's, so every step's gradient reaches them; by the
    adjoint method too). X may then have any shape (n, ...), e.g. images (n, C, H, W); e
    gets each batch in that shape, ``(m, *X.shape[1:])``, and must return (m, k). The context's
    width k is read by running e once on two rows of zeros (an ``out_features`` attribute,
    where e has one, must agree). With an embedding the features are not standardised per
    column (a pixel that is always 0 has no scale): every entry is mapped by one mean and
    one standard deviation, those of all the training features' entries, (x − m)/s, so the
    embedding sees data of unit scale with their relative values kept. The targets' map is
    unchanged, and so is the density: only the targets' map enters log p(y | x).

    **A velocity field of your own.** ``net`` replaces the built-in concat-squash network
    by f(t, z, context) with :class:`cnflow.CNF`'s signature (z of shape (m, n_targets),
    the context (m, k), t a 0-d tensor in the solves and an (m, 1) column in flow
    matching); ``hidden`` and ``conditioning`` then do not apply and must stay at their
    defaults. A user field keeps its own initialisation (the built-in one starts at the
    identity where rows are held out).

    **How modules are given.** ``embedding`` and ``net`` each take a registered name (a str,
    :func:`cnflow.nn.register_module`), a factory (a callable of no arguments returning a
    fresh ``nn.Module``; a class is one), or an ``nn.Module``, which is deep-copied for each
    member and never trained itself. Every member of every fit gets a fresh module, and
    :func:`sklearn.base.clone` works. The fitted modules are ``flow_.embedding`` and
    ``flow_.flow.net`` (with several members, those of each of ``flow_.members``).
    :meth:`save` writes their weights and, for each, its registered name or else the
    qualified name ``module:qualname`` of its factory (of an instance, of its class), never
    its code; :meth:`load` rebuilds them from the factory registered under that name or
    from ``load(..., embedding=factory, net=factory)``.

    Arguments:
        preprocessing: the targets' map, ``"standardize"``, ``"whiten"``, ``"log"`` or
            ``"gaussianize"`` (see :class:`cnflow.preprocessing.TabularPreprocessor`);
            ``"auto"``: where rows are held out, the one of whiten, log and
            gaussianize under which a Gaussian mixture of the targets scores the first
            held-out fold best (:func:`cnflow.preprocessing.choose_preprocessing`), else
            whitening. The features are always standardised. Gaussianised targets suit
            bounded data such as pixels (``docs/benchmarks.md``, "Conditional densities").
        conditioning: ``"gates"`` or ``"concat"`` (see above).
        embedding: None (the standardised features are the context), or a network from the
            features ``(n, *feature_shape)`` to the context (n, k), trained with the flow, as a
            registered name, a factory or a module (see above).
        net: None (the built-in network), or the velocity field f(t, z, context), as a
            registered name, a factory or a module (see above).
        field: the built-in network, as :class:`CNFDensity`'s (``"hollow"`` reads the
            context through its gates only).
        batch_size, fine_tune_lr: as :class:`CNFDensity`, with the ``"auto"`` values above.
        pairing: as :class:`CNFDensity`; with ``"ot"`` a base draw moves only between rows
            of equal context (the base is N(0, I) given each context), so it pairs only
            where contexts repeat (e.g. class labels).
        reflow: as :class:`CNFDensity`; the rows keep their features, each base point its
            row's context.
        The others: as :class:`CNFDensity`.

    Attributes:
        flow_: the fitted flow over rows [g(y), h(x)] (with several members their
            :class:`cnflow.flows.FlowMixture`).
        n_targets_: the number of target columns.
        n_features_in_: the number of feature columns (with an embedding: the number of
            entries of a row of X, e.g. C·H·W).
        feature_shape_: the shape of a row of X, X.shape[1:].
        feature_names_in_: X's column names, when X was a data frame with string column
            names (scikit-learn's convention).
        target_names_: y's column names, when y was a data frame (or a named series).
        context_features_: k, the width of the context the flow reads.
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

    _policy_kind = "ConditionalCNFDensity"

    _FITTED = (*CNFEstimator._FITTED, "n_targets_", "targets_1d_", "feature_shape_",
               "context_features_")

    def __init__(self, hidden="auto", objective="flow_matching", trace="exact",
                 method="dopri5", rtol=1e-5, atol=1e-5, adjoint=True, max_iter="auto",
                 batch_size="auto", lr="auto", lr_schedule="auto", weight_decay=0.0,
                 kinetic_energy=0.01, jacobian_norm=0.01, time_exponent=1.5, pairing="auto",
                 reflow="auto",
                 fine_tune_iter="auto", fine_tune_lr="auto", fine_tune_tol=1e-3,
                 fine_tune_adjoint="auto", preprocessing="auto", conditioning="gates",
                 embedding=None, net=None, n_members="auto", validation_fraction="auto",
                 regime="auto",
                 n_iter_no_change="auto",
                 max_seconds=None,
                 dtype="float32", device="auto", random_state=None, verbose=False,
                 warm_start=False, checkpoint=None, checkpoint_interval=60.0,
                 field="auto"):
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
        self.pairing = pairing
        self.reflow = reflow
        self.fine_tune_iter = fine_tune_iter
        self.fine_tune_lr = fine_tune_lr
        self.fine_tune_tol = fine_tune_tol
        self.fine_tune_adjoint = fine_tune_adjoint
        self.preprocessing = preprocessing
        self.conditioning = conditioning
        self.embedding = embedding
        self.net = net
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
        self.field = field

    _parameter_kinds = {
        "conditioning": [Options(*CONDITIONINGS)],
        "embedding": [None, ModuleSpec()],
        "net": [None, ModuleSpec()],
    }

    def _check_related_parameters(self) -> None:
        super()._check_related_parameters()
        if self.net is not None and (not _is_auto(self.hidden) or not _is_auto(self.field)
                                     or self.conditioning != "gates"):
            raise ValueError("net replaces the built-in network, so hidden, field and "
                             "conditioning do not apply: leave them at 'auto', 'auto' and "
                             "'gates' with a net")
        if self.field == "hollow" and self.conditioning != "gates":
            raise ValueError("a hollow field reads the context through its gates only; "
                             f"conditioning={self.conditioning!r} needs field='dense'")

    def _resolve_settings(self, n_samples: int, n_columns: int,
                          n_members: int | None = None) -> FitSettings:
        settings = super()._resolve_settings(n_samples, n_columns, n_members)
        if self.net is not None:  # no built-in network: no hidden widths, no field
            settings = dataclasses.replace(settings, hidden=None, field="custom")
        elif self.conditioning != "gates" and _is_auto(self.field):
            settings = dataclasses.replace(settings, field="dense")
        return settings

    def _plain_params(self) -> dict:
        """As the base's, with each user module as the name a file records for it (its
        registered name, or its factory's ``module:qualname``)."""
        params = super()._plain_params()
        for name in ("embedding", "net"):
            params[name] = module_reference(params[name])
        return params

    # ------------------------------------------------------------ the shared fit's hooks
    def _modelled_features(self, n_columns: int) -> int:
        return int(self.n_targets_)

    def _columns_to_preprocess(self, X: np.ndarray) -> np.ndarray:
        return X[:, :int(self.n_targets_)]

    _preprocessed_name = "y"

    def _new_preprocessor(self, kind: str, seed: int) -> TargetContextPreprocessor:
        context = "standardize" if self.embedding is None else "global"
        return TargetContextPreprocessor(self.n_targets_, kind, random_state=seed,
                                         context=context)

    def _preprocessor_from_state(self, state: dict) -> TargetContextPreprocessor:
        return TargetContextPreprocessor.from_state(state)

    def _flow_width(self) -> int:
        return int(self.n_features_in_) + int(self.n_targets_)

    def _saved_extras(self) -> dict:
        names = getattr(self, "target_names_", None)
        return {"n_targets": int(self.n_targets_), "targets_1d": bool(self.targets_1d_),
                "target_names": None if names is None else [str(n) for n in names],
                "feature_shape": [int(d) for d in self.feature_shape_],
                "context_features": int(self.context_features_)}

    def _restore_extras(self, data: dict) -> None:
        self.n_targets_ = int(data["n_targets"])
        if data.get("target_names") is not None:
            self.target_names_ = np.asarray(data["target_names"], dtype=object)
        self.targets_1d_ = bool(data["targets_1d"])
        self.feature_shape_ = tuple(int(d) for d in
                                    data.get("feature_shape", [self.n_features_in_]))
        self.context_features_ = int(data.get("context_features", self.n_features_in_))

    def _build_flow(self, n_features: int, base: nn.Module | None = None) -> nn.Module:
        """A fresh member: the CNF over the targets (the built-in network or a fresh
        ``net``) and, with ``embedding``, a fresh embedding; ``context_features_`` is the
        width of the context it reads."""
        n_targets = int(self.n_targets_)
        embedding = None
        k = n_features - n_targets
        if self.embedding is not None:
            embedding = build_module(self.embedding, "embedding")
            k = context_width(embedding, self.feature_shape_)
        net = None if self.net is None else build_module(self.net, "net")
        flow = CNF(n_targets, context_features=k, net=net,
                   hidden=self.settings_.hidden or (), conditioning=self.conditioning,
                   field=self.settings_.field if self.net is None else "dense",
                   trace=self.trace, method=self._method(), rtol=self.rtol, atol=self.atol,
                   adjoint=self.adjoint)
        self.context_features_ = k
        return _Rows(flow, embedding, self.feature_shape_)

    # ------------------------------------------------------------ the estimator API
    def _features(self, X, y=None, reset: bool = False):
        """X validated and flattened to rows (n, n_features), and y validated with it when
        given. Without an embedding X is a table (scikit-learn's checks, feature names
        included); with one it may have any shape (n, ...), and a row's shape must be the
        one seen at fit (``feature_shape_``)."""
        minimum = 2 if reset else 1
        if self.embedding is None:
            if y is None:
                X = validate_data(self, X, dtype=np.float64, reset=reset)
            else:
                X, y = validate_data(self, X, y, reset=reset, multi_output=True,
                                     y_numeric=True, dtype=np.float64,
                                     ensure_min_samples=minimum)
            if reset:
                self.feature_shape_ = (int(X.shape[1]),)
            return X, y
        if y is None:
            X = check_array(X, allow_nd=True, dtype=np.float64)
        else:
            X, y = check_X_y(X, y, allow_nd=True, multi_output=True, y_numeric=True,
                             dtype=np.float64, ensure_min_samples=minimum)
        shape = tuple(int(d) for d in X.shape[1:])
        if reset:
            self.__dict__.pop("feature_names_in_", None)
            self.n_features_in_ = math.prod(shape)
            self.feature_shape_ = shape
        elif shape != tuple(self.feature_shape_):
            raise ValueError(f"X has rows of shape {shape}, but the model was fitted on rows "
                             f"of shape {tuple(self.feature_shape_)}")
        return X.reshape(len(X), -1), y

    def _rows(self, X, y, reset: bool) -> tuple[np.ndarray, bool]:
        """Validated [y, X] rows (y as a column block, X flattened), and whether y is 1-D
        (at fit, ``reset``, also ``n_features_in_`` and ``feature_shape_``)."""
        X, y = self._features(X, y, reset=reset)
        y = np.asarray(y, dtype=np.float64)
        targets = y.reshape(len(y), -1)
        if not reset and targets.shape[1] != self.n_targets_:
            raise ValueError(f"y has {targets.shape[1]} columns, but the model was fitted on "
                             f"{self.n_targets_}")
        return np.concatenate([targets, X], axis=1), y.ndim == 1

    def fit(self, X, y):
        """Fit p(y | x) to the pairs (X[i], y[i]).

        Arguments:
            X: the conditioning features, array-like (n_samples, n_features); with an
                ``embedding``, any shape (n_samples, ...) the embedding reads.
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
        if warm is not None and self.feature_shape_ != warm["feature_shape"]:
            raise ValueError(f"warm_start continues a fit to rows of shape "
                             f"{warm['feature_shape']}; X has rows of shape "
                             f"{self.feature_shape_}")
        self.n_targets_, self.targets_1d_ = n_targets, one_d
        names = _target_names(y)
        if names is None:
            self.__dict__.pop("target_names_", None)
        else:
            self.target_names_ = names
        return self._fit_rows(rows, warm)

    def _warm_start_state(self) -> dict | None:
        warm = super()._warm_start_state()
        if warm is not None:
            warm["n_targets"] = int(self.n_targets_)
            warm["feature_shape"] = tuple(self.feature_shape_)
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
               steps: int | None = None, return_log_prob: bool = False,
               batch_size: int | None = None):
        """Draw targets y ~ p(y | x) for each row x of X.

        Arguments:
            X: features, array-like (n_rows, n_features) (with an embedding, rows of the
                shape seen at fit).
            n_samples: draws per row.
            random_state: None, an int or a numpy RandomState (an int repeats the draws).
            steps: None (default): each draw solves the ODE adaptively at the fitted
                tolerance; K, a positive integer: cheap draws by K fixed midpoint steps
                (2K evaluations of the field per batch, see :meth:`cnflow.CNF.sample`).
            return_log_prob: also return log p(y | x) of each draw in y's units (from the
                sampling solve itself for a single flow; several members score the draws
                under each). With ``steps`` the draws are scored as :meth:`score_samples`
                scores pairs (adaptive, exact trace), not by the fixed-step map.
            batch_size: draws per solve (None: 4096); memory is bounded by it.

        Returns:
            Draws of shape (n_rows, n_samples, n_targets), or (n_rows, n_samples) when y was
            1-D at fit; with ``return_log_prob`` the pair ``(draws, log_prob)``, log_prob of
            shape (n_rows, n_samples).
        """
        check_is_fitted(self, "flow_")
        X, _ = self._features(X)
        n_samples = check_positive_int(n_samples, "n_samples")
        options = {} if steps is None else {"steps": check_steps(steps)}
        batch_size = self._batch_size(batch_size)
        context = np.repeat(self.preprocessor_.transform_context(X), n_samples, axis=0)
        C = torch.as_tensor(context, dtype=self._torch_dtype(), device=self.device_)
        seed = draw_seed(random_state)
        draws, log_qs = [], []
        self.flow_.eval()
        with self._seeded(seed), torch.no_grad():
            for start in range(0, len(C), batch_size):
                u, log_q = self._draw(C[start:start + batch_size], return_log_prob, options)
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

    def _draw(self, C: torch.Tensor, with_log_prob: bool, options: dict | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One draw u_y per row of mapped features C (u_x) and (with ``with_log_prob``) its
        exact-trace log q(u_y | u_x); ``options`` (``steps``) go to each member's sample."""
        options = options or {}
        if not isinstance(self.flow_, FlowMixture):
            if with_log_prob and not options:
                return self.flow_.sample_with_log_prob(C, trace="exact")
            U = self.flow_.sample(C, **options)
        else:
            choice = self.flow_.choose(len(C)).to(C.device)
            U = C.new_empty((len(C), self.n_targets_))
            for k, member in enumerate(self.flow_.members):
                rows = torch.nonzero(choice == k).flatten()
                if len(rows):
                    U[rows] = member.sample(C[rows], **options)
        if not with_log_prob:
            return U, None
        return U, self._log_prob(self.flow_, torch.cat([U, C], dim=1))

    def predict(self, X) -> np.ndarray:
        """The conditional mean E[y | x] of each row, by the mean of 200 draws (a fixed
        seed, so repeatable); shape (n_rows,) or (n_rows, n_targets), as y at fit. Its Monte
        Carlo error is the conditional standard deviation / √200."""
        return self.sample(X, _PREDICT_DRAWS, random_state=0).mean(axis=1)

    # ------------------------------------------------------------ persistence
    @classmethod
    def load(cls, path: str | Path, device: str | None = None, *, embedding=None, net=None):
        """Read a file written by :meth:`save`; ``device`` overrides the saved device.

        A model fitted with an ``embedding`` or a ``net`` is rebuilt from the factory given
        here, else from the one registered under the name the file records
        (:func:`cnflow.nn.register_module`), and its weights are loaded into it; no code is
        imported by a name read from the file.

        Arguments:
            path: the file.
            device: where to put the model (None: the saved ``device``).
            embedding, net: a factory (a callable returning a fresh ``nn.Module``, e.g. a
                class), a registered name or a module, in place of the recorded one.

        Raises:
            FileNotFoundError: no file at ``path``.
            cnflow.ModelFileError: (a ValueError) the file is damaged or not of this class,
                it names a module that is not registered here and none was passed, or the
                weights do not fit the modules built; the message says which.
            ValueError: a module was passed for a model fitted without one.
        """
        path = Path(path)
        data = cls._read_saved(path)
        with reading_parts_of(path):
            params = dict(data["params"])
        given = {"embedding": embedding, "net": net}
        for what, module in given.items():
            saved = params.get(what)
            if module is not None:
                if saved is None:
                    raise ValueError(f"{path} was fitted without a {what}; load it without "
                                     f"{what}=")
                params[what] = module
            elif saved is not None and registered_module(saved) is None:
                raise missing_module_error(path, what, saved)
        with reading_parts_of(path):
            try:
                return cls._from_saved({**data, "params": params}, path, device)
            except RuntimeError as err:  # load_state_dict: the modules built do not fit
                users = [f"{what} {module_reference(params[what])!r}"
                         for what in given if params.get(what) is not None]
                if not users:
                    raise
                detail = " ".join(str(err).split())
                raise ModelFileError(
                    f"{path}: the saved weights do not fit the {' and '.join(users)} built "
                    f"here: {detail[:400]}") from None
