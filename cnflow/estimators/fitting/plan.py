"""What a fit fixes before its members: the seed, the row order, each member's held-out rows
and the fitted preprocessing (the map chosen on held-out rows where the settings say
"choose"), drawn once and kept in the checkpoint so that a resumed fit continues the same
plan.

Example:
    >>> import numpy as np
    >>> [fold.tolist() for fold in folds_of(np.arange(6), 3, 2)]
    [[0, 1], [2, 3], [4, 5]]
    >>> folds_of(np.arange(6), 1, 2)[0].tolist()
    [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.utils import check_random_state

from ...preprocessing import choose_preprocessing
from ...training.stages import StagedFit
from ..policy import MAX_ROWS_FOR_MIXTURES, FitSettings
from .persistence import arrays_of, tensors_of
from .table import TableRows

__all__ = ["FitPlan", "folds_of", "draw_plan", "PlannedEstimator"]


def folds_of(perm: np.ndarray, n_members: int, n_val: int) -> list[np.ndarray]:
    """The held-out rows of each member: n_members folds of the permutation (cross-fitting),
    or with one member its first n_val rows."""
    return np.array_split(perm, n_members) if n_members > 1 else [perm[:n_val]]


@dataclass
class FitPlan:
    """What a fit fixes before its members: the seed, the row order, the number of members,
    the rows each holds out, and the fitted preprocessing (with the held-out scores that
    chose it, None where it was not chosen)."""

    seed: int
    perm: np.ndarray
    n_members: int
    n_val: int
    preprocessor: Any
    preprocessing_scores: dict | None

    @property
    def folds(self) -> list[np.ndarray]:
        """Each member's held-out rows (see :func:`folds_of`)."""
        return folds_of(self.perm, self.n_members, self.n_val)

    def as_plain(self) -> dict:
        """The plan as plain values and tensors (for a checkpoint)."""
        return {"seed": self.seed, "perm": torch.from_numpy(self.perm),
                "n_members": self.n_members, "n_val": self.n_val,
                "preprocessor": tensors_of(self.preprocessor.state()),
                "preprocessing_scores": self.preprocessing_scores}

    @classmethod
    def from_plain(cls, plain: dict, preprocessor_from_state) -> FitPlan:
        """The inverse of :meth:`as_plain`; ``preprocessor_from_state`` rebuilds the
        preprocessor from its state."""
        return cls(int(plain["seed"]), plain["perm"].numpy(), int(plain["n_members"]),
                   int(plain["n_val"]),
                   preprocessor_from_state(arrays_of(plain["preprocessor"])),
                   plain["preprocessing_scores"])


class PlannedEstimator(Protocol):
    """What :func:`draw_plan` asks of an estimator."""

    random_state: Any
    settings_: FitSettings
    _preprocessed_name: str

    def _columns_to_preprocess(self, X: np.ndarray) -> np.ndarray: ...

    def _new_preprocessor(self, kind: str, seed: int) -> Any: ...

    def _preprocessor_from_state(self, state: dict) -> Any: ...


def _chosen_map(estimator: PlannedEstimator, table: TableRows, perm: np.ndarray, n_val: int,
                seed: int, deadline: float | None) -> tuple[str, dict | None]:
    """The map the settings name, or where they say "choose" the map best on held-out
    likelihood on the first validation fold (with its scores), seeing at most
    MAX_ROWS_FOR_MIXTURES training rows."""
    settings = estimator.settings_
    if settings.preprocessing != "choose":
        return settings.preprocessing, None
    first_fold = folds_of(perm, settings.n_members, n_val)[0]
    rows, train_rows, val_rows = table.map_choice_rows(perm, first_fold, MAX_ROWS_FOR_MIXTURES,
                                                       seed)
    return choose_preprocessing(
        estimator._columns_to_preprocess(rows), train_rows, val_rows,
        kinds=settings.preprocessing_candidates, random_state=seed,
        deadline=deadline, name=estimator._preprocessed_name)


def draw_plan(estimator: PlannedEstimator, table: TableRows, warm: dict | None,
              fit: StagedFit, deadline: float | None = None) -> FitPlan:
    """The fit's seed, row order, validation folds and fitted preprocessing: read from a
    resumed checkpoint, or drawn and chosen (then written to the checkpoint; the map's
    choice tries no larger mixture after ``deadline``, a ``time.perf_counter()`` reading).
    ``warm``: a warm start's state, whose preprocessing is kept.

    Raises:
        ValueError: the held-out share leaves no rows for training or validation, or
            stacking is asked for without held-out rows.
    """
    plan = fit.saved_setup(lambda plain: FitPlan.from_plain(
        plain, estimator._preprocessor_from_state))
    if plan is not None:
        return plan
    rng = check_random_state(estimator.random_state)
    seed = int(rng.randint(np.iinfo(np.int32).max))  # as draw_seed, then the row order
    settings = estimator.settings_
    fraction = settings.validation_fraction
    n_val = int(round(fraction * len(table)))
    if fraction > 0 and (n_val < 1 or len(table) - n_val < 1):
        raise ValueError(f"validation_fraction={fraction} leaves no rows "
                         f"for training or validation with {len(table)} samples")
    if settings.stacking and not n_val:
        raise ValueError("stacking chooses the flow's weight on held-out rows; with "
                         "stacking=True set validation_fraction > 0 (or leave it 'auto')")
    perm = table.order(n_val, seed, rng)
    if warm is not None:
        preprocessor, scores = warm["preprocessor"], warm["preprocessing_scores"]
    else:
        kind, scores = _chosen_map(estimator, table, perm, n_val, seed, deadline)
        preprocessor = estimator._new_preprocessor(kind, seed).fit(
            table.preprocessing_sample(seed))
    plan = FitPlan(seed, perm, settings.n_members, n_val, preprocessor, scores)
    fit.keep_setup(plan.as_plain())
    return plan
