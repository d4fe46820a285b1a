"""Fit CNFDensity with chosen settings to a toy density and report time, NFE and test KL.

The runs behind CNFDensity's defaults were made with this script, e.g.
    .venv/bin/python benchmarks/fit_toy.py checkerboard --max-iter 1000 --set lr=5e-3 \
        --set kinetic_energy=0.01 --set jacobian_norm=0.01
(50,000 training rows, 20,000 fresh test rows, KL = test NLL + the test rows' mean exact
log p). Where p's log-density is known with more than one value (8gaussians, pinwheel), it
also reports where that KL comes from: the share of (1/n) Σ (log p − log q) contributed by
the test rows in each band of the true log-density, lowest 10 % (the tails) first.
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import numpy as np

from cnflow import CNFDensity
from cnflow.datasets import TOY_DATASETS, empirical_entropy, log_density, make_toy

#: Bands of the test rows by their true log-density, as quantiles (lowest first).
KL_BANDS = (0.0, 0.1, 0.25, 0.5, 1.0)


def kl_by_density_band(log_p: np.ndarray, log_q: np.ndarray) -> list[dict]:
    """(1/n) Σ_{rows in band} (log p − log q) for each band of :data:`KL_BANDS`: the bands'
    contributions add up to the paired KL estimate."""
    edges = np.quantile(log_p, KL_BANDS)
    order = np.argsort(log_p, kind="stable")
    bounds = np.round(np.array(KL_BANDS) * len(log_p)).astype(int)
    gap = log_p - log_q
    return [{"quantiles": [lo, hi], "log_p": [float(edges[i]), float(edges[i + 1])],
             "kl_contribution": float(gap[order[a:b]].sum() / len(gap))}
            for i, (lo, hi, a, b) in enumerate(zip(KL_BANDS[:-1], KL_BANDS[1:], bounds[:-1],
                                                  bounds[1:], strict=True))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=TOY_DATASETS)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an estimator parameter, as a Python literal (repeatable)")
    args = parser.parse_args()
    params = {}
    for item in args.set:
        name, _, value = item.partition("=")
        params[name] = ast.literal_eval(value)
    X = make_toy(args.dataset, args.n_train, random_state=0)
    X_test = make_toy(args.dataset, 20_000, random_state=1)
    est = CNFDensity(**{"max_iter": args.max_iter, "random_state": 0, "device": "cpu",
                        **params})
    start = time.perf_counter()
    est.fit(X)
    seconds = time.perf_counter() - start
    log_q = est.score_samples(X_test)
    nll = float(-log_q.mean())
    entropy = empirical_entropy(args.dataset, X_test)
    nfe = [h["nfe_forward"] for h in est.history_]
    report = {"dataset": args.dataset, "params": params, "iterations": est.n_iter_,
              "seconds": round(seconds, 1), "seconds_per_iteration": seconds / est.n_iter_,
              "nfe_forward_first_last": [nfe[0], nfe[-1]], "test_nll": nll,
              "kl": None if entropy is None else nll - entropy}
    if entropy is not None and args.dataset != "checkerboard":  # checkerboard: p is constant
        report["kl_by_density_band"] = kl_by_density_band(log_density(args.dataset, X_test),
                                                          log_q)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
