"""benchmarks/bench_quality.py runs end to end in its quick mode."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


def test_bench_quality_quick(tmp_path):
    run_script(SCRIPT, "--quick", "--out", tmp_path)
    rows = json.loads((tmp_path / "bench_quality_quick.json").read_text())["rows"]
    # one data set (the full run's second one runs the same code)
    assert {(r["dataset"], r["model"].split("(")[0]) for r in rows} == {
        ("checkerboard", "CNFDensity"), ("checkerboard", "GaussianMixture")}
    # KL = NLL + mean log p ≥ 0 up to sampling error: no model beats the true density.
    assert all(r["kl"] > -0.05 for r in rows)
    assert (tmp_path / "bench_quality_quick_checkerboard.png").stat().st_size > 0


def test_fit_toy_script_reports_kl(tmp_path):
    script = SCRIPT.parent / "fit_toy.py"
    res = run_script(script, "8gaussians", "--max-iter", "2", "--n-train", "300",
                     "--set", "hidden=(8,)", "--set", "lr=0.01")
    out = json.loads(res.stdout)
    # 300 rows: five cross-fitted flows of two steps each
    assert out["iterations"] == 2 * 5 and out["params"] == {"hidden": [8], "lr": 0.01}
    assert out["kl"] > -0.05
    bands = out["kl_by_density_band"]
    assert [b["quantiles"] for b in bands] == [[0, 0.1], [0.1, 0.25], [0.25, 0.5], [0.5, 1]]
    assert sum(b["kl_contribution"] for b in bands) == pytest.approx(out["kl"], abs=1e-9)
    assert all(a["log_p"][1] <= b["log_p"][0] + 1e-12 for a, b in zip(bands, bands[1:]))


def test_kl_by_density_band_splits_the_paired_gap():
    spec = importlib.util.spec_from_file_location("fit_toy", SCRIPT.parent / "fit_toy.py")
    fit_toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_toy)
    kl_by_density_band = fit_toy.kl_by_density_band

    log_p = np.arange(20.0)  # rows 0, 1 are the lowest 10 %, 2..4 the next 15 %
    log_q = log_p.copy()
    log_q[:2] -= 1.0  # the model misses only the two lowest rows, by 1 nat each
    bands = kl_by_density_band(log_p, log_q)
    assert [b["kl_contribution"] for b in bands] == pytest.approx([0.1, 0, 0, 0])
