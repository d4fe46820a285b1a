"""Command line: ``python -m cnflow {train,sample,score,plot} ...`` (also ``cnflow ...``).

- ``train [DATA]`` fits a :class:`cnflow.CNFDensity` to a built-in toy density (by name) or
  to a .npy/.csv file of rows, then writes the model (``model.pt``), a picture of data,
  samples and learned density (``fit.png``, 2-D data), training curves (``training.png``)
  and a summary (``summary.json``) to ``--out``. With ``--checkpoint PATH`` the fit writes
  its state there every ``--checkpoint-interval`` seconds, and the same command run again
  continues from it.
- ``sample MODEL --n N --out FILE [--seed S] [--log-prob]`` draws rows from a saved model
  into a .npy or .csv file (with ``--log-prob``, each row's log-density in a last column).
- ``train DATA --targets COLUMN ...`` fits a :class:`cnflow.ConditionalCNFDensity` of those
  columns given the others; its models take the features with ``--given FILE`` in ``sample``
  (N draws per row) and ``score`` (DATA then holds the targets).
- ``train-images FILE --levels L`` fits a :class:`cnflow.ImageCNFDensity` to the images of a
  .npy/.npz file and writes model.pt, samples.png and summary.json (bits/dim); ``sample``
  writes an image model's samples to .npy, ``score`` prints its bits/dim on a file's images.
- ``score MODEL DATA [--out FILE]`` prints the mean log-likelihood of DATA's rows (a .npy or
  .csv file, or a toy name) and can write each row's log-density (.npy or .csv).
- ``plot MODEL [--data DATA] [--out FILE.png] [--n-samples N]`` draws data (or, without
  ``--data``, the model's own samples), samples and the learned density of a 2-D model;
  by default into plot.png beside the model.

Saved models of :class:`cnflow.CNFDensity` and :class:`cnflow.PlanarFlowDensity` are both
read (the file's "estimator" entry names which), on the saved device or ``--device``.
User mistakes (a missing or foreign file, a wrong number of columns, an unknown dataset or
device, a bad suffix) are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .datasets import TOY_DATASETS, make_toy
from .estimators import (
    OBJECTIVES,
    CNFDensity,
    ConditionalCNFDensity,
    ImageCNFDensity,
    PlanarFlowDensity,
)
from .estimators.policy import resolve_fit_settings
from .files import atomic_write
from .training import resolve_device

_ESTIMATORS = {cls.__name__: cls
               for cls in (CNFDensity, ConditionalCNFDensity, ImageCNFDensity,
                           PlanarFlowDensity)}


class CLIError(Exception):
    """A user mistake, reported as one line with exit code 2."""


Estimator = CNFDensity | ConditionalCNFDensity | ImageCNFDensity | PlanarFlowDensity


def _read_array(path: Path) -> np.ndarray:
    """The array in a .npy file or the rows of a comma-separated .csv file."""
    if path.suffix == ".npy":
        return np.load(path)
    with warnings.catch_warnings():  # an empty file: reported below, not as a warning
        warnings.simplefilter("ignore")
        return np.loadtxt(path, delimiter=",", ndmin=2)


def load_rows(source: str, n_samples: int, seed: int) -> np.ndarray:
    """A toy name → generated rows; a .npy/.csv path → its rows (2-D, finite, not empty)."""
    if source in TOY_DATASETS:
        return make_toy(source, n_samples, random_state=seed)
    path = Path(source)
    if path.suffix not in (".npy", ".csv"):
        raise CLIError(f"{source!r} is neither a toy dataset ({', '.join(TOY_DATASETS)}) nor "
                       "a .npy/.csv file")
    if not path.is_file():
        raise CLIError(f"no such file: {source}")
    try:
        X = _read_array(path)
    except (ValueError, OSError, EOFError) as err:
        raise CLIError(f"could not read {source}: {err}") from err
    if X.ndim != 2:
        raise CLIError(f"{source} must hold a 2-D array (rows × features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise CLIError(f"{source} holds no rows")
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise CLIError(f"{source} holds NaN or infinite values")
    return X


def start_distributed(device: str) -> tuple[int, int, str]:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group: NCCL with one GPU per
    process (cuda:LOCAL_RANK) when CUDA is asked for or "auto" finds it, else gloo on CPU.

    Returns:
        (rank, world size, the device this process trains on); (0, 1, device) without torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def cmd_train(args: argparse.Namespace) -> None:
    """``train``: fit CNFDensity; write model.pt, training.png, fit.png (2-D), summary.json.

    Launched by ``torchrun --nproc_per_node=N -m cnflow train ...`` it trains data-parallel
    (each process a share of every batch, gradients averaged by DDP; see :mod:`cnflow.training`)
    and only rank 0 prints and writes files.
    """
    from .plotting import plot_fit, plot_training_curves

    check_positive(args.resolution, "--resolution")
    check_device(args.device)
    rank, world, device = start_distributed(args.device)
    X = load_rows(args.data, args.n_samples, args.seed)
    out = Path(args.out)
    given = {"objective": args.objective, "max_iter": args.max_iter,
             "batch_size": args.batch_size, "lr": args.lr, "rtol": args.tol, "atol": args.tol,
             "hidden": None if args.hidden is None else tuple(args.hidden),
             "max_seconds": args.max_seconds}
    if args.checkpoint is not None:
        given["checkpoint"] = check_writable(Path(args.checkpoint))
        given["checkpoint_interval"] = args.checkpoint_interval
    targets = None
    if args.targets is not None:
        targets = check_targets(args.targets, X.shape[1])
    kind = CNFDensity if targets is None else ConditionalCNFDensity
    est = kind(device=device, random_state=args.seed, verbose=not args.quiet and rank == 0,
               **{k: v for k, v in given.items() if v is not None})
    if rank == 0:
        check_writable(out, folder=True)  # before the (long) fit
        if args.checkpoint is not None and Path(args.checkpoint).exists():
            print(f"continuing from the checkpoint {args.checkpoint}")
        what = "" if targets is None else f" (p(columns {targets} | the others))"
        print(f"training {kind.__name__} on {args.data}{what}: {X.shape[0]} rows × "
              f"{X.shape[1]} columns, {planned_iterations(est, X)} iterations of "
              f"{est.objective} on {device}" + (f" ({world} processes)" if world > 1 else ""))
    start = time.perf_counter()
    if targets is None:
        est.fit(X)
    else:
        features = [j for j in range(X.shape[1]) if j not in targets]
        est.fit(X[:, features], X[:, targets])
    seconds = time.perf_counter() - start
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return
    est.save(out / "model.pt")
    summary = {"data": args.data, "objective": est.objective, "n_rows": int(X.shape[0]),
               "iterations": est.n_iter_, "seconds": seconds}
    plot_training_curves(est.history_, out / "training.png",
                         loss_label=("flow-matching loss" if est.objective == "flow_matching"
                                     else "negative log-likelihood + penalties"))
    if targets is not None:
        summary["targets"] = targets
        summary["train_mean_log_likelihood"] = est.score(X[:20000, features],
                                                         X[:20000, targets])
        _write_summary(out, summary)
        print(f"wrote {out / 'model.pt'}, {out / 'training.png'}")
        return
    summary["train_mean_log_likelihood"] = est.score(X[:20000])
    if args.data in TOY_DATASETS:
        X_test = make_toy(args.data, 20000, random_state=args.seed + 1)
        summary["test_nll"] = -est.score(X_test)
    if X.shape[1] == 2:
        samples = est.sample(20000, random_state=args.seed)
        plot_fit(X, samples, est.score_samples, out / "fit.png", resolution=args.resolution,
                 title=f"CNFDensity on {args.data}: {est.n_iter_} iterations, {seconds:.0f} s")
    _write_summary(out, summary)
    print(f"wrote {out / 'model.pt'}, {out / 'training.png'}"
          + (f", {out / 'fit.png'}" if X.shape[1] == 2 else ""))


def planned_iterations(est: CNFDensity, X: np.ndarray) -> int:
    """The training steps ``est`` will take on the rows X, by the fit policy."""
    return resolve_fit_settings(type(est).__name__, est.get_params(deep=False),
                                *X.shape).max_iter


def _write_summary(out: Path, summary: dict) -> None:
    atomic_write(out / "summary.json",
                 lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
    print(json.dumps(summary, indent=2))


def check_targets(columns: list[int], n_columns: int) -> list[int]:
    """The target columns of a conditional fit: distinct, in range, leaving a feature."""
    if len(set(columns)) != len(columns):
        raise CLIError(f"--targets lists a column twice: {columns}")
    if any(not 0 <= c < n_columns for c in columns):
        raise CLIError(f"--targets must be column indices from 0 to {n_columns - 1}, got "
                       f"{columns}")
    if len(columns) == n_columns:
        raise CLIError("--targets leaves no feature columns to condition on")
    return sorted(columns)


def cmd_train_images(args: argparse.Namespace) -> None:
    """``train-images``: fit ImageCNFDensity to the images of a .npy/.npz file; write
    model.pt, samples.png (a grid of samples) and summary.json (bits/dim)."""
    from .datasets import load_images
    from .estimators.image import check_images
    from .plotting import plot_image_grid

    check_device(args.device)
    out = check_writable(Path(args.out), folder=True)
    if not Path(args.data).is_file():
        raise CLIError(f"no such file: {args.data}")
    try:
        images = check_images(load_images(args.data, args.key), args.levels)
    except (ValueError, OSError) as err:
        raise CLIError(f"could not read images from {args.data}: {err}") from err
    given = {"n_scales": args.n_scales, "max_iter": args.max_iter,
             "max_seconds": args.max_seconds, "hidden": None if args.hidden is None
             else tuple(args.hidden)}
    if args.checkpoint is not None:
        given["checkpoint"] = check_writable(Path(args.checkpoint))
    est = ImageCNFDensity(levels=args.levels, device=args.device, random_state=args.seed,
                          verbose=not args.quiet,
                          **{k: v for k, v in given.items() if v is not None})
    print(f"training ImageCNFDensity on {args.data}: {len(images)} images of shape "
          f"{images.shape[1:]}, {args.levels} levels")
    start = time.perf_counter()
    est.fit(images)
    seconds = time.perf_counter() - start
    est.save(out / "model.pt")
    samples = est.sample(64, random_state=args.seed)
    plot_image_grid(samples, out / "samples.png", levels=args.levels,
                    title=f"ImageCNFDensity samples ({est.n_iter_} steps, {seconds:.0f} s)")
    summary = {"data": args.data, "images": int(len(images)), "shape": list(images.shape[1:]),
               "levels": args.levels, "iterations": est.n_iter_, "seconds": seconds,
               "train_bits_per_dim": est.bits_per_dim(images[:2000])}
    _write_summary(out, summary)
    print(f"wrote {out / 'model.pt'}, {out / 'samples.png'}")


def check_device(device) -> None:
    """A CLIError unless ``device`` ("auto", "cpu", "cuda:1", ...) names a device that this
    machine has."""
    import torch

    try:
        target = resolve_device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CLIError(f"unknown device {device!r}") from err
    if target.type == "cuda" and (not torch.cuda.is_available()
                                  or (target.index or 0) >= torch.cuda.device_count()):
        raise CLIError(f"device {str(target)!r} is not available on this machine; pass "
                       "--device cpu")


def load_model(path: str, device: str | None = None) -> Estimator:
    """A saved CNFDensity or PlanarFlowDensity (the file's "estimator" key names which), on
    ``device`` (None: as saved), or a CLIError saying why not."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"no such model file: {path}")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
        cls = _ESTIMATORS[data["estimator"]]
        saved_device = data["params"]["device"]
    except Exception as err:  # any unreadable or foreign file, garbage included
        raise CLIError(f"{path} is not a cnflow model file ({type(err).__name__})") from err
    check_device(saved_device if device is None else device)  # as saved, or given
    try:
        return cls.load(file, device=device)
    except Exception as err:  # a cnflow file with missing or mismatched parts
        raise CLIError(f"{path} is not a cnflow model file ({type(err).__name__})") from err


def check_suffix(path: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` as a Path, or a CLIError when it does not end in one of ``suffixes``."""
    file = Path(path)
    if file.suffix not in suffixes:
        raise CLIError(f"the output file must end in {' or '.join(suffixes)}, got {path!r}")
    return file


def check_writable(path: Path, folder: bool = False) -> Path:
    """``path`` (a file, or with ``folder`` a folder) once its folder exists and takes a new
    file; a CLIError saying why not (checked before any slow work, so nothing computed is
    lost)."""
    where = path if folder else path.parent
    try:
        if not folder and path.is_dir():
            raise CLIError(f"cannot write {path}: it is a folder")
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=where, prefix=".cnflow-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CLIError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def write_rows(path: str, rows: np.ndarray) -> Path:
    """Write an array to .npy or .csv, by the file's suffix (1-D arrays: one value a line),
    atomically."""
    file = check_writable(check_suffix(path, (".npy", ".csv")))
    if file.suffix == ".npy":
        atomic_write(file, lambda handle: np.save(handle, rows))
    else:
        atomic_write(file, lambda handle: np.savetxt(
            handle, rows.reshape(len(rows), -1), delimiter=",", fmt="%.17g"))
    return file


def check_width(X: np.ndarray, est: Estimator, source: str) -> None:
    """A CLIError unless X has as many columns as the model has features."""
    if X.shape[1] != est.n_features_in_:
        raise CLIError(f"{source} has {X.shape[1]} columns but the model was fitted on "
                       f"{est.n_features_in_} features")


def check_positive(value: int, option: str) -> None:
    """A CLIError unless an integer option is at least 1."""
    if value < 1:
        raise CLIError(f"{option} must be a positive integer, got {value}")


def _features_given(args: argparse.Namespace, est: Estimator) -> np.ndarray | None:
    """The --given rows of a conditional model (a CLIError if missing or of the wrong
    width); None for an unconditional one (where --given is an error)."""
    conditional = isinstance(est, ConditionalCNFDensity)
    if not conditional:
        if args.given is not None:
            raise CLIError(f"{args.model} holds an unconditional model; --given is for "
                           "conditional ones")
        return None
    if args.given is None:
        raise CLIError(f"{args.model} holds a conditional model p(y | x): pass the features "
                       "x with --given FILE")
    X = load_rows(args.given, 1, args.seed)
    check_width(X, est, args.given)
    return X


def cmd_sample(args: argparse.Namespace) -> None:
    """``sample``: draw ``--n`` rows from a saved model into a .npy/.csv file (a conditional
    model: ``--n`` per row of ``--given``); ``--log-prob`` appends each draw's
    log-density as a last column."""
    check_positive(args.n, "--n")
    check_writable(check_suffix(args.out, (".npy", ".csv")))  # before the (slow) sampling
    est = load_model(args.model, args.device)
    if isinstance(est, ImageCNFDensity):
        images = est.sample(args.n, random_state=args.seed)
        file = check_suffix(args.out, (".npy", ".csv"))
        if file.suffix != ".npy":
            raise CLIError("images are written to .npy files")
        atomic_write(file, lambda handle: np.save(handle, images))
        print(f"wrote {args.n} images of shape {images.shape[1:]} to {file}")
        return
    given = _features_given(args, est)
    if given is None:
        drawn = est.sample(args.n, random_state=args.seed, return_log_prob=args.log_prob)
        rows, log_p = drawn if args.log_prob else (drawn, None)
        what = f"{args.n} samples × {rows.shape[1]} features"
    else:
        drawn = est.sample(given, n_samples=args.n, random_state=args.seed,
                           return_log_prob=args.log_prob)
        rows, log_p = drawn if args.log_prob else (drawn, None)
        rows = rows.reshape(len(given) * args.n, est.n_targets_)
        log_p = None if log_p is None else log_p.reshape(-1)
        what = (f"{args.n} draws of {est.n_targets_} targets for each of {len(given)} rows "
                f"of {args.given} (row by row)")
    if log_p is not None:
        rows = np.concatenate([rows, log_p[:, None]], axis=1)
        what += ", log-density in the last column"
    file = write_rows(args.out, rows)
    print(f"wrote {what} to {file}")


def _score_images(args: argparse.Namespace, est: ImageCNFDensity) -> None:
    """``score`` for an image model: bits/dim of a .npy/.npz file's images."""
    from .datasets import load_images

    try:
        images = load_images(args.data)
        log_density = est.score_samples(images)
    except (ValueError, OSError) as err:
        raise CLIError(f"could not score images from {args.data}: {err}") from err
    bits = -log_density.mean() / (math.prod(est.shape_) * math.log(2))
    print(f"mean log-likelihood bound {log_density.mean():.6f} nats per image, {bits:.4f} "
          f"bits/dim over {len(images)} images of {args.data}")
    if args.out:
        print(f"wrote per-image log-densities to {write_rows(args.out, log_density)}")


def cmd_score(args: argparse.Namespace) -> None:
    """``score``: print the mean log-likelihood of DATA's rows; ``--out``: each row's. A
    conditional model scores the targets in DATA given the features in ``--given``."""
    if args.out:
        check_writable(check_suffix(args.out, (".npy", ".csv")))
    est = load_model(args.model, args.device)
    if isinstance(est, ImageCNFDensity):
        _score_images(args, est)
        return
    given = _features_given(args, est)
    X = load_rows(args.data, args.n_samples, args.seed)
    if given is None:
        check_width(X, est, args.data)
        log_density = est.score_samples(X)
    else:
        if X.shape[1] != est.n_targets_ or len(X) != len(given):
            raise CLIError(f"{args.data} must hold {len(given)} rows of {est.n_targets_} "
                           f"targets, one per row of {args.given}; got shape {X.shape}")
        log_density = est.score_samples(given, X)
    print(f"mean log-likelihood {log_density.mean():.6f} over {len(X)} rows of {args.data}")
    if args.out:
        print(f"wrote per-row log-densities to {write_rows(args.out, log_density)}")


def cmd_plot(args: argparse.Namespace) -> None:
    """``plot``: data (or the model's samples), samples and the learned density of a 2-D
    model, side by side in a PNG."""
    from .plotting import plot_fit

    check_positive(args.n_samples, "--n-samples")
    check_positive(args.resolution, "--resolution")
    out = check_suffix(args.out, (".png",)) if args.out else Path(args.model).parent / "plot.png"
    check_writable(out)
    est = load_model(args.model, args.device)
    if isinstance(est, ConditionalCNFDensity):
        raise CLIError("plot draws unconditional 2-D densities; this model is conditional")
    if est.n_features_in_ != 2:
        raise CLIError(f"plot draws 2-D densities; the model has {est.n_features_in_} "
                       "features")
    name = f"{type(est).__name__}: {Path(args.model).name}"
    X = None
    if args.data:  # read and checked before the (slow) sampling
        X = load_rows(args.data, args.n_samples, args.seed)
        check_width(X, est, args.data)
    samples = est.sample(args.n_samples, random_state=args.seed)
    title = f"{name} against {args.data}" if args.data else f"{name} (no data: model samples)"
    plot_fit(samples if X is None else X, samples, est.score_samples, out, title=title,
             resolution=args.resolution)
    print(f"wrote {out}")


DEVICE_HELP = "where to run the model: cpu, cuda, cuda:1, auto (default: as saved)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cnflow`` and its four subcommands."""
    parser = argparse.ArgumentParser(prog="python -m cnflow",
                                     description="Continuous normalizing flows on PyTorch.")
    parser.add_argument("--version", action="version", version=f"cnflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fit a CNF density to a toy density or a file",
                       description="Fit CNFDensity and write model.pt, fit.png, training.png.")
    p.add_argument("data", nargs="?", default="checkerboard",
                   help=f"a toy name ({', '.join(TOY_DATASETS)}) or a .npy/.csv file "
                        "(default: checkerboard)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--n-samples", type=int, default=50000, help="rows drawn from a toy density")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="training objective (default: flow_matching)")
    p.add_argument("--max-iter", type=int,
                   help="training iterations (default: 20000 with flow matching, 1000 with "
                        "maximum likelihood)")
    p.add_argument("--batch-size", type=int, help="rows per iteration (default: 2048 for flow "
                   "matching, 4096 with --targets, 512 for maximum likelihood)")
    p.add_argument("--lr", type=float,
                   help="Adam's learning rate (default: 1e-2 with flow matching, 5e-3 with "
                        "maximum likelihood)")
    p.add_argument("--hidden", type=int, nargs="+",
                   help="hidden widths (default: 64 64 64 64 64 with flow matching, 64 64 64 "
                        "with maximum likelihood)")
    p.add_argument("--tol", type=float, help="rtol = atol of the ODE solver (default: 1e-5)")
    p.add_argument("--max-seconds", type=float,
                   help="time budget of the fit in seconds (default: none)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, ... or auto: CUDA when available (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=200,
                   help="density grid points per axis in fit.png (default: 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="write the fit's state to PATH while training; the same command run "
                        "again continues from it (e.g. after the job was killed)")
    p.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between checkpoints (default: 60)")
    p.add_argument("--targets", type=int, nargs="+", metavar="COLUMN",
                   help="fit the conditional density of these columns (0-based) given the "
                        "others (ConditionalCNFDensity)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-images", help="fit an image CNF to the images of a .npy/.npz "
                       "file", description="Fit ImageCNFDensity and write model.pt, "
                       "samples.png, summary.json (bits/dim).")
    p.add_argument("data", help="a .npy file of images (n, C, H, W) or (n, H, W), or a .npz "
                   "file (see --key)")
    p.add_argument("--key", help="the array's name in a .npz file (default: its only array, "
                   "or x_train, images or x)")
    p.add_argument("--levels", type=int, default=256, help="pixel values (default: 256)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--n-scales", type=int, help="scales of the flow (default: 1)")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden channels (default: 64 64 64)")
    p.add_argument("--max-iter", type=int,
                   help="flow-matching steps per scale (default: 30000)")
    p.add_argument("--max-seconds", type=float, help="time budget of the fit")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="write the fit's state to PATH; the same command continues from it")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, ... or auto: CUDA when available (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_images)

    p = sub.add_parser("sample", help="draw rows from a saved model into a .npy/.csv file",
                       description="Draw rows from a saved model (model.pt).")
    p.add_argument("model", help="a model file written by train (or .save)")
    p.add_argument("--n", type=int, default=1000, help="number of rows (default: 1000)")
    p.add_argument("--out", required=True, help="the .npy or .csv file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--log-prob", action="store_true",
                   help="append each draw's log-density as a last column")
    p.add_argument("--given", metavar="FILE",
                   help="a conditional model's features x (a .npy/.csv file): --n draws of y "
                        "for each row")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("score", help="log-likelihood of a file's rows under a saved model",
                       description="Print the mean log-likelihood of DATA's rows; with --out "
                                   "write each row's log-density.")
    p.add_argument("model", help="a model file written by train (or .save)")
    p.add_argument("data", help="a .npy/.csv file of rows, or a toy name (fresh draws)")
    p.add_argument("--out", help="a .npy or .csv file for the per-row log-densities")
    p.add_argument("--n-samples", type=int, default=20000, help="rows drawn for a toy name")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--given", metavar="FILE",
                   help="a conditional model's features x, one row per row of DATA (the "
                        "targets y)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("plot", help="picture of a saved 2-D model: samples and density",
                       description="Draw data (or model samples), samples and the learned "
                                   "density side by side.")
    p.add_argument("model", help="a model file written by train (or .save)")
    p.add_argument("--data", help="a .npy/.csv file or toy name to show beside the model")
    p.add_argument("--out", help="the PNG to write (default: plot.png beside the model)")
    p.add_argument("--n-samples", type=int, default=20000,
                   help="samples to draw (and rows drawn for a toy name; default: 20000)")
    p.add_argument("--resolution", type=int, default=200,
                   help="density grid points per axis (default: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user mistakes print one line on stderr and return 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused a read or a write
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
