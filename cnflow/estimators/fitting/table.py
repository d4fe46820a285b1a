"""The rows being fitted or scored, in memory or memory-mapped: the one place where the two
are told apart.

An in-memory table is a float64 array whose every statistic comes from every row. A
memory-mapped one (``np.load(path, mmap_mode="r")``, an ``np.memmap``) is never copied whole:
it is checked in chunks, its preprocessing is fitted to a bounded sample, only the held-out
rows are drawn (the training rows are the others, read by position a minibatch at a time),
at most :data:`~cnflow.estimators.mapped.VALIDATION_ROWS` rows a member are held out, and it
is scored a batch at a time (:mod:`cnflow.estimators.mapped` holds the bounds).

Example:
    >>> import numpy as np
    >>> table = TableRows(np.zeros((5, 2)))
    >>> table.mapped, table.identity()["data shape"]
    (False, [5, 2])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.utils.validation import validate_data

from ...training.checkpoint import data_digest
from ...training.rows import RowSource, bounded_sample, check_finite_rows, gather, is_mapped
from ..mapped import (
    SAMPLE_ROWS,
    check_mapped,
    choice_rows,
    held_out_rows,
    preprocessing_rows,
    training_sample,
)

__all__ = ["TableRows", "RowReader"]


class RowReader(Protocol):
    """What :class:`TableRows` asks of an estimator: its fitted preprocessing applied to
    rows in memory, and to rows of a memory-mapped table read a minibatch at a time."""

    def _transform(self, X: np.ndarray) -> tuple[torch.Tensor, np.ndarray]: ...

    def _mapped_rows(self, X: np.ndarray, rows: np.ndarray | None = None,
                     excluded: np.ndarray | None = None) -> RowSource: ...


class TableRows:
    """The validated rows ``X`` of a fit (see the module docstring).

    Arguments:
        X: a float64 array, or a memory-mapped array of a real dtype, already checked
            (:meth:`checked`).
    """

    def __init__(self, X: np.ndarray) -> None:
        self.X = X
        self.mapped = is_mapped(X)

    # ------------------------------------------------------------ checking
    @staticmethod
    def checked(estimator: Any, X: Any) -> np.ndarray:
        """``X`` checked for a fit (at least 2 rows; the number of columns recorded as
        ``n_features_in_``): a memory-mapped table in chunks and never copied, anything
        else converted to float64 in memory.

        Raises:
            ValueError: what is wrong (for a memory-mapped X, the first row with a NaN or an
                infinity).
        """
        if is_mapped(X):
            return check_mapped(estimator, X, reset=True)
        return validate_data(estimator, X, dtype=np.float64, ensure_min_samples=2)

    @staticmethod
    def scoring_blocks(estimator: Any, X: Any, batch_size: int) -> Iterator[np.ndarray]:
        """The rows of ``X`` to score, checked against the fitted columns: in memory, all at
        once; memory-mapped, ``batch_size`` rows at a time, each block checked as read."""
        if not is_mapped(X):
            yield validate_data(estimator, X, dtype=np.float64, reset=False)
            return
        check_mapped(estimator, X, reset=False, finite=False)
        for start in range(0, len(X), batch_size):
            rows = np.asarray(X[start:start + batch_size], dtype=np.float64)
            check_finite_rows(rows, first_row=start)
            yield rows

    # ------------------------------------------------------------ what a fit reads
    def __len__(self) -> int:
        return len(self.X)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape)

    def identity(self) -> dict:
        """What identifies the data in a checkpoint: shape, digest, and the source where it
        is memory-mapped."""
        mapped = {"data source": "memory-mapped"} if self.mapped else {}
        return {"data shape": list(self.X.shape), "data digest": data_digest(self.X)[:16],
                **mapped}

    def order(self, n_val: int, seed: int, rng: np.random.RandomState) -> np.ndarray:
        """The row order: a permutation of all rows, or of a large memory-mapped table only
        the held-out rows (memory O(n_val); the training rows are the others, read by
        position)."""
        if self.mapped and len(self.X) > SAMPLE_ROWS:
            return (rng.permutation(bounded_sample(len(self.X), n_val, seed)) if n_val
                    else np.empty(0, dtype=np.int64))
        return rng.permutation(len(self.X))

    def map_choice_rows(self, perm: np.ndarray, fold: np.ndarray, max_rows: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows that choose the map, and the positions among them of at most
        ``max_rows`` training rows (a random subset: ``perm`` is a random order) and of the
        held-out ``fold``; of a memory-mapped table a sample of the training rows against the
        rows it scores."""
        X = self.X
        if not self.mapped:
            return X, perm[~np.isin(perm, fold)][:max_rows], fold
        held = held_out_rows(fold)
        training = (training_sample(len(X), held, max_rows, seed) if len(X) > SAMPLE_ROWS
                    else perm[~np.isin(perm, held)][:max_rows])
        return choice_rows(X, training, held, seed)

    def preprocessing_sample(self, seed: int) -> np.ndarray:
        """The rows the preprocessing is fitted to: all of them, or of a memory-mapped table
        a seeded, bounded sample."""
        return preprocessing_rows(self.X, seed) if self.mapped else self.X

    def training_source(self, estimator: RowReader) -> Any:
        """Every row through the fitted preprocessing: a tensor, or a memory-mapped table's
        row source read a minibatch at a time."""
        return estimator._mapped_rows(self.X) if self.mapped else estimator._transform(self.X)[0]

    def member_rows(self, estimator: RowReader, U: Any, perm: np.ndarray, fold: np.ndarray
                    ) -> tuple[Any, torch.Tensor]:
        """A member's training rows (all but its held-out ``fold``) and held-out rows; of a
        memory-mapped table, the training rows are read by index and at most
        VALIDATION_ROWS rows are held out (the rest of the fold is trained on)."""
        X = self.X
        if self.mapped:
            held = held_out_rows(fold)
            training = (estimator._mapped_rows(X, excluded=held) if len(X) > SAMPLE_ROWS
                        else estimator._mapped_rows(X, rows=perm[~np.isin(perm, held)]))
            return training, estimator._transform(gather(X, held))[0]
        rest = perm[~np.isin(perm, fold)]
        return (U[torch.as_tensor(rest, device=U.device)],
                U[torch.as_tensor(fold, device=U.device)])
