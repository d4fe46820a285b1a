"""Tables as people have them: CSV/TSV files with or without a header line, .npy/.npz
arrays, and (where pandas is installed) .parquet and .feather files, read into numbers with
their column names.

- **Header.** A text file's first line is a header when ``header=True``; with ``header=None``
  (the default) when one of its fields is text in a column that holds only numbers (or
  missing values) in the rows below (so ``length_mm,width_mm`` is a header, ``x1,2.5`` too,
  and a first line of numbers is data; a header of numbers only, such as ``2019,2020``,
  needs ``header=True``).
- **Fields.** Comma-separated (``.csv``, ``.txt``; a semicolon, tab or bar is detected when
  the first lines have no comma) or tab-separated (``.tsv``, ``.tab``); quoted fields as the
  ``csv`` module reads them; blank lines and lines starting with ``#`` skipped; spaces
  around a value ignored.
- **Columns.** ``columns`` picks columns by name (a header's) or by 0-based index, in the
  order given; the others are not parsed, so text columns may stay in the file.
- **Missing values.** Empty fields and ``NA``, ``N/A``, ``NaN``, ``null``, ``None``, ``?``
  (any case) are missing: an error that counts them by column, or with ``dropna=True`` the
  rows holding them are dropped (and counted).
- **Errors** are one line (a :class:`~cnflow.cli.arguments.CLIError`) naming the file, the
  column, the line (or row) and the value: a text cell, an infinite value, a row with too
  few or too many fields, a column that is not there.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> _ = path.write_text("length_mm,species,width_mm\\n4.5,a,1.0\\n5.0,b,2.5\\n")
    >>> table = read_table(path, columns=["length_mm", "width_mm"])
    >>> table.names, table.values.tolist()
    (('length_mm', 'width_mm'), [[4.5, 1.0], [5.0, 2.5]])
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arguments import CLIError

__all__ = ["MISSING", "TABLE_SUFFIXES", "Table", "read_table", "select_columns"]

#: The suffixes of the files of rows read (text, NumPy, and with pandas parquet/feather).
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".npy", ".npz", ".parquet", ".feather")
_TEXT = (".csv", ".tsv", ".tab", ".txt")
_PANDAS = (".parquet", ".feather")
#: Fields read as missing values (compared in lower case, after stripping spaces).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
#: Rows looked at below the first line to decide whether it is a header.
_HEADER_PROBE = 100


@dataclass(frozen=True)
class Table:
    """Rows of numbers read from a file.

    Attributes:
        values: (n_rows, n_columns) float64 array (or a read-only memory-mapped .npy array
            as stored, when that was asked for and no columns were selected).
        names: the columns' names (a header's, a .npz's keys, a data frame's), or None when
            the file names none.
        dropped: rows dropped because they held missing values (``dropna=True``).
    """

    values: np.ndarray
    names: tuple[str, ...] | None = None
    dropped: int = 0


def _ordinal(k: int) -> str:
    """1 → "1st", 2 → "2nd", 11 → "11th"."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _column_label(names: Sequence[str] | None, j: int) -> str:
    """How an error names column j: its name from the header, else its 0-based index."""
    return f"column {names[j]!r}" if names is not None else f"column {j}"


def select_columns(columns: Sequence[str] | None, names: Sequence[str] | None, width: int,
                   source: str, option: str = "--columns") -> list[int]:
    """The 0-based indices of ``columns`` (names of the header, or 0-based indices given as
    text), in the order given; every column when ``columns`` is None.

    Raises:
        CLIError: a name the file does not have, an index out of range, a column named
            twice; the message lists the file's columns.
    """
    if columns is None:
        return list(range(width))
    known = ", ".join(names) if names is not None else f"0 to {width - 1}"
    chosen = []
    for token in columns:
        token = str(token)
        if names is not None and token in names:
            j = list(names).index(token)
        else:
            try:
                j = int(token)
            except ValueError:
                if names is None:
                    raise CLIError(f"{option}: {source} has no header line to name column "
                                   f"{token!r}; give 0-based indices (0 to {width - 1}), or "
                                   "--header if its first line names the columns") from None
                raise CLIError(f"{option}: {source} has no column {token!r} (its columns: "
                               f"{known})") from None
            if not 0 <= j < width:
                raise CLIError(f"{option}: column index {j} is out of range: {source} has "
                               f"{width} columns (0 to {width - 1})")
        if j in chosen:
            raise CLIError(f"{option} names column {token!r} twice")
        chosen.append(j)
    if not chosen:
        raise CLIError(f"{option} names no column")
    return chosen


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _parse_column(cells: Sequence, label: str, where: Callable[[int], str], source: str,
                  missing: np.ndarray) -> np.ndarray:
    """A column's cells as float64, missing cells NaN (marked in ``missing``), or a
    CLIError naming the first text or infinite cell."""
    try:  # the fast path: every cell a number
        values = np.asarray(cells, dtype=np.float64)
    except (ValueError, TypeError):
        values = np.empty(len(cells))
        n_numbers, first_text = 0, None
        for i, cell in enumerate(cells):
            text = str(cell).strip()
            if text.lower() in MISSING or cell is None:
                values[i] = math.nan
                continue
            try:
                values[i] = float(text)
                n_numbers += 1
            except ValueError:
                if first_text is None:
                    first_text = i
                values[i] = math.nan
        if first_text is not None:
            value = str(cells[first_text]).strip()
            if n_numbers == 0:
                raise CLIError(f"{source}: {label} holds text ({value!r} on "
                               f"{where(first_text)}), not numbers; choose the numeric "
                               "columns with --columns") from None
            raise CLIError(f"{source}, {where(first_text)}, {label}: {value!r} is not a "
                           "number") from None
    nan = np.isnan(values)
    missing |= nan
    infinite = np.isinf(values)
    if infinite.any():
        i = int(np.argmax(infinite))
        raise CLIError(f"{source}, {where(i)}, {label}: {str(cells[i]).strip()!r} is "
                       "infinite")
    return values


