"""benchmarks/bench_peers.py runs end to end in its quick mode (the peers are an optional extra:
skipped where not installed; torchflows' models are left out, a single step of theirs takes
tens of seconds)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


def test_bench_peers_quick(tmp_path):
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("zuko")
    models = ["cnflow ML", "cnflow FM", "FFJORD-style", "zuko CNF", "GMM-64"]
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path),
                          "--models", *models], check=True, capture_output=True, text=True,
                         timeout=600)
    assert "| dataset | model |" in run.stdout
    rows = json.loads((tmp_path / "bench_peers_quick.json").read_text())["rows"]
    assert [r["model"] for r in rows] == models
    assert all(r["iterations"] >= 1 and math.isfinite(r["kl"]) for r in rows)
