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
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from scipy.ndimage import gaussian_filter

from .checks import check_finite_array, check_int, check_nonnegative_int, check_positive_int
from .files import atomic_write

__all__ = ["density_grid", "plot_density", "plot_fit", "plot_training_curves",
           "plot_trajectories", "animate_trajectories", "plot_image_grid", "plot_pairs",
           "marginal_ks", "PAIR_PLOT_ROWS"]


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


# ---------------------------------------------------------------- pair plots

#: Rows of data and of samples drawn at most by :func:`plot_pairs` (a seeded subsample).
PAIR_PLOT_ROWS = 20_000
_SCATTER_ROWS = 1000              # fewer rows than this: points instead of 2-D histograms
_CONTOUR_MASS = (0.5, 0.8, 0.95)  # the samples' contours enclose these fractions of their mass
_SAMPLE_COLOUR = "#e66101"
_CELL = 1.8                       # inches per shown column


def _check_table(values, name: str) -> np.ndarray:
    try:
        table = _as_numpy(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers, got {type(values).__name__}"
                         ) from err
    if table.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {table.shape}")
    if table.shape[0] < 1 or table.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape "
                         f"{table.shape}")
    return check_finite_array(table, name)


def _check_pair_tables(data, samples) -> tuple[np.ndarray, np.ndarray]:
    data, samples = _check_table(data, "data"), _check_table(samples, "samples")
    if data.shape[1] != samples.shape[1]:
        raise ValueError(f"data and samples must have the same number of columns, got "
                         f"{data.shape[1]} and {samples.shape[1]}")
    return data, samples


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """sup_x |F_a(x) − F_b(x)| of two empirical CDFs; the supremum is reached at a data point,
    so both CDFs are evaluated (right-continuous) at every point of either sample."""
    a, b = np.sort(a), np.sort(b)
    pooled = np.concatenate([a, b])
    fa = np.searchsorted(a, pooled, side="right") / len(a)
    fb = np.searchsorted(b, pooled, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def marginal_ks(data, samples) -> np.ndarray:
    r"""The two-sample Kolmogorov–Smirnov statistic of each column: how far apart the
    marginal distributions of the data and of the model's samples are.

    For column j, with :math:`F_\text{data}` and :math:`F_\text{samples}` the empirical
    CDFs of that column,

    .. math::

        \text{KS}_j = \sup_x \left| F_\text{data}(x) - F_\text{samples}(x) \right|,

    between 0 (identical empirical marginals) and 1 (disjoint supports); computed exactly on
    all rows (the statistic of :func:`scipy.stats.ks_2samp`).

    Arguments:
        data: the data, shape (n, D), finite.
        samples: draws from the model, shape (m, D), finite; m may differ from n.

    Returns:
        The D statistics, shape (D,), in column order.

    Raises:
        ValueError: an array not 2-D or empty, non-finite values, or different numbers of
            columns.

    Example:
        >>> import numpy as np
        >>> from cnflow.plotting import marginal_ks
        >>> rng = np.random.default_rng(0)
        >>> data = rng.normal(size=(2000, 3))
        >>> ks = marginal_ks(data, data * [1.0, 1.0, 3.0])
        >>> int(ks.argmax())
        2
    """
    data, samples = _check_pair_tables(data, samples)
    return np.array([_ks_statistic(data[:, j], samples[:, j]) for j in range(data.shape[1])])


def _subsample(table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(table) <= PAIR_PLOT_ROWS:
        return table
    return table[np.sort(rng.choice(len(table), PAIR_PLOT_ROWS, replace=False))]


def _robust_range(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The 0.5 % and 99.5 % quantiles of both samples together, padded by 5 %."""
    lo, hi = np.quantile(np.concatenate([a, b]), [0.005, 0.995])
    if hi <= lo:  # a constant column: still a window around it
        half = 0.5 + 0.05 * abs(lo)
        return float(lo - half), float(hi + half)
    pad = 0.05 * (hi - lo)
    return float(lo - pad), float(hi + pad)


def _mass_levels(hist: np.ndarray) -> list[float]:
    """Heights of the contours of ``hist`` that enclose the fractions _CONTOUR_MASS of its
    mass (highest-density regions), increasing."""
    heights = np.sort(hist.ravel())[::-1]
    if heights.sum() <= 0:
        return []
    mass = np.cumsum(heights) / heights.sum()
    levels = [heights[min(np.searchsorted(mass, q), len(heights) - 1)] for q in _CONTOUR_MASS]
    return sorted({float(v) for v in levels if v > 0})


def _draw_pair(ax, x: np.ndarray, y: np.ndarray, sx: np.ndarray, sy: np.ndarray,
               xedges: np.ndarray, yedges: np.ndarray) -> None:
    if len(x) < _SCATTER_ROWS:
        ax.scatter(x, y, s=5, c="0.45", linewidths=0)
    else:
        hist, _, _ = np.histogram2d(x, y, bins=[xedges, yedges])
        ax.imshow(hist.T, origin="lower", extent=(xedges[0], xedges[-1], yedges[0], yedges[-1]),
                  aspect="auto", cmap="Greys", interpolation="nearest",
                  norm=PowerNorm(0.5, vmin=0, vmax=max(hist.max(), 1) * 1.2))
    if len(sx) < _SCATTER_ROWS:
        ax.scatter(sx, sy, s=5, c=_SAMPLE_COLOUR, linewidths=0, alpha=0.7)
    else:
        hist, _, _ = np.histogram2d(sx, sy, bins=[xedges, yedges])
        hist = gaussian_filter(hist, 1.0)
        levels = _mass_levels(hist)
        if levels:
            centres = (xedges[:-1] + xedges[1:]) / 2, (yedges[:-1] + yedges[1:]) / 2
            ax.contour(*centres, hist.T, levels=levels, colors=_SAMPLE_COLOUR,
                       linewidths=0.8)


def _summary_text(shown: Sequence[int], names: Sequence[str], width_in: float,
                  fontsize: float, max_lines: int = 5) -> str:
    """"showing the k of D columns with the worst marginal fit …; the others: …", wrapped to
    ``width_in`` inches, the list of the others cut short to fit ``max_lines`` lines."""
    import textwrap

    chars = max(30, int(width_in / (0.62 * fontsize / 72)))
    others = [names[j] for j in range(len(names)) if j not in set(shown)]
    head = (f"showing the {len(shown)} of {len(names)} columns with the worst marginal fit "
            f"(KS statistic); the others: ")
    for keep in range(len(others), -1, -1):
        rest = "" if keep == len(others) else f", … and {len(others) - keep} more"
        text = textwrap.fill(head + ", ".join(others[:keep]) + rest, chars)
        if text.count("\n") < max_lines:
            return text
    return textwrap.fill(head + f"{len(others)} columns", chars)


def _draw_ks_bars(ax, ks: np.ndarray, shown: Sequence[int], names: Sequence[str],
                  height_in: float) -> None:
    order = np.argsort(-ks, kind="stable")
    shown_set = set(shown)
    colours = [_SAMPLE_COLOUR if j in shown_set else "0.6" for j in order]
    ax.barh(np.arange(len(order)), ks[order], color=colours, height=0.8)
    ax.invert_yaxis()
    bar_points = 72 * height_in / len(order)
    fontsize = min(7.0, 0.85 * bar_points)
    if fontsize >= 4:
        ax.set_yticks(np.arange(len(order)), [names[j] for j in order], fontsize=fontsize)
    else:  # too many columns to name each: name the shown ones
        rows = [r for r, j in enumerate(order) if j in shown_set]
        ax.set_yticks(rows, [names[order[r]] for r in rows], fontsize=6)
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlim(0, max(float(ks.max()), 1e-3) * 1.05)
    ax.set_xlabel("KS statistic, all columns (shown ones coloured)", fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)


def plot_pairs(data, samples, path: str | Path | None = None, *,
               names: Sequence[str] | None = None, max_columns: int = 8, bins: int = 40,
               title: str | None = None, sample_label: str = "model samples",
               data_label: str = "data") -> Figure:
    r"""A corner plot of data against a model's samples, for any number of columns.

    For the shown columns (all of them when D ≤ ``max_columns``, in their order):

    - on the diagonal, each column's marginal: a density-normalised histogram of the data
      (filled, grey) and of the samples (a coloured outline), on shared bins;
    - below it, each pair (row i, column j): the data's 2-D histogram as a grey image, and the
      samples' 2-D histogram (smoothed by one bin) as contour lines enclosing 50 %, 80 % and
      95 % of its mass; a table of fewer than 1,000 rows is drawn as points instead;
    - above it, a legend; the axes are off.

    Each column's window is the 0.5 % to 99.5 % quantiles of data and samples together,
    padded by 5 %, so that a few outliers do not squash the picture. Column names label the
    bottom row and the left column only.

    When D > ``max_columns``, the ``max_columns`` columns with the worst marginal fit are
    shown, worst first (ties in column order), as measured by the two-sample
    Kolmogorov–Smirnov statistic of each column (:func:`marginal_ks`),

    .. math::

        \text{KS}_j = \sup_x \left| F_\text{data}(x) - F_\text{samples}(x) \right|,

    with :math:`F` the empirical CDFs of column j; a line over the grid says so and names the
    others, and a bar chart in the upper triangle gives the statistic of every column.

    The statistics are computed on all rows; the pictures draw at most
    :data:`PAIR_PLOT_ROWS` rows of each table (a subsample seeded with 0, so repeatable).

    Arguments:
        data: the data, shape (n, D) (numpy, torch or nested lists), finite.
        samples: draws from the model, shape (m, D), finite; m may differ from n.
        path: when given, the figure is also written there (PNG unless the suffix names
            another format), atomically.
        names: the D column names (default: a data frame's columns, else ``x0`` …
            ``x{D-1}``).
        max_columns: the most columns shown, a positive integer.
        bins: histogram bins per column (at most; fewer when the tables are small:
            ``max(8, 2√rows)`` of the smaller table).
        title: a title over the figure.
        sample_label, data_label: the legend's names of the two tables.

    Returns:
        The :class:`~matplotlib.figure.Figure` (no pyplot). It carries ``ks_statistics``,
        the KS statistic of every column, shape (D,), and ``shown_columns``, the indices of
        the columns drawn, in the order drawn.

    Raises:
        ValueError: data or samples not 2-D, empty or with NaN or infinite values, different
            numbers of columns, names not one per column, max_columns or bins out of range.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from cnflow.plotting import plot_pairs
        >>> rng = np.random.default_rng(0)
        >>> data = rng.normal(size=(2000, 12))
        >>> samples = rng.normal(size=(2000, 12)) * np.r_[np.ones(10), 2.0, 3.0]
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "pairs.png"
        >>> fig = plot_pairs(data, samples, out, max_columns=4)
        >>> fig.shown_columns[:2], out.exists()
        ((11, 10), True)
    """
    if names is None and hasattr(data, "columns"):  # a data frame names its columns
        names = [str(c) for c in data.columns]
    data, samples = _check_pair_tables(data, samples)
    width = data.shape[1]
    names = [f"x{j}" for j in range(width)] if names is None else names
    if isinstance(names, (str, bytes)) or len(names) != width:
        got = "a string" if isinstance(names, (str, bytes)) else f"{len(names)} names"
        raise ValueError(f"names must hold one name per column ({width}), got {got}")
    names = [str(name) for name in names]
    max_columns = check_positive_int(max_columns, "max_columns")
    bins = check_int(bins, "bins", 1)

    ks = marginal_ks(data, samples)
    dropped = width > max_columns
    shown = tuple(int(j) for j in np.argsort(-ks, kind="stable")[:max_columns]) if dropped \
        else tuple(range(width))
    rng = np.random.default_rng(0)
    drawn_data, drawn_samples = _subsample(data, rng), _subsample(samples, rng)
    bins = min(bins, max(8, int(2 * np.sqrt(min(len(drawn_data), len(drawn_samples))))))

    k = len(shown)
    side = dropped and k < 4          # too little upper triangle: the bar chart to the right
    extra = 3 if side else 0
    text_size = 8
    fig_width = _CELL * (k + extra) + 1.0
    text = _summary_text(shown, names, fig_width - 0.6, text_size) if dropped else ""
    title_in = 0.15 + (0.35 if title else 0.0)
    text_in = 0.15 * (text.count("\n") + 1) + 0.1 if text else 0.0
    legend_in = 0.45 if k == 1 else 0.0   # one panel: the legend goes over it
    top_in = title_in + text_in + legend_in
    fig_height = _CELL * k + 0.75 + top_in
    fig = _new_figure(fig_width, fig_height)
    grid = fig.add_gridspec(k, k + extra, left=0.75 / fig_width, right=1 - 0.25 / fig_width,
                            bottom=0.75 / fig_height, top=1 - top_in / fig_height,
                            wspace=0.08, hspace=0.08)
    ranges = [_robust_range(drawn_data[:, j], drawn_samples[:, j]) for j in shown]
    edges = [np.linspace(lo, hi, bins + 1) for lo, hi in ranges]

    for row, i in enumerate(shown):
        for col, j in enumerate(shown[:row + 1]):
            ax = fig.add_subplot(grid[row, col])
            if row == col:
                ax.set_label(f"diagonal {names[j]}")
                ax.hist(drawn_data[:, j], bins=edges[col], density=True,
                        histtype="stepfilled", color="0.75")
                ax.hist(drawn_samples[:, j], bins=edges[col], density=True, histtype="step",
                        color=_SAMPLE_COLOUR, linewidth=1.2)
                ax.set_yticks([])
            else:
                ax.set_label(f"pair {names[i]} {names[j]}")
                _draw_pair(ax, drawn_data[:, j], drawn_data[:, i], drawn_samples[:, j],
                           drawn_samples[:, i], edges[col], edges[row])
                ax.set_ylim(*ranges[row])
                if col == 0:
                    ax.set_ylabel(names[i], fontsize=8)
                else:
                    ax.tick_params(labelleft=False)
            ax.set_xlim(*ranges[col])
            ax.tick_params(labelsize=6.5, length=2.5)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            if row != col:
                ax.yaxis.set_major_locator(MaxNLocator(3))
            if row == k - 1:
                ax.set_xlabel(names[j], fontsize=8)
            else:
                ax.tick_params(labelbottom=False)

    _add_pair_legend(fig, grid, k, dropped, side, data, samples, drawn_data, drawn_samples,
                     data_label, sample_label, 1 - (title_in + text_in) / fig_height)
    if dropped:
        rows = k if side else (k - 1) // 2
        bars = fig.add_subplot(grid[0:rows, k + 1:] if side else grid[0:rows, rows + 1:k])
        bars.set_label("ks bars")
        _draw_ks_bars(bars, ks, shown, names, _CELL * rows)
        fig.text(0.3 / fig_width, 1 - title_in / fig_height, text, fontsize=text_size,
                 va="top", ha="left")
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / fig_height, va="top")
    fig.ks_statistics = ks
    fig.shown_columns = shown
    if path is not None:
        _save(fig, path, dpi=100)
    return fig


def _add_pair_legend(fig: Figure, grid, k: int, dropped: bool, side: bool, data, samples,
                     drawn_data, drawn_samples, data_label: str, sample_label: str,
                     top: float) -> None:
    """The legend, in an empty cell of the upper triangle (over the only panel, its top at
    ``top`` in figure coordinates, when k = 1)."""
    def rows(full, drawn) -> str:
        return f"{len(full):,} rows" if len(full) == len(drawn) else \
            f"{len(drawn):,} of {len(full):,} rows"

    handles = [Patch(color="0.75", label=f"{data_label} ({rows(data, drawn_data)})"),
               Line2D([], [], color=_SAMPLE_COLOUR,
                      label=f"{sample_label} ({rows(samples, drawn_samples)})")]
    if k == 1:
        fig.legend(handles=handles, fontsize=7, loc="upper left", frameon=False,
                   bbox_to_anchor=(0.5 / fig.get_figwidth(), top))
        return
    if dropped and not side:
        row = (k - 1) // 2
        ax = fig.add_subplot(grid[row, row + 1:k])
    else:
        ax = fig.add_subplot(grid[0, 1:k])
    ax.set_label("legend")
    ax.set_axis_off()
    ax.legend(handles=handles, fontsize=8, loc="center" if dropped and not side
              else "upper right", frameon=False)
