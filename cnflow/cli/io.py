"""The command line's files: rows and arrays read from .npy/.csv files (or toy names; a .npy
file of rows to train on or score is memory-mapped, never read whole), rows written to
.npy/.csv, summary.json, output paths checked before any slow work, and saved
models read back.

Every failure is a :class:`~cnflow.cli.arguments.CLIError` naming the file and what is wrong;
every file is written atomically (:func:`cnflow.files.atomic_write`).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
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

__all__ = ["ROW_SUFFIXES", "Estimator", "check_suffix", "check_width", "check_writable",
           "checkpoint_path", "load_model", "load_rows", "read_given", "rows_file",
           "write_rows", "write_summary"]

#: The estimators whose saved models the command line reads, by the name a file records.
_ESTIMATORS = {cls.__name__: cls
               for cls in (CNFDensity, ConditionalCNFDensity, ImageCNFDensity,
                           PlanarFlowDensity)}

Estimator = CNFDensity | ConditionalCNFDensity | ImageCNFDensity | PlanarFlowDensity

#: The suffixes of files of rows, read and written.
ROW_SUFFIXES = (".npy", ".csv")


# ---------------------------------------------------------------- reading
def _read_array(path: Path, mapped: bool = False) -> np.ndarray:
    """The array in a .npy file (``mapped``: memory-mapped read-only, ``np.memmap``) or the
    rows of a comma-separated .csv file."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r" if mapped else None)
    with warnings.catch_warnings():  # an empty file: reported below, not as a warning
        warnings.simplefilter("ignore")
        return np.loadtxt(path, delimiter=",", ndmin=2)


def load_rows(source: str, n_samples: int, seed: int, mapped: bool = False) -> np.ndarray:
    """A toy name → generated rows; a .npy/.csv path → its rows (2-D, finite, not empty).

    Arguments:
        source: a name in :data:`cnflow.datasets.TOY_DATASETS`, or a .npy/.csv file.
        n_samples: rows drawn from a toy density.
        seed: the toy density's random state.
        mapped: a .npy file is memory-mapped (``np.load(path, mmap_mode="r")``) and
            returned as it is stored (any real dtype), unread: the estimators check its
            values and read it a minibatch at a time, never whole.

    Returns:
        float64 array (n_rows, n_columns), or with ``mapped`` and a .npy file, the
        read-only ``np.memmap`` of the file.
    """
    if source in TOY_DATASETS:
        return make_toy(source, n_samples, random_state=seed)
    path = Path(source)
    if path.suffix not in ROW_SUFFIXES:
        raise CLIError(f"{source!r} is neither a toy dataset ({', '.join(TOY_DATASETS)}) nor "
                       "a .npy/.csv file")
    if not path.is_file():
        raise CLIError(f"no such file: {source}")
    try:
        X = _read_array(path, mapped)
    except (ValueError, OSError, EOFError) as err:
        raise CLIError(f"could not read {source}: {err}") from err
    if X.ndim != 2:
        raise CLIError(f"{source} must hold a 2-D array (rows × features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise CLIError(f"{source} holds no rows")
    if isinstance(X, np.memmap):  # its values are checked by the estimator as it reads them
        if X.dtype.kind not in "biuf":
            raise CLIError(f"{source} must hold real numbers, got dtype {X.dtype}")
        return X
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise CLIError(f"{source} holds NaN or infinite values")
    return X


def check_width(X: np.ndarray, est: Estimator, source: str) -> None:
    """A CLIError unless X has as many columns as the model has features."""
    if X.shape[1] != est.n_features_in_:
        raise CLIError(f"{source} has {X.shape[1]} columns but the model was fitted on "
                       f"{est.n_features_in_} features")


def read_given(given: str | None, est: Estimator, model: str, seed: int) -> np.ndarray | None:
    """The ``--given`` rows of a conditional model (a CLIError if missing or of the wrong
    width); None for an unconditional one (where ``--given`` is an error).

    Arguments:
        given: the ``--given`` option (a .npy/.csv file or a toy name), or None.
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
    X = load_rows(given, 1, seed)
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
def write_rows(path: str, rows: np.ndarray) -> Path:
    """Write an array to .npy or .csv, by the file's suffix (1-D arrays: one value a line),
    atomically.

    Returns:
        the file written.
    """
    file = rows_file(path)
    if file.suffix == ".npy":
        atomic_write(file, lambda handle: np.save(handle, rows))
    else:
        atomic_write(file, lambda handle: np.savetxt(
            handle, rows.reshape(len(rows), -1), delimiter=",", fmt="%.17g"))
    return file


def write_summary(out: Path, summary: dict) -> None:
    """Write ``summary`` to ``out/summary.json`` (atomically) and print it."""
    atomic_write(out / "summary.json",
                 lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
    print(json.dumps(summary, indent=2))
