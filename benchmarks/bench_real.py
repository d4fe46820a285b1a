"""Real and synthetic tabular data: CNFDensity's defaults against cross-validated peers.

Every model gets the same wall-clock budget (default 120 s) on the same rows, side by side in
one run, with fixed splits and seeds:

- real data that scikit-learn ships (``cnflow.datasets.load_real``, 75/25 split,
  random_state=0): wine, iris (+ U(0, 0.1) noise), diabetes (9 continuous columns), digits
  (64 pixels + U(0, 1) noise);
- synthetic data with an exact log-density in 8, 16, 32 and 64 dimensions
  (``cnflow.datasets.make_warped_mixture``: 4,000 training rows, 2,000 test rows), where
  KL(p ‖ q) = E_p[log p − log q] is estimated on the test rows (paired, with its standard
  error);
- a large-n case (``--large``): 10⁴ to 10⁶ rows of 8gaussians, a fixed number of flow-matching
  steps each, to show that time per epoch grows linearly in n and memory stays flat.

Models:

- ``cnflow FM``: ``CNFDensity(random_state=0, max_seconds=budget)``, nothing else set;
- ``cnflow ML``: the same with ``objective="maximum_likelihood"``;
- ``zuko NSF`` / ``zuko MAF``: ``zuko.flows.NSF`` / ``MAF`` (4 transforms, hidden (256, 256)),
  Adam lr 1e-3, batch 128, on standardised columns, 10 % of the training rows held out and
  scored every 50 steps, the best weights kept, stopped after 30 scorings without improvement
  or at the budget;
- ``GMM (CV)``: ``GaussianMixture(reg_covar=1e-3)`` on standardised columns, n_components in
  {1, 2, 4, 8, 16} × covariance_type in {full, diag} by 5-fold ``GridSearchCV``;
- ``KDE (CV)``: ``KernelDensity`` on standardised columns, bandwidth by the same search over
  ``np.logspace(-1.5, 0.5, 25)``.

Reported per model: test mean log-likelihood (in the data's own units) with its standard
error, train mean log-likelihood, seconds and iterations. Prints Markdown tables; writes
bench_real.json and bench_real.md to --out.

Run: .venv/bin/python benchmarks/bench_real.py [--budget 120] [--suites real synthetic large]
(4 neural models × 8 data sets × at most the budget: about 50 minutes at the default on 2 CPU
cores, --large included; zuko's flows often stop early). --quick: 1 s budgets on one data
set of each suite (large n: 20,000 rows, the large regime), for the tests. Needs the
benchmark extra (zuko): bash scripts/setup.sh test,bench. Never run it while anything else
runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from measure import fit_sklearn, fit_zuko, merge_rows

from cnflow import CNFDensity
from cnflow.datasets import (
    REAL_DATASETS,
    load_real,
    make_toy,
    make_warped_mixture,
    warped_mixture_log_density,
)

MODELS = ("cnflow FM", "cnflow ML", "zuko NSF", "zuko MAF", "GMM (CV)", "KDE (CV)")
SYNTHETIC_DIMS = (8, 16, 32, 64)
LARGE_ROWS = (10_000, 100_000, 1_000_000)


# ---------------------------------------------------------------- models
def fit_cnflow(model: str, X: np.ndarray, budget: float, seed: int = 0):
    objective = "flow_matching" if model == "cnflow FM" else "maximum_likelihood"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = CNFDensity(objective=objective, random_state=seed, max_seconds=budget).fit(X)
    return est.score_samples, est.n_iter_, ""


def run_model(model: str, X: np.ndarray, X_test: np.ndarray, budget: float,
              log_p_test: np.ndarray | None = None) -> dict:
    fit = (fit_cnflow if model.startswith("cnflow") else
           fit_zuko if model.startswith("zuko") else fit_sklearn)
    started = time.perf_counter()
    score, iterations, note = fit(model, X, budget)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    test = score(X_test)
    score_seconds = time.perf_counter() - started
    row = {"model": model, "iterations": int(iterations), "seconds": seconds,
           "score_seconds": score_seconds,
           "test_ll": float(test.mean()), "test_se": float(test.std() / math.sqrt(len(test))),
           "train_ll": float(score(X).mean()), "note": note}
    if log_p_test is not None:
        gap = log_p_test - test
        row["kl"] = float(gap.mean())
        row["kl_se"] = float(gap.std() / math.sqrt(len(gap)))
    return row


# ---------------------------------------------------------------- large n
def large_child(n_rows: int, steps: int) -> dict:
    """One fit in this process: seconds per step and peak memory, for --large."""
    X = make_toy("8gaussians", n_rows, random_state=0)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    est = CNFDensity(random_state=0, max_iter=steps, fine_tune_iter=0).fit(X)
    seconds = time.perf_counter() - started
    fm = [e for e in est.history_ if e.get("objective") == "flow_matching"]
    per_step = float(np.median([e["seconds"] for e in fm]))
    batch = min(2048, n_rows)
    return {"rows": n_rows, "steps": len(fm), "fit_seconds": seconds,
            "seconds_per_step": per_step,
            "epoch_seconds": per_step * n_rows / batch,
            "data_mb": X.nbytes / 2**20, "peak_rss_mb": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_data_mb": rss_data}


def run_large(rows: tuple[int, ...], steps: int) -> list[dict]:
    out = []
    for n in rows:
        child = subprocess.run([sys.executable, __file__, "--large-child", str(n), str(steps)],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        out.append(result)
        print(f"large n={n:>9,d}: {result['seconds_per_step'] * 1e3:.1f} ms/step, "
              f"epoch {result['epoch_seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
              f"(data {result['data_mb']:.0f} MB)", flush=True)
    return out


# ---------------------------------------------------------------- tables
def _table(rows: list[dict], synthetic: bool) -> str:
    head = "| data (train rows × D) | model | test LL ± SE | train LL | "
    head += "KL ± SE | " if synthetic else ""
    head += "fit (s) | score (s) | iterations |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    best = {}
    for r in rows:
        best[r["data"]] = max(best.get(r["data"], -math.inf), r["test_ll"])
    for r in rows:
        mark = "**" if r["test_ll"] == best[r["data"]] else ""
        line = (f"| {r['data']} ({r['n_train']} × {r['n_features']}) | {r['model']} | "
                f"{mark}{r['test_ll']:.2f}{mark} ± {r['test_se']:.2f} | {r['train_ll']:.2f} | ")
        if synthetic:
            line += f"{r['kl']:.3f} ± {r['kl_se']:.3f} | "
        line += f"{r['seconds']:.0f} | {r['score_seconds']:.2f} | {r['iterations']} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--suites", nargs="+", default=["real", "synthetic", "large"],
                        choices=["real", "synthetic", "large"])
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="real data sets and/or synthetic dimensions (e.g. wine 16)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--large-steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="1 s budgets, one data set each")
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite the Markdown tables from the JSON in --out")
    parser.add_argument("--large-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    if args.large_child:
        print(json.dumps(large_child(*args.large_child)))
        return {}
    if args.tables_only:
        path = Path(args.out) / "bench_real.json"
        text = markdown(json.loads(path.read_text()))
        path.with_suffix(".md").write_text(text)
        print(text)
        return {}
    budget = 1.0 if args.quick else args.budget
    real = [d for d in REAL_DATASETS if args.datasets is None or d in args.datasets]
    dims = [d for d in SYNTHETIC_DIMS if args.datasets is None or str(d) in args.datasets]
    if args.quick:
        real, dims = ["iris"], [8]
    rows: dict[str, list[dict]] = {"real": [], "synthetic": []}
    jobs = []
    if "real" in args.suites:
        jobs += [("real", name, *load_real(name), None) for name in real]
    if "synthetic" in args.suites:
        n_train, n_test = (500, 500) if args.quick else (4000, 2000)
        for d in dims:
            X = make_warped_mixture(n_train, d, random_state=0)
            X_test = make_warped_mixture(n_test, d, random_state=1)
            jobs.append(("synthetic", f"warped mixture {d}-D", X, X_test,
                         warped_mixture_log_density(X_test)))
    for suite, name, X, X_test, log_p in jobs:
        for model in args.models:
            row = {"data": name, "n_train": len(X), "n_features": X.shape[1],
                   **run_model(model, X, X_test, budget, log_p)}
            rows[suite].append(row)
            kl = f"  KL {row['kl']:.3f}" if "kl" in row else ""
            print(f"{name:22s} {model:10s} test {row['test_ll']:9.2f} ± {row['test_se']:.2f}  "
                  f"train {row['train_ll']:9.2f}{kl}  {row['seconds']:5.0f} s "
                  f"{row['iterations']:6d} it {row['note']}", flush=True)
    large = []
    if "large" in args.suites:
        large = run_large((20_000,) if args.quick else LARGE_ROWS,
                          5 if args.quick else args.large_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_real_quick" if args.quick else "bench_real"
    result = {"config": {"budget_seconds": budget, "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "machine": platform.platform(),
                         "date": time.strftime("%Y-%m-%d")},
              "real": rows["real"], "synthetic": rows["synthetic"], "large": large}
    previous = out / f"{stem}.json"
    if previous.exists() and not args.quick:
        # a partial run (some suites, data sets or models) keeps the other rows of the last
        kept = json.loads(previous.read_text())
        for suite in ("real", "synthetic"):
            result[suite] = merge_rows(kept.get(suite, []), result[suite])
        if "large" not in args.suites:
            result["large"] = kept.get("large", [])
    text = markdown(result)
    print(text)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)
    print(f"wrote {out / stem}.json and .md")
    return result


def markdown(result: dict) -> str:
    """The Markdown tables of a result."""
    md = []
    if result["real"]:
        md += ["Real data (test mean log-likelihood, higher is better; best in bold):", "",
               _table(result["real"], synthetic=False), ""]
    if result["synthetic"]:
        md += ["Synthetic data with an exact density (KL = E[log p − log q] on test rows, "
               "lower is better):", "", _table(result["synthetic"], synthetic=True), ""]
    if result["large"]:
        md += ["Large n (8gaussians, flow-matching steps of batch 2048):", "",
               "| rows | s/step | epoch (s) | peak RSS of the process (MB) | data (MB) |",
               "|---|---|---|---|---|"]
        md += [f"| {r['rows']:,} | {r['seconds_per_step']:.4f} | {r['epoch_seconds']:.2f} | "
               f"{r['peak_rss_mb']:.0f} | {r['data_mb']:.0f} |" for r in result["large"]]
        md.append("")
    return "\n".join(md)


if __name__ == "__main__":
    main()
