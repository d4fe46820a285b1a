"""benchmarks/bench_first_step.py runs end to end in its quick mode: the same rows scored
from the estimated first step and from the suggested one, both within the tolerance."""

import json
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_first_step.py"


def test_bench_first_step_quick(tmp_path):
    run_script(SCRIPT, "--quick", "--out", tmp_path)
    report = json.loads((tmp_path / "bench_first_step_quick.json").read_text())
    assert [row["dim"] for row in report["rows"]] == [2, 8]
    for row in report["rows"]:
        estimated, suggested = row["estimated"], row["suggested"]
        assert row["solves"] >= 1 and estimated["nfe"] > 0
        if row["dim"] == 8:  # 5,000 rows in 3 solves: the later ones skip the probe, at least
            assert row["solves"] == 3 and suggested["nfe"] < estimated["nfe"]
        for mode in (estimated, suggested):
            assert mode["mean_error"] < 1e-2 and mode["seconds"] > 0
    assert "| 8 |" in (tmp_path / "bench_first_step_quick.md").read_text()
