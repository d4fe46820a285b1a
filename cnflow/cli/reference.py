r"""Held-out scores with their standard errors, and a Gaussian mixture's as the reference a
flow must beat.

A score is the mean of per-row log-densities :math:`\ell_i` over n rows, with the standard
error :math:`s/\sqrt{n}` (s the sample standard deviation). Two models scored on the same
rows are compared by the paired difference: the mean of :math:`\ell_i - \ell'_i` and its
standard error, much smaller than either score's when the models agree on which rows are
likely.

The reference is scikit-learn's full-covariance ``GaussianMixture``, its number of
components (1, 2, 4, ..., 32) chosen by the held-out log-likelihood of a fifth of the
training rows (:func:`cnflow.flows.base_density.select_gaussian_mixture`, at most
:data:`REFERENCE_ROWS` rows, standardised; the density is reported in the data's units).
For p(y | x) it is the mixture's own conditional, log p(x, y) − log p(x), the marginal of a
Gaussian mixture being the mixture of its components' marginals.

Example:
    >>> import numpy as np
    >>> mean_and_se(np.array([1.0, 2.0, 3.0]))
    {'mean': 2.0, 'se': 0.5773502691896258, 'rows': 3}
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from ..flows.base_density import select_gaussian_mixture

__all__ = ["REFERENCE_COMPONENTS", "REFERENCE_ROWS", "mean_and_se", "mixture_log_density",
           "mixture_reference", "paired_difference"]

#: The most training rows the reference mixture is fitted and chosen on.
REFERENCE_ROWS = 20_000
#: The numbers of components tried, in order (the search stops when the score drops).
REFERENCE_COMPONENTS = (1, 2, 4, 8, 16, 32)


def mean_and_se(values: np.ndarray) -> dict:
    """The mean of per-row values, its standard error s/√n (0 for one row) and n."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(values.mean()), "se": se, "rows": int(n)}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """The mean of a − b row by row and its standard error (a and b: per-row log-densities
    of the same rows under two models)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same rows: got {len(a)} and {len(b)}")
    return mean_and_se(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def mixture_log_density(mixture, U: np.ndarray, columns: Sequence[int] | None = None
                        ) -> np.ndarray:
    """log p(u) under a fitted full-covariance ``GaussianMixture``, or with ``columns`` the
    log-density of its marginal over those columns (each component's mean and covariance
    restricted to them, the same weights)."""
    if columns is None:
        return mixture.score_samples(U)
    columns = list(columns)
    logs = []
    for weight, mean, cov in zip(mixture.weights_, mixture.means_, mixture.covariances_,
                                 strict=True):
        sub = cov[np.ix_(columns, columns)]
        chol = np.linalg.cholesky(sub)
        z = np.linalg.solve(chol, (U - mean[columns]).T)
        logs.append(np.log(weight) - 0.5 * (z * z).sum(axis=0)
                    - np.log(np.diag(chol)).sum() - 0.5 * len(columns) * np.log(2 * np.pi))
    return logsumexp(np.stack(logs), axis=0)


def mixture_reference(train: np.ndarray, test: np.ndarray, *, targets: Sequence[int] | None
                      = None, seed: int = 0, max_seconds: float = 30.0) -> tuple[np.ndarray,
                                                                                   dict]:
    """A Gaussian mixture fitted to ``train`` and the log-density of each ``test`` row.

    Arguments:
        train, test: rows (n, D) in the data's units.
        targets: for a conditional reference, the columns y of p(y | x) (the others are x).
        seed: the random state of the row split and of EM.
        max_seconds: no larger mixture is started that would end after this many seconds.

    Returns:
        ``(log_density, about)``: (n_test,) log-densities, and a dict naming the model
        (``"model"``, ``"components"``, ``"seconds"``).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(train))[:REFERENCE_ROWS]
    sample = np.asarray(train[np.sort(rows)], dtype=np.float64)
    mean = sample.mean(axis=0)
    scale = sample.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    U = (sample - mean) / scale
    rng.shuffle(U)
    n_val = max(len(U) // 5, 1) if len(U) >= 10 else 0
    mixture, _ = select_gaussian_mixture(U[n_val:], U[:n_val] if n_val else None,
                                         components=REFERENCE_COMPONENTS, random_state=seed,
                                         deadline=start + max_seconds)
    U_test = (np.asarray(test, dtype=np.float64) - mean) / scale
    log_density = mixture_log_density(mixture, U_test) - np.log(scale).sum()
    if targets is not None:
        features = [j for j in range(U.shape[1]) if j not in set(targets)]
        log_density = (log_density + np.log(scale[features]).sum()
                       - mixture_log_density(mixture, U_test[:, features], features))
    about = {"model": "GaussianMixture (full covariance; components chosen on a fifth of "
                      "the training rows)",
             "components": int(mixture.n_components),
             "seconds": time.perf_counter() - start}
    return log_density, about
