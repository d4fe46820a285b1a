"""The fit of a flow density estimator once its settings are resolved: the checkpoint, the
time budget, the plan, the preprocessed rows, one stage per member (each granted an equal
share of the time left), and the fitted members kept on the estimator.

Example (what :meth:`cnflow.estimators.estimator_base.FlowDensityEstimator.fit` does once
``settings_`` are resolved)::

    fit_members(estimator, X, warm=None, settings=estimator.settings_)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...flows.mixture import FlowMixture
from ...training import TrainConfig, TrainResult, resolve_device
from ...training.stages import Stage, StagedFit
from ..policy import FitSettings
from .members import MemberTraining, stacking_weights
from .persistence import state_digest
from .plan import draw_plan
from .run import finish_fit, run_stages
from .table import TableRows

__all__ = ["fit_members"]


def _planning_deadline(fit: StagedFit, settings: FitSettings,
                       max_seconds: float | None) -> float | None:
    """When choosing the map and fitting mixtures try no larger mixture: the fit's deadline,
    or sooner, ``planning_share`` of the budget from now."""
    planning = fit.deadline
    if planning is not None and settings.planning_share < 1:
        planning = min(planning, time.perf_counter()
                       + settings.planning_share * float(max_seconds))
    return planning


def _loop_config(estimator: Any, settings: FitSettings, holds_out: bool) -> TrainConfig:
    """The training loop's settings (a member's seconds are set per stage)."""
    return TrainConfig(max_iter=settings.max_iter, batch_size=settings.batch_size,
                       lr=settings.lr, lr_schedule=settings.lr_schedule,
                       validation_interval=settings.validation_interval,
                       max_seconds=estimator.max_seconds, weight_decay=estimator.weight_decay,
                       n_iter_no_change=settings.n_iter_no_change if holds_out else None,
                       verbose=estimator.verbose)


def fit_members(estimator: Any, X: np.ndarray, warm: dict | None,
                settings: FitSettings) -> None:
    """Fit ``estimator``'s members to the validated rows ``X`` under ``settings`` (a warm
    start's state ``warm`` continues them), and set ``device_``, ``preprocessor_``,
    ``mean_``, ``scale_``, ``preprocessing_scores_`` (where the map was chosen),
    ``n_members_``, ``flow_``, ``stacking_weights_``, ``history_`` and ``n_iter_``.

    Raises:
        cnflow.training.TrainingFault: after the members are kept (with their last good
            parameters), as :func:`~cnflow.estimators.fitting.run.finish_fit` says.
    """
    device = resolve_device(estimator.device)
    table = TableRows(X)
    checkpoint = estimator._fit_checkpoint({
        **table.identity(),
        "warm start from": None if warm is None else state_digest(
            [flow for flow, _ in warm["parts"]])})
    # max_seconds bounds the whole fit (with a checkpoint, every run of it)
    max_seconds = estimator.max_seconds
    fit = StagedFit(checkpoint, None if max_seconds is None else float(max_seconds))
    planning = _planning_deadline(fit, settings, max_seconds)
    plan = draw_plan(estimator, table, warm, fit, planning)
    estimator.device_, estimator.preprocessor_ = device, plan.preprocessor
    estimator.mean_, estimator.scale_ = plan.preprocessor.mean_, plan.preprocessor.scale_
    if plan.preprocessing_scores is not None:
        estimator.preprocessing_scores_ = plan.preprocessing_scores
    members = MemberTraining(estimator, table, table.training_source(estimator), plan,
                             settings, _loop_config(estimator, settings, bool(plan.n_val)),
                             fit, warm, planning)
    stages = [Stage(f"member {k}", tags={"member": k} if plan.n_members > 1 else {})
              for k in range(plan.n_members)]
    prior = None if warm is None else TrainResult(history=warm["history"],
                                                  n_iter=warm["n_iter"])
    result, fault = run_stages(fit, stages, members.train, prepare=members.prepare,
                               restore=members.restore, prior=prior,
                               continue_after_fault=True)
    estimator.n_members_ = len(members.members)
    estimator.flow_ = (members.members[0] if plan.n_members == 1
                       else FlowMixture(members.members))
    estimator.stacking_weights_ = stacking_weights(estimator.flow_, estimator.n_members_)
    finish_fit(estimator, result, fault)
