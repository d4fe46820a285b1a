"""Matplotlib figures for fitted densities. No pyplot: each function builds its own Figure
(Agg canvas), so no global state leaks between calls and nothing needs a display.

Example:
    >>> from cnflow.plotting import density_grid
    >>> xx, yy, grid = density_grid(lambda p: -0.5 * (p ** 2).sum(1), (-3, 3), (-3, 3), 50)
    >>> grid.shape
    (50, 50)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checks import check_finite_array, check_nonnegative_int, check_positive_int
from .files import atomic_write

__all__ = ["density_grid", "plot_density", "plot_fit", "plot_training_curves",
           "plot_trajectories", "animate_trajectories", "plot_image_grid"]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def density_grid(log_density: Callable[[np.ndarray], np.ndarray], xlim: Sequence[float],
                 ylim: Sequence[float], resolution: int = 200):
    """Evaluate exp(log_density) on a regular grid; returns (xx, yy, density)."""
    xs = np.linspace(xlim[0], xlim[1], resolution)
    ys = np.linspace(ylim[0], ylim[1], resolution)
    xx, yy = np.meshgrid(xs, ys)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return xx, yy, np.exp(log_density(points)).reshape(resolution, resolution)


def _limits(X: np.ndarray, pad: float = 0.05) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = np.quantile(X, 0.001, axis=0), np.quantile(X, 0.999, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)  # all points on a line: still a non-empty window
    lo, hi = lo - pad * span, hi + pad * span
    return (lo[0], hi[0]), (lo[1], hi[1])


def plot_fit(X: np.ndarray, samples: np.ndarray,
             log_density: Callable[[np.ndarray], np.ndarray], path: str | Path, *,
             title: str = "", resolution: int = 200) -> Path:
    """Data, model samples and the learned density side by side (2-D data); writes a PNG."""
    X, samples = np.asarray(X), np.asarray(samples)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"plot_fit draws 2-D data, got shape {X.shape}")
    xlim, ylim = _limits(X)
    fig = _new_figure(12, 4.2)
    axes = fig.subplots(1, 3)
    bins = [np.linspace(*xlim, 120), np.linspace(*ylim, 120)]
    axes[0].hist2d(X[:, 0], X[:, 1], bins=bins, cmap="magma")
    axes[0].set_title(f"data ({len(X):,} points)")
    axes[1].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="magma")
    axes[1].set_title(f"samples ({len(samples):,})")
    xx, yy, dens = density_grid(log_density, xlim, ylim, resolution)
    axes[2].pcolormesh(xx, yy, dens, cmap="magma", shading="auto")
    axes[2].set_title("learned density")
    for ax in axes:
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curves(history: Sequence[dict], path: str | Path,
                         loss_label: str = "training loss") -> Path:
    """Loss per iteration (raw and a running mean over 1% of the run) and, when training
    solved the ODE, forward/backward NFE per iteration; writes a PNG.

    Arguments:
        history: an estimator's ``history_`` (dicts with iteration, loss, nfe_forward, ...).
        path: the PNG to write.
        loss_label: the loss axis' label, e.g. "negative log-likelihood".
    """
    it = np.array([h["iteration"] for h in history])
    loss = np.array([h["loss"] for h in history], dtype=float)
    solved = any((h.get("nfe_forward") or 0) > 1 for h in history)
    fig = _new_figure(10 if solved else 5.5, 3.8)
    axes = np.atleast_1d(fig.subplots(1, 2 if solved else 1))
    ax_loss = axes[0]
    ax_loss.plot(it, loss, lw=0.6, alpha=0.4, label="train")
    window = max(1, len(loss) // 100)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(it[window - 1:], smooth, lw=1.5, color="C0",
                     label=f"train, mean of {window}")
    val = [(h["iteration"], h["val_loss"]) for h in history if "val_loss" in h]
    if val:
        ax_loss.plot(*zip(*val), "o-", ms=3, color="C1", label="validation")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel(loss_label)
    ax_loss.legend()
    if solved:
        ax_nfe = axes[1]
        for key, label in (("nfe_forward", "forward"), ("nfe_backward", "backward")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax_nfe.plot(it, values, lw=0.8, label=label)
        ax_nfe.set_xlabel("iteration")
        ax_nfe.set_ylabel("function evaluations")
        ax_nfe.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path, **kwargs) -> Path:
    """Write the figure to ``path`` atomically (its folder made if missing), in the format
    its suffix names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    atomic_write(path, lambda handle: fig.savefig(handle, **kwargs))
    return path


