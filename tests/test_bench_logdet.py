"""benchmarks/bench_logdet.py runs end to end in its quick mode and writes its JSON and PNG."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_logdet.py"


def test_bench_logdet_quick(tmp_path):
    run = run_script(SCRIPT, "--quick", "--out", tmp_path)
    assert "| D | slogdet |" in run.stdout
    result = json.loads((tmp_path / "bench_logdet_quick.json").read_text())
    dims = result["config"]["dims"]
    methods = set(result["expected_slopes"])
    assert {(r["D"], r["method"]) for r in result["rows"]} == {
        (d, m) for d in dims for m in methods}
    assert all(r["ms"] > 0 for r in result["rows"])
    assert set(result["slopes"]) == methods
    assert all(math.isfinite(s) for s in result["slopes"].values())
    assert (tmp_path / "bench_logdet_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
