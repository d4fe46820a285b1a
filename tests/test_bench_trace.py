"""benchmarks/bench_trace.py runs end to end in its quick mode and writes its JSON and PNG."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trace.py"


def test_bench_trace_quick(tmp_path):
    run = run_script(SCRIPT, "--quick", "--out", tmp_path, "--device", "cpu")
    assert "| mode | method |" in run.stdout
    result = json.loads((tmp_path / "bench_trace_quick.json").read_text())
    dims = result["config"]["dims"]
    methods = {"exact-analytic", "exact-vjp", "exact-jvp", "exact-loop", "hutchinson"}
    assert {(r["D"], r["mode"], r["method"]) for r in result["rows"]} == {
        (d, mode, m) for d in dims for mode in ("inference", "training") for m in methods}
    assert all(r["ms"] > 0 for r in result["rows"])
    for mode in ("inference", "training"):
        assert set(result["slopes"][mode]) == methods
        assert all(math.isfinite(s) for s in result["slopes"][mode].values())
    # The exact methods computed the same traces (float32).
    assert max(result["exact_methods_max_relative_difference"].values()) < 1e-4
    png = (tmp_path / "bench_trace_quick.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
