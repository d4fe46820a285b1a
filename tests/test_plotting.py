"""Plotting functions write real PNG/GIF files without touching pyplot's global state, reject
bad inputs, and CNF.trajectory follows the analytic flow of a linear field; the pair plot
draws one panel per pair of shown columns, choosing the worst-fitting columns by scipy's
two-sample KS statistic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from scipy.stats import ks_2samp

from cnflow import CNF, plotting
from cnflow.ode import odeint
from cnflow.plotting import (
    animate_trajectories,
    density_grid,
    marginal_ks,
    plot_density,
    plot_fit,
    plot_pairs,
    plot_training_curves,
    plot_trajectories,
)

PNG = b"\x89PNG\r\n\x1a\n"
GIF = (b"GIF89a", b"GIF87a")
D64 = torch.float64


def gauss(p):
    """log N(p; 0, I) in 2-D."""
    return -0.5 * (p ** 2).sum(1) - np.log(2 * np.pi)


def assert_png(path, min_bytes=1000):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > min_bytes, path


def assert_gif(path):
    data = path.read_bytes()
    assert data[:6] in GIF and len(data) > 1000, path


def ml_history(n=50):
    """Like a maximum-likelihood fit's history_: every step solves the ODE (NFE > 1)."""
    return [{"iteration": i + 1, "loss": 3 - i / 50, "nfe_forward": 20 + i,
             "nfe_backward": 30 + i, "seconds": 0.1,
             **({"val_loss": 2.9 - i / 60} if i % 10 == 9 else {})} for i in range(n)]


def fm_history(n=500):
    """Like a flow-matching fit's history_: one network evaluation a step, no solve."""
    return [{"iteration": i + 1, "loss": 3 - i / 500, "nfe_forward": 1, "nfe_backward": 0,
             "seconds": 0.01, **({"val_loss": 2.5} if i % 100 == 99 else {})}
            for i in range(n)]


# ---------------------------------------------------------------- density_grid


def test_density_grid_evaluates_exp_log_density_at_the_grid_points():
    xx, yy, dens = density_grid(gauss, (-2, 3), (-1, 1), 40)
    assert xx.shape == yy.shape == dens.shape == (40, 40)
    # The grid spans the limits, x along columns and y along rows.
    assert (xx[0, 0], xx[0, -1], yy[0, 0], yy[-1, 0]) == (-2, 3, -1, 1)
    np.testing.assert_allclose(xx[0], np.linspace(-2, 3, 40))
    np.testing.assert_allclose(yy[:, 0], np.linspace(-1, 1, 40))
    # Independently: the standard Gaussian's density, written out.
    np.testing.assert_allclose(dens, np.exp(-0.5 * (xx ** 2 + yy ** 2)) / (2 * np.pi),
                               rtol=1e-12)


# ---------------------------------------------------------------- every figure, no pyplot


def test_every_function_writes_its_file_and_pyplot_is_untouched(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 2))
    times = np.linspace(1, 0, 4)
    many = rng.normal(size=(4, 3000, 2)) * np.array([1.0, 1.5, 2.0, 2.5])[:, None, None]
    few = rng.normal(size=(4, 200, 2))
    pngs = [plot_fit(X, X[::-1], gauss, tmp_path / "fit.png", title="fit", resolution=30),
            plot_training_curves(ml_history(), tmp_path / "ml.png", loss_label="NLL"),
            plot_training_curves(fm_history(), tmp_path / "fm.png"),
            plot_density(gauss, tmp_path / "d.png", xlim=(-3, 3), ylim=(-3, 3),
                         resolution=30),
            plot_density(gauss, tmp_path / "sub" / "d_titled.png", xlim=(-3, 3),
                         ylim=(-2, 2), resolution=30, title="N(0, I)", ax_title="density"),
            plot_trajectories(times, many, tmp_path / "strip.png", title="strip"),
            plot_trajectories(times, few, tmp_path / "strip_few.png"),
            plot_trajectories(times, few, tmp_path / "strip_dens.png",
                              density_frames=[gauss, None, gauss, gauss], resolution=20)]
    gif = animate_trajectories(times, few, tmp_path / "a.gif", hold_frames=2)
    for path in pngs:
        assert path.is_file()
        assert_png(path)
    assert_gif(gif)
    assert (tmp_path / "sub" / "d_titled.png").is_file()
    # Maximum likelihood solved the ODE: a second panel with the NFE, so a wider figure.
    with Image.open(tmp_path / "ml.png") as ml, Image.open(tmp_path / "fm.png") as fm:
        assert ml.width > 1.5 * fm.width
        assert ml.height == fm.height
    # With density_frames the strip has a second row.
    with Image.open(tmp_path / "strip_few.png") as one, \
            Image.open(tmp_path / "strip_dens.png") as two:
        assert one.width == two.width
        assert two.height > 1.5 * one.height
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_plot_functions_return_the_path_as_given(tmp_path):
    out = plot_density(gauss, str(tmp_path / "s.png"), xlim=(-1, 1), ylim=(-1, 1),
                       resolution=10)
    assert out == tmp_path / "s.png"
    assert_png(out, min_bytes=100)


