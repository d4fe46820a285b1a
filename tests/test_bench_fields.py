"""bench_fields.py's quick run end to end: both fields on the same rows, paired differences
that agree with the rows they pair, KL from the exact log-density, and the picture."""

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from script_runner import run_script

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_bench_fields_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FOLDER))
    bench = importlib.import_module("bench_fields")
    run = run_script(FOLDER / "bench_fields.py", "--quick", "--out", tmp_path)
    assert "| table (n × D) | field |" in run.stdout
    result = json.loads((tmp_path / "bench_fields_quick.json").read_text())
    by = {(r["table"], r["field"]): r for r in result["rows"]}
    assert sorted(by) == sorted((t, f) for t in ("warped8", "warped16")
                                for f in ("dense", "hollow"))
    for r in result["rows"]:
        assert r["nonfinite_rows"] == 0 and math.isfinite(r["test_ll"])
        assert r["settings"]["field"] == r["field"]
        assert r["score_rows_per_s"] > 0 and r["scoring_nfe"] > 0
    for name, dim in (("warped8", 8), ("warped16", 16)):       # KL from the exact density
        n_test = 500 if dim == 8 else 200
        table = bench.warped_table(name, dim, bench.QUICK["rows"], n_test)
        rows = bench.scored_rows(table)
        for field in ("dense", "hollow"):
            r = by[name, field]
            assert r["kl"] == pytest.approx(float(table.log_p_test[rows].mean()) - r["test_ll"])
    for p in result["paired"]:
        hollow, dense = by[p["table"], "hollow"], by[p["table"], "dense"]
        assert p["mean"] == pytest.approx(hollow["test_ll"] - dense["test_ll"], abs=1e-9)
        assert p["worst_1pct"] <= p["median"]
        scores = {f: np.load(tmp_path / "bench_fields_quick_scores" / f"{p['table']}_{f}.npy")
                  for f in ("hollow", "dense")}
        assert p["mean"] == pytest.approx(float(np.mean(scores["hollow"] - scores["dense"])))
    assert (tmp_path / "bench_fields_quick.png").stat().st_size > 1000
    # a variant: the hollow field refitted with a rule overridden, paired with the dense rows
    run_script(FOLDER / "bench_fields.py", "--quick", "--variant", "v", "--fields", "hollow",
               "--policy", '{"validation_steps_per_feature": 4}', "--out", tmp_path)
    from cnflow.estimators.policy import POLICIES
    assert POLICIES["CNFDensity"]["large"]["validation_steps_per_feature"] == 70   # restored
    variant = json.loads((tmp_path / "bench_fields_quick_v.json").read_text())
    assert {r["field"] for r in variant["rows"]} == {"hollow"}
    assert variant["config"]["policy"] == '{"validation_steps_per_feature": 4}'
    for p in variant["paired"]:
        dense = np.load(tmp_path / "bench_fields_quick_scores" / f"{p['table']}_dense.npy")
        mine = np.load(tmp_path / "bench_fields_quick_v_scores" / f"{p['table']}_hollow.npy")
        assert p["mean"] == pytest.approx(float(np.mean(mine - dense)))
