"""The members of a flow estimator's fit, each one stage of a staged run
(:class:`cnflow.training.stages.StagedFit`): its rows, its Gaussian mixture (the prepared
setup a checkpoint keeps), its training, its stacking with the mixture, and its restoring
from a finished stage's record.

One member trains on the rows its fold does not hold out and is validated on that fold;
several members are cross-fitted (each holds out its own fold); the table
(:class:`~cnflow.estimators.fitting.table.TableRows`) says how those rows are read.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Protocol

import torch
from torch import nn

from ...flows.base_density import GaussianMixtureBase
from ...flows.mixture import FlowMixture, best_mixture_weight
from ...training import TrainConfig, TrainingFault, TrainResult
from ...training.stages import StagedFit, StageRun
from ..policy import FitSettings
from .persistence import member_record, mixture_from_record, mixture_record
from .plan import FitPlan
from .table import RowReader, TableRows

__all__ = ["MemberTraining", "MemberEstimator", "stacked", "member_parts", "stacking_weights"]


class MemberEstimator(RowReader, Protocol):
    """What :class:`MemberTraining` asks of an estimator (its subclass interface), besides
    reading rows (:class:`~cnflow.estimators.fitting.table.RowReader`)."""

    max_seconds: float | None
    device_: torch.device

    def _fit_mixture(self, U_train: Any, U_val: Any, seed: int,
                     deadline: float | None = None) -> GaussianMixtureBase | None: ...

    def _build_flow(self, n_features: int, base: nn.Module | None = None) -> nn.Module: ...

    def _base_of(self, mixture: GaussianMixtureBase | None) -> nn.Module | None: ...

    def _train(self, flow: nn.Module, U_train: Any, U_val: Any, config: TrainConfig,
               generator: torch.Generator, *, stage: StageRun,
               fresh: bool = True) -> TrainResult: ...

    def _stacked(self, flow: nn.Module, mixture: Any, U_val: Any) -> nn.Module: ...

    def _member_from_record(self, record: dict, dim: int) -> nn.Module: ...

    def _seeded(self, seed: int) -> Any: ...

    def _torch_dtype(self) -> torch.dtype: ...


@dataclasses.dataclass
class MemberTraining:
    """The members of one fit: ``prepare``, ``train`` and ``restore`` are the staged run's
    callbacks (:meth:`StagedFit.run`); the finished members collect in :attr:`members`.

    Arguments:
        estimator: the estimator being fitted (its device, dtype and mapped rows set).
        table: the rows being fitted (in memory or memory-mapped).
        U: the preprocessed rows: a tensor, or a row source of a memory-mapped table.
        plan: the fit's seed, row order and folds.
        settings: the resolved fit settings.
        config: the training loop's settings (each member's seconds set per stage).
        fit: the staged run (for its deadline).
        warm: a warm start's state (each member's flow and mixture), or None.
        planning: when the map's choice had to end (``time.perf_counter()``), or None.
    """

    estimator: MemberEstimator
    table: TableRows
    U: Any
    plan: FitPlan
    settings: FitSettings
    config: TrainConfig
    fit: StagedFit
    warm: dict | None = None
    planning: float | None = None
    members: list[nn.Module] = dataclasses.field(default_factory=list)

    @property
    def n_features(self) -> int:
        return self.table.shape[1]

    def rows(self, k: int) -> tuple[Any, torch.Tensor | None]:
        """Member k's training rows and held-out rows (None: none held out; see
        :meth:`TableRows.member_rows`)."""
        if not self.plan.n_val:
            return self.U, None
        return self.table.member_rows(self.estimator, self.U, self.plan.perm,
                                      self.plan.folds[k])

    def mixture_deadline(self) -> float | None:
        """When a member's mixture tries no larger mixture: with a planning share, that
        share of the budget (split between the members) from now, as the map's choice had
        (else when the map's choice had to end)."""
        if self.planning is None or self.settings.planning_share >= 1:
            return self.planning
        share = (self.settings.planning_share * float(self.estimator.max_seconds)
                 / self.plan.n_members)
        return min(self.fit.deadline, time.perf_counter() + share)

    def prepare(self, run: StageRun) -> dict | None:
        """Member k's Gaussian mixture (a warm start's, or fitted), as a record."""
        k = run.index
        if self.warm is not None and self.warm["parts"][k][1] is not None:
            return mixture_record(self.warm["parts"][k][1])
        U_train, U_val = self.rows(k)
        return mixture_record(self.estimator._fit_mixture(
            U_train, U_val, self.plan.seed + k, self.mixture_deadline()))

    def _new_flow(self, k: int, mixture: GaussianMixtureBase | None) -> nn.Module:
        est = self.estimator
        flow = (copy.deepcopy(self.warm["parts"][k][0]) if self.warm is not None
                else est._build_flow(self.n_features, est._base_of(mixture)))
        return flow.to(est.device_, est._torch_dtype())

    def train(self, run: StageRun) -> TrainResult:
        """Build (or copy from a warm start) member k's flow, train it for the stage's
        seconds, stack it with its mixture where the settings say so, and record it."""
        est, k, seed = self.estimator, run.index, self.plan.seed
        U_train, U_val = self.rows(k)
        mixture = mixture_from_record(run.setup, self.n_features)
        with est._seeded(seed + k):
            flow = self._new_flow(k, mixture)
            try:
                result = est._train(flow, U_train, U_val,
                                    dataclasses.replace(self.config, max_seconds=run.seconds),
                                    torch.Generator().manual_seed(seed + k), stage=run,
                                    fresh=self.warm is None)
            except TrainingFault:
                self.members.append(flow)  # with its last good parameters
                raise
        if self.settings.stacking:
            flow = est._stacked(flow, mixture, U_val)
        self.members.append(flow)
        run.parameters = member_record(flow)
        return result

    def restore(self, run: StageRun) -> None:
        """A finished member, read back from its stage's record (a resumed fit)."""
        self.members.append(self.estimator._member_from_record(run.record.parameters,
                                                               self.n_features))


def stacked(flow: nn.Module, mixture: GaussianMixtureBase, log_flow: torch.Tensor,
            U_val: torch.Tensor, device: torch.device, dtype: torch.dtype) -> FlowMixture:
    """The two-member density w·flow + (1 − w)·mixture, with the w that maximises the
    held-out rows' mean log-likelihood (:func:`cnflow.flows.mixture.best_mixture_weight`);
    ``log_flow``: the flow's log-density at the held-out rows ``U_val``."""
    mixture = mixture.to(device, dtype)  # the base, if any, is a copy
    with torch.no_grad():
        log_mixture = mixture.log_prob(U_val)
    w = best_mixture_weight(log_flow.double().cpu().numpy(),
                            log_mixture.double().cpu().numpy())
    return FlowMixture([flow, mixture], weights=[w, 1.0 - w]).to(device, dtype)


def _members(flow: nn.Module, n_members: int) -> list[nn.Module]:
    """The fitted members (one, or the cross-fitted ones of a FlowMixture)."""
    return list(flow.members) if n_members > 1 else [flow]


def member_parts(flow: nn.Module, n_members: int
                 ) -> list[tuple[nn.Module, GaussianMixtureBase | None]]:
    """Each member's flow and the mixture stacked with it (None where not stacked)."""
    return [(m.members[0], m.members[1]) if isinstance(m, FlowMixture) else (m, None)
            for m in _members(flow, n_members)]


def stacking_weights(flow: nn.Module, n_members: int) -> list[float | None] | None:
    """The flow's weight in each stacked member (None when nothing is stacked; a member
    placed on the meta device holds no value)."""
    members = _members(flow, n_members)
    if not any(isinstance(m, FlowMixture) for m in members):
        return None
    return [1.0 if not isinstance(m, FlowMixture) else None if m.weights.is_meta
            else float(m.weights[0]) for m in members]
