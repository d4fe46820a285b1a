"""Files: written atomically, and read with one clear error for anything damaged or foreign.

:func:`atomic_write` writes to a temporary file in the target's folder, flushes it to disk and
renames it over the target (``os.replace``), so a reader sees the old file or the new one,
never half of one: an interrupted write (Ctrl-C, a full disk, a killed process) leaves the
file that was there before. :class:`ModelFileError` is what every damaged or foreign model file
raises, naming the file and what is wrong.

Example:
    >>> import tempfile, pathlib
    >>> from cnflow.files import atomic_write
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "numbers.txt"
    >>> atomic_write(path, lambda f: f.write(b"1 2 3"))
    >>> path.read_bytes()
    b'1 2 3'
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["ModelFileError", "atomic_write", "read_torch_file"]


class ModelFileError(ValueError):
    """A model file that cannot be read: truncated, empty, not a cnflow file, or missing
    parts. The message names the file and what is wrong."""


def _mode_for(path: Path) -> int:
    """The permission bits of the file at ``path``, or of a new file under the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file all at once or not at all.

    ``write(f)`` fills a temporary file opened for binary writing in ``path``'s folder; the
    file is then flushed and synced and renamed over ``path``. If ``write`` raises (or the
    process is interrupted before the rename), ``path`` keeps its old content and the
    temporary file is removed.

    Arguments:
        path: the file to write; its folder must exist.
        write: called once with the open temporary file.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            # the permissions an ordinary open() would give (mkstemp's are owner-only), or
            # those of the file replaced
            os.chmod(temporary, _mode_for(path))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_torch_file(path: str | os.PathLike, what: str) -> object:
    """The contents of a ``torch.save`` file, loaded with ``weights_only=True`` (tensors and
    plain Python values only: no code from the file runs).

    Arguments:
        path: the file.
        what: what the file should be, for messages (e.g. "a CNFDensity file").

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelFileError: the file is empty, truncated or not a torch.save file; torch's own
            errors (which differ by the damage, and may suggest an unsafe load) are not shown.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's errors differ by damage: EOF, unpickling, OS
        size = path.stat().st_size
        why = "it is empty" if size == 0 else (
            f"it is not a complete torch.save file of plain values ({size} bytes: truncated, "
            "or another kind of file)")
        raise ModelFileError(f"{path} cannot be read as {what}: {why}") from None
