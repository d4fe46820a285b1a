"""The base of the flow density estimators: validation, preprocessing, seeding, training,
scoring, sampling and persistence, shared by every estimator.

The estimators follow scikit-learn's conventions: ``__init__`` stores parameters only, fitted
state ends in ``_``, use before ``fit`` raises ``NotFittedError``, ``random_state`` makes a CPU
fit repeatable bit for bit, and inputs are validated by scikit-learn's own helpers.

Data are standardised inside, u = (x − μ) / σ, and the model's density q(u) is returned in the
caller's units: log p(x) = log q(u) − Σ_j log σ_j, so densities integrate to 1 over the
caller's space.

A memory-mapped X (``np.load(path, mmap_mode="r")``) is never copied whole: its statistics
come from a bounded sample, its minibatches are read by index and its scores are streamed
(see :mod:`cnflow.estimators.mapped`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..checks import check_positive_int
from ..flows.base_density import GaussianMixtureBase
from ..flows.flow import sample_options
from ..flows.mixture import FlowMixture
from ..ode.options import check_steps
from ..preprocessing import TabularPreprocessor
from ..training import (
    LR_SCHEDULES,
    TrainConfig,
    TrainResult,
    resolve_device,
    seeded_rng,
    train,
)
from ..training.checkpoint import FitCheckpoint
from ..training.rows import MappedRows, RowSource
from ..training.stages import StageRun
from .fitting.fit import fit_members
from .fitting.members import member_parts, stacked, stacking_weights
from .fitting.persistence import (
    build_fitted,
    component_counts,
    empty_density_flow,
    empty_member,
    open_fit_checkpoint,
    plain_params,
    read_fitted,
    reading_parts_of,
    save_fitted,
    tensors_of,
)
from .fitting.run import forget_fitted
from .fitting.table import TableRows
from .params import Boolean, InstanceOf, Integer, Options, Real, check_parameters
from .policy import FitSettings, policy_kind, resolve_fit_settings
from .sampling import draw_rows

__all__ = ["EstimatorBase", "FlowDensityEstimator"]

#: The floating-point types an estimator computes in, by the name its ``dtype`` takes.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_FORMAT = "cnflow-estimator/1"


class EstimatorBase(BaseEstimator):
    """What every cnflow estimator shares: parameters checked against declared kinds, the
    torch dtype, and seeded random streams.

    A subclass declares ``_parameter_kinds`` (parameter name → accepted kinds, see
    :mod:`cnflow.estimators.params`) and, for rules that tie parameters together,
    overrides :meth:`_check_related_parameters`; ``fit`` calls :meth:`_validate_parameters`
    first. ``dtype`` and ``device_`` name the floating-point type and the fitted device.
    """

    _parameter_kinds: dict[str, list] = {}
    #: The estimator's table in the fit policy (:data:`cnflow.estimators.policy.POLICIES`):
    #: each cnflow estimator names its own, and a user's subclass inherits it.
    _policy_kind: str = ""

    def _validate_parameters(self) -> None:
        """Every declared kind, then the rules between parameters; ValueError naming the
        first parameter that is wrong."""
        kinds: dict[str, list] = {}
        for cls in reversed(type(self).__mro__):  # a subclass's kinds extend its bases'
            kinds.update(cls.__dict__.get("_parameter_kinds", {}))
        check_parameters(self, kinds)
        self._check_related_parameters()

    def _check_related_parameters(self) -> None:
        """Rules that tie parameters together (none by default)."""

    def _plain_params(self) -> dict:
        """The parameters as plain values for a file (:func:`plain_params`)."""
        return plain_params(self.get_params(deep=False))

    def _fit_checkpoint(self, data: dict) -> FitCheckpoint | None:
        """The fit's checkpoint (None without a ``checkpoint`` parameter), identified by the
        estimator, its parameters and ``data`` (:func:`open_fit_checkpoint`)."""
        return open_fit_checkpoint(self, data)

    def _resolve_settings(self, n_samples: int, n_columns: int,
                          n_members: int | None = None) -> FitSettings:
        """Every "auto" resolved by the fit policy (:mod:`cnflow.estimators.policy`) for
        ``n_samples`` rows of ``n_columns`` columns (the flow's rows; an image's pixels; a
        series' values); ``n_members``: a warm start's members."""
        return resolve_fit_settings(policy_kind(self), self.get_params(deep=False),
                                    n_samples, self._modelled_features(n_columns),
                                    n_members=n_members,
                                    device=str(resolve_device(self.device)))

    def _modelled_features(self, n_columns: int) -> int:
        """The dimensions the flow models among its rows' ``n_columns`` (all of them, unless
        a subclass conditions on some)."""
        return n_columns

    def _torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def _seeded(self, seed: int):
        """Torch's global RNG forked and seeded inside (see :func:`cnflow.training.seeded_rng`)."""
        return seeded_rng(seed, self.device_)