def test_trajectories_on_a_line_still_get_a_window(tmp_path):
    """All points on a horizontal line (a zero y-range) still plot."""
    states = np.zeros((2, 50, 2))
    states[:, :, 0] = np.linspace(-1, 1, 50)
    assert_png(plot_trajectories([1.0, 0.0], states, tmp_path / "line.png"))


# ---------------------------------------------------------------- the animation


@pytest.mark.parametrize("hold_frames", [0, 3])
def test_animation_has_one_frame_per_time_and_holds_the_last(tmp_path, hold_frames):
    n_times, fps = 5, 8
    # Each frame distinct (spreading points), so Pillow keeps every one.
    states = (np.random.default_rng(1).normal(size=(n_times, 200, 2))
              * np.arange(1, n_times + 1)[:, None, None])
    path = animate_trajectories(torch.linspace(1, 0, n_times), torch.from_numpy(states),
                                tmp_path / "a.gif", fps=fps, hold_frames=hold_frames)
    assert_gif(path)
    with Image.open(path) as gif:
        # Pillow stores identical consecutive frames once, adding up their durations: the
        # hold is one frame shown (hold_frames + 1) times as long.
        assert gif.n_frames == n_times
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    step = durations[0]
    assert step == pytest.approx(1000 / fps, abs=10)  # GIF stores centiseconds
    assert durations[:-1] == [step] * (n_times - 1)
    assert durations[-1] == pytest.approx((hold_frames + 1) * 1000 / fps, abs=10)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_value_error(tmp_path):
    png, gif = tmp_path / "x.png", tmp_path / "x.gif"
    ok_times, ok_states = [1, 0], np.zeros((2, 10, 2))
    for draw, out in ((plot_trajectories, png), (animate_trajectories, gif)):
        with pytest.raises(ValueError, match=r"states must have shape \(n_times, n_points, 2\)"):
            draw(ok_times, np.zeros((2, 10, 3)), out)  # 3-D points
        with pytest.raises(ValueError, match=r"states must have shape \(n_times, n_points, 2\)"):
            draw(ok_times, np.zeros((10, 2)), out)  # one frame, no time axis
        with pytest.raises(ValueError, match="one entry per state"):
            draw([2, 1, 0], ok_states, out)
        with pytest.raises(ValueError, match="one entry per state"):
            draw(np.zeros((2, 1)), ok_states, out)
        with pytest.raises(ValueError, match="at least one time and one point"):
            draw(ok_times, np.zeros((2, 0, 2)), out)
        bad = ok_states.copy()
        bad[1, 3, 0] = np.nan
        with pytest.raises(ValueError, match="NaN or infinite"):
            draw(ok_times, bad, out)
    with pytest.raises(ValueError, match="one log-density \\(or None\\) per time"):
        plot_trajectories(ok_times, ok_states, png, density_frames=[gauss])
    with pytest.raises(ValueError, match=r"writes a \.gif"):
        animate_trajectories(ok_times, ok_states, png)
    with pytest.raises(ValueError, match="fps must be a positive integer"):
        animate_trajectories(ok_times, ok_states, gif, fps=0)
    with pytest.raises(ValueError, match="hold_frames must be a non-negative integer"):
        animate_trajectories(ok_times, ok_states, gif, hold_frames=-1)
    with pytest.raises(ValueError, match="2-D data"):
        plot_fit(np.zeros((5, 3)), np.zeros((5, 3)), gauss, png)
    assert not png.exists() and not gif.exists()


# ---------------------------------------------------------------- CNF.trajectory


class Linear(torch.nn.Module):
    """f(t, z) = A z."""

    def __init__(self, A):
        super().__init__()
        self.A = torch.nn.Parameter(A)

    def forward(self, t, z):
        return z @ self.A.T


A2 = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=D64)