def plot_density(log_density: Callable[[np.ndarray], np.ndarray], path: str | Path, *,
                 xlim: Sequence[float], ylim: Sequence[float], resolution: int = 200,
                 title: str = "", ax_title: str | None = None) -> Path:
    r"""A heat map of :math:`p(x) = \exp(\log p(x))` on a regular grid over xlim × ylim
    (magma colormap, equal aspect, no ticks); writes a PNG.

    Arguments:
        log_density: maps points of shape (m, 2) to log p of shape (m,) (numpy), e.g.
            ``estimator.score_samples``.
        path: the PNG to write.
        xlim, ylim: the window, ``(low, high)`` each.
        resolution: grid points per axis (``resolution ** 2`` evaluations of log_density).
        title: a title over the figure.
        ax_title: a title over the heat map itself.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile, pathlib
        >>> from cnflow.plotting import plot_density
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "gauss.png"
        >>> plot_density(lambda p: -0.5 * (p ** 2).sum(1), out, xlim=(-3, 3), ylim=(-3, 3),
        ...              resolution=30).exists()
        True
    """
    xx, yy, dens = density_grid(log_density, xlim, ylim, resolution)
    fig = _new_figure(4.5, 4.8 if title else 4.5)
    ax = fig.subplots()
    _draw_density(ax, xx, yy, dens)
    if ax_title:
        ax.set_title(ax_title)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _draw_density(ax, xx: np.ndarray, yy: np.ndarray, dens: np.ndarray) -> None:
    ax.pcolormesh(xx, yy, dens, cmap="magma", shading="auto")
    ax.set_xlim(xx[0, 0], xx[0, -1])
    ax.set_ylim(yy[0, 0], yy[-1, 0])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _as_numpy(a) -> np.ndarray:
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=float)


def _check_trajectories(times, states) -> tuple[np.ndarray, np.ndarray]:
    times, states = _as_numpy(times), _as_numpy(states)
    if states.ndim != 3 or states.shape[2] != 2:
        raise ValueError(f"states must have shape (n_times, n_points, 2), got {states.shape}")
    if times.ndim != 1 or len(times) != len(states):
        raise ValueError(f"times must be 1-D with one entry per state, got {times.shape} for "
                         f"{len(states)} states")
    if states.shape[0] == 0 or states.shape[1] == 0:
        raise ValueError(f"states must hold at least one time and one point, got {states.shape}")
    check_finite_array(times, "times")
    check_finite_array(states, "states")
    return times, states


def _frame_limits(states: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """One window for every frame: the 0.1 % and 99.9 % quantiles over all of them, padded."""
    return _limits(states.reshape(-1, 2), pad=0.08)


def _draw_frame(ax, points: np.ndarray, t: float, xlim, ylim) -> None:
    ax.clear()
    if len(points) > 2000:
        bins = [np.linspace(*xlim, 100), np.linspace(*ylim, 100)]
        ax.hist2d(points[:, 0], points[:, 1], bins=bins, cmap="magma")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=2, c="k")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t = {t:.2f}", fontsize=9)


