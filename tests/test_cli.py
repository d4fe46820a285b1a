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
