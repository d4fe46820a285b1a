"""Every density_examples script runs end to end in its smoke mode (--quick) and writes its
figures to the folder it is given."""

import json
import math
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

FOLDER = Path(__file__).resolve().parents[1] / "density_examples"
SCRIPTS = sorted(p.name for p in FOLDER.glob("*.py") if not p.name.startswith("_"))
PNG, GIF = b"\x89PNG\r\n\x1a\n", (b"GIF89a", b"GIF87a")


def test_the_studies_the_readme_promises_exist():
    assert {"toy_grid.py", "trace_exact_vs_hutchinson.py", "trajectories.py",
            "tolerance_tradeoff.py", "depth_vs_width.py", "odenet_digits.py",
            "latent_ode_series.py", "model_selection_real_data.py", "pair_plots.py"} \
        <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_in_smoke_mode(script, tmp_path):
    run = run_script(FOLDER / script, "--quick", "--out", tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    pngs = list(tmp_path.glob("*_quick.png"))
    assert pngs, f"{script} wrote no PNG: {sorted(p.name for p in tmp_path.iterdir())}"
    assert all(p.read_bytes()[:8] == PNG for p in pngs)
    for gif in tmp_path.glob("*.gif"):
        assert gif.read_bytes()[:6] in GIF
    for path in tmp_path.glob("*_quick.json"):
        json.loads(path.read_text())  # valid JSON
    if script == "trajectories.py":
        assert (tmp_path / "trajectories_quick.gif").exists()
    if script == "depth_vs_width.py":
        result = json.loads((tmp_path / "depth_vs_width_quick.json").read_text())
        assert all(math.isfinite(r["kl"]) for r in result["rows"])
    if script == "odenet_digits.py":
        summary = {s["model"]: s for s in json.loads(
            (tmp_path / "odenet_digits_quick.json").read_text())["summary"]}
        assert set(summary) == {"ResNet-6", "ResNet-1", "ODE-Net"}
        # one ODE block with the parameters of about one residual block (plus t's channel)
        assert summary["ResNet-1"]["parameters"] < summary["ODE-Net"]["parameters"] \
            < summary["ResNet-6"]["parameters"]
        assert summary["ODE-Net"]["test_nfe"] > 0 and summary["ResNet-6"]["test_nfe"] == 0
        assert all(0 <= s["accuracy_mean"] <= 1 for s in summary.values())
    if script == "latent_ode_series.py":
        mse = json.loads((tmp_path / "latent_ode_series_quick.json").read_text())["mse"]
        assert {"latent_ode", "gru", "predict_zero"} <= set(mse)
        assert all(math.isfinite(v) and v >= 0 for m in mse.values() for v in m.values())
    if script == "pair_plots.py":
        rows = json.loads((tmp_path / "pair_plots_quick.json").read_text())["rows"]
        assert [(r["table"], r["columns"], len(r["ks"]), len(r["shown"])) for r in rows] == [
            ("iris", 4, 4, 4), ("diabetes", 9, 9, 9), ("breast_cancer", 30, 30, 8)]
        for table in ("iris", "diabetes", "breast_cancer"):
            assert (tmp_path / f"pair_plots_{table}_quick.png").exists()
