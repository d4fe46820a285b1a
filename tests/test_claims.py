"""benchmarks/claims.py: every sub-command runs in its smoke mode (--quick) and writes a PNG and a
JSON with the structure docs/benchmarks.md reads. No timing is asserted."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "claims.py"
PNG = b"\x89PNG\r\n\x1a\n"


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _run(claim: str, out: Path) -> dict:
    run = run_script(SCRIPT, claim, "--quick", "--out", out, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / f"claims_{claim}_quick.png").read_bytes()[:8] == PNG
    result = json.loads((out / f"claims_{claim}_quick.json").read_text())
    assert result["command"] == f"python benchmarks/claims.py {claim} --quick"
    assert result["claim"] and result["machine"]["torch"]
    return result


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("claims")


def test_memory(out):
    result = _run("memory", out)
    rows = result["rows"]
    assert {r["mode"] for r in rows} == {"adjoint", "backprop"}
    assert {r["solver"] for r in rows} == {"rk4", "dopri5"}
    for r in rows:
        assert _is_count(r["nfe_forward"])
        for key in ("saved_MB", "peak_rss_MB", "peak_rss_rise_MB", "seconds"):
            assert math.isfinite(r[key]) and r[key] >= 0
        # The adjoint solves backwards (as many evaluations as the fixed-step forward solve);
        # backprop evaluates nothing anew.
        if r["mode"] == "adjoint":
            assert _is_count(r["nfe_backward"])
        else:
            assert r["nfe_backward"] == 0
    rk4 = {(r["mode"], r["steps"]): r for r in rows if r["solver"] == "rk4"}
    steps = sorted({s for _, s in rk4})
    few, many = steps[0], steps[-1]
    assert rk4[("adjoint", many)]["nfe_forward"] == 4 * many
    # Exact counts: the adjoint saves the same bytes whatever the step count, backprop more
    # with more steps, and more than the adjoint.
    assert rk4[("adjoint", few)]["saved_MB"] == rk4[("adjoint", many)]["saved_MB"]
    assert rk4[("backprop", many)]["saved_MB"] > 2 * rk4[("backprop", few)]["saved_MB"]
    assert rk4[("backprop", few)]["saved_MB"] > rk4[("adjoint", few)]["saved_MB"]
    assert set(result["summary"]) == {"adjoint", "backprop"}


@pytest.mark.parametrize("claim", ["reverse_cost", "depth"])
def test_training_runs(out, claim):
    result = _run(claim, out)
    runs = result["runs"]
    n_iter = result["config"]["iterations"]
    if claim == "reverse_cost":
        assert {(r["run"]["solver"], r["run"]["seminorm"]) for r in runs} == {
            ("dopri5", True), ("dopri5", False), ("bosh3", True), ("bosh3", False)}
    else:
        assert [r["run"]["kinetic_energy"] > 0 for r in runs] == [False, True]
    for r in runs:
        assert len(r["nfe_forward"]) == len(r["nfe_backward"]) == len(r["loss"]) == n_iter
        assert all(_is_count(n) for n in r["nfe_forward"] + r["nfe_backward"])
        assert r["ratio_total"] == pytest.approx(sum(r["nfe_backward"]) / sum(r["nfe_forward"]))
        assert r["ratio_range"][0] <= r["ratio_median"] <= r["ratio_range"][1]
        assert math.isfinite(r["test_nll"]) and math.isfinite(r["time_ratio_median"])


def test_tolerance(out):
    result = _run("tolerance", out)
    rows = result["rows"]
    tols = [r["tol"] for r in rows]
    assert tols == sorted(tols, reverse=True) and len(tols) >= 2
    for r in rows:
        assert _is_count(r["nfe"]) and r["seconds"] > 0
        assert math.isfinite(r["test_nll"]) and 0 <= r["nll_error"] <= r["max_row_error"]
    assert rows[-1]["nfe"] >= rows[0]["nfe"]  # a tighter tolerance never takes fewer steps here
    assert {"slope", "intercept", "r2", "ms_per_evaluation"} <= set(result["time_vs_nfe"])
    assert _is_count(result["reference"]["nfe"]) and result["test_nll_standard_error"] > 0


def test_plot_only_redraws_from_the_json(out):
    if not (out / "claims_tolerance_quick.json").exists():  # run alone, without test_tolerance
        _run("tolerance", out)
    png = out / "claims_tolerance_quick.png"
    png.unlink()
    run_script(SCRIPT, "tolerance", "--quick", "--plot-only", "--out", out)
    assert png.read_bytes()[:8] == PNG