def _numbers(cells: list[Sequence], names: tuple[str, ...] | None, chosen: list[int],
             where: Callable[[int], str], source: str, dropna: bool) -> Table:
    """The chosen columns (``cells[j]``: column j's cells) as a Table; missing values an
    error or, with ``dropna``, their rows dropped."""
    n_rows = len(cells[chosen[0]]) if chosen else 0
    missing = np.zeros(n_rows, dtype=bool)
    counts = {}
    columns = []
    for j in chosen:
        column_missing = np.zeros(n_rows, dtype=bool)
        columns.append(_parse_column(cells[j], _column_label(names, j), where, source,
                                     column_missing))
        missing |= column_missing
        if column_missing.any():
            counts[_column_label(names, j)] = int(column_missing.sum())
    values = np.stack(columns, axis=1) if columns else np.empty((n_rows, 0))
    dropped = 0
    if missing.any():
        if not dropna:
            per_column = ", ".join(f"{label}: {k}" for label, k in counts.items())
            raise CLIError(f"{source} has {sum(counts.values())} missing values in "
                           f"{int(missing.sum())} rows ({per_column}); pass --dropna to drop "
                           "those rows")
        dropped = int(missing.sum())
        values = values[~missing]
    if len(values) == 0:
        raise CLIError(f"{source} holds no rows" + (" without missing values" if dropped
                                                     else ""))
    return Table(values, None if names is None else tuple(names[j] for j in chosen), dropped)


def _delimiter(path: Path, sample: str) -> str:
    """Tab for .tsv/.tab; else a comma, or the semicolon, tab or bar found where the first
    lines have no comma."""
    if path.suffix in (".tsv", ".tab"):
        return "\t"
    lines = [line for line in sample.splitlines()[:20]
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines or any("," in line for line in lines):
        return ","
    for candidate in (";", "\t", "|"):
        if all(candidate in line for line in lines):
            return candidate
    return ","


def _known(columns, known, names) -> Sequence[str] | None:
    """``columns``, or without them the ``known`` columns when the file names them all."""
    if columns is None and known is not None and names is not None \
            and all(str(n) in names for n in known):
        return [str(n) for n in known]
    return columns


def _read_text(path: Path, source: str, header: bool | None, columns, dropna: bool,
               known=None) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CLIError(f"could not read {source}: it is not a UTF-8 text file "
                       f"(byte {err.start})") from None
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(path, text[:65536]),
                        skipinitialspace=True)
    rows, lines = [], []
    try:
        for fields in reader:
            if not fields or all(not f.strip() for f in fields) \
                    or fields[0].lstrip().startswith("#"):
                continue
            rows.append([f.strip() for f in fields])
            lines.append(reader.line_num)
    except csv.Error as err:
        raise CLIError(f"could not read {source}, line {reader.line_num}: {err}") from None
    if not rows:
        raise CLIError(f"{source} holds no rows")
    width = len(rows[0])
    for fields, line in zip(rows, lines, strict=True):
        if len(fields) != width:
            raise CLIError(f"{source}, line {line}: {len(fields)} fields where the first line "
                           f"has {width}")
    if header is None:
        first, below = rows[0], rows[1:1 + _HEADER_PROBE]
        header = any(f.lower() not in MISSING and not _is_number(f)
                     and all(r[j].lower() in MISSING or _is_number(r[j]) for r in below)
                     for j, f in enumerate(first))
    names = None
    if header:
        names = tuple(rows[0])
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise CLIError(f"{source}'s header names a column twice: {', '.join(twice)}")
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise CLIError(f"{source} holds a header line and no rows")
    chosen = select_columns(_known(columns, known, names), names, width, source)
    cells = [None] * width
    for j in chosen:
        cells[j] = [fields[j] for fields in rows]
    return _numbers(cells, names, chosen, lambda i: f"line {lines[i]}", source, dropna)


