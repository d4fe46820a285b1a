"""Benchmark of the log-density's correction term against the dimension D = 2 … 512.

A flow's log-density is the base log-density plus a correction: a log-determinant for a
discrete flow, the integral of a trace for a CNF. Its cost per evaluation is what the argument
for CNFs is about (Chen et al. 2018; Grathwohl et al. 2019):

- ``slogdet``: log|det J| of a general dense D×D Jacobian, one per row, by LU
  (``torch.linalg.slogdet``): O(D³) a row. (Forming J would cost D more products; not timed.)
  The O(D³) reference, as in :class:`cnflow.DenseFlow`'s layers.
- ``exact-loop``: the exact trace tr(∂f/∂z) of a CNF's dynamics by D vector-Jacobian
  products, each about one evaluation of f. With f a concat-squash MLP of fixed width H
  (two hidden layers of 64), an evaluation costs O(DH + H²) a row, so the trace costs
  O(D²H): O(D²) in D.
- ``exact-analytic``: the same trace by propagating ∂x/∂z forward through the layers
  (:meth:`cnflow.nn.ConcatSquashMLP.forward_with_divergence`): O(DH²) a row, linear in D at
  fixed width, with a larger constant at small D.
- ``hutchinson``: one vector-Jacobian product, εᵀ(∂f/∂z)ε: O(DH + H²), O(D) for D ≫ H.
- ``planar``: 8 planar layers with their log-dets by the matrix determinant lemma
  (:class:`cnflow.PlanarFlow`): O(D) a layer.

Each is timed without a graph (inference) on a batch of 512 rows, float32, as the median of
repeated calls; times are per batch. The slope of log(time) against log(D) is fitted by
least squares over D ≥ 64, where the leading term dominates (and over all D, and between the
two largest D, for reference).
Expected slopes: 3 (slogdet), 2 (exact-loop), 1 (exact-analytic, hutchinson, planar); fixed
overheads flatten the small-D end.

The table is printed; JSON and a log-log PNG go to --out (docs/bench_logdet.json and
docs/bench_logdet.png; bench_logdet_quick.* with --quick, tiny sizes for the tests).

Run: .venv/bin/python benchmarks/bench_logdet.py [--quick] [--out docs]
(about 2 minutes on 2 CPU cores). Never run it while anything else is running.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnflow import PlanarFlow, divergence
from cnflow.nn import ConcatSquashMLP

METHODS = ("slogdet", "exact-loop", "exact-analytic", "hutchinson", "planar")
EXPECTED_SLOPES = {"slogdet": 3, "exact-loop": 2, "exact-analytic": 1, "hutchinson": 1,
                   "planar": 1}


def make_calls(dim: int, batch: int, hidden: tuple[int, ...],
               n_planar: int) -> dict[str, Callable[[], torch.Tensor]]:
    """One zero-argument call per method, each returning the correction term per row."""
    torch.manual_seed(0)
    z = torch.randn(batch, dim)
    t = torch.tensor(0.5)
    net = ConcatSquashMLP(dim, hidden)
    eps = divergence.sample_noise(z)
    jacobians = torch.eye(dim) + 0.1 * dim ** -0.5 * torch.randn(batch, dim, dim)
    planar = PlanarFlow(dim, n_layers=n_planar)
    return {
        "slogdet": lambda: torch.linalg.slogdet(jacobians)[1],
        "exact-loop": lambda: divergence.exact(net, t, z, method="loop")[1],
        "exact-analytic": lambda: divergence.exact(net, t, z, method="analytic")[1],
        "hutchinson": lambda: divergence.hutchinson(net, t, z, eps)[1],
        "planar": lambda: planar.forward_layers(z)[1],
    }


def median_ms(call: Callable[[], torch.Tensor], min_seconds: float, max_repeats: int) -> float:
    call()  # warm-up
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < min_seconds and len(times) < max_repeats):
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return 1e3 * statistics.median(times)


def fit_slope(dims: list[int], ms: list[float], min_dim: int) -> float:
    pairs = [(d, m) for d, m in zip(dims, ms, strict=True) if d >= min_dim]
    if len(pairs) < 2:
        pairs = list(zip(dims, ms, strict=True))
    x = np.log([d for d, _ in pairs])
    y = np.log([m for _, m in pairs])
    return float(np.polyfit(x, y, 1)[0])


def plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    dims = result["config"]["dims"]
    for i, method in enumerate(METHODS):
        ms = [r["ms"] for r in result["rows"] if r["method"] == method]
        slope = result["slopes"][method]
        ax.loglog(dims, ms, "o-", color=f"C{i}", label=f"{method} (slope {slope:.2f})")
    ax.set_xlabel("dimension D")
    ax.set_ylabel(f"ms per batch of {result['config']['batch']}")
    ax.set_title("Cost of the log-density correction term")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--out", default="docs", help="folder for the JSON and PNG")
    args = parser.parse_args(argv)
    if args.quick:
        dims, batch, hidden, min_seconds, max_repeats = [2, 4, 8], 8, (8,), 0.0, 3
    else:
        dims = [2, 4, 8, 16, 32, 64, 128, 256, 512]
        batch, hidden, min_seconds, max_repeats = 512, (64, 64), 0.3, 50
    min_fit_dim = 4 if args.quick else 64
    n_planar = 8
    rows = []
    with torch.no_grad():
        for dim in dims:
            calls = make_calls(dim, batch, hidden, n_planar)
            for method, call in calls.items():
                rows.append({"D": dim, "method": method,
                             "ms": median_ms(call, min_seconds, max_repeats)})
            print(f"D = {dim}: " + ", ".join(f"{r['method']} {r['ms']:.3g} ms"
                                             for r in rows[-len(calls):]), flush=True)
    slopes = {m: fit_slope(dims, [r["ms"] for r in rows if r["method"] == m], min_fit_dim)
              for m in METHODS}
    slopes_all = {m: fit_slope(dims, [r["ms"] for r in rows if r["method"] == m], 0)
                  for m in METHODS}
    # The slope between the two largest D: the nearest to the asymptotic exponent.
    slopes_last = {m: fit_slope(dims[-2:], [r["ms"] for r in rows if r["method"] == m][-2:], 0)
                   for m in METHODS}
    result = {
        "config": {"dims": dims, "batch": batch, "hidden": list(hidden), "planar_layers":
                   n_planar, "dtype": "float32", "slope_fit_min_D": min_fit_dim,
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "machine": platform.platform()},
        "rows": rows, "slopes": slopes, "slopes_all_D": slopes_all,
        "slopes_last_two_D": slopes_last,
        "expected_slopes": EXPECTED_SLOPES,
    }
    header = "| D | " + " | ".join(METHODS) + " |"
    lines = [header, "|" + "---|" * (len(METHODS) + 1)]
    for dim in dims:
        ms = {r["method"]: r["ms"] for r in rows if r["D"] == dim}
        lines.append(f"| {dim} | " + " | ".join(f"{ms[m]:.3g}" for m in METHODS) + " |")
    lines.append(f"| slope (D ≥ {min_fit_dim}) | "
                 + " | ".join(f"{slopes[m]:.2f}" for m in METHODS) + " |")
    lines.append(f"| slope ({dims[-2]} → {dims[-1]}) | "
                 + " | ".join(f"{slopes_last[m]:.2f}" for m in METHODS) + " |")
    lines.append("| expected | " + " | ".join(str(EXPECTED_SLOPES[m]) for m in METHODS) + " |")
    table = "\n".join(lines)
    print(f"\nms per batch of {batch} rows (median), float32, {torch.get_num_threads()} "
          "threads\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_logdet_quick" if args.quick else "bench_logdet"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    plot(result, out / f"{stem}.png")
    print(f"wrote {out / stem}.json, .md, .png")
    return result


if __name__ == "__main__":
    main()
