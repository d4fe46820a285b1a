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

import contextlib
import copy
import dataclasses
import hashlib
import numbers
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ..checks import check_positive_int
from ..files import ModelFileError, atomic_write, read_torch_file
from ..flows.base_density import GaussianMixtureBase
from ..flows.flow import sample_options
from ..flows.mixture import FlowMixture, best_mixture_weight
from ..ode.options import check_steps
from ..preprocessing import TabularPreprocessor, choose_preprocessing
from ..training import (
    LR_SCHEDULES,
    TrainConfig,
    TrainingFault,
    TrainResult,
    resolve_device,
    seeded_rng,
    train,
)
from ..training.checkpoint import FitCheckpoint, data_digest
from ..training.rows import (
    MappedRows,
    RowSource,
    bounded_sample,
    check_finite_rows,
    gather,
    is_mapped,
)
from ..training.stages import Stage, StagedFit, StageRun
from .mapped import (
    SAMPLE_ROWS,
    check_mapped,
    choice_rows,
    held_out_rows,
    preprocessing_rows,
    training_sample,
)
from .params import Boolean, InstanceOf, Integer, Options, Real, check_parameters
from .policy import MAX_ROWS_FOR_MIXTURES, FitSettings, resolve_fit_settings

__all__ = ["EstimatorBase", "FlowDensityEstimator"]

#: The floating-point types an estimator computes in, by the name its ``dtype`` takes.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_FORMAT = "cnflow-estimator/1"
#: An estimator class, in the signatures of :func:`load_fitted`.
E = TypeVar("E", bound="EstimatorBase")


def folds_of(perm: np.ndarray, n_members: int, n_val: int) -> list[np.ndarray]:
    """The held-out rows of each member: n_members folds of the permutation (cross-fitting),
    or with one member its first n_val rows."""
    return np.array_split(perm, n_members) if n_members > 1 else [perm[:n_val]]


def _tensors(state):
    """A nested dict of numpy arrays as torch tensors (for a weights_only file)."""
    if isinstance(state, dict):
        return {k: _tensors(v) for k, v in state.items()}
    return torch.from_numpy(np.ascontiguousarray(state)) if isinstance(state, np.ndarray) else state


def _arrays(state):
    """The inverse of :func:`_tensors`."""
    if isinstance(state, dict):
        return {k: _arrays(v) for k, v in state.items()}
    return state.numpy() if isinstance(state, torch.Tensor) else state


def state_digest(modules: list[nn.Module]) -> str:
    """A SHA-256 digest of the modules' parameters and buffers (to recognise a starting
    point)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, value in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _mixture_record(mixture: GaussianMixtureBase | None) -> dict | None:
    """A Gaussian mixture as plain values and tensors (for a checkpoint)."""
    if mixture is None:
        return None
    return {"n_components": int(mixture.n_components),
            "state": {k: v.detach().cpu() for k, v in mixture.state_dict().items()}}


def _mixture_from_record(record: dict | None, dim: int) -> GaussianMixtureBase | None:
    """The inverse of :func:`_mixture_record` (in the record's dtype, so that the mixture
    equals the one recorded)."""
    if record is None:
        return None
    mixture = GaussianMixtureBase.empty(int(record["n_components"]), dim)
    mixture = mixture.to(record["state"]["means"].dtype)
    mixture.load_state_dict(record["state"])
    return mixture


def _member_record(member: nn.Module) -> dict:
    """A finished member as plain values and tensors: its parameters and how many Gaussian
    components its base and its stacked mixture have (0: none)."""
    flow, mixture = ((member.members[0], member.members[1]) if isinstance(member, FlowMixture)
                     else (member, None))
    base = getattr(flow, "base", None)
    return {"state": {k: v.detach().cpu() for k, v in member.state_dict().items()},
            "base_components": 0 if base is None else int(base.n_components),
            "stacked_components": 0 if mixture is None else int(mixture.n_components)}


@dataclass
class _FitPlan:
    """What a fit fixes before its members: the seed, the row order, the number of members,
    the rows each holds out, and the fitted preprocessing (with the held-out scores that
    chose it, None where it was not chosen)."""

    seed: int
    perm: np.ndarray
    n_members: int
    n_val: int
    preprocessor: object
    preprocessing_scores: dict | None

    @property
    def folds(self) -> list[np.ndarray]:
        """Each member's held-out rows (see :func:`folds_of`)."""
        return folds_of(self.perm, self.n_members, self.n_val)

    def as_plain(self) -> dict:
        """The plan as plain values and tensors (for a checkpoint)."""
        return {"seed": self.seed, "perm": torch.from_numpy(self.perm),
                "n_members": self.n_members, "n_val": self.n_val,
                "preprocessor": _tensors(self.preprocessor.state()),
                "preprocessing_scores": self.preprocessing_scores}

    @classmethod
    def from_plain(cls, plain: dict, preprocessor_from_state) -> _FitPlan:
        """The inverse of :meth:`as_plain`; ``preprocessor_from_state`` rebuilds the
        preprocessor from its state."""
        return cls(int(plain["seed"]), plain["perm"].numpy(), int(plain["n_members"]),
                   int(plain["n_val"]),
                   preprocessor_from_state(_arrays(plain["preprocessor"])),
                   plain["preprocessing_scores"])


