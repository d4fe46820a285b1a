"""Command line: ``python -m cnflow {train,sample,score,plot} ...`` (also ``cnflow ...``).

- ``train [DATA]`` fits a :class:`cnflow.CNFDensity` to a built-in toy density (by name) or
  to a .npy/.csv file of rows, then writes the model (``model.pt``), a picture of data,
  samples and learned density (``fit.png``, 2-D data), training curves (``training.png``)
  and a summary (``summary.json``) to ``--out``.
- ``sample MODEL --n N --out FILE`` draws rows from a saved model into a .npy/.csv file.
- ``score MODEL DATA [--out FILE]`` prints the mean log-likelihood of a file's rows and can
  write each row's log-density.
- ``plot MODEL [--data DATA] [--out FILE]`` draws samples and the learned density (2-D).

Saved models of :class:`cnflow.CNFDensity` and :class:`cnflow.PlanarFlowDensity` are both
read. Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .datasets import TOY_DATASETS, make_toy
from .estimators import OBJECTIVES, CNFDensity, PlanarFlowDensity

_ESTIMATORS = {cls.__name__: cls for cls in (CNFDensity, PlanarFlowDensity)}


class CLIError(Exception):
    """A user mistake, reported as one line with exit code 2."""


def load_rows(source: str, n_samples: int, seed: int) -> np.ndarray:
    """A toy name → generated rows; a .npy/.csv path → its rows (2-D, finite)."""
    if source in TOY_DATASETS:
        return make_toy(source, n_samples, random_state=seed)
    path = Path(source)
    if path.suffix not in (".npy", ".csv"):
        raise CLIError(f"{source!r} is neither a toy dataset ({', '.join(TOY_DATASETS)}) nor "
                       "a .npy/.csv file")
    if not path.is_file():
        raise CLIError(f"no such file: {source}")
    try:
        X = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as err:
        raise CLIError(f"could not read {source}: {err}") from err
    if X.ndim != 2:
        raise CLIError(f"{source} must hold a 2-D array (rows × features), got shape {X.shape}")
    return np.asarray(X, dtype=np.float64)


def cmd_train(args: argparse.Namespace) -> None:
    from .plotting import plot_fit, plot_training_curves

    X = load_rows(args.data, args.n_samples, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    given = {"objective": args.objective, "max_iter": args.max_iter,
             "batch_size": args.batch_size, "lr": args.lr, "rtol": args.tol, "atol": args.tol,
             "hidden": None if args.hidden is None else tuple(args.hidden)}
    est = CNFDensity(device=args.device, random_state=args.seed, verbose=not args.quiet,
                     **{k: v for k, v in given.items() if v is not None})
    print(f"training CNFDensity on {args.data}: {X.shape[0]} rows × {X.shape[1]} features, "
          f"{est._train_settings()['max_iter']} iterations of {est.objective} on {args.device}")
    start = time.perf_counter()
    est.fit(X)
    seconds = time.perf_counter() - start
    est.save(out / "model.pt")
    summary = {"data": args.data, "objective": est.objective, "n_rows": int(X.shape[0]),
               "iterations": est.n_iter_, "seconds": seconds,
               "train_mean_log_likelihood": est.score(X[:20000])}
    if args.data in TOY_DATASETS:
        X_test = make_toy(args.data, 20000, random_state=args.seed + 1)
        summary["test_nll"] = -est.score(X_test)
    plot_training_curves(est.history_, out / "training.png",
                         loss_label=("flow-matching loss" if est.objective == "flow_matching"
                                     else "negative log-likelihood + penalties"))
    if X.shape[1] == 2:
        samples = est.sample(20000, random_state=args.seed)
        plot_fit(X, samples, est.score_samples, out / "fit.png",
                 title=f"CNFDensity on {args.data}: {est.n_iter_} iterations, {seconds:.0f} s")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'model.pt'}, {out / 'training.png'}"
          + (f", {out / 'fit.png'}" if X.shape[1] == 2 else ""))


def load_model(path: str):
    """A saved CNFDensity or PlanarFlowDensity, or a CLIError saying why not."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"no such model file: {path}")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
        cls = _ESTIMATORS[data["estimator"]]
    except Exception as err:  # any unreadable or foreign file
        raise CLIError(f"{path} is not a cnflow model file ({type(err).__name__})") from err
    return cls.load(file)


