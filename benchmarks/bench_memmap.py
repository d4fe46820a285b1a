"""Fits to a table larger than it needs to be in memory: CNFDensity on a memory-mapped .npy.

Writes a 10,000,000 × 8 float64 table (640 MB) of ``make_warped_mixture`` rows to a .npy
file, one million rows at a time (``np.lib.format.open_memmap``; the table is never in
memory whole), and files of its first 100,000 and 1,000,000 rows. Then, for each n in
10^5, 10^6, 10^7, in fresh processes:

- ``CNFDensity(max_seconds=S).fit(np.load(path, mmap_mode="r"))``: the peak resident memory
  of the process (``ru_maxrss``, which counts the file's pages the fit touched) against the
  table's size + 1 GB, and the wall time per training step, the median interval between
  the minibatch reads of steps 11 to 10 + K (reading, preprocessing and the step itself;
  the same K steps at every n, to show it does not grow with n);
- ``python -m cnflow train path.npy --max-seconds S --out DIR --quiet``: the peak resident
  memory of the command.

Prints a Markdown table and writes bench_memmap.json (and .md) to ``--out``.

Run: .venv/bin/python benchmarks/bench_memmap.py [--dir DIR] [--out docs] [--seconds 60]
(about 10 minutes and 1.4 GB of disk; ``--dir``: where the .npy files go, default a
temporary folder deleted afterwards; --quick: 100,000 rows, 3 s fits of a small network at
loose tolerances, for the tests).
Never run it while anything else is running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

#: Rows written at a time.
CHUNK = 1_000_000
#: Columns of the table.
N_FEATURES = 8
#: Steps not timed at the start of a fit (first-call costs).
WARM_UP = 10
#: --quick: a small network and loose tolerances (fast fine-tuning and scoring), in the
#: estimator's parameters and in the command line's options.
QUICK_PARAMS = {"hidden": (16,), "rtol": 1e-3, "atol": 1e-3}
QUICK_OPTIONS = ["--hidden", "16", "--tol", "1e-3"]


def write_table(path: Path, n_rows: int, source: Path | None = None) -> Path:
    """A .npy of ``n_rows`` × N_FEATURES float64 rows, written CHUNK rows at a time: the
    first rows of ``source`` (a .npy) or, without one, make_warped_mixture draws (chunk k
    seeded by k)."""
    from cnflow.datasets import make_warped_mixture

    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64,
                                      shape=(n_rows, N_FEATURES))
    rows = None if source is None else np.load(source, mmap_mode="r")
    for k, start in enumerate(range(0, n_rows, CHUNK)):
        stop = min(start + CHUNK, n_rows)
        table[start:stop] = (make_warped_mixture(stop - start, N_FEATURES, random_state=k)
                             if rows is None else rows[start:stop])
    table.flush()
    del table
    return path


def _peak_rss_mb(who: int) -> float:
    """ru_maxrss of this process or its waited-for children, in MB (Linux reports KB)."""
    return resource.getrusage(who).ru_maxrss / 1024


def child_api(path: str, seconds: float, steps: int, quick: bool) -> dict:
    """In a fresh process: the timed fit of a memory map, its step times and peak memory."""
    from cnflow import CNFDensity
    from cnflow.training.rows import MappedRows

    reads: list[float] = []
    batch = MappedRows.batch

    def timed_batch(self, indices):
        reads.append(time.perf_counter())
        return batch(self, indices)

    MappedRows.batch = timed_batch  # the benchmark's clock on every minibatch read
    X = np.load(path, mmap_mode="r")
    # torch imports its compiler on the first optimiser a process builds (about 2 s): a
    # first-call cost, paid here so that a short budget goes to the fit
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    start = time.perf_counter()
    est = CNFDensity(max_seconds=seconds, random_state=0,
                     **(QUICK_PARAMS if quick else {})).fit(X)
    fit_seconds = time.perf_counter() - start
    intervals = np.diff(reads)[WARM_UP:WARM_UP + steps]
    return {"n_rows": len(X), "fit_seconds": fit_seconds, "iterations": int(est.n_iter_),
            "timed_steps": len(intervals),
            "seconds_per_step": float(np.median(intervals)) if len(intervals) else None,
            "peak_rss_MB": _peak_rss_mb(resource.RUSAGE_SELF),
            "mean_log_likelihood_first_2000": float(est.score(X[:2000]))}


def child_cli(path: str, seconds: float, out: str, quick: bool) -> dict:
    """In a fresh process (which imports no torch): ``python -m cnflow train`` as its only
    child, and that child's peak memory."""
    command = [sys.executable, "-m", "cnflow", "train", path, "--max-seconds", str(seconds),
               "--out", out, "--quiet", *(QUICK_OPTIONS if quick else [])]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return {"seconds": time.perf_counter() - start,
            "peak_rss_MB": _peak_rss_mb(resource.RUSAGE_CHILDREN)}


