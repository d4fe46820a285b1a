"""Exact trace against Hutchinson's estimator in maximum-likelihood training: quality and time.

The CNF's log-density needs ∫ tr(∂f/∂z) dt. The exact trace costs D products of the
Jacobian (cnflow evaluates it by forward Jacobian propagation); Hutchinson's estimator
εᵀ(∂f/∂z)ε costs one, but is noisy, which the adaptive solver and the optimiser both feel
(FFJORD, Grathwohl et al. 2019). Here the same CNFDensity is trained by maximum likelihood on
the same data, once with each trace, for the same number of steps; scoring always uses the
exact trace, so the test KL (NLL on 20,000 fresh rows plus their mean exact log-density)
compares the models, not the estimators. In 2-D the exact trace is cheap, so this shows the
price of the estimator's variance more than its savings (see benchmarks/bench_trace.py for the
cost in D).

Writes FOLDER/trace_exact_vs_hutchinson.png (learned densities and training curves) and
.json (FOLDER: density_examples/figures by default; *_quick.* with --quick, a smoke run).

Run: .venv/bin/python density_examples/trace_exact_vs_hutchinson.py [--quick] [--out FOLDER]
(about 4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnflow import CNFDensity
from cnflow.datasets import empirical_entropy, make_toy
from cnflow.plotting import density_grid

DATASET = "8gaussians"
TRACES = ("exact", "hutchinson")


def fit(trace: str, X: np.ndarray, X_test: np.ndarray, max_iter: int, hidden: tuple,
        entropy: float) -> dict:
    est = CNFDensity(objective="maximum_likelihood", trace=trace, hidden=hidden,
                     max_iter=max_iter, random_state=0, device="cpu")
    start = time.perf_counter()
    est.fit(X)
    seconds = time.perf_counter() - start
    nll = -est.score(X_test)
    history = est.history_
    return {"trace": trace, "iterations": est.n_iter_, "seconds": seconds,
            "seconds_per_iteration": seconds / est.n_iter_, "test_nll": nll,
            "kl": nll - entropy,
            "mean_nfe_forward": float(np.mean([h["nfe_forward"] for h in history])),
            "mean_nfe_backward": float(np.mean([h["nfe_backward"] for h in history])),
            "loss": [h["loss"] for h in history], "estimator": est}


def plot(rows: list[dict], path: Path, resolution: int) -> None:
    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    lim = (-4.0, 4.0)
    for ax, row in zip(axes[:2], rows, strict=True):
        xx, yy, dens = density_grid(row["estimator"].score_samples, lim, lim, resolution)
        ax.pcolormesh(xx, yy, dens, cmap="magma", shading="auto")
        ax.set_title(f"{row['trace']} trace: KL {row['kl']:.3f}\n"
                     f"{row['seconds_per_iteration'] * 1e3:.0f} ms/step, "
                     f"NFE {row['mean_nfe_forward']:.0f} + {row['mean_nfe_backward']:.0f}",
                     fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for row in rows:
        loss = np.asarray(row["loss"])
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        axes[2].plot(np.arange(window, len(loss) + 1), smooth, label=row["trace"])
        est = row["estimator"]
        axes[3].plot(np.cumsum([h["seconds"] for h in est.history_]),
                     [h["nfe_forward"] for h in est.history_], label=row["trace"], lw=0.8)
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("training loss (NLL + penalties)")
    axes[2].legend()
    axes[3].set_xlabel("training seconds")
    axes[3].set_ylabel("forward NFE per step")
    axes[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, for the tests")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    if args.quick:
        n_train, n_test, max_iter, hidden, resolution = 300, 200, 3, (8,), 20
    else:
        n_train, n_test, max_iter, hidden, resolution = 20_000, 20_000, 300, (64, 64, 64), 120
    X = make_toy(DATASET, n_train, random_state=0)
    X_test = make_toy(DATASET, n_test, random_state=1)
    entropy = empirical_entropy(DATASET, X_test)
    rows = []
    for trace in TRACES:
        row = fit(trace, X, X_test, max_iter, hidden, entropy)
        rows.append(row)
        print(f"{trace:10s}: {row['iterations']} steps, {row['seconds']:.0f} s "
              f"({row['seconds_per_iteration'] * 1e3:.0f} ms/step), mean NFE forward "
              f"{row['mean_nfe_forward']:.1f} backward {row['mean_nfe_backward']:.1f}, "
              f"test KL {row['kl']:.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "trace_exact_vs_hutchinson" + ("_quick" if args.quick else "")
    plot(rows, out / f"{stem}.png", resolution)
    keep = ("trace", "iterations", "seconds", "seconds_per_iteration", "test_nll", "kl",
            "mean_nfe_forward", "mean_nfe_backward")
    (out / f"{stem}.json").write_text(json.dumps({
        "config": {"dataset": DATASET, "n_train": n_train, "max_iter": max_iter,
                   "hidden": list(hidden), "objective": "maximum_likelihood"},
        "rows": [{k: r[k] for k in keep} for r in rows]}, indent=1))
    print(f"wrote {out / stem}.png and .json")
    return rows


if __name__ == "__main__":
    main()
