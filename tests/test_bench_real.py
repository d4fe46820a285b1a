"""benchmarks/bench_real.py runs end to end in its quick mode (zuko, an optional extra, is left
out where it is not installed)."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real.py"


def test_bench_real_quick(tmp_path):
    try:
        import zuko  # noqa: F401
        models = ["cnflow FM", "cnflow ML", "zuko NSF", "GMM (CV)", "KDE (CV)"]
    except ImportError:
        models = ["cnflow FM", "cnflow ML", "GMM (CV)", "KDE (CV)"]
    run = run_script(SCRIPT, "--quick", "--out", tmp_path, "--models", *models)
    assert "| data (train rows × D) | model |" in run.stdout
    result = json.loads((tmp_path / "bench_real_quick.json").read_text())
    assert [r["model"] for r in result["real"]] == models
    assert all(r["data"] == "iris" and math.isfinite(r["test_ll"]) for r in result["real"])
    assert [r["model"] for r in result["synthetic"]] == models
    assert all(math.isfinite(r["kl"]) and r["kl_se"] >= 0 for r in result["synthetic"])
    assert [r["rows"] for r in result["large"]] == [10_000]
    assert all(r["seconds_per_step"] > 0 and r["peak_rss_mb"] > 0 for r in result["large"])
    assert (tmp_path / "bench_real_quick.md").read_text().count("|") > 20
