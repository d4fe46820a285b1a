"""benchmarks/bench_ode.py runs end to end in its quick mode and writes its JSON."""

import json
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ode.py"


def test_bench_ode_quick(tmp_path):
    run_script(SCRIPT, "--quick", "--out", tmp_path, "--device", "cpu")
    result = json.loads((tmp_path / "bench_ode_quick.json").read_text())
    memory = {(r["mode"], r["steps"]): r["saved_MB"] for r in result["memory"]}
    # The adjoint saves the same whatever the step count; backprop saves more with more steps.
    assert memory[("adjoint", 5)] == memory[("adjoint", 20)]
    assert memory[("backprop", 20)] > 3 * memory[("backprop", 5)]
    assert all(r["cnflow_nfe"] > 0 for r in result["forward"])
    assert (tmp_path / "bench_ode_quick.md").stat().st_size > 0
