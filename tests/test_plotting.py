"""Plotting functions write real files without touching pyplot's global state; CNF.trajectory
follows the analytic flow of a linear field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnflow import CNF
from cnflow.plotting import (
    animate_trajectories,
    density_grid,
    plot_density,
    plot_fit,
    plot_training_curves,
    plot_trajectories,
)

PNG = b"\x89PNG\r\n\x1a\n"


def gauss(p):
    return -0.5 * (p ** 2).sum(1) - np.log(2 * np.pi)


def test_density_grid_evaluates_the_density_at_the_grid_points():
    xx, yy, dens = density_grid(gauss, (-2, 3), (-1, 1), 40)
    assert xx.shape == yy.shape == dens.shape == (40, 40)
    np.testing.assert_allclose(dens, np.exp(-0.5 * (xx ** 2 + yy ** 2)) / (2 * np.pi),
                               rtol=1e-12)


def test_every_figure_is_a_png_and_pyplot_is_untouched(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 2))
    ml = [{"iteration": i + 1, "loss": 3 - i / 50, "nfe_forward": 20 + i,
           "nfe_backward": 30 + i, "seconds": 0.1} for i in range(50)]
    fm = [{"iteration": i + 1, "loss": 3 - i / 500, "nfe_forward": 1, "nfe_backward": 0,
           "seconds": 0.01, **({"val_loss": 2.5} if i % 100 == 99 else {})}
          for i in range(500)]
    paths = [plot_fit(X, X[::-1], gauss, tmp_path / "fit.png", title="fit", resolution=30),
             plot_training_curves(ml, tmp_path / "ml.png", loss_label="NLL"),
             plot_training_curves(fm, tmp_path / "fm.png"),
             plot_density(gauss, tmp_path / "d.png", xlim=(-3, 3), ylim=(-3, 3),
                          resolution=30, title="N(0, I)"),
             plot_trajectories(np.linspace(1, 0, 4), rng.normal(size=(4, 3000, 2)),
                               tmp_path / "strip.png", title="strip")]
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_animation_has_one_frame_per_time_plus_the_hold(tmp_path):
    states = np.random.default_rng(1).normal(size=(5, 200, 2))
    path = animate_trajectories(np.linspace(1, 0, 5), states, tmp_path / "a.gif", hold_frames=3)
    assert path.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    with Image.open(path) as gif:
        # Pillow merges identical consecutive frames; the held ones count as one at most.
        assert 5 <= gif.n_frames <= 8


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(ValueError, match=r"states must have shape \(n_times, n_points, 2\)"):
        plot_trajectories([0, 1], np.zeros((2, 10, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="one entry per state"):
        plot_trajectories([0, 1, 2], np.zeros((2, 10, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"writes a \.gif"):
        animate_trajectories([0, 1], np.zeros((2, 10, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="2-D data"):
        plot_fit(np.zeros((5, 3)), np.zeros((5, 3)), gauss, tmp_path / "x.png")


class Linear(torch.nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = torch.nn.Parameter(A)

    def forward(self, t, z):
        return z @ self.A.T


def test_trajectory_follows_the_analytic_flow_of_a_linear_field():
    A = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    flow = CNF(2, net=Linear(A), T=1.5, rtol=1e-10, atol=1e-10)
    z = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        times, states = flow.trajectory(z, n_times=6)
    torch.testing.assert_close(times, torch.linspace(1.5, 0, 6, dtype=torch.float64))
    assert states.shape == (6, 7, 2)
    torch.testing.assert_close(states[0], z, rtol=0, atol=0)
    for t, state in zip(times, states, strict=True):
        expected = z @ torch.linalg.matrix_exp(A * (t - 1.5)).T
        torch.testing.assert_close(state, expected, rtol=0, atol=1e-8)
    with torch.no_grad():
        torch.manual_seed(0)
        base = torch.randn(7, 2, dtype=torch.float64)
        torch.manual_seed(0)
        samples = flow.sample(7)
        torch.testing.assert_close(flow.trajectory(base)[1][-1], samples, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="n_times must be an integer of at least 2"):
        flow.trajectory(z, n_times=1)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 2\)"):
        flow.trajectory(torch.zeros(3, 3, dtype=torch.float64))
