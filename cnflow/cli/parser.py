"""The argument parser of ``python -m cnflow`` and its five subcommands: train, train-images,
sample, score and plot, each bound (``func``) to its module's ``run``."""

from __future__ import annotations

import argparse

from .. import __version__
from ..datasets import TOY_DATASETS
from ..estimators import OBJECTIVES
from ..estimators.policy import POLICIES
from ..nn import FIELDS
from . import plot, sample, score, train, train_images

__all__ = ["build_parser"]

#: The commands, in the order ``--help`` lists them.
COMMANDS = ("train", "train-images", "sample", "score", "plot")

DEVICE_HELP = "where to run the model: cpu, cuda, cuda:1, auto (default: as saved)"
TRAIN_DEVICE_HELP = "cpu, cuda, cuda:1, ... or auto: CUDA when available (default: auto)"
MODEL_HELP = "a model file written by train (or .save)"
TABLES = "CSV/TSV (header line detected), .npy, .npz, .parquet, .feather"


def _policy_default(name: str, estimator: str = "CNFDensity") -> str:
    """The "auto" default of a training option per objective, read from the fit policy's
    table (:mod:`cnflow.estimators.policy`), for the help text."""
    def shown(value) -> str:
        return " ".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}"

    rows = POLICIES[estimator]["objectives"]
    return ", ".join(f"{shown(rows[objective][name])} with {objective.replace('_', ' ')}"
                     for objective in OBJECTIVES)


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The options every training command shares: --device (default auto), --seed, --quiet."""
    p.add_argument("--device", default="auto", help=TRAIN_DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_table_options(p: argparse.ArgumentParser) -> None:
    """How a table file is read: --header/--no-header, --columns, --dropna."""
    header = p.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_const", const=True,
                        help="the first line of a text file names the columns (default: "
                             "detected)")
    header.add_argument("--no-header", dest="header", action="store_const", const=False,
                        help="the first line of a text file is a row of data")
    p.add_argument("--columns", nargs="+", metavar="COLUMN",
                   help="the columns to read, by header name or 0-based index, in this "
                        "order (default: all; a .npy file is then read whole)")
    p.add_argument("--dropna", action="store_true",
                   help="drop rows with missing values (empty, NA, NaN, null, ?) instead of "
                        "stopping with their count")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fit a CNF density to a toy density or a file",
                       description="Fit CNFDensity and write model.pt, fit.png, training.png.")
    p.add_argument("data", nargs="?", default="checkerboard",
                   help=f"a toy name ({', '.join(TOY_DATASETS)}) or a table file: "
                        f"{TABLES} (default: checkerboard)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    _add_table_options(p)
    p.add_argument("--test-fraction", type=float, metavar="SHARE",
                   help="share of a file's rows held out and scored, beside a Gaussian "
                        "mixture's score as a reference (default: 0.1; 0: none; a toy "
                        "density is scored on fresh draws)")
    p.add_argument("--n-samples", type=int, default=50000, help="rows drawn from a toy density")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="training objective (default: flow_matching)")
    conditional_batch = POLICIES["ConditionalCNFDensity"]["objectives"]["flow_matching"][
        "batch_size"]
    p.add_argument("--max-iter", type=int,
                   help=f"training iterations (default: {_policy_default('max_iter')})")
    p.add_argument("--batch-size", type=int,
                   help=f"rows per iteration (default: {_policy_default('batch_size')}; "
                        f"{conditional_batch} for flow matching with --targets)")
    p.add_argument("--lr", type=float,
                   help=f"Adam's learning rate (default: {_policy_default('lr')})")
    p.add_argument("--hidden", type=int, nargs="+",
                   help=f"hidden widths (default: {_policy_default('hidden')})")
    p.add_argument("--field", choices=tuple(FIELDS),
                   help="the velocity field's network: dense (concat-squash) or hollow (its "
                        "exact trace in one pass; cheaper to score at many columns) "
                        "(default: the fit policy's)")
    p.add_argument("--tol", type=float, help="rtol = atol of the ODE solver (default: 1e-5)")
    p.add_argument("--max-seconds", type=float,
                   help="time budget of the fit in seconds (default: none)")
    _add_training_options(p)
    p.add_argument("--verbose", action="store_true",
                   help="after the fit, print the settings it resolved (every \"auto\"), one "
                        "per line")
    p.add_argument("--resolution", type=int, default=200,
                   help="density grid points per axis in fit.png (default: 200)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="write the fit's state to PATH while training; the same command run "
                        "again continues from it (e.g. after the job was killed)")
    p.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between checkpoints (default: 60)")
    p.add_argument("--targets", nargs="+", metavar="COLUMN",
                   help="fit the conditional density of these columns (names, or 0-based "
                        "indices among the columns read) given the others "
                        "(ConditionalCNFDensity)")
    p.set_defaults(func=train.run)


def _add_train_images(sub) -> None:
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
    _add_training_options(p)
    p.set_defaults(func=train_images.run)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw rows from a saved model into a .npy/.csv file",
                       description="Draw rows from a saved model (model.pt).")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--n", type=int, default=1000, help="number of rows (default: 1000)")
    p.add_argument("--out", required=True, help="the .npy or .csv file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--log-prob", action="store_true",
                   help="append each draw's log-density as a last column")
    p.add_argument("--given", metavar="FILE",
                   help="a conditional model's features x (a .npy/.csv file): --n draws of y "
                        "for each row")
    p.add_argument("--steps", type=int, metavar="K",
                   help="cheap draws: K fixed midpoint steps, NFE = 2K evaluations of the "
                        "field per batch (default: the adaptive solve at the model's "
                        "tolerance); --log-prob still scores at that tolerance")
    p.set_defaults(func=sample.run)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="log-likelihood of a file's rows under a saved model",
                       description="Print the mean log-likelihood of DATA's rows; with --out "
                                   "write each row's log-density.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("data", help=f"a table file ({TABLES}; a header's names pick the model's "
                   "columns), or a toy name (fresh draws)")
    p.add_argument("--out", help="a .npy or .csv file for the per-row log-densities")
    _add_table_options(p)
    p.add_argument("--n-samples", type=int, default=20000, help="rows drawn for a toy name")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--given", metavar="FILE",
                   help="a conditional model's features x, one row per row of DATA (the "
                        "targets y)")
    p.set_defaults(func=score.run)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="picture of a saved model: samples against data",
                       description="Two columns: data (or model samples), samples and the "
                                   "learned density side by side; more (or fewer): the pair "
                                   "plot of data against samples, every pair of columns.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", help=f"a table file ({TABLES}) or toy name to show beside the "
                   "model")
    _add_table_options(p)
    p.add_argument("--out", help="the PNG to write (default: plot.png beside the model)")
    p.add_argument("--n-samples", type=int, default=20000,
                   help="samples to draw (and rows drawn for a toy name; default: 20000)")
    p.add_argument("--resolution", type=int, default=200,
                   help="density grid points per axis (default: 200)")
    p.add_argument("--max-columns", type=int, default=8,
                   help="the pair plot's most columns: beyond, those whose marginals fit "
                        "worst (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=plot.run)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cnflow`` and its five subcommands (:data:`COMMANDS`); each
    parsed command carries its module's ``run`` as ``func``.

    Example:
        >>> args = build_parser().parse_args(["sample", "model.pt", "--out", "s.npy"])
        >>> args.command, args.n
        ('sample', 1000)
    """
    parser = argparse.ArgumentParser(
        prog="python -m cnflow", description="Continuous normalizing flows on PyTorch: "
        f"{', '.join(COMMANDS[:-1])} and {COMMANDS[-1]} (each with --help).")
    parser.add_argument("--version", action="version", version=f"cnflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_train_images, _add_sample, _add_score, _add_plot):
        add(sub)
    return parser
