"""The command line's files: rows read from toy names or tables (:mod:`cnflow.cli.tables`;
a .npy file of rows to train on or score is memory-mapped, never read whole), rows written to
.npy/.csv (a header line of column names), summary.json, output paths checked before any slow
work, and saved models read back.

Every failure is a :class:`~cnflow.cli.arguments.CLIError` naming the file and what is wrong;
every file is written atomically (:func:`cnflow.files.atomic_write`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..datasets import TOY_DATASETS, make_toy
from ..estimators import (
    CNFDensity,
    ConditionalCNFDensity,
    ImageCNFDensity,
    PlanarFlowDensity,
)
from ..files import atomic_write
from .arguments import CLIError, check_device
from .tables import TABLE_SUFFIXES, Table, read_table

__all__ = ["ROW_SUFFIXES", "Estimator", "check_suffix", "check_width", "check_writable",
           "checkpoint_path", "load_model", "load_rows", "load_table", "model_columns",
           "read_given", "rows_file", "write_rows", "write_summary"]

#: The estimators whose saved models the command line reads, by the name a file records.
_ESTIMATORS = {cls.__name__: cls
               for cls in (CNFDensity, ConditionalCNFDensity, ImageCNFDensity,
                           PlanarFlowDensity)}

Estimator = CNFDensity | ConditionalCNFDensity | ImageCNFDensity | PlanarFlowDensity

#: The suffixes of files of rows written (those read: TABLE_SUFFIXES).
ROW_SUFFIXES = (".npy", ".csv")


# ---------------------------------------------------------------- reading
def load_table(source: str, n_samples: int, seed: int, mapped: bool = False, *,
               header: bool | None = None, columns: Sequence[str] | None = None,
               dropna: bool = False, known: Sequence[str] | None = None) -> Table:
    """A toy name → generated rows (columns unnamed); a file → its rows and column names
    (:func:`cnflow.cli.tables.read_table`: CSV/TSV with or without a header, .npy, .npz,
    .parquet, .feather).

    Arguments:
        source: a name in :data:`cnflow.datasets.TOY_DATASETS`, or a file.
        n_samples: rows drawn from a toy density.
        seed: the toy density's random state.
        mapped: a .npy file (without ``columns``) is memory-mapped
            (``np.load(path, mmap_mode="r")``) and returned as it is stored, unread: the
            estimators check its values and read it a minibatch at a time, never whole.
        header, columns, dropna, known: as :func:`~cnflow.cli.tables.read_table`.

    Returns:
        the :class:`~cnflow.cli.tables.Table` (values 2-D, finite, not empty).
    """
    if source in TOY_DATASETS:
        if columns is not None or header is not None:
            raise CLIError(f"{source} is a toy dataset: --columns and --header are for files")
        return Table(make_toy(source, n_samples, random_state=seed))
    if Path(source).suffix not in TABLE_SUFFIXES:
        raise CLIError(f"{source!r} is neither a toy dataset ({', '.join(TOY_DATASETS)}) nor "
                       f"a table file ({', '.join(TABLE_SUFFIXES)})")
    return read_table(source, header=header, columns=columns, dropna=dropna, mapped=mapped,
                      known=known)


def load_rows(source: str, n_samples: int, seed: int, mapped: bool = False) -> np.ndarray:
    """The rows of :func:`load_table` (a toy's, or a file's every column), without names."""
    return load_table(source, n_samples, seed, mapped).values


def model_columns(table: Table, est: Estimator, source: str,
                  names: Sequence[str] | None = None) -> np.ndarray:
    """The rows of ``table`` in the order of the model's columns: by name where both the
    table and the model (or ``names``, e.g. a conditional model's targets) name them, by
    position otherwise (a CLIError when a named column is missing or the width differs).
    """
    if names is None:
        names = getattr(est, "feature_names_in_", None)
    if names is not None and table.names is not None:
        missing = [n for n in names if n not in table.names]
        if missing:
            raise CLIError(f"{source} has no column {', '.join(map(repr, missing))} of the "
                           f"model's ({', '.join(map(str, names))})")
        order = [table.names.index(n) for n in names]
        if order != list(range(table.values.shape[1])):
            return np.asarray(table.values[:, order])
    return table.values


def check_width(X: np.ndarray, est: Estimator, source: str) -> None:
    """A CLIError unless X has as many columns as the model has features."""
    if X.shape[1] != est.n_features_in_:
        raise CLIError(f"{source} has {X.shape[1]} columns but the model was fitted on "
                       f"{est.n_features_in_} features")


def read_given(given: str | None, est: Estimator, model: str, seed: int) -> np.ndarray | None:
    """The ``--given`` rows of a conditional model (a CLIError if missing or of the wrong
    width; a file with a header gives the model's feature columns by name); None for an
    unconditional one (where ``--given`` is an error).

    Arguments:
        given: the ``--given`` option (a file or a toy name), or None.
        est: the model read from ``model``.
        model: the model file, named in the errors.
        seed: the random state of a toy name's rows.
    """
    if not isinstance(est, ConditionalCNFDensity):
        if given is not None:
            raise CLIError(f"{model} holds an unconditional model; --given is for "
                           "conditional ones")
        return None
    if given is None:
        raise CLIError(f"{model} holds a conditional model p(y | x): pass the features "
                       "x with --given FILE")
    X = model_columns(load_table(given, 1, seed, known=getattr(est, "feature_names_in_", None)),
                      est, given)
    check_width(X, est, given)
    return X


def load_model(path: str, device: str | None = None) -> Estimator:
    """A saved model of one of the estimators (the file's "estimator" key names which), on
    ``device`` (None: as saved), or a CLIError saying why not."""
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


# ---------------------------------------------------------------- output paths
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


def rows_file(path: str) -> Path:
    """An output file of rows: ending in .npy or .csv, and writable (CLIError if not)."""
    return check_writable(check_suffix(path, ROW_SUFFIXES))


def checkpoint_path(path: str | None) -> Path | None:
    """The ``--checkpoint`` option as a writable Path (None when not given)."""
    return None if path is None else check_writable(Path(path))


# ---------------------------------------------------------------- writing
def write_rows(path: str, rows: np.ndarray, names: Sequence[str] | None = None) -> Path:
    """Write an array to .npy or .csv, by the file's suffix (1-D arrays: one value a line;
    a .csv file with ``names`` gets them as its header line), atomically.

    Returns:
        the file written.
    """
    file = rows_file(path)
    if file.suffix == ".npy":
        atomic_write(file, lambda handle: np.save(handle, rows))
    else:
        def write(handle) -> None:
            if names is not None:
                line = io.StringIO()
                csv.writer(line, lineterminator="\n").writerow(names)
                handle.write(line.getvalue().encode())
            np.savetxt(handle, rows.reshape(len(rows), -1), delimiter=",", fmt="%.17g")
        atomic_write(file, write)
    return file


def write_summary(out: Path, summary: dict) -> None:
    """Write ``summary`` to ``out/summary.json`` (atomically) and print it."""
    atomic_write(out / "summary.json",
                 lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
    print(json.dumps(summary, indent=2))
