"""benchmarks/bench_sampling.py: its distances against references, and its quick mode."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnflow import CNF
from script_runner import load_script, run_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sampling.py"


def test_w2_and_energy_against_references():
    bench = load_script(SCRIPT)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 1)), rng.normal(1.0, 2.0, size=(200, 1))
    # in 1-D the optimal assignment pairs the sorted points
    expected = np.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert bench.w2(a, b) == pytest.approx(expected, rel=1e-12)
    # a translation by c moves every point by |c|
    x = rng.normal(size=(50, 3))
    assert bench.w2(x, x + [3.0, 0.0, 4.0]) == pytest.approx(5.0, rel=1e-12)
    assert bench.energy(x, x) == pytest.approx(0.0, abs=1e-12)
    assert bench.energy(a, b) > 0


def test_counted_solves_sums_every_solve_of_the_block():
    bench = load_script(SCRIPT)
    torch.manual_seed(0)
    flow = CNF(2)
    x = torch.randn(300, 2)
    expected = []
    for part in (x, x[:7]):  # each solve alone: its own evaluations
        flow.log_prob(part)
        expected.append(flow.nfe_forward)
    with bench.counted_solves(flow) as counted:
        flow.log_prob(x)
        flow.log_prob(x[:7])
    assert counted == {"solves": 2, "evaluations": sum(expected)}
    assert "log_prob" not in vars(flow)  # the class's method again after the block


@pytest.mark.slow
def test_bench_sampling_quick(tmp_path):
    run_script(SCRIPT, "--quick", "--out", tmp_path)
    out = json.loads((tmp_path / "bench_sampling_quick.json").read_text())
    (result,) = out["results"]
    trainings = [row["training"] for row in result["rows"]]
    assert trainings[:5] == ["independent", "ot", "ot, blocks of 64", "reflow 1/3",
                             "reflow 1/6"]
    for row in result["rows"]:
        assert row["scoring_solves"] >= 1 and row["scoring_nfe"] > 0
        adaptive, *fixed = row["samples"]
        assert adaptive["steps"] is None and adaptive["rms_to_adaptive"] == 0.0
        assert len(fixed) == 15 and all(s["w2"] > 0 for s in row["samples"])
        # a fixed-step draw costs K × stages evaluations of whatever share the flow drew
        for s in fixed:
            assert s["nfe"] in (0, s["steps"] * {"euler": 1, "midpoint": 2, "rk4": 4}[
                s["method"]])
    assert "| checkerboard | independent |" in (tmp_path / "bench_sampling_quick.md").read_text()
    assert (tmp_path / "bench_sampling_quick.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_sampling_runs_the_trainings_asked_for(tmp_path):
    run_script(SCRIPT, "--quick", "--trainings", "independent", "reflow 1/3", "--out", tmp_path)
    out = json.loads((tmp_path / "bench_sampling_quick.json").read_text())
    assert [row["training"] for row in out["results"][0]["rows"]] == ["independent",
                                                                       "reflow 1/3"]