def test_trajectory_follows_the_analytic_flow_of_a_linear_field():
    T = 1.5
    flow = CNF(2, net=Linear(A2), T=T, rtol=1e-9, atol=1e-9)
    z = torch.randn(7, 2, dtype=D64)
    with torch.no_grad():
        times, states = flow.trajectory(z, n_times=6)
    torch.testing.assert_close(times, torch.linspace(T, 0, 6, dtype=D64), rtol=0, atol=0)
    assert times.dtype == states.dtype == D64
    assert states.shape == (6, 7, 2)
    torch.testing.assert_close(states[0], z, rtol=0, atol=0)
    # z(t) = expm(A (t - T)) z(T), at every time.
    for t, state in zip(times, states, strict=True):
        expected = z @ torch.linalg.matrix_exp(A2 * (t - T)).T
        torch.testing.assert_close(state, expected, rtol=1e-7, atol=1e-7)
    assert flow.nfe_forward > 0 and flow.nfe_backward == 0


def test_trajectory_ends_where_sample_does():
    flow = CNF(2, net=Linear(A2), T=0.8, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        torch.manual_seed(3)
        samples = flow.sample(9)
        torch.manual_seed(3)
        base = torch.randn(9, 2, dtype=D64)  # the draws sample made
        times, states = flow.trajectory(base, n_times=4)
        # ... and odeint from T to 0 directly, with the same settings.
        direct = odeint(lambda t, y: flow.net(t, y), base,
                        torch.tensor([0.8, 0.0], dtype=D64), rtol=1e-9, atol=1e-9)[-1]
    torch.testing.assert_close(states[-1], samples, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(states[-1], direct, rtol=1e-8, atol=1e-8)


def test_trajectory_rejects_bad_arguments():
    flow = CNF(2, net=Linear(A2), T=1.0)
    z = torch.randn(4, 2, dtype=D64)
    for n_times in (1, 0, 2.5, True, "9"):
        with pytest.raises(ValueError, match="n_times must be an integer of at least 2"):
            flow.trajectory(z, n_times=n_times)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 2\)"):
        flow.trajectory(torch.zeros(3, 3, dtype=D64))
    with pytest.raises(ValueError, match="z has dtype"):
        flow.trajectory(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="z must be a torch tensor"):
        flow.trajectory(np.zeros((3, 2)))


def test_tiny_cnf_trajectory_to_figures(tmp_path):
    """End to end: a small (untrained) CNF's trajectory, as torch tensors, to PNG and GIF."""
    flow = CNF(2, hidden=(8,), rtol=1e-4, atol=1e-4)
    z = torch.randn(300, 2)
    with torch.no_grad():
        times, states = flow.trajectory(z, n_times=5)
    assert times.shape == (5,) and states.shape == (5, 300, 2)
    assert float(times[0]) == pytest.approx(float(flow.T)) and float(times[-1]) == 0.0
    assert_png(plot_trajectories(times, states, tmp_path / "cnf.png", title="tiny CNF"))
    assert_gif(animate_trajectories(times, states, tmp_path / "cnf.gif", hold_frames=1))
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


# ---------------------------------------------------------------- pair plots


def labelled(fig, prefix):
    """The figure's axes whose label starts with ``prefix``, left to right, top to bottom."""
    axes = [ax for ax in fig.axes if ax.get_label().startswith(prefix)]
    return sorted(axes, key=lambda ax: (-ax.get_position().y0, ax.get_position().x0))


def assert_corner(fig, shown_names):
    """One diagonal panel per shown column and one panel per pair below it, names on the
    bottom row (x) and the left column (y, not on the diagonal) only."""
    k = len(shown_names)
    diagonal, pairs = labelled(fig, "diagonal "), labelled(fig, "pair ")
    assert [ax.get_label() for ax in diagonal] == [f"diagonal {n}" for n in shown_names]
    assert len(pairs) == k * (k - 1) // 2
    panels = diagonal + pairs
    bottom = sorted((ax for ax in panels if ax.get_xlabel()), key=lambda a: a.get_position().x0)
    assert [ax.get_xlabel() for ax in bottom] == list(shown_names)
    left = sorted((ax for ax in panels if ax.get_ylabel()), key=lambda a: -a.get_position().y0)
    assert [ax.get_ylabel() for ax in left] == list(shown_names[1:])


@pytest.mark.parametrize("width, rows", [(1, 300), (3, 1500)])
def test_pair_plot_shows_every_column_when_they_fit(width, rows):
    rng = np.random.default_rng(1)
    names = [f"col {j}" for j in range(width)]
    fig = plot_pairs(rng.normal(size=(rows, width)), rng.normal(size=(rows + 7, width)),
                     names=names, title="t")
    assert isinstance(fig, Figure)
    assert fig.shown_columns == tuple(range(width))
    assert_corner(fig, names)
    assert labelled(fig, "ks bars") == []
    # the diagonal, the pairs and (with two or more columns) the legend's empty axes
    assert len(fig.axes) == width * (width + 1) // 2 + (width > 1)


def test_pair_plot_shows_the_columns_with_the_largest_ks_statistic():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(1500, 12))
    samples = rng.normal(size=(1200, 12))
    samples[:, 3] *= 1.5
    samples[:, 7] *= 2.0
    samples[:, 10] *= 3.0
    samples[:, 5] += 0.6
    names = [f"c{j}" for j in range(12)]
    fig = plot_pairs(data, samples, names=names, max_columns=4)
    reference = np.array([ks_2samp(data[:, j], samples[:, j]).statistic for j in range(12)])
    np.testing.assert_allclose(fig.ks_statistics, reference, rtol=0, atol=1e-12)
    worst = tuple(int(j) for j in np.argsort(-reference)[:4])
    assert set(worst) == {3, 5, 7, 10}   # the mis-fitted columns stand out
    assert fig.shown_columns == worst
    assert_corner(fig, [names[j] for j in worst])
    bars = labelled(fig, "ks bars")
    assert len(bars) == 1 and len(bars[0].patches) == 12
    text = " ".join(t.get_text() for t in fig.texts)
    assert "showing the 4 of 12 columns with the worst marginal fit" in " ".join(text.split())
    assert all(names[j] in text for j in range(12) if j not in worst)


