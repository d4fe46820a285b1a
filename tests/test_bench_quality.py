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
