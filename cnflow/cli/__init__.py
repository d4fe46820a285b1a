"""Command line: ``python -m cnflow {train,train-images,sample,score,plot} ...`` (also
``cnflow ...``).

- ``train [DATA]`` fits a :class:`cnflow.CNFDensity` to a built-in toy density (by name) or
  to a table (:mod:`~cnflow.cli.tables`: CSV/TSV with or without a header, ``--columns``,
  ``--dropna``, .npy, .npz, .parquet, .feather), holding out ``--test-fraction`` of a
  table's rows (default 0.1) and scoring them beside a Gaussian mixture
  (:mod:`~cnflow.cli.reference`), then writes the model (``model.pt``, with the column
  names), a picture of the fit (``fit.png``: data, samples and density for two columns, the
  pair plot of data against samples otherwise), training curves (``training.png``) and a
  summary (``summary.json``: scores ± standard errors) to ``--out``. With ``--checkpoint
  PATH`` the fit writes its state there every ``--checkpoint-interval`` seconds, and the
  same command run again continues from it. ``--verbose`` prints the settings the fit
  resolved. A .npy file is memory-mapped and read a minibatch at a time, never whole (so is
  one that ``score`` scores).
- ``train DATA --targets COLUMN ...`` fits a :class:`cnflow.ConditionalCNFDensity` of those
  columns given the others; its models take the features with ``--given FILE`` in ``sample``
  (N draws per row) and ``score`` (DATA then holds the targets).
- ``train-images FILE --levels L`` fits a :class:`cnflow.ImageCNFDensity` to the images of a
  .npy/.npz file and writes model.pt, samples.png and summary.json (bits/dim); ``sample``
  writes an image model's samples to .npy, ``score`` prints its bits/dim on a file's images.
- ``sample MODEL --n N --out FILE [--seed S] [--log-prob]`` draws rows from a saved model
  into a .npy or .csv file (a .csv gets the model's column names as its header; with
  ``--log-prob``, each row's log-density in a last column).
- ``score MODEL DATA [--out FILE]`` prints the mean log-likelihood ± standard error of
  DATA's rows (a table, whose header picks the model's columns by name, or a toy name) and
  can write each row's log-density (.npy or .csv).
- ``plot MODEL [--data DATA] [--out FILE.png] [--n-samples N]`` draws data (or, without
  ``--data``, the model's own samples) against samples: for a 2-D model beside its learned
  density, otherwise as a pair plot; by default into plot.png beside the model.

Saved models of every estimator are read (the file's "estimator" entry names which), on the
saved device or ``--device``. User mistakes (a missing or foreign file, a wrong number of
columns, an unknown dataset or device, a bad suffix) are one line on stderr with exit code 2.

The parts: :mod:`~cnflow.cli.parser` (the options), :mod:`~cnflow.cli.arguments` (user
errors and checks of option values), :mod:`~cnflow.cli.tables` (tables read),
:mod:`~cnflow.cli.io` (files read and written), :mod:`~cnflow.cli.reference` (held-out
scores and the mixture they are compared with),
:mod:`~cnflow.cli.distributed` (the process group under ``torchrun``), and one module a
command (:mod:`~cnflow.cli.train`, :mod:`~cnflow.cli.train_images`,
:mod:`~cnflow.cli.sample`, :mod:`~cnflow.cli.score`, :mod:`~cnflow.cli.plot`).
"""

from __future__ import annotations

import sys
import warnings

from .arguments import CLIError, check_positive
from .io import load_model, load_rows, write_rows
from .parser import COMMANDS, build_parser

__all__ = ["COMMANDS", "CLIError", "build_parser", "check_positive", "load_model",
           "load_rows", "main", "write_rows"]


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user mistakes print one line on stderr and return 2.

    Arguments:
        argv: the arguments after the program's name (default: ``sys.argv[1:]``).

    Returns:
        the exit code: 0 on success, 2 after a user mistake or a refused file access.
    """
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # named models read unnamed rows on purpose
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            args.func(args)
    except (CLIError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused a read or a write
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0
