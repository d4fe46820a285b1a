"""Drawing rows from a fitted flow density estimator, in the caller's units, by batches: the
flow's draws mapped back through the fitted preprocessing, with their log-densities where
asked (from the sampling solve itself for a single CNF, else by scoring the draws).

Example (what :meth:`cnflow.CNFDensity.sample` does)::

    X, log_p = draw_rows(estimator, 1000, random_state=0, return_log_prob=True)
"""

from __future__ import annotations

from typing import Any

import torch

from ..checks import check_positive_int
from .fitting.run import draw_seed

__all__ = ["draw_rows"]


def draw_rows(estimator: Any, n_samples: int, random_state=None, *, steps: int | None = None,
              return_log_prob: bool = False, batch_size: int | None = None):
    """``n_samples`` rows drawn from the fitted ``estimator`` (see
    :meth:`cnflow.estimators.estimator_base.FlowDensityEstimator.sample` for the arguments):
    numpy (n_samples, n_features), with ``return_log_prob`` the pair (rows, log_prob)."""
    check_positive_int(n_samples, "n_samples")
    options = estimator._sampling_options(steps)
    batch_size = estimator._batch_size(batch_size)
    seed = draw_seed(random_state)
    flow = estimator.flow_
    one_solve = (return_log_prob and steps is None
                 and estimator._samples_with_log_prob(flow))
    draws, log_qs = [], []
    with estimator._seeded(seed), torch.no_grad():
        for start in range(0, int(n_samples), batch_size):
            n = min(batch_size, int(n_samples) - start)
            if one_solve:
                u, log_q = flow.sample_with_log_prob(n, trace="exact")
            else:
                u = flow.sample(n, **options)
                log_q = estimator._log_prob(flow, u) if return_log_prob else None
            draws.append(u)
            log_qs.append(log_q)
    U = torch.cat(draws).double().cpu().numpy()
    X = estimator.preprocessor_.inverse_transform(U)
    if not return_log_prob:
        return X
    _, logdet = estimator.preprocessor_.transform(X)
    return X, torch.cat(log_qs).double().cpu().numpy() + logdet
