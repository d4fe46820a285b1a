"""Pair plots of held-out rows against CNFDensity's samples on three real tables.

How well does a density fitted to a table of several columns match it? For three of
scikit-learn's bundled tables, iris (4 columns), diabetes without its binary sex column (9
columns, raw units) and breast cancer (30 columns), a CNFDensity (default settings, a time
budget per fit, random_state=0) is fitted to 80 % of the rows; cnflow.plotting.plot_pairs
then draws the held-out 20 % against as many rows sampled from the model: each column's
marginal on the diagonal, each pair below it. Breast cancer shows the 8 columns whose
marginals fit worst by the two-sample Kolmogorov–Smirnov statistic, with the statistic of
all 30 beside them. The held-out mean log-likelihood (± its standard error over rows) is
printed per table. With a few dozen held-out rows the KS statistics are noisy: a value
below about 1.36·sqrt(2/n) (0.35 for iris' 30 rows, 0.18 for breast cancer's 114) is
within what two samples of one distribution show 95 % of the time.

Writes FOLDER/pair_plots_iris.png, pair_plots_diabetes.png, pair_plots_breast_cancer.png,
pair_plots.json (scores and KS statistics) and pair_plots.md (the table) (FOLDER:
density_examples/figures by default; pair_plots_*_quick.* with --quick, a smoke run of a few
steps).

Run: .venv/bin/python density_examples/pair_plots.py [--quick] [--seconds S] [--out FOLDER]
(about 3 minutes on 2 CPU cores with the default 60 s per fit).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.model_selection import train_test_split

from cnflow import CNFDensity
from cnflow.plotting import plot_pairs

#: Columns shown per table: all of iris' and diabetes', the 8 worst of breast cancer's 30.
MAX_COLUMNS = {"iris": 4, "diabetes": 9, "breast_cancer": 8}


def load_tables() -> dict[str, tuple[np.ndarray, list[str]]]:
    """The three tables as (rows, column names)."""
    iris = load_iris()
    diabetes = load_diabetes(scaled=False)
    keep = [j for j, name in enumerate(diabetes.feature_names) if name != "sex"]
    cancer = load_breast_cancer()
    return {"iris": (iris.data, list(iris.feature_names)),
            "diabetes": (diabetes.data[:, keep], [diabetes.feature_names[j] for j in keep]),
            "breast_cancer": (cancer.data, list(cancer.feature_names))}


def fit_one(table: str, X: np.ndarray, names: list[str], quick: bool, seconds: float,
            out: Path, suffix: str) -> dict:
    X_train, X_test = train_test_split(X, test_size=0.2, random_state=0)
    if quick:   # a few steps of one small flow, no model selection
        est = CNFDensity(hidden=(8,), max_iter=5, fine_tune_iter=1, n_members=1,
                         stacking=False, preprocessing="standardize", random_state=0)
    else:
        est = CNFDensity(max_seconds=seconds, random_state=0)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X_train)
    fit_seconds = time.perf_counter() - started
    log_p = est.score_samples(X_test)
    mean, se = float(log_p.mean()), float(log_p.std(ddof=1) / np.sqrt(len(log_p)))
    samples = est.sample(len(X_test), random_state=0)
    fig = plot_pairs(X_test, samples, out / f"pair_plots_{table}{suffix}.png", names=names,
                     max_columns=MAX_COLUMNS[table], data_label="held-out rows",
                     sample_label="CNFDensity samples",
                     title=f"{table} ({X.shape[1]} columns): {len(X_test)} held-out rows "
                           f"against as many samples; mean log-likelihood {mean:.2f} "
                           f"± {se:.2f}")
    return {"table": table, "columns": X.shape[1], "n_train": len(X_train),
            "n_test": len(X_test), "test_ll": mean, "test_ll_se": se, "seconds": fit_seconds,
            "shown": [names[j] for j in fig.shown_columns],
            "ks": dict(zip(names, map(float, fig.ks_statistics), strict=True))}


def table_markdown(rows: list[dict], when: str, machine: str) -> str:
    lines = [f"Measured {when} on a {machine}; 80 % of the rows to fit, 20 % held out.", "",
             "| table | columns | train / held-out rows | held-out mean log-likelihood "
             "| largest KS (column) | KS 5 % threshold | fit time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        worst = max(r["ks"], key=r["ks"].get)
        lines.append(f"| {r['table']} | {r['columns']} | {r['n_train']} / {r['n_test']} | "
                     f"{r['test_ll']:.2f} ± {r['test_ll_se']:.2f} | "
                     f"{r['ks'][worst]:.2f} ({worst}) | "
                     f"{1.36 * np.sqrt(2 / r['n_test']):.2f} | {r['seconds']:.0f} s |")
    lines += ["", "KS 5 % threshold: two samples of that many rows from one distribution "
              "differ by more (in one given column) 5 % of the time, 1.36·sqrt(2/n)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, a smoke run")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget per fit")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    rows = []
    for table, (X, names) in load_tables().items():
        row = fit_one(table, X, names, args.quick, args.seconds, out, suffix)
        rows.append(row)
        print(f"{table:14s} {row['columns']:2d} columns, {row['n_test']} held-out rows: mean "
              f"log-likelihood {row['test_ll']:.2f} ± {row['test_ll_se']:.2f} "
              f"(fit {row['seconds']:.0f} s); largest KS: "
              + ", ".join(f"{name} {value:.2f}" for name, value in
                          sorted(row["ks"].items(), key=lambda item: -item[1])[:3]),
              flush=True)
    when = datetime.date.today().isoformat()
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU"
    table = table_markdown(rows, when, machine)
    print(table)
    (out / f"pair_plots{suffix}.json").write_text(json.dumps({
        "config": {"estimator": "CNFDensity", "seconds_per_fit": None if args.quick
                   else args.seconds, "quick": args.quick, "test_size": 0.2,
                   "random_state": 0, "date": when, "machine": machine},
        "rows": rows}, indent=1))
    (out / f"pair_plots{suffix}.md").write_text(table + "\n")
    print(f"wrote {out}/pair_plots_*{suffix}.png, pair_plots{suffix}.json and .md")
    return rows


if __name__ == "__main__":
    main()