def read_estimator_file(path: str | Path, estimator: str, file_format: str) -> dict:
    """The contents of an estimator's ``save`` file, checked to be of ``file_format`` and
    of ``estimator``; a :class:`cnflow.ModelFileError` naming the file otherwise."""
    data = read_torch_file(path, f"a {estimator} file")
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise ModelFileError(f"{path} is not a file written by {estimator}.save")
    if data.get("estimator") != estimator:
        raise ModelFileError(f"{path} holds a {data.get('estimator')}, not a {estimator}")
    return data


@contextlib.contextmanager
def reading_parts_of(path: str | Path):
    """Inside, a missing or malformed part of the estimator file at ``path`` (a KeyError,
    TypeError, AttributeError, RuntimeError or ValueError) becomes a
    :class:`cnflow.ModelFileError` naming the file and the part."""
    try:
        yield
    except ModelFileError:
        raise
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as err:
        what = f"missing {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise ModelFileError(f"{path} is damaged: {what}") from None


def save_fitted(estimator: EstimatorBase, path: str | Path, file_format: str,
                module: nn.Module, **fitted) -> None:
    """Write a fitted estimator that holds one torch module to a ``torch.save`` file that
    loads with ``weights_only=True``, atomically (:func:`cnflow.files.atomic_write`).

    The file is a dict of plain values and tensors: ``file_format``, the estimator's class
    name, its parameters (:meth:`EstimatorBase._plain_params`), the module's parameters and
    buffers (on the CPU), ``history_``, ``n_iter_`` and the estimator's own ``fitted``
    values; :func:`load_fitted` reads it back.
    """
    contents = {"format": file_format, "estimator": type(estimator).__name__,
                "params": estimator._plain_params(),
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "history": estimator.history_, "n_iter": int(estimator.n_iter_),
                "settings": estimator.settings_.as_dict(), **fitted}
    atomic_write(path, lambda handle: torch.save(contents, handle))


