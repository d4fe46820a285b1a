"""benchmarks/bench_real.py runs end to end in its quick mode (zuko, an optional extra, is left
out where it is not installed). Two runs share the models out: each model is fitted once, on
the real or on the synthetic data set (the scripts' code for a model is the same on both), and
every suite runs."""

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
        real_models = ["cnflow FM", "zuko NSF", "KDE (CV)"]
    except ImportError:
        real_models = ["cnflow FM", "KDE (CV)"]
    synthetic_models = ["cnflow ML", "GMM (CV)"]
    runs = {}
    for suites, models in ((["real", "large"], real_models), (["synthetic"], synthetic_models)):
        out = tmp_path / suites[0]
        run = run_script(SCRIPT, "--quick", "--out", out, "--suites", *suites,
                         "--models", *models)
        assert "| data (train rows × D) | model |" in run.stdout
        assert (out / "bench_real_quick.md").read_text().count("|") > 20
        runs[suites[0]] = json.loads((out / "bench_real_quick.json").read_text())
    real, synthetic = runs["real"], runs["synthetic"]
    assert real["synthetic"] == [] and synthetic["real"] == [] and synthetic["large"] == []
    assert [r["model"] for r in real["real"]] == real_models
    assert all(r["data"] == "iris" and math.isfinite(r["test_ll"]) for r in real["real"])
    assert [r["model"] for r in synthetic["synthetic"]] == synthetic_models
    assert all(math.isfinite(r["kl"]) and r["kl_se"] >= 0 for r in synthetic["synthetic"])
    assert [r["rows"] for r in real["large"]] == [20_000]
    assert all(r["seconds_per_step"] > 0 and r["peak_rss_mb"] > 0 for r in real["large"])
