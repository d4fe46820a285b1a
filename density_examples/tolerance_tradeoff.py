"""The tolerance trade-off: function evaluations, time and likelihood as rtol = atol vary.

An adaptive solver takes as many steps as its tolerance demands, so a CNF's cost is set at
evaluation time by rtol and atol, and its log-likelihoods are only as accurate as they allow
(Chen et al. 2018, figure 3: NFE and error against tolerance). One CNFDensity is trained
(flow matching on pinwheel), then the same 20,000 test rows are scored at each tolerance from
1e-1 to 1e-8; the reference is the NLL at 1e-8. Reported: forward NFE, seconds, test NLL and
its error against the reference.

Writes FOLDER/tolerance_tradeoff.png and .json (FOLDER: density_examples/figures by default;
*_quick.* with --quick, a smoke run).

Run: .venv/bin/python density_examples/tolerance_tradeoff.py [--quick] [--out FOLDER]
(about 2 minutes on 2 CPU cores).
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
from cnflow.datasets import make_toy

DATASET = "pinwheel"


def score_at(est: CNFDensity, X_test: np.ndarray, tol: float) -> dict:
    est.flow_.rtol = est.flow_.atol = tol
    start = time.perf_counter()
    nll = -est.score(X_test)
    seconds = time.perf_counter() - start
    return {"tol": tol, "nfe": est.flow_.nfe_forward, "seconds": seconds, "test_nll": nll}


def plot(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(12, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    tols = [r["tol"] for r in rows]
    axes[0].loglog(tols, [r["nfe"] for r in rows], "o-")
    axes[0].set_ylabel("forward NFE (last batch)")
    axes[1].loglog(tols, [r["seconds"] for r in rows], "o-")
    axes[1].set_ylabel("seconds to score the test set")
    errors = [max(r["nll_error"], 1e-12) for r in rows[:-1]]
    axes[2].loglog(tols[:-1], errors, "o-", label="|NLL − NLL(tightest)|")
    axes[2].loglog(tols[:-1], tols[:-1], "k--", lw=0.8, label="error = tolerance")
    axes[2].set_ylabel("test NLL error (nats)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("rtol = atol")
        ax.invert_xaxis()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, for the tests")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    if args.quick:
        n_train, n_test, max_iter, hidden, tols = 300, 200, 5, (8,), [1e-1, 1e-3, 1e-5]
    else:
        n_train, n_test, max_iter, hidden = 20_000, 20_000, 10_000, (64, 64, 64)
        tols = [10.0 ** -k for k in range(1, 9)]
    X = make_toy(DATASET, n_train, random_state=0)
    X_test = make_toy(DATASET, n_test, random_state=1)
    start = time.perf_counter()
    # one CNF on per-column standardised rows (also in the smoke mode's few rows)
    est = CNFDensity(hidden=hidden, max_iter=max_iter, preprocessing="standardize",
                     validation_fraction=0.0, random_state=0, device="cpu").fit(X)
    print(f"trained in {time.perf_counter() - start:.0f} s ({max_iter} flow-matching steps)")
    rows = [score_at(est, X_test, tol) for tol in tols]
    reference = rows[-1]["test_nll"]
    for row in rows:
        row["nll_error"] = abs(row["test_nll"] - reference)
        print(f"tol {row['tol']:.0e}: NFE {row['nfe']:4d}, {row['seconds']:6.2f} s, "
              f"test NLL {row['test_nll']:.6f} (error {row['nll_error']:.1e})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "tolerance_tradeoff" + ("_quick" if args.quick else "")
    plot(rows, out / f"{stem}.png")
    (out / f"{stem}.json").write_text(json.dumps({
        "config": {"dataset": DATASET, "n_train": n_train, "n_test": n_test,
                   "max_iter": max_iter, "hidden": list(hidden), "solver": "dopri5"},
        "rows": rows}, indent=1))
    print(f"wrote {out / stem}.png and .json")
    return rows


if __name__ == "__main__":
    main()