def run_child(argv: list[str]) -> dict:
    """This script with ``argv`` in a fresh process (benchmarks/measure.py's run_fresh),
    importing the cnflow of this script's repository."""
    from measure import run_fresh

    root, before = str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root if not before else f"{root}{os.pathsep}{before}"
    try:
        return run_fresh([str(Path(__file__).resolve()), *argv])
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def measure(folder: Path, sizes: list[int], seconds: float, steps: int,
            quick: bool) -> list[dict]:
    """The table and its prefixes written to ``folder``, then both fits at each size."""
    largest = write_table(folder / f"rows_{max(sizes)}.npy", max(sizes))
    results = []
    for n in sorted(sizes):
        path = largest if n == max(sizes) else write_table(folder / f"rows_{n}.npy", n,
                                                           source=largest)
        table_mb = n * N_FEATURES * 8 / 2**20
        mode = "quick" if quick else "full"
        api = run_child(["--child", "api", str(path), str(seconds), str(steps), mode])
        cli = run_child(["--child", "cli", str(path), str(seconds), str(folder / f"cli_{n}"),
                         mode])
        results.append({"n_rows": n, "table_MB": table_mb,
                        "bound_MB": table_mb + 1024, "api": api, "cli": cli,
                        "within_bound": max(api["peak_rss_MB"], cli["peak_rss_MB"])
                        <= table_mb + 1024})
        print(json.dumps(results[-1]), flush=True)
    return results


def markdown(results: list[dict]) -> str:
    lines = ["| rows | table (MB) | bound: table + 1 GB (MB) | fit: peak RSS (MB) | "
             "CLI train: peak RSS (MB) | ms per step (median) | steps timed | "
             "steps in the fit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        step = r["api"]["seconds_per_step"]
        lines.append(f"| {r['n_rows']:,} | {r['table_MB']:.0f} | {r['bound_MB']:.0f} | "
                     f"{r['api']['peak_rss_MB']:.0f} | {r['cli']['peak_rss_MB']:.0f} | "
                     f"{'–' if step is None else f'{1000 * step:.1f}'} | "
                     f"{r['api']['timed_steps']} | {r['api']['iterations']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="folder for the .npy files (default: a temporary "
                                      "folder, deleted afterwards)")
    parser.add_argument("--out", default="docs", help="folder for bench_memmap.json/.md")
    parser.add_argument("--seconds", type=float, default=60.0, help="each fit's max_seconds")
    parser.add_argument("--steps", type=int, default=200, help="steps timed per fit")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 rows, 1 s fits of a small network at loose "
                             "tolerances, 5 steps timed (for the tests)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one measurement, in a fresh process: its JSON on the last line
        kind, path, seconds, last, mode = args.child
        result = (child_api(path, float(seconds), int(last), mode == "quick") if kind == "api"
                  else child_cli(path, float(seconds), last, mode == "quick"))
        print(json.dumps(result))
        return None
    sizes = [100_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    seconds, steps = (3.0, 5) if args.quick else (args.seconds, args.steps)
    stem = "bench_memmap_quick" if args.quick else "bench_memmap"
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_memmap."))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        results = measure(folder, sizes, seconds, steps, args.quick)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    table = markdown(results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    report = {"command": "python benchmarks/bench_memmap.py" + (" --quick" if args.quick
                                                                else f" --seconds {seconds:g}"
                                                                f" --steps {steps}"),
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "n_features": N_FEATURES, "seconds": seconds, "steps": steps,
              "rows": results}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / (stem + '.json')}")
    return report


if __name__ == "__main__":
    main()
