"""Measurement helpers shared by the benchmark scripts: the memory and time of one gradient
step, and runs in fresh processes (so that earlier work does not set a peak).

Imported by ``bench_ode.py`` and ``claims.py`` (the benchmarks folder is on ``sys.path`` when a
script in it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

__all__ = ["MALLOC_ENV", "measure_step", "run_fresh"]


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


def merge_rows(kept: list[dict], fresh: list[dict]) -> list[dict]:
    """A partial run's result rows merged into the last full run's: each (data, model) row of
    ``fresh`` replaces the kept one in place; new ones go at the end."""
    by_key = {(r["data"], r["model"]): r for r in fresh}
    merged = [by_key.pop((r["data"], r["model"]), r) for r in kept]
    return merged + list(by_key.values())