def test_marginal_ks_is_scipys_two_sample_statistic():
    rng = np.random.default_rng(3)
    data = np.column_stack([rng.normal(size=400), rng.integers(0, 5, 400),  # ties
                            rng.exponential(size=400)])
    samples = np.column_stack([rng.normal(0.2, 1.0, 250), rng.integers(0, 6, 250),
                               rng.exponential(2.0, 250)])
    ks = marginal_ks(data, samples)
    assert ks.shape == (3,)
    for j in range(3):
        assert ks[j] == pytest.approx(ks_2samp(data[:, j], samples[:, j]).statistic, abs=1e-12)
    assert marginal_ks(data, data).tolist() == [0.0, 0.0, 0.0]
    assert marginal_ks(data[:, :1], data[:, :1] + 100).tolist() == [1.0]


def test_pair_plot_draws_a_subsample_but_scores_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(plotting, "PAIR_PLOT_ROWS", 100)
    rng = np.random.default_rng(4)
    data, samples = rng.normal(size=(500, 2)), rng.normal(size=(300, 2)) * 1.2
    fig = plot_pairs(data, samples, tmp_path / "pairs.png", data_label="held out")
    assert_png(tmp_path / "pairs.png")
    np.testing.assert_array_equal(fig.ks_statistics, marginal_ks(data, samples))
    legend = [t.get_text() for ax in fig.axes if ax.get_legend()
              for t in ax.get_legend().get_texts()]
    assert legend == ["held out (100 of 500 rows)", "model samples (100 of 300 rows)"]
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_pair_plot_rejects_bad_input():
    good = np.zeros((10, 3))
    bad_value = good.copy()
    bad_value[2, 1] = np.nan
    cases = [((bad_value, good), {}, "data contains NaN or infinite"),
             ((good, np.full((4, 3), np.inf)), {}, "samples contains NaN or infinite"),
             ((good, np.zeros((10, 2))), {}, "same number of columns, got 3 and 2"),
             ((np.zeros(10), good), {}, r"data must be 2-D \(rows, columns\)"),
             ((good, np.zeros((0, 3))), {}, "samples must have at least one row"),
             ((np.zeros((10, 0)), np.zeros((10, 0))), {}, "at least one row and one column"),
             ((good, good), {"names": ["a", "b"]}, r"one name per column \(3\), got 2"),
             ((good, good), {"names": "abc"}, "got a string"),
             ((good, good), {"max_columns": 0}, "max_columns must be a positive integer"),
             ((good, good), {"bins": 0}, "bins must be")]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            plot_pairs(*args, **kwargs)
    with pytest.raises(ValueError, match="same number of columns"):
        marginal_ks(good, np.zeros((10, 4)))


def test_plot_pairs_takes_the_names_of_a_data_frame():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(50, 3)), columns=["mass", "length", "depth"])
    fig = plot_pairs(frame, rng.normal(size=(40, 3)))
    labels = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}
    assert {"mass", "length", "depth"} <= labels
