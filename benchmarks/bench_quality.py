"""Quality of CNFDensity with its default settings on toy densities, with a baseline.

For each dataset (checkerboard and 8gaussians, generated as in FFJORD's toy data) the script
fits ``CNFDensity()`` with default settings on 50,000 samples, scores 20,000 fresh test
samples and prints iterations, seconds, test NLL and KL = NLL + mean log p over the test rows,
with p's exact log-density (cnflow.datasets.empirical_entropy; the paired estimate). A
64-component GaussianMixture fitted to the same data is reported beside it for scale.

Run: .venv/bin/python benchmarks/bench_quality.py [--quick] [--out docs]
(about 10 minutes on 2 CPU cores; --quick: tiny fits on checkerboard in seconds, for the
tests).
Never run it while anything else is running.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from sklearn.mixture import GaussianMixture

from cnflow import CNFDensity
from cnflow.datasets import empirical_entropy, make_toy
from cnflow.plotting import plot_fit


def run(name: str, n_train: int, n_test: int, cnf_params: dict, gmm_components: int,
        out: Path, stem: str) -> list[dict]:
    X = make_toy(name, n_train, random_state=0)
    X_test = make_toy(name, n_test, random_state=1)
    entropy = empirical_entropy(name, X_test)
    rows = []
    start = time.perf_counter()
    est = CNFDensity(random_state=0, **cnf_params).fit(X)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    nll = -est.score(X_test)
    score_seconds = time.perf_counter() - start
    hist = est.history_
    rows.append({"dataset": name, "model": "CNFDensity()", "iterations": est.n_iter_,
                 "seconds": seconds, "score_seconds": score_seconds, "test_nll": nll,
                 "kl": nll - entropy, "nfe_scoring": est.flow_.nfe_forward,
                 "nfe_forward_last": hist[-1]["nfe_forward"],
                 "nfe_backward_last": hist[-1]["nfe_backward"]})
    plot_fit(X[:20000], est.sample(20000, random_state=0), est.score_samples,
             out / f"{stem}_{name}.png",
             title=f"CNFDensity() on {name}: test KL {nll - entropy:.3f} nats, "
                   f"{seconds:.0f} s")
    start = time.perf_counter()
    gmm = GaussianMixture(gmm_components, random_state=0).fit(X)
    seconds = time.perf_counter() - start
    nll = -gmm.score(X_test)
    rows.append({"dataset": name, "model": f"GaussianMixture({gmm_components})",
                 "iterations": int(gmm.n_iter_), "seconds": seconds, "test_nll": nll,
                 "kl": nll - entropy})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny fits in seconds (tests)")
    parser.add_argument("--out", default="docs", help="folder for the JSON, table and PNGs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        n_train, n_test, cnf, gmm, stem = 2000, 2000, {"max_iter": 3, "hidden": (16,)}, 4, \
            "bench_quality_quick"
    else:
        n_train, n_test, cnf, gmm, stem = 50_000, 20_000, {}, 64, "bench_quality"
    rows = []
    for name in ("checkerboard",) if args.quick else ("checkerboard", "8gaussians"):
        rows += run(name, n_train, n_test, cnf, gmm, out, stem)
        print(json.dumps(rows[-2:], indent=1), flush=True)
    header = "| dataset | model | iterations | seconds | test NLL | KL (nats) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['iterations']} | "
                     f"{r['seconds']:.0f} | {r['test_nll']:.3f} | {r['kl']:.3f} |")
    table = "\n".join(lines)
    print(table)
    result = {"command": "python benchmarks/bench_quality.py" + (" --quick" if args.quick else ""),
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "cnf_params": CNFDensity(**cnf).get_params(), "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {out / (stem + '.json')}")



if __name__ == "__main__":
    main()