def check_output_suffix(path: str) -> Path:
    file = Path(path)
    if file.suffix not in (".npy", ".csv"):
        raise CLIError(f"the output file must end in .npy or .csv, got {path!r}")
    return file


def write_rows(path: str, rows: np.ndarray) -> Path:
    """Write an array to .npy or .csv, by the file's suffix."""
    file = check_output_suffix(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.suffix == ".npy":
        np.save(file, rows)
    else:
        np.savetxt(file, rows.reshape(len(rows), -1), delimiter=",")
    return file


def check_width(X: np.ndarray, est, source: str) -> None:
    if X.shape[1] != est.n_features_in_:
        raise CLIError(f"{source} has {X.shape[1]} columns but the model was fitted on "
                       f"{est.n_features_in_} features")


def cmd_sample(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise CLIError(f"--n must be a positive integer, got {args.n}")
    check_output_suffix(args.out)  # fail before the (slow) sampling
    est = load_model(args.model)
    rows = est.sample(args.n, random_state=args.seed)
    file = write_rows(args.out, rows)
    print(f"wrote {args.n} samples × {rows.shape[1]} features to {file}")


def cmd_score(args: argparse.Namespace) -> None:
    if args.out:
        check_output_suffix(args.out)
    est = load_model(args.model)
    X = load_rows(args.data, args.n_samples, args.seed)
    check_width(X, est, args.data)
    log_density = est.score_samples(X)
    print(f"mean log-likelihood {log_density.mean():.6f} over {len(X)} rows of {args.data}")
    if args.out:
        print(f"wrote per-row log-densities to {write_rows(args.out, log_density)}")


def cmd_plot(args: argparse.Namespace) -> None:
    from .plotting import plot_fit

    est = load_model(args.model)
    if est.n_features_in_ != 2:
        raise CLIError(f"plot draws 2-D densities; the model has {est.n_features_in_} "
                       "features")
    samples = est.sample(args.n_samples, random_state=args.seed)
    if args.data:
        X = load_rows(args.data, args.n_samples, args.seed)
        check_width(X, est, args.data)
        title = f"{type(est).__name__}: {Path(args.model).name} against {args.data}"
    else:
        X = est.sample(args.n_samples, random_state=args.seed + 1)
        title = f"{type(est).__name__}: {Path(args.model).name} (no data: model samples)"
    out = Path(args.out) if args.out else Path(args.model).parent / "plot.png"
    plot_fit(X, samples, est.score_samples, out, title=title)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cnflow",
                                     description="Continuous normalizing flows on PyTorch.")
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
                   help="training iterations (default: 60000 with flow matching, 1000 with "
                        "maximum likelihood)")
    p.add_argument("--batch-size", type=int, help="rows per iteration (default: 512)")
    p.add_argument("--lr", type=float,
                   help="Adam's learning rate (default: 1e-2 with flow matching, 5e-3 with "
                        "maximum likelihood)")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden widths (default: 64 64 64)")
    p.add_argument("--tol", type=float, help="rtol = atol of the ODE solver (default: 1e-5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw rows from a saved model into a .npy/.csv file",
                       description="Draw rows from a saved model (model.pt).")
    p.add_argument("model", help="a model file written by train (or .save)")
    p.add_argument("--n", type=int, default=1000, help="number of rows (default: 1000)")
    p.add_argument("--out", required=True, help="the .npy or .csv file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("score", help="log-likelihood of a file's rows under a saved model",
                       description="Print the mean log-likelihood of DATA's rows; with --out "
                                   "write each row's log-density.")
    p.add_argument("model", help="a model file written by train (or .save)")
    p.add_argument("data", help="a .npy/.csv file of rows, or a toy name (fresh draws)")
    p.add_argument("--out", help="a .npy or .csv file for the per-row log-densities")
    p.add_argument("--n-samples", type=int, default=20000, help="rows drawn for a toy name")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("plot", help="picture of a saved 2-D model: samples and density",
                       description="Draw data (or model samples), samples and the learned "
                                   "density side by side.")
    p.add_argument("model", help="a model file written by train (or .save)")
    p.add_argument("--data", help="a .npy/.csv file or toy name to show beside the model")
    p.add_argument("--out", help="the PNG to write (default: plot.png beside the model)")
    p.add_argument("--n-samples", type=int, default=20000, help="samples to draw")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
