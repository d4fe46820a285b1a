"""benchmarks/bench_peers.py runs end to end in its quick mode (the peers are an optional extra:
skipped where not installed; torchflows' models are left out, a single step of theirs takes
tens of seconds)."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


def test_bench_peers_quick(tmp_path):
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("zuko")
    models = ["cnflow ML", "cnflow FM", "FFJORD-style", "zuko CNF", "GMM-64"]
    run = run_script(SCRIPT, "--quick", "--out", tmp_path, "--models", *models)
    assert "| dataset | model |" in run.stdout
    rows = json.loads((tmp_path / "bench_peers_quick.json").read_text())["rows"]
    assert [r["model"] for r in rows] == models
    assert all(r["iterations"] >= 1 and math.isfinite(r["kl"]) for r in rows), rows
