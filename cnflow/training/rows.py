"""Where the training loop's rows come from: a tensor in memory, or a table larger than
memory, read from a memory-mapped array one minibatch at a time.

A *row source* (:class:`RowSource`) has a length, a device, and ``batch(indices)``: the rows
at those indices (a CPU tensor of int64) as a tensor on that device.
:func:`cnflow.training.train` draws its minibatch indices from a seeded permutation of
``range(len(source))`` (8 bytes a row, never a copy of the data) and asks the source for
each minibatch's rows:

- :class:`TensorRows`: rows already in a tensor, ``tensor[indices]`` (what a tensor passed
  to ``train`` becomes).
- :class:`MappedRows`: rows of a numpy array, typically ``np.load(path, mmap_mode="r")``,
  read by index: the indices are sorted (so a minibatch is read front to back through the
  file), the rows gathered and put back in the drawn order, mapped by a callable (the
  fitted preprocessing, float64 numpy in, float64 numpy out) and moved to the device in the
  source's dtype. Only the rows of the minibatch are read; memory is bounded by the batch.

The helpers read bounded parts of such an array: :func:`bounded_sample` (a seeded, sorted
draw of at most so many row indices), :func:`gather` (those rows as float64, read in sorted
order) and :func:`check_finite_rows` (a pass over every row in chunks, naming the first
row with a NaN or an infinity).

Example:
    >>> import numpy as np, torch
    >>> from cnflow.training.rows import MappedRows
    >>> table = np.arange(12.0).reshape(6, 2)
    >>> rows = MappedRows(table, lambda x: 2 * x, dtype=torch.float64)
    >>> rows.batch(torch.tensor([4, 1]))
    tensor([[16., 18.],
            [ 4.,  6.]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["RowSource", "TensorRows", "MappedRows", "as_row_source", "is_mapped",
           "bounded_sample", "gather", "check_finite_rows", "chunk_rows"]

#: The bytes of rows a chunked pass (:func:`check_finite_rows`, :func:`chunk_rows`) reads
#: at a time.
CHUNK_BYTES = 1 << 23


@runtime_checkable
class RowSource(Protocol):
    """Rows that the training loop reads by index (see the module)."""

    device: torch.device

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows at ``indices`` (a 1-D int64 CPU tensor), in that order, on ``device``."""
        ...


