"""Run a script of benchmarks/ or density_examples/ in this process, as ``python SCRIPT ARGS``
would (its folder first on sys.path, ``__name__ == "__main__"``, its own sys.argv), without
starting an interpreter and importing torch anew for each script's smoke test."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import torch


def run_script(path: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``path`` with ``args``; stdout and stderr captured, torch's thread count and
    default dtype restored afterwards. With ``check``, a non-zero exit is an AssertionError."""
    argv, search_path = sys.argv, list(sys.path)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = [str(path), *map(str, args)]
    sys.path.insert(0, str(Path(path).parent))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.argv, sys.path[:] = argv, search_path
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    result = subprocess.CompletedProcess([str(path), *map(str, args)], code, out.getvalue(),
                                         err.getvalue())
    if check and code:
        raise AssertionError(f"{path.name} exited with {code}:\n{result.stderr[-2000:]}")
    return result


def load_script(path: Path):
    """The script at ``path`` imported as a module (its folder first on sys.path, so its
    sibling modules import), without running its ``__main__`` block."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