def load_fitted(cls: type[E], path: str | Path, file_format: str, device: str | None,
                rebuild: Callable[[E, dict], nn.Module]) -> tuple[E, nn.Module]:
    """The estimator and its module from a file of :func:`save_fitted`.

    The estimator is made from the saved parameters (checked), with ``device`` (when given)
    in place of the saved one, and ``device_``, ``history_`` and ``n_iter_`` set;
    ``rebuild(estimator, contents)`` restores the estimator's own fitted values and returns
    its module, newly built (the global random stream is left as it was). The module is then
    cast to the estimator's device and dtype and the saved parameters are loaded into it
    (cast first, so that float64 values are never rounded through float32).

    Raises:
        FileNotFoundError: no file at ``path``.
        cnflow.ModelFileError: (a ValueError) the file is truncated, empty, not a file of
            ``cls``, or has parts missing or malformed; the message names the file and says
            which. No code from the file runs (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    data = read_estimator_file(path, cls.__name__, file_format)
    with reading_parts_of(path):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in data["params"].items()}
        est = cls(**params)
        if device is not None:
            est.device = device
        est._validate_parameters()
        est.device_ = resolve_device(est.device)
        if data.get("settings") is not None:
            est.settings_ = FitSettings.from_dict(data["settings"])
        with est._seeded(0):
            module = rebuild(est, data)
        module = module.to(est.device_, est._torch_dtype())
        module.load_state_dict(data["state_dict"])
        est.history_ = list(data["history"])
        est.n_iter_ = int(data["n_iter"])
    return est, module


def draw_seed(random_state) -> int:
    """A torch seed drawn from ``random_state`` (None, an int or a numpy RandomState), as
    scikit-learn's estimators draw theirs."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class EstimatorBase(BaseEstimator):
    """What every cnflow estimator shares: parameters checked against declared kinds, the
    torch dtype, and seeded random streams.

    A subclass declares ``_parameter_kinds`` (parameter name → accepted kinds, see
    :mod:`cnflow.estimators.params`) and, for rules that tie parameters together,
    overrides :meth:`_check_related_parameters`; ``fit`` calls :meth:`_validate_parameters`
    first. ``dtype`` and ``device_`` name the floating-point type and the fitted device.
    """

    _parameter_kinds: dict[str, list] = {}

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
        """The parameters as plain values for a file: tuples as lists, paths as strings,
        and a random_state that is not an int as None."""
        params = self.get_params(deep=False)
        seed = params["random_state"]
        params["random_state"] = int(seed) if isinstance(seed, numbers.Integral) else None
        plain = {}
        for name, value in params.items():
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            plain[name] = value
        return plain

    def _fit_checkpoint(self, data: dict) -> FitCheckpoint | None:
        """The fit's checkpoint (None without a ``checkpoint`` parameter), identified by the
        estimator, its parameters (except verbose, device and the checkpoint's own, which do
        not change the result) and ``data`` (what identifies the data)."""
        if getattr(self, "checkpoint", None) is None:
            return None
        params = self._plain_params()
        for name in ("checkpoint", "checkpoint_interval", "verbose", "device"):
            params.pop(name, None)
        identity = {"estimator": type(self).__name__,
                    **{f"parameter {k}": v for k, v in params.items()}, **data}
        return FitCheckpoint.open_in_every_process(self.checkpoint,
                                                   float(self.checkpoint_interval), identity)

    def _resolve_settings(self, n_samples: int, n_columns: int,
                          n_members: int | None = None) -> FitSettings:
        """Every "auto" resolved by the fit policy (:mod:`cnflow.estimators.policy`) for
        ``n_samples`` rows of ``n_columns`` columns (the flow's rows; an image's pixels; a
        series' values); ``n_members``: a warm start's members."""
        return resolve_fit_settings(type(self).__name__, self.get_params(deep=False),
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
        if is_mapped(X):
            X = check_mapped(self, X, reset=True)
        else:
            X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
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
        for name in self._FITTED:
            self.__dict__.pop(name, None)
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
        """:meth:`_fit_rows` once ``settings`` are resolved: one stage per member, each
        granted an equal share of the time left (see :mod:`cnflow.training.stages`)."""
        device = resolve_device(self.device)
        checkpoint = self._open_checkpoint(X, warm)
        # max_seconds bounds the whole fit (with a checkpoint, every run of it)
        fit = StagedFit(checkpoint, None if self.max_seconds is None else float(self.max_seconds))
        # choosing the map and fitting mixtures try no larger mixture after this
        planning = fit.deadline
        if planning is not None and settings.planning_share < 1:
            planning = min(planning, time.perf_counter()
                           + settings.planning_share * float(self.max_seconds))
        plan = self._plan(X, warm, fit, planning)
        seed, perm, folds, n_val = plan.seed, plan.perm, plan.folds, plan.n_val
        n_members, n_features = len(folds), X.shape[1]
        self.device_, self.preprocessor_ = device, plan.preprocessor
        self.mean_, self.scale_ = self.preprocessor_.mean_, self.preprocessor_.scale_
        if plan.preprocessing_scores is not None:
            self.preprocessing_scores_ = plan.preprocessing_scores
        mapped = is_mapped(X)
        U = self._mapped_rows(X) if mapped else self._transform(X)[0]
        config = TrainConfig(max_iter=settings.max_iter, batch_size=settings.batch_size,
                             lr=settings.lr, lr_schedule=settings.lr_schedule,
                             validation_interval=settings.validation_interval,
                             max_seconds=self.max_seconds, weight_decay=self.weight_decay,
                             n_iter_no_change=settings.n_iter_no_change if n_val else None,
                             verbose=self.verbose)
        members: list[nn.Module] = []

        def rows_of(k: int) -> tuple[torch.Tensor | RowSource, torch.Tensor | None]:
            """Member k's training rows and held-out rows (None: none held out); of a
            memory-mapped X, the training rows are read by index, and at most
            VALIDATION_ROWS rows are held out (the rest of the fold is trained on)."""
            if not n_val:
                return U, None
            if mapped:
                held = held_out_rows(folds[k])
                training = (self._mapped_rows(X, excluded=held) if len(X) > SAMPLE_ROWS
                            else self._mapped_rows(X, rows=perm[~np.isin(perm, held)]))
                return (training,
                        self._transform(gather(X, held))[0])
            rest = perm[~np.isin(perm, folds[k])]
            return (U[torch.as_tensor(rest, device=U.device)],
                    U[torch.as_tensor(folds[k], device=U.device)])

        def mixture_deadline() -> float | None:
            """When a member's mixture tries no larger mixture: with a planning share, that
            share of the budget (split between the members) from now, as the map's choice
            had (else when the map's choice had to end)."""
            if planning is None or settings.planning_share >= 1:
                return planning
            share = settings.planning_share * float(self.max_seconds) / n_members
            return min(fit.deadline, time.perf_counter() + share)

        def prepare(run: StageRun) -> dict | None:
            """Member k's Gaussian mixture (a warm start's, or fitted), as a record."""
            k = run.index
            if warm is not None and warm["parts"][k][1] is not None:
                return _mixture_record(warm["parts"][k][1])
            U_train, U_val = rows_of(k)
            return _mixture_record(self._fit_mixture(U_train, U_val, seed + k,
                                                     mixture_deadline()))

        def train_member(run: StageRun) -> TrainResult:
            k = run.index
            U_train, U_val = rows_of(k)
            mixture = _mixture_from_record(run.setup, n_features)
            with self._seeded(seed + k):
                if warm is not None:
                    flow = copy.deepcopy(warm["parts"][k][0])
                else:
                    flow = self._build_flow(n_features, self._base_of(mixture))
                flow = flow.to(self.device_, self._torch_dtype())
                try:
                    result = self._train(flow, U_train, U_val,
                                         dataclasses.replace(config, max_seconds=run.seconds),
                                         torch.Generator().manual_seed(seed + k), stage=run,
                                         fresh=warm is None)
                except TrainingFault:
                    members.append(flow)  # with its last good parameters
                    raise
            if settings.stacking:
                flow = self._stacked(flow, mixture, U_val)
            members.append(flow)
            run.parameters = _member_record(flow)
            return result

        def restore_member(run: StageRun) -> None:
            members.append(self._member_from_record(run.record.parameters, n_features))

        stages = [Stage(f"member {k}", tags={"member": k} if n_members > 1 else {})
                  for k in range(n_members)]
        prior = None if warm is None else TrainResult(history=warm["history"],
                                                      n_iter=warm["n_iter"])
        fault = None
        try:
            result = fit.run(stages, train_member, prepare=prepare, restore=restore_member,
                             prior=prior, continue_after_fault=True)
        except TrainingFault as err:
            fault, result = err, err.result
        self.n_members_ = len(members)
        self.flow_ = members[0] if n_members == 1 else FlowMixture(members)
        self.stacking_weights_ = self._stacking_weights()
        self.history_, self.n_iter_ = result.history, result.n_iter
        if fault is not None:
            # The flow holds its last good parameters and stays usable; the caller is told.
            raise fault
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

    def _open_checkpoint(self, X: np.ndarray, warm: dict | None) -> FitCheckpoint | None:
        """The fit's checkpoint, identified also by the data and, for a warm start, the
        flows it starts from (see :meth:`EstimatorBase._fit_checkpoint`)."""
        mapped = {"data source": "memory-mapped"} if is_mapped(X) else {}
        return self._fit_checkpoint({
            "data shape": list(X.shape), "data digest": data_digest(X)[:16], **mapped,
            "warm start from": None if warm is None else state_digest(
                [flow for flow, _ in warm["parts"]])})

    def _plan(self, X: np.ndarray, warm: dict | None, fit: StagedFit,
              deadline: float | None = None) -> _FitPlan:
        """The fit's seed, row order, validation folds and fitted preprocessing: read from a
        resumed checkpoint, or drawn and chosen (then written to the checkpoint; the map's
        choice tries no larger mixture after ``deadline``, a ``time.perf_counter()``
        reading)."""
        plan = fit.saved_setup(lambda plain: _FitPlan.from_plain(
            plain, self._preprocessor_from_state))
        if plan is not None:
            return plan
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))  # as draw_seed, then the row order
        settings = self.settings_
        n_members, fraction = settings.n_members, settings.validation_fraction
        n_val = int(round(fraction * len(X)))
        if fraction > 0 and (n_val < 1 or len(X) - n_val < 1):
            raise ValueError(f"validation_fraction={fraction} leaves no rows "
                             f"for training or validation with {len(X)} samples")
        if settings.stacking and not n_val:
            raise ValueError("stacking chooses the flow's weight on held-out rows; with "
                             "stacking=True set validation_fraction > 0 (or leave it 'auto')")
        mapped = is_mapped(X)
        # a memory-mapped table without held-out rows needs no row order (8 bytes a row)
        if mapped and len(X) > SAMPLE_ROWS:
            # of a large memory-mapped table only the held-out rows are drawn (memory
            # O(n_val)): the training rows are the others, read by position
            perm = (rng.permutation(bounded_sample(len(X), n_val, seed)) if n_val
                    else np.empty(0, dtype=np.int64))
        else:
            perm = rng.permutation(len(X))
        scores = None
        if warm is not None:
            preprocessor, scores = warm["preprocessor"], warm["preprocessing_scores"]
        else:
            kind = settings.preprocessing
            if kind == "choose":  # by held-out likelihood, on the first validation fold
                first_fold = folds_of(perm, n_members, n_val)[0]
                # the training rows seen: a random subset (perm is a random order)
                if mapped:  # a sample of the training rows against the rows scored
                    held = held_out_rows(first_fold)
                    training = (training_sample(len(X), held, MAX_ROWS_FOR_MIXTURES, seed)
                                if len(X) > SAMPLE_ROWS
                                else perm[~np.isin(perm, held)][:MAX_ROWS_FOR_MIXTURES])
                    rows, train_rows, val_rows = choice_rows(X, training, held, seed)
                else:
                    rows, train_rows, val_rows = (
                        X, perm[~np.isin(perm, first_fold)][:MAX_ROWS_FOR_MIXTURES], first_fold)
                kind, scores = choose_preprocessing(
                    self._columns_to_preprocess(rows), train_rows, val_rows,
                    kinds=settings.preprocessing_candidates, random_state=seed,
                    deadline=deadline, name=self._preprocessed_name)
            preprocessor = self._new_preprocessor(kind, seed).fit(
                preprocessing_rows(X, seed) if mapped else X)
        plan = _FitPlan(seed, perm, n_members, n_val, preprocessor, scores)
        fit.keep_setup(plan.as_plain())
        return plan


    def score_samples(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """Log-density of each row of X, in the caller's units; numpy array (n_samples,).

        ``batch_size``: rows per batch (None: 4096); memory is bounded by it. A
        memory-mapped X is read, checked and scored ``batch_size`` rows at a time. On the CPU a
        CNF solves each batch in pieces of
        :func:`~cnflow.estimators.cnf_estimator.trace_solve_rows` rows (128 at D = 64 with a
        128-wide field), which keeps its exact trace's Jacobian in cache."""
        check_is_fitted(self, "flow_")
        batch_size = self._batch_size(batch_size)
        if is_mapped(X):
            check_mapped(self, X, reset=False, finite=False)
            scores = []
            for start in range(0, len(X), batch_size):
                rows = np.asarray(X[start:start + batch_size], dtype=np.float64)
                check_finite_rows(rows, first_row=start)
                scores.append(self._score_rows(rows, batch_size))
            return np.concatenate(scores)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._score_rows(X, batch_size)

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
        check_positive_int(n_samples, "n_samples")
        options = self._sampling_options(steps)
        batch_size = self._batch_size(batch_size)
        seed = draw_seed(random_state)
        one_solve = return_log_prob and steps is None and self._samples_with_log_prob(self.flow_)
        draws, log_qs = [], []
        with self._seeded(seed), torch.no_grad():
            for start in range(0, int(n_samples), batch_size):
                n = min(batch_size, int(n_samples) - start)
                if one_solve:
                    u, log_q = self.flow_.sample_with_log_prob(n, trace="exact")
                else:
                    u = self.flow_.sample(n, **options)
                    log_q = self._log_prob(self.flow_, u) if return_log_prob else None
                draws.append(u)
                log_qs.append(log_q)
        U = torch.cat(draws).double().cpu().numpy()
        X = self.preprocessor_.inverse_transform(U)
        if not return_log_prob:
            return X
        _, logdet = self.preprocessor_.transform(X)
        return X, torch.cat(log_qs).double().cpu().numpy() + logdet

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
        """The two-member density w·flow + (1 − w)·mixture, with the w that maximises the
        held-out rows' mean log-likelihood (:func:`cnflow.flows.mixture.best_mixture_weight`)."""
        mixture = mixture.to(self.device_, self._torch_dtype())  # the base, if any, is a copy
        with torch.no_grad():
            log_flow = -self._validation_loss(flow, U_val, reduce=False)
            log_mixture = mixture.log_prob(U_val)
        w = best_mixture_weight(log_flow.double().cpu().numpy(),
                                log_mixture.double().cpu().numpy())
        return FlowMixture([flow, mixture], weights=[w, 1.0 - w]).to(self.device_,
                                                                     self._torch_dtype())

    def _member_list(self) -> list[nn.Module]:
        """The fitted members (one, or the cross-fitted ones)."""
        if self.n_members_ > 1:
            return list(self.flow_.members)
        return [self.flow_]

    def _member_parts(self) -> list[tuple[nn.Module, GaussianMixtureBase | None]]:
        """Each member's flow and the mixture stacked with it (None where not stacked)."""
        parts = []
        for member in self._member_list():
            if isinstance(member, FlowMixture):  # a stacked member: [flow, mixture]
                parts.append((member.members[0], member.members[1]))
            else:
                parts.append((member, None))
        return parts

    def _stacking_weights(self) -> list[float] | None:
        """The flow's weight in each stacked member (None when nothing is stacked)."""
        parts = self._member_list()
        if not any(isinstance(m, FlowMixture) for m in parts):
            return None
        weights: list[float | None] = []
        for member in parts:
            if not isinstance(member, FlowMixture):
                weights.append(1.0)
            elif member.weights.is_meta:  # a model placed on the meta device holds no values
                weights.append(None)
            else:
                weights.append(float(member.weights[0]))
        return weights

    # ------------------------------------------------------------ persistence
    def _member_from_record(self, record: dict, dim: int) -> nn.Module:
        """A member rebuilt from :func:`_member_record` (on the fit's device, cast before
        loading so that float64 parameters are never rounded through float32)."""
        member = self._empty_member(dim, int(record["base_components"]),
                                    int(record["stacked_components"]))
        member = member.to(self.device_, self._torch_dtype())
        member.load_state_dict(record["state"])
        return member

    def _empty_member(self, dim: int, base_components: int,
                      stacked_components: int) -> nn.Module:
        """A member of the given structure, to load parameters into (global RNG untouched)."""
        with self._seeded(0):
            flow = self._build_flow(dim, GaussianMixtureBase.empty(base_components, dim)
                                    if base_components else None)
        if stacked_components:  # the weights are placeholders, replaced by the loaded ones
            flow = FlowMixture([flow, GaussianMixtureBase.empty(stacked_components, dim)],
                               weights=[0.5, 0.5])
        return flow

    def save(self, path: str | Path) -> None:
        """Write the fitted estimator to a ``torch.save`` file that loads with
        ``weights_only=True`` (tensors and plain Python values only; no code runs on load).

        The file is written atomically (:func:`cnflow.files.atomic_write`): an interrupted
        save leaves the file that was at ``path`` before."""
        check_is_fitted(self, "flow_")
        params = self._plain_params()
        contents = {
            "format": _FORMAT,
            "estimator": type(self).__name__,
            "params": params,
            "state_dict": {k: v.detach().cpu() for k, v in self.flow_.state_dict().items()},
            "mean": torch.from_numpy(self.mean_),
            "scale": torch.from_numpy(self.scale_),
            "preprocessor": _tensors(self.preprocessor_.state()),
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": ([str(n) for n in self.feature_names_in_]
                                 if hasattr(self, "feature_names_in_") else None),
            "n_iter": int(self.n_iter_),
            "n_members": int(getattr(self, "n_members_", 1)),
            "base_components": [0 if getattr(flow, "base", None) is None
                                else int(flow.base.n_components)
                                for flow, _ in self._member_parts()],
            "stacked_components": [0 if m is None else int(m.n_components)
                                   for _, m in self._member_parts()],
            "history": self.history_,
            "settings": self.settings_.as_dict(),
            **self._saved_extras(),
        }
        atomic_write(path, lambda handle: torch.save(contents, handle))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None):
        """Read a file written by :meth:`save`; ``device`` overrides the saved device.

        Raises:
            FileNotFoundError: no file at ``path``.
            cnflow.files.ModelFileError: (a ValueError) the file is truncated, empty, not a
                file of :meth:`save`, of another estimator, or missing parts; the message
                says which. Loading never runs code from the file (``weights_only=True``).
        """
        path = Path(path)
        data = cls._read_saved(path)
        with reading_parts_of(path):
            return cls._from_saved(data, path, device)

    @classmethod
    def _read_saved(cls, path: Path) -> dict:
        """The contents of a :meth:`save` file of this class (FileNotFoundError, or a
        :class:`cnflow.files.ModelFileError` for a file of another kind)."""
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path}")
        return read_estimator_file(path, cls.__name__, _FORMAT)

    @classmethod
    def _from_saved(cls, data: dict, path: Path, device: str | None):
        """The estimator a :meth:`save` file describes (KeyError etc. where parts are
        missing or malformed; :meth:`load` names them)."""
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in data["params"].items()}
        est = cls(**params)
        if device is not None:
            est.device = device
        est.device_ = resolve_device(est.device)
        est.mean_ = data["mean"].numpy()
        est.scale_ = data["scale"].numpy()
        if data.get("preprocessor") is not None:
            est.preprocessor_ = est._preprocessor_from_state(_arrays(data["preprocessor"]))
        else:  # files of the first format standardised only
            est.preprocessor_ = TabularPreprocessor.from_state(
                {"kind": "standardize", "mean": est.mean_, "scale": est.scale_})
        est.n_features_in_ = data["n_features_in"]
        if data.get("feature_names_in") is not None:
            est.feature_names_in_ = np.asarray(data["feature_names_in"], dtype=object)
        est.n_iter_ = data["n_iter"]
        est.history_ = data["history"]
        est._restore_extras(data)
        if data.get("settings") is not None:
            est.settings_ = FitSettings.from_dict(data["settings"])
        else:  # a file from before settings were saved: the rules that need no row count
            est.settings_ = est._resolve_settings(0, int(data["n_features_in"]))
        # Cast before loading so that float64 weights are never rounded through float32.
        est.n_members_ = int(data.get("n_members", 1))
        D = est._flow_width()
        components = data.get("base_components") or [0] * est.n_members_
        stacked = data.get("stacked_components") or [0] * est.n_members_
        if len(components) != est.n_members_ or len(stacked) != est.n_members_:
            raise ModelFileError(f"{path} is damaged: {len(components)} base densities and "
                             f"{len(stacked)} stacked mixtures for {est.n_members_} flows")
        members = [est._empty_member(D, int(k_base), int(k_stack))
                   for k_base, k_stack in zip(components, stacked)]
        flow = members[0] if est.n_members_ == 1 else FlowMixture(members)
        flow = flow.to(est.device_, est._torch_dtype())
        flow.load_state_dict(data["state_dict"])
        est.flow_ = flow
        est.stacking_weights_ = est._stacking_weights()
        return est