def _read_npz(path: Path, source: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A .npz file's table: its only array, or its 1-D arrays of one length as named
    columns."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if len(arrays) == 1:
        return next(iter(arrays.values())), None
    if arrays and all(a.ndim == 1 for a in arrays.values()) \
            and len({len(a) for a in arrays.values()}) == 1:
        return np.stack(list(arrays.values()), axis=1), tuple(arrays)
    raise CLIError(f"{source} holds arrays {', '.join(arrays) or '(none)'}: a table is one "
                   "2-D array, or 1-D arrays of one length (its columns)")


def _read_frame(path: Path, source: str, columns, dropna: bool, known=None) -> Table:
    """A .parquet/.feather file through pandas (and pyarrow)."""
    try:
        import pandas as pd

        frame = (pd.read_parquet if path.suffix == ".parquet" else pd.read_feather)(path)
    except ImportError as err:
        raise CLIError(f"reading {path.suffix} files needs pandas and pyarrow "
                       f"(pip install pandas pyarrow): {err}") from None
    names = tuple(str(c) for c in frame.columns)
    chosen = select_columns(_known(columns, known, names), names, len(names), source)
    cells = [None] * len(names)
    for j in chosen:
        column = frame.iloc[:, j]
        cells[j] = column.to_numpy(dtype=object)
        cells[j][column.isna().to_numpy()] = ""  # pandas' missing values
    return _numbers(cells, names, chosen, lambda i: f"row {i}", source, dropna)


def read_table(path: str | Path, *, header: bool | None = None,
               columns: Sequence[str] | None = None, dropna: bool = False,
               mapped: bool = False, known: Sequence[str] | None = None) -> Table:
    """Read a file of rows into numbers with their column names (see the module's rules).

    Arguments:
        path: a .csv/.tsv/.tab/.txt, .npy, .npz, .parquet or .feather file.
        header: whether a text file's first line names the columns; None: detected.
        columns: the columns to keep, by name or 0-based index (as text), in that order.
        dropna: drop the rows with missing values instead of refusing them.
        mapped: a .npy file without ``columns`` is memory-mapped and returned unread (its
            values are checked by whoever reads it); with ``columns`` it is read.
        known: without ``columns``, the columns to read when the file names them all (a
            saved model's columns: other columns, text ones included, are then left alone).

    Returns:
        the :class:`Table`.

    Raises:
        CLIError: what is wrong, in one line (file, column, line or row, value).
    """
    path = Path(path)
    source = str(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise CLIError(f"{source}: cannot read {path.suffix or 'a file without a suffix'} "
                       f"files (tables are {', '.join(TABLE_SUFFIXES)})")
    if not path.is_file():
        raise CLIError(f"no such file: {source}")
    if header is not None and path.suffix not in _TEXT:
        raise CLIError(f"--header/--no-header are for text files; {source} is a "
                       f"{path.suffix} file")
    try:
        if path.suffix in _TEXT:
            return _read_text(path, source, header, columns, dropna, known)
        if path.suffix in _PANDAS:
            return _read_frame(path, source, columns, dropna, known)
        if path.suffix == ".npz":
            array, names = _read_npz(path, source)
        else:
            array, names = np.load(path, mmap_mode="r" if mapped else None,
                                   allow_pickle=False), None
    except (ValueError, OSError, EOFError) as err:
        raise CLIError(f"could not read {source}: {' '.join(str(err).split())}") from err
    if array.ndim != 2:
        raise CLIError(f"{source} must hold a 2-D array (rows × columns), got shape "
                       f"{array.shape}")
    if array.shape[0] == 0:
        raise CLIError(f"{source} holds no rows")
    if np.dtype(array.dtype).kind not in "biuf":
        raise CLIError(f"{source} must hold real numbers, got dtype {array.dtype}")
    if mapped and columns is None and isinstance(array, np.memmap):
        return Table(array, names)  # checked by the estimator as it reads the rows
    chosen = select_columns(_known(columns, known, names), names, array.shape[1], source)
    values = np.asarray(array[:, chosen], dtype=np.float64)
    cells = [values[:, k] for k in range(len(chosen))]
    kept = None if names is None else tuple(names[j] for j in chosen)
    return _numbers(cells, kept, list(range(len(chosen))), lambda i: f"row {i}", source,
                    dropna)