class FlowDensityEstimator(DensityMixin, EstimatorBase):
    """Plumbing shared by every flow estimator: validation, scaling, seeding, training,
    scoring, sampling and persistence. A subclass says how to build its flow and its loss."""

    _score_batch_size = 4096

    _parameter_kinds = {
        "max_iter": [Integer(1), "auto"],
        "batch_size": [Integer(1), "auto"],
        "lr": [Real(0, None), "auto"],
        "lr_schedule": [Options("auto", *LR_SCHEDULES)],
        "weight_decay": [Real(0, None, closed="left")],
        "max_seconds": [None, Real(0, None)],
        "validation_fraction": [Real(0, 1, closed="left"), "auto"],
        "n_iter_no_change": [None, "auto", Integer(1)],
        "dtype": [Options(*DTYPES)],
        "device": [InstanceOf(str, torch.device)],
        "verbose": [Boolean(), Integer(0)],
        "warm_start": [Boolean()],
        "checkpoint": [None, InstanceOf(str, os.PathLike)],
        "checkpoint_interval": [Real(0, None, closed="left")],
    }

    # ------------------------------------------------------------ subclass interface
    def _build_flow(self, n_features: int, base: nn.Module | None = None) -> nn.Module:
        raise NotImplementedError

    def _fit_mixture(self, U_train: torch.Tensor | RowSource, U_val: torch.Tensor | None,
                     seed: int, deadline: float | None = None
                     ) -> GaussianMixtureBase | None:
        """A Gaussian mixture fitted to a member's training rows (a tensor, or a row source
        of a memory-mapped table: see :func:`cnflow.estimators.mapped.rows_sample`), where
        the subclass uses one (as the flow's base or to stack with it); None otherwise.
        ``deadline``: when the fit's time budget ends (``time.perf_counter()``), None
        without one."""
        return None

    def _base_of(self, mixture: GaussianMixtureBase | None) -> nn.Module | None:
        """The base density to build a member's flow with (None: the flow's own)."""
        return None

    def _training_loss(self, flow: nn.Module, u: torch.Tensor) -> torch.Tensor:
        return -flow.log_prob(u).mean()

    def _log_prob(self, flow: nn.Module, u: torch.Tensor) -> torch.Tensor:
        return flow.log_prob(u)


    def _validation_loss(self, flow: nn.Module, u: torch.Tensor,
                         reduce: bool = True) -> torch.Tensor:
        nll = -self._log_prob(flow, u)
        return nll.mean() if reduce else nll

    def _train(self, flow: nn.Module, U_train: torch.Tensor, U_val: torch.Tensor | None,
               config: TrainConfig, generator: torch.Generator, *, stage: StageRun,
               fresh: bool = True) -> TrainResult:
        """Train ``flow`` in place, the member ``stage`` of a staged fit (writing to and
        resuming from its checkpoint; a subclass may run phases as its sub-stages) with
        ``config.max_seconds`` its seconds; ``fresh``: the flow is newly built (False: a warm
        start from fitted parameters)."""
        return train(flow, U_train, self._training_loss, config, X_val=U_val,
                     val_loss_fn=self._validation_loss, generator=generator,
                     checkpoint=stage.checkpoint)

    # ------------------------------------------------------------ helpers
    def _transform(self, X: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The fitted preprocessing of X: the mapped rows as a tensor on the model's device,
        and the log-determinant of the map at each row (numpy, float64)."""
        U, logdet = self.preprocessor_.transform(X)
        return torch.as_tensor(U, dtype=self._torch_dtype(), device=self.device_), logdet

    def _mapped_rows(self, X: np.ndarray, rows: np.ndarray | None = None,
                     excluded: np.ndarray | None = None) -> MappedRows:
        """The rows of a memory-mapped X (``rows``: those, in their order; ``excluded``: all
        but those; neither: all), read a minibatch at a time through the fitted
        preprocessing onto the model's device."""
        return MappedRows(X, lambda block: self.preprocessor_.transform(block)[0],
                          dtype=self._torch_dtype(), device=self.device_, rows=rows,
                          excluded=excluded)

    def _columns_to_preprocess(self, X: np.ndarray) -> np.ndarray:
        """The columns whose map "choose" picks (all; a conditional estimator's targets)."""
        return X

    #: What errors about those columns call them.
    _preprocessed_name = "X"

    def _new_preprocessor(self, kind: str, seed: int):
        """An unfitted preprocessor of the rows (``fit``, ``transform``, ``state``)."""
        return TabularPreprocessor(kind, random_state=seed)

    def _preprocessor_from_state(self, state: dict):
        """The fitted preprocessor a :meth:`_new_preprocessor`'s ``state()`` describes."""
        return TabularPreprocessor.from_state(state)

    def _flow_width(self) -> int:
        """The number of columns of the rows the flow models (``n_features_in_`` unless a
        subclass adds others)."""
        return int(self.n_features_in_)

    def _saved_extras(self) -> dict:
        """What a subclass adds to a :meth:`save` file (plain values)."""
        return {}

    def _restore_extras(self, data: dict) -> None:
        """Read back :meth:`_saved_extras` (before the flow is rebuilt)."""

    # ------------------------------------------------------------ the estimator API
    def fit(self, X, y=None):
        """Fit the flow to the rows of X (by the estimator's training objective).

        With ``checkpoint`` set, the fit writes its state to that file every
        ``checkpoint_interval`` seconds and, if the file already holds a checkpoint of the
        same fit (parameters and data), continues from it; with ``warm_start=True`` a fitted
        estimator's flows and preprocessing are the starting point.

        Arguments:
            X: array-like (n_samples, n_features); at least 2 rows. A memory-mapped array
                (``np.load(path, mmap_mode="r")``, an ``np.memmap`` of any real dtype) is
                never copied whole: its values are checked in chunks, the preprocessing is
                fitted to a seeded sample of at most 100,000 rows (fewer when rows are
                wide: at most 128 MiB of float64), each minibatch is read
                from the file by index, at most 20,000 rows per member are held out and
                scored, and the rest of the table is only ever read a minibatch at a time
                (:mod:`cnflow.estimators.mapped`). Any other array is converted to float64
                in memory and every statistic comes from every row.
            y: ignored.

        Returns:
            self

        Raises:
            ValueError: bad parameters or data (the message says which; for a
                memory-mapped X, the first row with a NaN or an infinity).
            cnflow.training.checkpoint.CheckpointMismatchError: (a ValueError) the checkpoint
                file belongs to another fit.
            cnflow.files.ModelFileError: the checkpoint file is damaged.
            cnflow.training.TrainingFault: training stopped on a non-finite loss or a failed
                solve without held-out rows (the flow keeps its last good parameters).
        """
        warm = self._start_fit()
        X = TableRows.checked(self, X)
        if warm is not None and X.shape[1] != warm["n_features"]:
            raise ValueError(f"warm_start continues a fit to {warm['n_features']} features; "
                             f"X has {X.shape[1]}")
        return self._fit_rows(X, warm)

    _FITTED = ("flow_", "history_", "n_iter_", "mean_", "scale_", "device_", "preprocessor_",
               "n_members_", "preprocessing_scores_", "stacking_weights_", "settings_")

    def _start_fit(self) -> dict | None:
        """Check the parameters, keep what a warm start needs, and forget the fitted state
        (a refit that fails must not leave the old flow with the new data's scaling)."""
        self._validate_parameters()
        warm = self._warm_start_state()
        forget_fitted(self, self._FITTED)
        return warm

    def _fit_rows(self, X: np.ndarray, warm: dict | None):
        """Fit to the validated rows X that the flow models (a conditional estimator's rows
        hold the targets and the context side by side), with every "auto" resolved once by
        the fit policy into ``settings_``."""
        self.settings_ = self._resolve_settings(
            len(X), X.shape[1], None if warm is None else len(warm["parts"]))
        try:
            return self._fit_settled(X, warm, self.settings_)
        except BaseException:
            if not hasattr(self, "flow_"):  # nothing was fitted: no settings either
                del self.settings_
            raise

    def _fit_settled(self, X: np.ndarray, warm: dict | None, settings: FitSettings):
        """:meth:`_fit_rows` once ``settings`` are resolved
        (:func:`~cnflow.estimators.fitting.fit.fit_members`)."""
        fit_members(self, X, warm, settings)
        return self

    # ------------------------------------------------------------ warm starts, checkpoints
    def _warm_start_state(self) -> dict | None:
        """With ``warm_start`` and a fitted estimator: its preprocessing, each member's flow
        and stacked mixture, history and step count (the next fit starts from them)."""
        if not (getattr(self, "warm_start", False) and hasattr(self, "flow_")):
            return None
        return {"preprocessor": self.preprocessor_,
                "preprocessing_scores": getattr(self, "preprocessing_scores_", None),
                "parts": [(copy.deepcopy(flow), None if mixture is None
                           else copy.deepcopy(mixture))
                          for flow, mixture in self._member_parts()],
                "history": [dict(entry) for entry in self.history_],
                "n_iter": int(self.n_iter_), "n_features": int(self.n_features_in_)}

    def score_samples(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """Log-density of each row of X, in the caller's units; numpy array (n_samples,).

        ``batch_size``: rows per batch (None: 4096); memory is bounded by it. A
        memory-mapped X is read, checked and scored ``batch_size`` rows at a time. On the CPU a
        CNF solves each batch in pieces of
        :func:`~cnflow.estimators.cnf_estimator.trace_solve_rows` rows (128 at D = 64 with a
        128-wide field), which keeps its exact trace's Jacobian in cache."""
        check_is_fitted(self, "flow_")
        batch_size = self._batch_size(batch_size)
        return np.concatenate([self._score_rows(rows, batch_size) for rows in
                               TableRows.scoring_blocks(self, X, batch_size)])

    def _score_rows(self, X: np.ndarray, batch_size: int) -> np.ndarray:
        """log p of validated rows (the flow's rows), solved ``batch_size`` rows at a time."""
        U, logdet = self._transform(X)
        out = []
        self.flow_.eval()
        with torch.no_grad():
            for start in range(0, len(U), batch_size):
                out.append(self._log_prob(self.flow_, U[start:start + batch_size]))
        log_q = torch.cat(out).double().cpu().numpy()
        return log_q + logdet

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows of X (as GaussianMixture.score)."""
        return float(self.score_samples(X).mean())

    def sample(self, n_samples: int = 1, random_state=None, *, steps: int | None = None,
               return_log_prob: bool = False, batch_size: int | None = None):
        """Draw rows from the fitted density.

        Arguments:
            n_samples: the number of rows.
            random_state: None, an int or a numpy RandomState (an int repeats the draws).
            steps: None (default): each draw solves the flow's ODE adaptively at the fitted
                tolerance. K, a positive integer: cheap draws by K fixed steps of
                :data:`~cnflow.ode.FEW_STEP_METHOD` (the midpoint rule: 2K evaluations of
                the field per batch, see :meth:`cnflow.CNF.sample`); ``flow_.nfe_forward``
                reports them. Parts of the model that sample exactly (a stacked Gaussian
                mixture, a planar flow) are unaffected.
            return_log_prob: also return the log-density of each row, in the caller's units
                (what :meth:`score_samples` gives for it, to the solver's tolerance). For a
                single flow it comes from the sampling solve itself (the trace integrated
                along), with no second solve; a model of several members or a stack scores
                the draws under each. With ``steps`` the draws are scored as
                :meth:`score_samples` scores rows (adaptive, exact trace), so the
                log-densities are the model's at those rows, not the fixed-step map's.
            batch_size: rows drawn per solve (None: 4096); memory is bounded by it.

        Returns:
            Rows, numpy array (n_samples, n_features); with ``return_log_prob``, the pair
            ``(rows, log_prob)`` with log_prob of shape (n_samples,).

        Example:
            ``est.sample(10_000, random_state=0, steps=4)``: 4 midpoint steps, 8 evaluations
            of the field per batch of draws, against the tens of the adaptive solve.
        """
        check_is_fitted(self, "flow_")
        return draw_rows(self, n_samples, random_state, steps=steps,
                         return_log_prob=return_log_prob, batch_size=batch_size)

    def _sampling_options(self, steps: object) -> dict[str, object]:
        """The keywords of ``flow_.sample`` for ``steps`` (checked: a positive integer or
        None), those of them that the fitted flow takes (none where it samples exactly)."""
        if steps is None:
            return {}
        return sample_options(self.flow_, {"steps": check_steps(steps)})

    def _samples_with_log_prob(self, flow: nn.Module) -> bool:
        """Whether ``flow.sample_with_log_prob(n, trace="exact")`` gives draws with their
        scoring log-densities in one solve (a single CNF)."""
        return False

    def _batch_size(self, batch_size: int | None) -> int:
        """The rows per solve of scoring and sampling (None: 4096), checked."""
        if batch_size is None:
            return self._score_batch_size
        check_positive_int(batch_size, "batch_size")
        return int(batch_size)

    def _stacked(self, flow: nn.Module, mixture: GaussianMixtureBase,
                 U_val: torch.Tensor) -> FlowMixture:
        """The two-member density w·flow + (1 − w)·mixture, w best on the held-out rows."""
        with torch.no_grad():
            log_flow = -self._validation_loss(flow, U_val, reduce=False)
        return stacked(flow, mixture, log_flow, U_val, self.device_, self._torch_dtype())

    def _member_parts(self) -> list[tuple[nn.Module, GaussianMixtureBase | None]]:
        """Each member's flow and the mixture stacked with it (None where not stacked)."""
        return member_parts(self.flow_, self.n_members_)

    def _member_from_record(self, record: dict, dim: int) -> nn.Module:
        """A member rebuilt from its record
        (:func:`~cnflow.estimators.fitting.persistence.member_record`; on the fit's device,
        cast before loading so that float64 parameters are never rounded through float32)."""
        member = self._empty_member(dim, int(record["base_components"]),
                                    int(record["stacked_components"]))
        member = member.to(self.device_, self._torch_dtype())
        member.load_state_dict(record["state"])
        return member

    def _empty_member(self, dim: int, base_components: int,
                      stacked_components: int) -> nn.Module:
        """A member of the given structure, to load parameters into (global RNG untouched)."""
        with self._seeded(0):
            return empty_member(self._build_flow, dim, base_components, stacked_components)

    def save(self, path: str | Path) -> None:
        """Write the fitted estimator to a ``torch.save`` file that loads with
        ``weights_only=True`` (tensors and plain Python values only; no code runs on load).

        The file is written atomically (:func:`cnflow.files.atomic_write`): an interrupted
        save leaves the file that was at ``path`` before."""
        check_is_fitted(self, "flow_")
        counts = [component_counts(flow, mixture) for flow, mixture in self._member_parts()]
        save_fitted(
            self, path, _FORMAT, self.flow_,
            mean=torch.from_numpy(self.mean_), scale=torch.from_numpy(self.scale_),
            preprocessor=tensors_of(self.preprocessor_.state()),
            n_features_in=int(self.n_features_in_),
            feature_names_in=([str(n) for n in self.feature_names_in_]
                              if hasattr(self, "feature_names_in_") else None),
            n_members=int(getattr(self, "n_members_", 1)),
            base_components=[base for base, _ in counts],
            stacked_components=[stacked for _, stacked in counts],
            **self._saved_extras())

    @classmethod
    def load(cls, path: str | Path, device: str | None = None):
        """Read a file written by :meth:`save`; ``device`` overrides the saved device.

        Raises:
            FileNotFoundError: no file at ``path``.
            cnflow.files.ModelFileError: (a ValueError) the file is truncated, empty, not a
                file of :meth:`save`, of another estimator, missing parts, or its parameters
                disagree with its fit settings; the message says which. Loading never runs
                code from the file (``weights_only=True``).
        """
        path = Path(path)
        data = cls._read_saved(path)
        with reading_parts_of(path):
            return cls._from_saved(data, path, device)

    @classmethod
    def _read_saved(cls, path: Path) -> dict:
        """The contents of a :meth:`save` file of this class (FileNotFoundError, or a
        :class:`cnflow.files.ModelFileError` for a file of another kind)."""
        return read_fitted(cls, path, _FORMAT)

    @classmethod
    def _from_saved(cls, data: dict, path: Path, device: str | None):
        """The estimator a :meth:`save` file describes (KeyError etc. where parts are
        missing or malformed; :meth:`load` names them)."""
        est, flow = build_fitted(cls, data, path, device,
                                 lambda est, data: empty_density_flow(est, data, path))
        est.flow_ = flow
        est.stacking_weights_ = stacking_weights(est.flow_, est.n_members_)
        return est
