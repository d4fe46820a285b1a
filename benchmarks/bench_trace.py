"""Benchmark of the trace estimators: the cost of one CNF dynamics evaluation against D.

One evaluation of the augmented dynamics of a CNF is f(t, z) with tr(∂f/∂z) (see
cnflow.divergence). Timed here for D = 2, 8, 32, 128 with a concat-squash MLP of three hidden
layers of width 256 on a batch of 512, float32:

- exact trace, vectorised: the D vector-Jacobian products in one batched backward pass ("vjp")
  and the D Jacobian-vector products in one vmapped forward-mode pass ("jvp");
- exact trace, plain loop of D backward passes ("loop");
- exact trace by forward Jacobian propagation through the network's layers ("analytic", the
  network's own ``forward_with_divergence``: D + 1 forward passes of plain operations);
- Hutchinson's estimate, one vector-Jacobian product ("hutchinson").

in two modes: "inference", the evaluation alone without a graph (as in the adjoint method's
forward solve or sampling), and "training", the evaluation with create_graph and a backward
pass of (f, trace) to the parameters (as in backprop through the solver or the adjoint's
backward solve). The exact trace costs O(D) products, so its time should grow about linearly
in D once the products dominate (log-log slope → 1); Hutchinson's should stay near-flat. Each
fitted slope is the least-squares slope of log(time) against log(D) over all D.

The table is printed; JSON and a log-log PNG go to --out (docs/bench_trace.json and
docs/bench_trace.png; bench_trace_quick.* with --quick, tiny sizes for the tests).

Run: .venv/bin/python benchmarks/bench_trace.py [--quick] [--out docs] [--device cpu]
Never run it while anything else is running.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cnflow import divergence
from cnflow.nn import ConcatSquashMLP

METHODS = ("exact-analytic", "exact-vjp", "exact-jvp", "exact-loop", "hutchinson")
MODES = ("inference", "training")


def evaluation(method: str, net: ConcatSquashMLP, t: torch.Tensor, z: torch.Tensor,
               eps: torch.Tensor, mode: str):
    """One dynamics evaluation (and, in training mode, its backward pass); returns the trace."""
    training = mode == "training"
    with torch.set_grad_enabled(training):
        if method == "hutchinson":
            fz, div = divergence.hutchinson(net, t, z, eps)
        else:
            fz, div = divergence.exact(net, t, z, method=method.split("-")[1])
        if training:
            # The weights stand in for an adjoint: a backward pass through f and the trace.
            (fz.mean() + div.mean()).backward()
    return div.detach()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_dim(dim: int, hidden: tuple[int, ...], batch: int, repeats: int,
             device: str) -> tuple[list[dict], float]:
    """Median milliseconds of each method and mode at one D; and the largest relative trace
    difference between the exact methods (a correctness check)."""
    torch.manual_seed(0)
    net = ConcatSquashMLP(dim, hidden).to(device)
    t = torch.tensor(0.5, device=device)
    z = torch.randn(batch, dim, device=device)
    eps = divergence.sample_noise(z)
    traces = {}
    for method in METHODS:  # warm up every path (and compile torch.func's decompositions)
        for mode in MODES:
            traces[method] = evaluation(method, net, t, z, eps, mode)
    exact = traces["exact-loop"]
    scale = exact.abs().max().item() + 1e-12
    check = max((traces[m] - exact).abs().max().item() / scale for m in METHODS if
                m.startswith("exact"))
    samples: dict[tuple[str, str], list[float]] = {(m, k): [] for m in METHODS for k in MODES}
    for _ in range(repeats):
        # Interleave the methods so that drifts in machine speed hit them alike.
        for method in METHODS:
            for mode in MODES:
                net.zero_grad(set_to_none=True)
                _sync(device)
                start = time.perf_counter()
                evaluation(method, net, t, z, eps, mode)
                _sync(device)
                samples[(method, mode)].append(time.perf_counter() - start)
    rows = [{"D": dim, "mode": mode, "method": method,
             "ms": 1e3 * statistics.median(samples[(method, mode)])}
            for mode in MODES for method in METHODS]
    return rows, check


def slopes(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Least-squares slope of log(ms) against log(D), per mode and method."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        out[mode] = {}
        for method in METHODS:
            pts = sorted((r["D"], r["ms"]) for r in rows
                         if r["mode"] == mode and r["method"] == method)
            d, ms = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[mode][method] = float(np.polyfit(d, ms, 1)[0])
    return out


def table(rows: list[dict], fitted: dict[str, dict[str, float]]) -> str:
    dims = sorted({r["D"] for r in rows})
    ms = {(r["mode"], r["method"], r["D"]): r["ms"] for r in rows}
    head = ["mode", "method", *[f"D={d} (ms)" for d in dims], "slope"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in MODES:
        for method in METHODS:
            cells = [mode, method, *[f"{ms[(mode, method, d)]:.3g}" for d in dims],
                     f"{fitted[mode][method]:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], fitted: dict[str, dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(MODES), figsize=(11, 4.2), sharey=False)
    for ax, mode in zip(axes, MODES):
        for method in METHODS:
            pts = sorted((r["D"], r["ms"]) for r in rows
                         if r["mode"] == mode and r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                    label=f"{method} (slope {fitted[mode][method]:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("dimension D")
        ax.set_ylabel("time of one evaluation (ms)")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    parser.add_argument("--out", default="docs", help="folder for bench_trace.json and .png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell")
    args = parser.parse_args()

    if args.quick:
        dims, hidden, batch, repeats = [2, 4, 8], (16, 16), 32, 2
    else:
        dims, hidden, batch, repeats = [2, 8, 32, 128], (256, 256, 256), 512, 5
    repeats = args.repeats or repeats
    rows, checks = [], {}
    for dim in dims:
        dim_rows, check = time_dim(dim, hidden, batch, repeats, args.device)
        rows += dim_rows
        checks[dim] = check
        print(f"D={dim}: done (exact methods agree to {check:.1e} relative)", flush=True)
    fitted = slopes(rows)
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device},
        "command": "python benchmarks/bench_trace.py" + (" --quick" if args.quick else ""),
        "config": {"dims": dims, "hidden": list(hidden), "batch": batch, "repeats": repeats,
                   "dtype": "float32", "network": "ConcatSquashMLP, tanh"},
        "rows": rows,
        "slopes": fitted,
        "exact_methods_max_relative_difference": {str(d): c for d, c in checks.items()},
    }
    print()
    print(table(rows, fitted))
    for mode in MODES:
        best = min(("exact-analytic", "exact-vjp", "exact-jvp", "exact-loop"),
                   key=lambda m: sum(math.log(r["ms"]) for r in rows
                                     if r["mode"] == mode and r["method"] == m))
        result.setdefault("fastest_exact", {})[mode] = best
        print(f"fastest exact method ({mode}, geometric mean over D): {best}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_trace_quick" if args.quick else "bench_trace"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    title = (f"one CNF dynamics evaluation: ConcatSquashMLP {list(hidden)}, batch {batch}, "
             f"float32, {args.device}, {torch.get_num_threads()} threads")
    plot(rows, fitted, title, out / f"{stem}.png")
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.png')}")


if __name__ == "__main__":
    main()
