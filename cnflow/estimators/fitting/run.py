"""One staged run for every estimator's fit: the stages run by
:meth:`cnflow.training.stages.StagedFit.run`, a :class:`~cnflow.training.TrainingFault`
caught so that the estimator can keep what was fitted before it is re-raised, and the history
and step count kept on the estimator.

Example (the shape of every estimator's ``fit``)::

    result, fault = run_stages(fit, stages, train_stage)
    ...  # keep the fitted modules, also after a fault
    finish_fit(estimator, result, fault)  # history_, n_iter_; re-raises the fault
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from ...training import TrainingFault, TrainResult
from ...training.stages import Stage, StagedFit, StageRun

__all__ = ["run_stages", "finish_fit", "forget_fitted", "draw_seed"]


def run_stages(fit: StagedFit, stages: Sequence[Stage],
               train_stage: Callable[[StageRun], TrainResult], **options: Any
               ) -> tuple[TrainResult, TrainingFault | None]:
    """The joined result of the stages (see :meth:`StagedFit.run`, which ``options`` go
    to), and the fault that stopped them (None if none did): a fault's result holds the
    history up to it."""
    try:
        return fit.run(stages, train_stage, **options), None
    except TrainingFault as err:
        return err.result, err


def finish_fit(estimator: Any, result: TrainResult | None, fault: TrainingFault | None) -> None:
    """Keep the run's history and step count on the estimator (``history_``, ``n_iter_``;
    empty where no stage ran), then re-raise the fault if there was one: the estimator keeps
    the last good parameters and stays usable, and the caller is told."""
    estimator.history_ = [] if result is None else result.history
    estimator.n_iter_ = 0 if result is None else result.n_iter
    if fault is not None:
        raise fault


def forget_fitted(estimator: Any, names: Sequence[str]) -> None:
    """Remove the fitted attributes ``names`` (a refit that fails must not leave the old
    model with the new data's scaling)."""
    for name in names:
        estimator.__dict__.pop(name, None)


def draw_seed(random_state) -> int:
    """A torch seed drawn from ``random_state`` (None, an int or a numpy RandomState), as
    scikit-learn's estimators draw theirs."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