class TensorRows:
    """The rows of a tensor: ``batch(indices)`` is ``tensor[indices]`` (indices moved to the
    tensor's device)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.device = tensor.device

    def __len__(self) -> int:
        return len(self.tensor)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.tensor[indices.to(self.device)]


class MappedRows:
    r"""The rows of a numpy array (a memory map, or any array indexed by row), read a batch
    at a time, mapped by ``transform`` and moved to ``device`` as ``dtype``.

    Arguments:
        array: (n, d) array; only the rows a batch asks for are read.
        transform: float64 rows (k, d) → mapped float64 rows (k, d'), row by row (the
            fitted preprocessing); None: the rows as they are.
        dtype: the tensors' floating-point type.
        device: where the tensors go.
        rows: the rows of ``array`` this source holds, in their order (an int64 array,
            e.g. the training rows without the held-out ones); None: every row.
        excluded: rows of ``array`` this source leaves out (e.g. the held-out ones), without
            listing the others: position i is the i-th row not excluded,
            :math:`r = i + \#\{j : e_j - j \le i\}` for the sorted excluded rows
            :math:`e_j` (memory O(excluded), not O(n)). Not with ``rows``.
    """

    def __init__(self, array, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", rows: np.ndarray | None = None,
                 excluded: np.ndarray | None = None) -> None:
        if rows is not None and excluded is not None:
            raise ValueError("give the rows a source holds or those it leaves out, not both")
        self.array, self.transform, self.dtype = array, transform, dtype
        self.device = torch.device(device)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.excluded = (None if excluded is None
                         else np.unique(np.asarray(excluded, dtype=np.int64)))
        self._gaps = (None if self.excluded is None
                      else self.excluded - np.arange(len(self.excluded)))

    def __len__(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        return len(self.array) - (0 if self.excluded is None else len(self.excluded))

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        where = np.asarray(indices.cpu().numpy(), dtype=np.int64)
        if self.rows is not None:
            where = self.rows[where]
        elif self._gaps is not None:
            where = where + np.searchsorted(self._gaps, where, side="right")
        block = gather(self.array, where)
        if self.transform is not None:
            block = self.transform(block)
        return torch.as_tensor(block, dtype=self.dtype).to(self.device)


def as_row_source(X: torch.Tensor | RowSource) -> RowSource:
    """``X`` as a row source: a tensor becomes :class:`TensorRows`, a source stays itself."""
    if isinstance(X, torch.Tensor):
        return TensorRows(X)
    if isinstance(X, RowSource):
        return X
    raise TypeError(f"training rows must be a tensor or a row source (len, device, batch), "
                    f"got {type(X).__name__}")


def is_mapped(X) -> bool:
    """Whether ``X`` is a memory-mapped array (``np.memmap``, as ``np.load(path,
    mmap_mode="r")`` returns, or a slice of one): a table read by rows, never whole."""
    return isinstance(X, np.memmap)


def gather(array, indices: np.ndarray) -> np.ndarray:
    """The rows of ``array`` at ``indices`` as a float64 array, in the order of ``indices``;
    the rows are read in increasing order (front to back through a file)."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    block = np.asarray(array[indices[order]], dtype=np.float64)
    if np.all(order[1:] > order[:-1]):  # already sorted
        return block
    out = np.empty_like(block)
    out[order] = block
    return out


def bounded_sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_rows`` of ``n`` rows: all of them (0..n−1) when
    n ≤ max_rows, else a uniform draw without replacement seeded by ``seed``, in memory
    O(max_rows), not O(n): the distinct values of draws with replacement until there are
    enough, then a uniform subset of them (uniform over subsets by symmetry)."""
    if n <= max_rows:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    distinct = np.empty(0, dtype=np.int64)
    while len(distinct) < max_rows:
        distinct = np.union1d(distinct, rng.integers(0, n, size=max_rows, dtype=np.int64))
    keep = rng.choice(len(distinct), size=max_rows, replace=False)
    return np.sort(distinct[keep])


def chunk_rows(n_columns: int) -> int:
    """Rows per chunk of a pass over a table of ``n_columns`` float64 columns: about
    :data:`CHUNK_BYTES` of them (at least one row)."""
    return max(1, CHUNK_BYTES // (8 * max(int(n_columns), 1)))


def check_finite_rows(array, name: str = "X", first_row: int = 0) -> None:
    """A ValueError naming the first row (0-based, counted from ``first_row``: the number
    of the array's first row in a larger table) of ``array`` with a NaN or an infinite
    value, read in chunks of :func:`chunk_rows` rows (memory bounded by a chunk).

    Example:
        >>> import numpy as np
        >>> check_finite_rows(np.array([[1.0, 2.0], [3.0, np.nan]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: X holds NaN in row 1 (column 1): every value must be finite; ...
    """
    if np.dtype(array.dtype).kind not in "fc":  # integers and booleans are always finite
        return
    n_columns = array.shape[1] if array.ndim > 1 else 1
    step = chunk_rows(n_columns)
    for start in range(0, len(array), step):
        block = np.asarray(array[start:start + step])
        bad = ~np.isfinite(block)
        if bad.any():
            flat = int(np.argmax(bad.reshape(len(block), -1).any(axis=1)))
            columns = np.flatnonzero(bad.reshape(len(block), -1)[flat])
            value = block.reshape(len(block), -1)[flat, columns[0]]
            what = "NaN" if np.isnan(value) else "an infinite value"
            raise ValueError(f"{name} holds {what} in row {first_row + start + flat} (column "
                             f"{columns[0]}): every value must be finite; drop or impute "
                             "that row")
