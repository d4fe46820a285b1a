"""Time series as the estimators take them: lists of ``(times, values)`` pairs of any lengths,
checked (:func:`check_series`, :func:`check_query_times`) and padded into one batch in a
network's units (:func:`pad_series`).

Example:
    >>> import numpy as np
    >>> from cnflow.estimators.series import check_series
    >>> checked = check_series([([0.0, 0.5, 2.0], [1.0, 2.0, 0.5]), ([1.0], [[3.0]])])
    >>> [(t.shape, x.shape) for t, x in checked]
    [((3,), (3, 1)), ((1,), (1, 1))]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..nn.latent import PaddedSeries

__all__ = ["check_series", "check_query_times", "pad_series"]


def check_series(series, n_features: int | None = None,
                 name: str = "series") -> list[tuple[np.ndarray, np.ndarray]]:
    """Each (times, values) pair as float64 arrays of shapes (n,) and (n, D), checked.

    Arguments:
        series: a list of ``(times, values)`` pairs; values of shape (n,) are one feature.
        n_features: the D every series must have (None: that of the first).
        name: what to call the list in messages.

    Raises:
        ValueError: naming the series and what is wrong: not a list of pairs, empty, shapes,
            NaN/inf, times not strictly increasing (unsorted or duplicated), D mismatch.
    """
    if isinstance(series, (str, bytes)) or not isinstance(series, Sequence):
        raise ValueError(f"{name} must be a list of (times, values) pairs, got "
                         f"{type(series).__name__}")
    if len(series) == 0:
        raise ValueError(f"{name} is empty: give at least one (times, values) pair")
    out = []
    for i, pair in enumerate(series):
        where = f"{name}[{i}]"
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"{where} must be a (times, values) pair, got "
                             f"{type(pair).__name__}"
                             + (f" of length {len(pair)}" if hasattr(pair, "__len__") else ""))
        try:
            times = np.asarray(pair[0], dtype=np.float64)
            values = np.asarray(pair[1], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: times and values must be numeric arrays ({err})") from None
        if times.ndim != 1:
            raise ValueError(f"{where}: times must be 1-D, got shape {times.shape}")
        if len(times) == 0:
            raise ValueError(f"{where} has no observations")
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] != len(times):
            raise ValueError(f"{where}: values must have shape ({len(times)},) or "
                             f"({len(times)}, n_features) to match {len(times)} times, got "
                             f"{values.shape}")
        if not np.isfinite(times).all():
            raise ValueError(f"{where}: times contain NaN or infinite values")
        if not np.isfinite(values).all():
            raise ValueError(f"{where}: values contain NaN or infinite values")
        steps = np.diff(times)
        if (steps <= 0).any():
            j = int(np.argmax(steps <= 0))
            kind = "duplicate time" if steps[j] == 0 else "times not increasing"
            raise ValueError(f"{where}: {kind}: t[{j + 1}] = {times[j + 1]:g} follows t[{j}] = "
                             f"{times[j]:g}; times must be strictly increasing (sort them and "
                             "merge duplicates)")
        if n_features is None:
            n_features = values.shape[1]
        elif values.shape[1] != n_features:
            raise ValueError(f"{where} has {values.shape[1]} features, expected {n_features}")
        out.append((times, values))
    return out


def check_query_times(times, n_series: int) -> tuple[list[np.ndarray], bool]:
    """Query times: one 1-D array for every series, or one per series (any order).

    Returns:
        One float64 array per series, and whether the caller gave one per series (True) or
        one shared by all (False).
    """
    def one(t, where: str) -> np.ndarray:
        try:
            arr = np.asarray(t, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where} must be a 1-D array of numbers ({err})") from None
        if arr.ndim != 1 or len(arr) == 0:
            raise ValueError(f"{where} must be a non-empty 1-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{where} contain NaN or infinite values")
        return arr

    if isinstance(times, (list, tuple)) and len(times) > 0 and all(
            np.ndim(t) == 1 for t in times):
        if len(times) != n_series:
            raise ValueError(f"times: got {len(times)} arrays for {n_series} series; give one "
                             "1-D array shared by all series, or one per series")
        return [one(t, f"times[{i}]") for i, t in enumerate(times)], True
    shared = one(times, "times")
    return [shared] * n_series, False


def pad_series(series: list[tuple[np.ndarray, np.ndarray]], t0: float, time_scale: float,
               mean: np.ndarray, scale: np.ndarray, dtype: torch.dtype,
               device: torch.device) -> PaddedSeries:
    """Checked series (:func:`check_series`) as one padded batch in the network's units:
    times τ = (t − t0) / time_scale and values u = (x − mean) / scale.

    Padding repeats a series' last time and puts zeros for its values, masked out.
    """
    lengths = [len(t) for t, _ in series]
    b, n, d = len(series), max(lengths), series[0][1].shape[1]
    times = np.zeros((b, n))
    values = np.zeros((b, n, d))
    mask = np.zeros((b, n), dtype=bool)
    for i, (t, x) in enumerate(series):
        k = len(t)
        times[i, :k] = (t - t0) / time_scale
        times[i, k:] = times[i, k - 1]
        values[i, :k] = (x - mean) / scale
        mask[i, :k] = True
    return PaddedSeries(torch.as_tensor(times, dtype=dtype, device=device),
                        torch.as_tensor(values, dtype=dtype, device=device),
                        torch.as_tensor(mask, device=device), torch.as_tensor(lengths))
