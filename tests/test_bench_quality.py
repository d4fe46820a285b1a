"""scripts/bench_quality.py runs end to end in its quick mode."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_quality.py"


def test_bench_quality_quick(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads((tmp_path / "bench_quality_quick.json").read_text())["rows"]
    assert {(r["dataset"], r["model"].split("(")[0]) for r in rows} == {
        ("checkerboard", "CNFDensity"), ("checkerboard", "GaussianMixture"),
        ("8gaussians", "CNFDensity"), ("8gaussians", "GaussianMixture")}
    # KL = NLL − H(p) ≥ 0 up to Monte Carlo error: no model beats the true density.
    assert all(r["kl"] > -0.05 for r in rows)
    assert (tmp_path / "bench_quality_quick_checkerboard.png").stat().st_size > 0


def test_fit_toy_script_reports_kl(tmp_path):
    script = SCRIPT.parent / "fit_toy.py"
    res = subprocess.run([sys.executable, str(script), "8gaussians", "--max-iter", "2",
                          "--n-train", "300", "--set", "hidden=(8,)", "--set", "lr=0.01"],
                         check=True, capture_output=True, text=True, timeout=300)
    out = json.loads(res.stdout)
    assert out["iterations"] == 2 and out["params"] == {"hidden": [8], "lr": 0.01}
    assert out["kl"] > -0.05
