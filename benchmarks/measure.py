"""Helpers shared by the benchmark scripts: the memory and time of one gradient step, runs in
fresh processes (so that earlier work does not set a peak), the tabular peers (zuko's flows,
cross-validated scikit-learn densities) with their training loop, and the merging of a partial
run's result rows.

Imported by the scripts as ``from measure import ...`` (the benchmarks folder is on
``sys.path`` when a script in it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["MALLOC_ENV", "adam_with_early_stopping", "fit_sklearn", "fit_unconditional_flow",
           "fit_zuko", "measure_step", "merge_rows", "run_fresh", "standardiser"]


# Fixed malloc thresholds: large blocks are mmapped and returned at once, so the resident size
# follows the live tensors instead of glibc's cached free memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_step(forward: Callable[[], torch.Tensor], loss: Callable[[torch.Tensor], torch.Tensor],
                 device: str) -> dict:
    """Memory and time of one gradient step: ``loss(forward()).backward()``, run once here.

    Returns ``saved_MB`` (bytes autograd saved for backward while ``forward`` ran, counted by
    saved-tensor hooks), ``peak_rss_MB`` and ``peak_rss_rise_MB`` (the process's resident
    memory, sampled every 0.5 ms from /proc/self/statm by a thread, and its rise over the level
    before the step), ``seconds`` and, on CUDA, ``cuda_peak_MB``. Run it in a fresh process
    (:func:`run_fresh`) after a warm-up, so that earlier work does not set the peak.
    """
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    peak, stop = [0], threading.Event()
    baseline = _rss_bytes()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    sampler.start()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    loss(out).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    result = {"saved_MB": saved / 2**20, "peak_rss_MB": peak[0] / 2**20,
              "peak_rss_rise_MB": max(0, peak[0] - baseline) / 2**20, "seconds": seconds}
    if device == "cuda":
        result["cuda_peak_MB"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    return result


def run_fresh(argv: list[str]) -> dict:
    """Run ``python *argv`` in a fresh process with :data:`MALLOC_ENV`; the JSON object it
    prints on its last line of output."""
    env = dict(os.environ, **MALLOC_ENV)
    res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def adam_with_early_stopping(module: torch.nn.Module,
                             batch_nll: Callable[[torch.Tensor], torch.Tensor], n_train: int,
                             val_nll: Callable[[], float], budget: float, *, batch_size: int,
                             lr: float = 1e-3, interval: int = 50, patience: int = 30) -> int:
    """The peers' training loop: Adam on minibatches of training-row indices (drawn with
    replacement by torch's global generator), the held-out loss scored every ``interval``
    steps, stopped after ``patience`` scorings without improvement or at ``budget`` seconds;
    the module keeps its best parameters (its starting ones included). Returns the steps."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    best, stale, steps = val_nll(), 0, 0
    best_state = {k: v.clone() for k, v in module.state_dict().items()}
    started = time.perf_counter()
    while time.perf_counter() - started < budget and stale < patience:
        loss = batch_nll(torch.randint(n_train, (min(batch_size, n_train),)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % interval == 0:
            value = val_nll()
            if value < best:
                best, stale = value, 0
                best_state = {k: v.clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
    module.load_state_dict(best_state)
    return steps


def fit_unconditional_flow(flow: torch.nn.Module, U_train: torch.Tensor, U_val: torch.Tensor,
                           budget: float, *, batch_size: int) -> int:
    """:func:`adam_with_early_stopping` for an unconditional zuko flow (``flow()`` is its
    distribution) by the mean negative log-likelihood of rows of ``U_train``, the held-out
    loss on ``U_val``. Returns the steps."""
    def val_nll() -> float:
        with torch.no_grad():
            return float(-flow().log_prob(U_val).mean())

    return adam_with_early_stopping(
        flow, lambda rows: -flow().log_prob(U_train[rows]).mean(), len(U_train), val_nll,
        budget, batch_size=batch_size)


def merge_rows(kept: list[dict], fresh: list[dict],
               key: tuple[str, ...] = ("data", "model")) -> list[dict]:
    """A partial run's result rows merged into the last full run's: each row of ``fresh``
    replaces the kept one with the same values of the ``key`` fields in place; new ones go at
    the end."""
    by_key = {tuple(r[k] for k in key): r for r in fresh}
    merged = [by_key.pop(tuple(r[k] for k in key), r) for r in kept]
    return merged + list(by_key.values())


# ---------------------------------------------------------------- tabular peers
def standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Column means and scales of ``X`` (1 for a constant column), and the log-Jacobian
    −Σ log scale that takes a density of the standardised columns back to ``X``'s units."""
    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale, float(-np.log(scale).sum())


def _row_subset(n: int, limit: int | None, rng: np.random.RandomState) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, limit, replace=False))


def fit_sklearn(model: str, X: np.ndarray, budget: float, seed: int = 0, *,
                max_search_rows: int | None = None, max_fit_rows: int | None = None):
    """``"GMM (CV)"`` (GaussianMixture, reg_covar 1e-3, n_components in {1, 2, 4, 8, 16} ×
    covariance_type in {full, diag}) or ``"KDE (CV)"`` (KernelDensity, bandwidth in
    ``np.logspace(-1.5, 0.5, 25)``) on standardised columns, chosen by 5-fold
    cross-validation; ``budget`` is not used.

    With ``max_search_rows``, the search runs on that many training rows drawn at random
    (seeded); with ``max_fit_rows``, the chosen configuration is then refitted on at most that
    many rows (all of them when there are fewer). Returns the scorer (log-density of rows in
    ``X``'s units), 0 iterations and a note naming the choice."""
    from sklearn.base import clone
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    rng = np.random.RandomState(seed)
    mean, scale, log_jac = standardiser(X)
    U = (X - mean) / scale
    if model == "GMM (CV)":
        search = GridSearchCV(GaussianMixture(reg_covar=1e-3, random_state=seed),
                              {"n_components": [1, 2, 4, 8, 16],
                               "covariance_type": ["full", "diag"]}, cv=5)
    else:
        search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.5, 0.5, 25)}, cv=5)
    search_rows = _row_subset(len(U), max_search_rows, rng)
    fit_rows = _row_subset(len(U), max_fit_rows, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(U[search_rows])
        best = search.best_estimator_
        if len(fit_rows) != len(search_rows):
            best = clone(best).fit(U[fit_rows])
    note = str(search.best_params_)
    if len(search_rows) < len(U) or len(fit_rows) < len(U):
        note += f" (searched on {len(search_rows)} rows, fitted on {len(fit_rows)})"
    return (lambda Z: best.score_samples((Z - mean) / scale) + log_jac), 0, note


def fit_zuko(model: str, X: np.ndarray, budget: float, seed: int = 0):
    """``"zuko NSF"`` or ``"zuko MAF"`` (4 transforms, hidden (256, 256)) on standardised
    columns, trained by :func:`fit_unconditional_flow` (batch 128) with 10 % of the rows held
    out for early stopping, for at most ``budget`` seconds. Returns the scorer (log-density of
    rows in ``X``'s units), the steps taken and an empty note."""
    import zuko

    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    mean, scale, log_jac = standardiser(X)
    U = torch.as_tensor((X - mean) / scale, dtype=torch.float32)
    perm = torch.as_tensor(rng.permutation(len(U)))
    n_val = max(1, int(round(0.1 * len(U))))
    U_val, U_train = U[perm[:n_val]], U[perm[n_val:]]
    kind = zuko.flows.NSF if model == "zuko NSF" else zuko.flows.MAF
    flow = kind(X.shape[1], transforms=4, hidden_features=(256, 256))
    steps = fit_unconditional_flow(flow, U_train, U_val, budget, batch_size=128)

    def score(Z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            u = torch.as_tensor((Z - mean) / scale, dtype=torch.float32)
            return flow().log_prob(u).double().numpy() + log_jac
    return score, steps, ""
