"""Fit CNFDensity to every built-in toy density: a grid of data against learned densities.

The figure researchers expect of a 2-D density model (as in FFJORD's figure of toy results):
for each toy density in cnflow.datasets, a histogram of the data above the density the model
learned. Each model is a CNFDensity with default settings except a shorter flow-matching run
(6,000 steps, 20,000 training rows), so the whole grid takes a few minutes on a CPU; test KL
(NLL on 20,000 fresh rows plus their mean exact log-density) is printed where p's
log-density is known, and test NLL for all.

Writes FOLDER/toy_grid.png and toy_grid.json (FOLDER: density_examples/figures by default;
toy_grid_quick.* with --quick, a smoke run of a few steps on two datasets, one of them without
a known log-density).

Run: .venv/bin/python density_examples/toy_grid.py [--quick] [--out FOLDER]
(about 12 minutes on 2 CPU cores).
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
from cnflow.datasets import TOY_DATASETS, empirical_entropy, make_toy
from cnflow.plotting import density_grid

RESOLUTION = 150


def limits(X: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square window holding 99.8% of the data, padded by 10%."""
    lo, hi = np.quantile(X, 0.001, axis=0), np.quantile(X, 0.999, axis=0)
    centre, half = (lo + hi) / 2, 0.55 * (hi - lo).max()
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def fit_one(name: str, n_train: int, max_iter: int, seed: int) -> dict:
    X = make_toy(name, n_train, random_state=seed)
    X_test = make_toy(name, 20_000 if n_train > 1000 else 200, random_state=seed + 1)
    start = time.perf_counter()
    est = CNFDensity(max_iter=max_iter, random_state=seed, device="cpu").fit(X)
    seconds = time.perf_counter() - start
    nll = -est.score(X_test)
    entropy = empirical_entropy(name, X_test)
    xlim, ylim = limits(X)
    resolution = RESOLUTION if n_train > 1000 else 20
    _, _, density = density_grid(est.score_samples, xlim, ylim, resolution)
    return {"dataset": name, "iterations": est.n_iter_, "seconds": seconds, "test_nll": nll,
            "kl": None if entropy is None else nll - entropy, "X": X, "xlim": xlim,
            "ylim": ylim, "density": density}


def plot(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(2.2 * len(rows), 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(rows), squeeze=False)
    for col, row in enumerate(rows):
        xlim, ylim = row["xlim"], row["ylim"]
        bins = [np.linspace(*xlim, 100), np.linspace(*ylim, 100)]
        axes[0, col].hist2d(row["X"][:, 0], row["X"][:, 1], bins=bins, cmap="magma")
        axes[0, col].set_title(row["dataset"], fontsize=10)
        axes[1, col].imshow(row["density"], origin="lower", cmap="magma",
                            extent=(*xlim, *ylim), aspect="auto")
        score = f"KL {row['kl']:.3f}" if row["kl"] is not None else \
            f"NLL {row['test_nll']:.3f}"
        axes[1, col].set_title(score, fontsize=9)
    axes[0, 0].set_ylabel("data")
    axes[1, 0].set_ylabel("CNFDensity")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_box_aspect(1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, for the tests")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    names = ("8gaussians", "moons") if args.quick else TOY_DATASETS
    n_train, max_iter = (500, 5) if args.quick else (20_000, 6000)
    rows = []
    for name in names:
        row = fit_one(name, n_train, max_iter, seed=0)
        rows.append(row)
        kl = "" if row["kl"] is None else f", KL {row['kl']:.3f}"
        print(f"{name:12s} {row['iterations']} steps in {row['seconds']:.0f} s: test NLL "
              f"{row['test_nll']:.3f}{kl}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "toy_grid_quick" if args.quick else "toy_grid"
    plot(rows, out / f"{stem}.png")
    keep = ("dataset", "iterations", "seconds", "test_nll", "kl")
    (out / f"{stem}.json").write_text(json.dumps({
        "config": {"n_train": n_train, "max_iter": max_iter, "estimator": "CNFDensity"},
        "rows": [{k: r[k] for k in keep} for r in rows]}, indent=1))
    print(f"wrote {out / stem}.png and .json")
    return rows


if __name__ == "__main__":
    main()
