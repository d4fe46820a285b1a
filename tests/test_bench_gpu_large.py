"""benchmarks/gpu_large.py runs end to end on the CPU in its quick mode and writes its JSON."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_large.py"


def test_gpu_large_quick_on_the_cpu(tmp_path):
    # a target of 0.7 nats per dimension (5.6 in 8-D) that the flow, at KL 6.5 on its first
    # scoring, reaches within a few scorings: the stop at the target is then exercised
    run = run_script(SCRIPT, "--quick", "--devices", "cpu", "--budget", "30", "--target-kl",
                     "0.7", "--out", tmp_path)
    assert "| device | D | batch |" in run.stdout
    result = json.loads((tmp_path / "gpu_large_quick.json").read_text())
    assert "--quick" in result["command"] and result["machine"]["cpu_count"] >= 1
    assert result["machine"]["torch"] and result["date"]
    (row,) = result["rows"]
    assert (row["device"], row["D"], row["batch"], row["compile"]) == ("cpu", 8, 2048, None)
    assert row["n_train"] == 20_000 and row["score_rows"] == 300
    assert row["steps_per_second"] > 0
    assert row["rows_per_second"] == pytest.approx(row["steps_per_second"] * 2048)
    scorings = row["scorings"]
    assert scorings[0]["step"] == 0 and [s["step"] for s in scorings] == sorted(
        {s["step"] for s in scorings})
    for s in scorings:
        assert math.isfinite(s["kl"]) and s["kl_se"] > 0
        # no model beats the true density: KL ≥ 0 up to its sampling error
        assert s["kl"] > -3 * s["kl_se"]
    # stopped at the first scoring at or below the target, and not before it
    target = row["target_kl"]
    assert target == pytest.approx(0.7 * 8) and row["stopped"] == "target"
    assert all(s["kl"] > target for s in scorings[:-1]) and scorings[-1]["kl"] <= target
    assert row["steps_to_target"] == scorings[-1]["step"] == row["steps"] > 0
    assert row["seconds_to_target"] == scorings[-1]["train_seconds"] <= row["train_seconds"]
    assert row["final_kl"] == scorings[-1]["kl"] < scorings[0]["kl"]
