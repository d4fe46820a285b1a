r"""Fits to tables larger than memory: what a flow estimator reads of a memory-mapped X
(``np.load(path, mmap_mode="r")``, an ``np.memmap``), and what it never reads whole.

A fit to a memory-mapped table never copies the table into memory or onto the device:

- **Checks stream.** The shape, the dtype (any real type; rows are converted to float64 as
  they are read) and every value are checked in chunks of about 8 MB of rows; a NaN or an
  infinity is a ValueError naming its row (:func:`cnflow.training.rows.check_finite_rows`).
- **Statistics come from a sample.** The preprocessing (the columns' means and scales, the
  logged columns, the Gaussianiser's centres, the whitening covariance, and the checks of
  :func:`cnflow.preprocessing.check_spread`) is fitted to a seeded, uniform draw of at most
  :data:`SAMPLE_ROWS` rows (fewer for wide rows: at most :data:`SAMPLE_BYTES` of float64),
  every row when there are no more. Where the map is chosen
  (:func:`cnflow.preprocessing.choose_preprocessing`), it is chosen on such a draw of the
  training rows against the held-out rows scored. Any invertible map gives exact densities
  in the caller's units (the change of variables); a map fitted to a sample only starts the
  flow a little further from N(0, I). Gaussian mixtures (a mixture base, stacking) are
  fitted to such a draw of the preprocessed training rows too.
- **Minibatches are read by index.** Each step reads its rows from the file (sorted
  indices, front to back), preprocesses them and moves them to the device
  (:class:`cnflow.training.rows.MappedRows`); the row order is a seeded permutation of row
  indices (8 bytes a row). Under ``torch.distributed`` each process reads only its share.
- **Held-out rows are bounded.** Where rows are held out, at most
  :data:`VALIDATION_ROWS` of each member's held-out rows (the first in the fit's random
  order) are scored, kept in memory as the preprocessed tensor; the other rows of the fold
  are trained on.
- **Scoring streams.** ``score_samples`` and ``score`` read, check and score
  ``batch_size`` rows at a time.

In-memory arrays take the estimators' usual path (every statistic from every row).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import validate_data

from ..training.rows import RowSource, bounded_sample, check_finite_rows, gather

__all__ = ["SAMPLE_ROWS", "SAMPLE_BYTES", "VALIDATION_ROWS", "check_mapped", "sample_size",
           "preprocessing_rows", "choice_rows", "held_out_rows", "rows_sample"]

#: The most rows the statistics of a memory-mapped table's preprocessing come from.
SAMPLE_ROWS = 100_000
#: ... and the most bytes (as float64) those rows may take.
SAMPLE_BYTES = 1 << 27
#: The most held-out rows scored for validation per member of a memory-mapped fit.
VALIDATION_ROWS = 20_000


def check_mapped(estimator, X, *, reset: bool, finite: bool = True) -> np.ndarray:
    """``X``, a memory-mapped table, checked without copying it: 2-D, with at least two rows
    to fit (``reset=True``, which records the number of columns as ``n_features_in_``) or
    one to score (``reset=False``, the fitted number of columns), of a real dtype, and
    (``finite``) every value finite, read in chunks (False: the caller checks the rows as
    it reads them).

    Raises:
        ValueError: what is wrong (a non-finite value: its row and column).
    """
    validate_data(estimator, X, dtype=None, ensure_all_finite=False,
                  ensure_min_samples=2 if reset else 1, reset=reset)
    if np.dtype(X.dtype).kind not in "biuf":
        raise ValueError(f"X must hold real numbers, got an array of dtype {X.dtype}")
    if finite:
        check_finite_rows(X)
    return X


def sample_size(n_columns: int) -> int:
    """The rows of a sample: :data:`SAMPLE_ROWS`, or fewer for rows so wide that they would
    take more than :data:`SAMPLE_BYTES` (but never fewer than 1,000 for that)."""
    return min(SAMPLE_ROWS, max(1_000, SAMPLE_BYTES // (8 * max(int(n_columns), 1))))


def preprocessing_rows(X, seed: int) -> np.ndarray:
    """The rows the preprocessing of a memory-mapped ``X`` is fitted to: a seeded draw of
    at most :func:`sample_size` rows (all of them in order when there are no more), as
    float64, read in increasing order."""
    return gather(X, bounded_sample(len(X), sample_size(X.shape[1]), seed))


def held_out_rows(fold: np.ndarray) -> np.ndarray:
    """The held-out rows of a memory-mapped fit that are scored: the first
    :data:`VALIDATION_ROWS` of ``fold``."""
    return fold[:VALIDATION_ROWS]


def choice_rows(X, train_rows: np.ndarray, val_rows: np.ndarray,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`cnflow.preprocessing.choose_preprocessing` needs of a memory-mapped X:
    the rows of a bounded draw of ``train_rows`` and of ``val_rows`` (bounded by the
    caller), read together in increasing order, and the positions of each among them.

    Returns:
        ``(rows, train_positions, val_positions)``.
    """
    drawn = train_rows[bounded_sample(len(train_rows), sample_size(X.shape[1]), seed)]
    where = np.sort(np.concatenate([drawn, val_rows]))
    return (gather(X, where), np.searchsorted(where, drawn), np.searchsorted(where, val_rows))


def rows_sample(U: torch.Tensor | RowSource, seed: int,
                max_rows: int | None = None) -> torch.Tensor:
    """Preprocessed training rows as one tensor (for a Gaussian mixture fitted to them): the
    first ``max_rows`` of ``U`` (all with None; its rows are in a random order), or a seeded
    draw of at most :func:`sample_size` (and ``max_rows``) rows of a row source."""
    if isinstance(U, torch.Tensor):
        return U if max_rows is None else U[:max_rows]
    width = U.batch(torch.zeros(1, dtype=torch.int64)).shape[1]
    size = sample_size(width) if max_rows is None else min(sample_size(width), max_rows)
    return U.batch(torch.from_numpy(bounded_sample(len(U), size, seed)))


def training_sample(n: int, held: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``size`` rows of ``n`` drawn uniformly from those not in
    ``held``, in memory O(size + len(held)) (for choosing the map on a memory-mapped table)."""
    drawn = bounded_sample(n, min(n, size + len(held)), seed)
    drawn = drawn[~np.isin(drawn, held)]
    if len(drawn) > size:
        drawn = np.sort(np.random.default_rng(seed).choice(drawn, size, replace=False))
    return drawn
