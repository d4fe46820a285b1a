"""benchmarks/large_tables.py and bench_large.py's result merging: the windows split of a
series by time blocks (against a brute-force reference), dequantisation, and the merge of a
partial run into an earlier result."""

import importlib
from pathlib import Path

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def modules(monkeypatch):
    monkeypatch.syspath_prepend(str(FOLDER))
    return importlib.import_module("large_tables"), importlib.import_module("bench_large")


def test_cut_windows_matches_brute_force(modules):
    large_tables, _ = modules
    rng = np.random.default_rng(0)
    hours, block_hours = 5, 20
    block_in_test = rng.uniform(size=8) < 0.4
    hour, group = [], []
    for g in (0, 1):
        present = np.setdiff1d(np.arange(150), rng.choice(150, 12, replace=False))
        hour.append(present)
        group.append(np.full(len(present), g))
    hour, group = np.concatenate(hour), np.concatenate(group)
    shuffle = rng.permutation(len(hour))  # the order of the observations does not matter
    value = hour + 1000.0 * group  # a window's values name its hours and series
    train, test = large_tables.cut_windows(hour[shuffle], value[shuffle], group[shuffle], hours,
                                           block_hours, block_in_test)
    expected = {False: set(), True: set()}
    for g in (0, 1):
        have = set(hour[group == g].tolist())
        for start in sorted(have):
            span = range(start, start + hours)
            sets = {bool(block_in_test[h // block_hours]) for h in span}
            if all(h in have for h in span) and len(sets) == 1:
                expected[sets.pop()].add(tuple(1000.0 * g + h for h in span))
    assert {tuple(w) for w in train} == expected[False] and len(train) == len(expected[False])
    assert {tuple(w) for w in test} == expected[True] and len(test) == len(expected[True])
    assert len(train) > 50 and len(test) > 10
    with pytest.raises(ValueError, match="repeated hours"):
        large_tables.cut_windows(np.array([0, 0, 1]), np.zeros(3), np.zeros(3), 2, 4,
                                 np.array([False]))


def test_dequantise_adds_noise_within_each_recording_step(modules):
    large_tables, _ = modules
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.integers(0, 50, 400), 0.25 * rng.integers(0, 40, 400)])
    Y, steps = large_tables.dequantise(X.astype(float), np.random.default_rng(2))
    assert steps.tolist() == [1.0, 0.25]
    assert np.all((Y - X >= 0) & (Y - X < steps))
    assert np.array_equal(np.floor(Y / steps), X / steps)  # each value keeps its own cell


def test_warped_tables_carry_the_exact_density(modules):
    large_tables, _ = modules
    from cnflow.datasets import warped_mixture_log_density

    table = large_tables.load_table("warped8", max_rows=400)
    assert table.X_train.shape == (300, 8) and table.X_test.shape == (100, 8)
    assert np.allclose(table.log_p_test, warped_mixture_log_density(table.X_test))
    with pytest.raises(ValueError, match="unknown table"):
        large_tables.load_table("nope")


def _row(table, budget, model, value):
    return {"table": table, "budget": budget, "model": model, "test_ll": value}


def _pair(table, budget, peer, value):
    return {"table": table, "budget": budget, "peer": peer, "mean": value}


def test_merge_drops_paired_differences_a_refit_made_stale(modules):
    _, bench_large = modules
    kept = {"config": {"command": "a", "commands": ["a"]}, "tables": [{"name": "t"}],
            "rows": [_row("t", 1, m, 0.0) for m in ("cnflow", "zuko NSF", "GMM (CV)")]
            + [_row("u", 1, "cnflow", 0.0)],
            "paired": [_pair("t", 1, "zuko NSF", 0.0), _pair("t", 1, "GMM (CV)", 0.0),
                       _pair("u", 1, "GMM (CV)", 0.0)]}
    # the mixture alone refitted on t: its old pairing no longer matches, the others do
    fresh = {"config": {"command": "b"}, "tables": [{"name": "t", "new": 1}],
             "rows": [_row("t", 1, "GMM (CV)", 5.0)], "paired": []}
    merged = bench_large.merge_result(kept, fresh)
    assert [(r["model"], r["test_ll"]) for r in merged["rows"] if r["table"] == "t"] == [
        ("cnflow", 0.0), ("zuko NSF", 0.0), ("GMM (CV)", 5.0)]
    assert [(p["table"], p["peer"]) for p in merged["paired"]] == [
        ("t", "zuko NSF"), ("u", "GMM (CV)")]
    assert merged["tables"] == [{"name": "t", "new": 1}]
    assert merged["config"]["commands"] == ["a", "b"]
    # cnflow refitted and paired with the mixture only: the old zuko pairing goes too
    fresh = {"config": {"command": "b"}, "tables": [],
             "rows": [_row("t", 1, "cnflow", 1.0), _row("t", 1, "GMM (CV)", 5.0)],
             "paired": [_pair("t", 1, "GMM (CV)", -4.0)]}
    merged = bench_large.merge_result(kept, fresh)
    assert [(p["table"], p["peer"], p["mean"]) for p in merged["paired"]] == [
        ("t", "GMM (CV)", -4.0), ("u", "GMM (CV)", 0.0)]
    assert bench_large.complete(merged, "t", 1, ["cnflow", "GMM (CV)"])
    assert not bench_large.complete(merged, "t", 1, ["cnflow", "zuko NSF"])
    assert not bench_large.complete(merged, "t", 2, ["GMM (CV)"])
