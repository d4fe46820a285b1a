"""python -m cnflow train: a tiny fit writes its files; user mistakes give one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnflow import CNFDensity

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cnflow", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_train_writes_model_picture_and_summary(tmp_path):
    res = cli("train", "moons", "--n-samples", "300", "--max-iter", "2", "--hidden", "8",
              "--quiet", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    for name in ("model.pt", "fit.png", "training.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 2 and np.isfinite(summary["test_nll"])
    torch.load(tmp_path / "model.pt", weights_only=True)
    est = CNFDensity.load(tmp_path / "model.pt")
    assert est.max_iter == 2 and est.hidden == (8,)


def test_train_on_a_csv_file(tmp_path):
    data = tmp_path / "rows.csv"
    np.savetxt(data, np.random.RandomState(0).randn(200, 3), delimiter=",")
    res = cli("train", str(data), "--max-iter", "1", "--hidden", "4", "--quiet", "--out",
              str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "model.pt").exists()
    assert not (tmp_path / "out" / "fit.png").exists()  # 3-D data: no 2-D picture


@pytest.mark.parametrize("args,message", [
    (["train", "nope"], "neither a toy dataset"),
    (["train", "missing.npy"], "no such file"),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    res = cli(*args, "--out", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_wrong_shape_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    res = cli("train", str(tmp_path / "flat.npy"), "--out", str(tmp_path))
    assert res.returncode == 2 and "2-D array" in res.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    res = cli("train", "moons", "--n-samples", "300", "--max-iter", "2", "--hidden", "8",
              "--quiet", "--out", str(folder))
    assert res.returncode == 0, res.stderr
    return folder / "model.pt"


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_train_sample_score_round_trip(trained, tmp_path, suffix):
    rows_file = tmp_path / f"rows{suffix}"
    res = cli("sample", str(trained), "--n", "40", "--out", str(rows_file))
    assert res.returncode == 0, res.stderr
    rows = np.load(rows_file) if suffix == ".npy" else np.loadtxt(rows_file, delimiter=",")
    assert rows.shape == (40, 2) and np.isfinite(rows).all()
    scores_file = tmp_path / f"scores{suffix}"
    res = cli("score", str(trained), str(rows_file), "--out", str(scores_file))
    assert res.returncode == 0, res.stderr
    scores = np.load(scores_file) if suffix == ".npy" else np.loadtxt(scores_file)
    expected = CNFDensity.load(trained).score_samples(rows)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-10)
    assert f"mean log-likelihood {expected.mean():.6f} over 40 rows" in res.stdout


def test_plot_with_and_without_data(trained, tmp_path):
    res = cli("plot", str(trained), "--out", str(tmp_path / "a.png"), "--n-samples", "500")
    assert res.returncode == 0, res.stderr
    res = cli("plot", str(trained), "--data", "moons", "--out", str(tmp_path / "b.png"),
              "--n-samples", "500")
    assert res.returncode == 0, res.stderr
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_planar_models_are_read_too(tmp_path):
    from cnflow import PlanarFlowDensity

    X = np.random.RandomState(0).randn(200, 2)
    PlanarFlowDensity(n_layers=2, max_iter=2, device="cpu").fit(X).save(tmp_path / "p.pt")
    res = cli("sample", str(tmp_path / "p.pt"), "--n", "10", "--out", str(tmp_path / "s.npy"))
    assert res.returncode == 0, res.stderr
    res = cli("score", str(tmp_path / "p.pt"), str(tmp_path / "s.npy"))
    assert res.returncode == 0 and "over 10 rows" in res.stdout


def test_subcommand_errors_are_one_line_with_exit_code_2(trained, tmp_path):
    (tmp_path / "garbage.pt").write_text("not a model")
    np.save(tmp_path / "three.npy", np.zeros((5, 3)))
    cases = [
        (["sample", str(trained), "--out", str(tmp_path / "x.txt")], "must end in .npy or .csv"),
        (["score", str(trained), str(tmp_path / "three.npy")], "has 3 columns but the model"),
        (["score", str(tmp_path / "none.pt"), str(tmp_path / "three.npy")], "no such model"),
        (["plot", str(tmp_path / "none.pt")], "no such model file"),
        (["score", str(tmp_path / "garbage.pt"), "moons"], "not a cnflow model file"),
        (["score", str(trained), "nope"], "neither a toy dataset"),
    ]
    for args, message in cases:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, args


def test_plot_refuses_a_model_that_is_not_2d(tmp_path):
    X = np.random.RandomState(0).randn(100, 3)
    CNFDensity(hidden=(4,), max_iter=1, device="cpu").fit(X).save(tmp_path / "m3.pt")
    res = cli("plot", str(tmp_path / "m3.pt"))
    assert res.returncode == 2 and "plot draws 2-D densities" in res.stderr


@pytest.mark.parametrize("command", ["train", "sample", "score", "plot"])
def test_help_on_each_subcommand(command, capsys):
    from cnflow.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out
