"""Where a scoring solve starts: the estimated first step against the step a similar solve
suggests.

``CNFDensity`` scores a batch by the exact trace in solves of ``trace_solve_rows`` rows.
Each adaptive solve used to start at Hairer's estimate of a first step (one probe evaluation
of the field; several times shorter than the step the controller takes next); every solve
after a batch's first now starts at ``SolverStats.suggested_first_step`` of the first (the
step its controller chose after its first accepted step). This script fits
``CNFDensity(random_state=0, max_seconds=budget)`` on warped mixtures
(``cnflow.datasets.make_warped_mixture``: 20,000 training rows, 10,000 test rows, seeds 0
and 1), then scores the test rows both ways, solve by solve, at the flow's tolerance
(dopri5, rtol = atol = 1e-5) and reports, per dimension: the solves, the evaluations of the
field in all of them, the seconds, and each way's mean and largest absolute difference from a
float64 solve at rtol = atol = 1e-9 of the first 1,000 test rows (the accuracy is the
tolerance's either way).

Writes bench_first_step.json (machine, date, command) and bench_first_step.md to --out.

Run: .venv/bin/python benchmarks/bench_first_step.py [--dims 8 32] [--budget 60] [--out docs]
(about 4 minutes at the defaults on 2 CPU cores; --quick: 2-s fits on 2,000 rows of 2 and 8
dimensions, 5,000 test rows, for the tests). Never run it while anything else runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from cnflow import CNFDensity
from cnflow.datasets import make_warped_mixture
from cnflow.estimators.cnf_estimator import trace_solve_rows
from cnflow.files import atomic_write

REFERENCE_ROWS = 1000


def score_both_ways(cnf, u: torch.Tensor) -> dict:
    """Score ``u`` in solves of ``trace_solve_rows`` rows, each started at the estimate, and
    again with every solve after the first started at the first one's suggested step."""
    rows = trace_solve_rows(cnf, u)
    options = cnf.solve_options
    result = {"rows_per_solve": rows, "solves": len(u.split(rows))}
    for mode in ("estimated", "suggested"):
        nfe, first, parts = 0, None, []
        start = time.perf_counter()
        with torch.no_grad():
            for part in u.split(rows):
                given = first if mode == "suggested" else None
                solve = options if given is None else options.replace(first_step=given)
                parts.append(cnf.log_prob(part, trace="exact", solve_options=solve))
                nfe += cnf.nfe_forward
                first = first or cnf.stats_forward.suggested_first_step
        result[mode] = {"nfe": nfe, "seconds": time.perf_counter() - start,
                        "log_prob": torch.cat(parts)}
    reference = copy.deepcopy(cnf).double()
    with torch.no_grad():
        exact = reference.log_prob(u[:REFERENCE_ROWS].double(), trace="exact",
                                   solve_options=options.replace(rtol=1e-9, atol=1e-9))
    for mode in ("estimated", "suggested"):
        error = (result[mode].pop("log_prob")[:REFERENCE_ROWS].double() - exact).abs()
        result[mode].update(mean_error=float(error.mean()), max_error=float(error.max()))
    return result


def run(dim: int, n_train: int, n_test: int, budget: float) -> dict:
    X = make_warped_mixture(n_train, dim, random_state=0)
    X_test = make_warped_mixture(n_test, dim, random_state=1)
    est = CNFDensity(random_state=0, max_seconds=budget).fit(X)
    members = getattr(est.flow_, "members", [est.flow_])
    cnf = next(m for m in members if hasattr(m, "solve_options"))
    u = torch.as_tensor(est.preprocessor_.transform(X_test)[0], dtype=torch.float32)
    row = {"dim": dim, "train_rows": n_train, "test_rows": n_test,
           "iterations": int(est.n_iter_), **score_both_ways(cnf, u)}
    return row


def markdown(out: dict) -> str:
    config = out["config"]
    lines = [f"Budget {config['budget']:g} s per fit; {config['machine']}; {config['date']}; "
             f"torch {config['torch']}; `{config['command']}`.", "",
             "| D | rows per solve (solves) | evaluations: estimated → suggested first step "
             "| seconds | mean / largest error (nats), estimated | suggested |",
             "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        e, s = r["estimated"], r["suggested"]
        lines.append(f"| {r['dim']} | {r['rows_per_solve']:,} ({r['solves']}) | "
                     f"{e['nfe']:,} → {s['nfe']:,} ({s['nfe'] / e['nfe'] - 1:+.0%}) | "
                     f"{e['seconds']:.1f} → {s['seconds']:.1f} | "
                     f"{e['mean_error']:.1e} / {e['max_error']:.1e} | "
                     f"{s['mean_error']:.1e} / {s['max_error']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    dims, budget, n_train, n_test = args.dims, args.budget, 20_000, 10_000
    stem = "bench_first_step"
    if args.quick:
        dims, budget, n_train, n_test, stem = [2, 8], 2.0, 2000, 5000, "bench_first_step_quick"
    rows = []
    for dim in dims:
        rows.append(run(dim, n_train, n_test, budget))
        r = rows[-1]
        print(f"D={dim}: {r['solves']} solves, NFE {r['estimated']['nfe']} -> "
              f"{r['suggested']['nfe']}", flush=True)
    out = {"config": {"budget": budget, "machine": f"{platform.machine()}, "
                      f"{torch.get_num_threads()} torch threads",
                      "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                      "torch": torch.__version__,
                      "command": "python " + shlex.join(
                          ["benchmarks/bench_first_step.py", *(argv or sys.argv[1:])])},
           "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    text, table = json.dumps(out, indent=1).encode(), markdown(out)
    atomic_write(args.out / f"{stem}.json", lambda f: f.write(text))
    atomic_write(args.out / f"{stem}.md", lambda f: f.write(table.encode()))
    print(table)
    return out


if __name__ == "__main__":
    main()