def plot_trajectories(times, states, path: str | Path, *,
                      density_frames: Sequence[Callable[[np.ndarray], np.ndarray] | None]
                      | None = None,
                      title: str = "", resolution: int = 100) -> Path:
    r"""A strip of panels, one per time: where the particles are at each time; writes a PNG.

    Panel i shows ``states[i]`` (a 2-D histogram, or a scatter for at most 2,000 points),
    titled "t = …"; all panels share one window, the 0.1 % to 99.9 % quantiles of the points
    over all frames, padded. For a CNF sampled by :meth:`cnflow.CNF.trajectory`, the first
    panel is the base :math:`z(T) \sim \mathcal{N}(0, I)` and the last the samples
    :math:`z(0)`.

    Arguments:
        times: shape (n_times,), e.g. from :meth:`cnflow.CNF.trajectory`.
        states: shape (n_times, n_points, 2) (numpy or torch).
        path: the PNG to write.
        density_frames: optionally, one log-density per time (points of shape (m, 2) to log
            p_t of shape (m,), or None to leave that panel empty), drawn as heat maps over the
            same window in a second row, e.g. the marginal density :math:`p_t` the particles
            should follow.
        title: a title over the strip.
        resolution: grid points per axis of the density heat maps.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: states not of shape (n_times, n_points, 2), times not one per state,
            non-finite values, or density_frames not one per time.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from cnflow.plotting import plot_trajectories
        >>> states = np.random.default_rng(0).normal(size=(3, 100, 2)) * [[[1]], [[2]], [[3]]]
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "strip.png"
        >>> plot_trajectories([1.0, 0.5, 0.0], states, out).exists()
        True
    """
    times, states = _check_trajectories(times, states)
    n_times = len(times)
    if density_frames is not None:
        density_frames = list(density_frames)
        if len(density_frames) != n_times:
            raise ValueError(f"density_frames must hold one log-density (or None) per time, "
                             f"got {len(density_frames)} for {n_times} times")
    xlim, ylim = _frame_limits(states)
    rows = 1 if density_frames is None else 2
    fig = _new_figure(2.0 * n_times, 2.1 * rows + (0.3 if title else 0.0))
    axes = np.asarray(fig.subplots(rows, n_times, squeeze=False))
    for ax, t, points in zip(axes[0], times, states, strict=True):
        _draw_frame(ax, points, t, xlim, ylim)
    if density_frames is not None:
        for ax, log_density in zip(axes[1], density_frames, strict=True):
            if log_density is None:
                ax.set_axis_off()
            else:
                _draw_density(ax, *density_grid(log_density, xlim, ylim, resolution))
        axes[1, 0].set_ylabel("density", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def animate_trajectories(times, states, path: str | Path, *, fps: int = 8,
                         title: str = "", hold_frames: int = 8) -> Path:
    """An animated GIF of the particles moving through the times (matplotlib's FuncAnimation
    with the Pillow writer; no pyplot), pausing on the last frame for ``hold_frames`` frames.

    The frames are the panels of :func:`plot_trajectories`, with the same shared window.
    Pillow stores identical consecutive frames once, with their durations added, so the file
    holds ``n_times`` frames, the last shown ``hold_frames + 1`` times as long.

    Arguments:
        times, states: as for :func:`plot_trajectories`.
        path: the GIF to write (must end in .gif).
        fps: frames per second, a positive integer.
        title: a title over the frames.
        hold_frames: repeats of the last frame, so the loop rests on the result (≥ 0).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a path not ending in .gif, fps or hold_frames out of range, or times and
            states as :func:`plot_trajectories` rejects them.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from cnflow.plotting import animate_trajectories
        >>> states = np.random.default_rng(0).normal(size=(3, 100, 2)) * [[[1]], [[2]], [[3]]]
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "flow.gif"
        >>> animate_trajectories([1.0, 0.5, 0.0], states, out, hold_frames=2).exists()
        True
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    if Path(path).suffix.lower() != ".gif":
        raise ValueError(f"animate_trajectories writes a .gif, got {path}")
    fps = check_positive_int(fps, "fps")
    hold_frames = check_nonnegative_int(hold_frames, "hold_frames")
    times, states = _check_trajectories(times, states)
    xlim, ylim = _frame_limits(states)
    fig = _new_figure(4.0, 4.2)
    ax = fig.subplots()
    order = list(range(len(times))) + [len(times) - 1] * hold_frames
    if title:
        fig.suptitle(title, fontsize=10)

    def draw(i: int):
        _draw_frame(ax, states[order[i]], times[order[i]], xlim, ylim)
        return ()

    animation = FuncAnimation(fig, draw, frames=len(order), blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    animation.save(path, writer=PillowWriter(fps=fps), dpi=70)
    return path


def plot_image_grid(images: np.ndarray, path: str | Path, *, levels: int,
                    columns: int = 8, title: str | None = None) -> Path:
    """A grid of integer images (n, C, H, W) (one channel in grey, three as RGB), written
    atomically to ``path``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, 1 or 3, H, W), got {images.shape}")
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = _new_figure(columns * 0.9, rows * 0.9 + (0.3 if title else 0))
    for k in range(rows * columns):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        image = images[k].astype(np.float64) / (levels - 1)
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
        else:
            ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=100)
