"""Checkpoints of a fit: written atomically while training, read back to resume it.

A :class:`FitCheckpoint` belongs to one fit, identified by a dict of what determines it (the
estimator, its parameters, a digest of the data). While the fit runs, the training loop calls
:meth:`FitCheckpoint.tick` after every step; at most every ``interval`` seconds that writes
the whole state needed to continue: the loop's (parameters, optimiser moments, iteration,
minibatch order, validation record, history, elapsed time), every random generator's state,
and the estimator's own record (``progress``: for a staged fit, its
:class:`~cnflow.training.stages.FitProgress`, one record per stage). A
fit started again with the same checkpoint path reads it and continues where it stopped; on
a CPU the result equals that of a fit never interrupted (the same floating-point operations
in the same order).

Files hold tensors and plain Python values only (``torch.save``, read with
``weights_only=True``) and are written by :func:`cnflow.files.atomic_write`: a process killed
while writing leaves the previous checkpoint.

Example:
    >>> import tempfile, pathlib
    >>> from cnflow.training.checkpoint import FitCheckpoint
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "fit.ckpt"
    >>> first = FitCheckpoint.open(path, interval=0, identity={"lr": 0.01})
    >>> first.progress["done"] = 3
    >>> first.write()
    >>> FitCheckpoint.open(path, interval=0, identity={"lr": 0.01}).progress
    {'done': 3}
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..files import ModelFileError, atomic_write, read_torch_file
from .distributed import distributed_rank

__all__ = ["CHECKPOINT_FORMAT", "FitCheckpoint", "CheckpointMismatchError", "data_digest",
           "rng_state", "restore_rng_state"]

#: The format tag of checkpoint files.
CHECKPOINT_FORMAT = "cnflow-checkpoint/2"
_FORMAT_FAMILY = "cnflow-checkpoint/"


class CheckpointMismatchError(ValueError):
    """A checkpoint file was made by a different fit (other parameters or data); the fit does
    not start afresh over it silently."""


def data_digest(X: np.ndarray) -> str:
    """A SHA-256 digest of an array's shape, dtype and values (to recognise the same data),
    read in chunks of rows (a memory-mapped table is never copied whole)."""
    X = np.asarray(X)
    X = X.reshape(1) if X.ndim == 0 else X
    digest = hashlib.sha256(f"{X.shape}{X.dtype}".encode())
    step = max(1, (1 << 23) // max(X[:1].nbytes, 1))
    for start in range(0, len(X), step):
        digest.update(np.ascontiguousarray(X[start:start + step]).tobytes())
    return digest.hexdigest()


def rng_state(generator: torch.Generator | None, device: torch.device) -> dict:
    """The state of torch's global generators (CPU and, for a CUDA device, that device's) and
    of ``generator``."""
    state = {"cpu": torch.get_rng_state(),
             "generator": None if generator is None else generator.get_state(),
             "cuda": None}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, generator: torch.Generator | None,
                      device: torch.device) -> None:
    """Set the generators to a :func:`rng_state` (a CUDA state is set only on a CUDA device,
    so a fit checkpointed on one device can continue on another, if not bit for bit)."""
    torch.set_rng_state(state["cpu"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _differences(saved: dict, current: dict) -> list[str]:
    """The keys whose values differ between two identities, as "key: saved → current"."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} there, {current.get(k)!r} here"
            for k in keys if saved.get(k) != current.get(k)]


class FitCheckpoint:
    """The checkpoint file of one fit.

    Attributes:
        path: the file.
        interval: :meth:`tick` writes when at least this many seconds have passed since the
            last write (0: after every step).
        identity: what the fit is (estimator, parameters, data digest); a saved checkpoint
            with another identity is refused.
        progress: the estimator's own record, written with every checkpoint: plain values
            and tensors, or objects with an ``as_plain()`` method (such as
            :class:`~cnflow.training.stages.FitProgress`), written as what it returns; read
            back from the file on :meth:`open` as plain values.
        resumed: whether :meth:`open` found a checkpoint of this fit.
        elapsed_before: the seconds of fitting that the checkpoint's runs had already spent.
        extra_state: name → a callable whose value is written with every checkpoint (e.g.
            the state of a random generator a loss draws from); ``saved_extra_state`` holds
            the values read back on :meth:`open`.
    """

    def __init__(self, path: str | Path, interval: float, identity: dict) -> None:
        self.path, self.interval, self.identity = Path(path), float(interval), identity
        self.progress: dict = {}
        self.resumed = False
        self.elapsed_before = 0.0
        self.extra_state: dict[str, Callable[[], object]] = {}
        self.saved_extra_state: dict = {}
        self._loop_state: dict | None = None
        self._started = time.perf_counter()
        self._last_write = self._started
        self.writes = 0

    @classmethod
    def open(cls, path: str | Path, interval: float, identity: dict) -> FitCheckpoint:
        """The checkpoint at ``path``: read from the file if there is one, else empty.

        Raises:
            cnflow.files.ModelFileError: the file is damaged or not a checkpoint.
            CheckpointMismatchError: the file is a checkpoint of another fit (the message
                lists what differs).
        """
        checkpoint = cls(path, interval, identity)
        if not checkpoint.path.exists():
            return checkpoint
        data = read_torch_file(checkpoint.path, "a cnflow checkpoint")
        found = data.get("format") if isinstance(data, dict) else None
        if isinstance(found, str) and found.startswith(_FORMAT_FAMILY) and (
                found != CHECKPOINT_FORMAT):
            raise ModelFileError(f"{checkpoint.path} is a cnflow checkpoint of another format "
                                 f"({found}; this version of cnflow reads {CHECKPOINT_FORMAT}):"
                                 " remove it or choose another checkpoint path")
        if found != CHECKPOINT_FORMAT:
            raise ModelFileError(f"{checkpoint.path} is not a cnflow checkpoint (remove it or "
                                 "choose another checkpoint path)")
        try:
            saved_identity, progress = dict(data["identity"]), dict(data["progress"])
            loop_state, elapsed = data["loop"], float(data["elapsed"])
            extra = dict(data.get("extra") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{checkpoint.path} is a damaged checkpoint: missing or "
                                 f"malformed {err}") from None
        differences = _differences(saved_identity, identity)
        if differences:
            raise CheckpointMismatchError(
                f"{checkpoint.path} is a checkpoint of another fit ({'; '.join(differences)});"
                " resume with the same parameters and data, or remove the file (or choose "
                "another checkpoint path) to start afresh")
        checkpoint.progress, checkpoint._loop_state = progress, loop_state
        checkpoint.resumed, checkpoint.elapsed_before = True, elapsed
        checkpoint.saved_extra_state = extra
        checkpoint._started -= elapsed
        return checkpoint

    @classmethod
    def open_in_every_process(cls, path: str | Path, interval: float,
                              identity: dict) -> FitCheckpoint:
        """:meth:`open`, and under ``torch.distributed`` with several processes a barrier
        after it, so that every process has read the file before rank 0 (the only writer)
        replaces it."""
        checkpoint = cls.open(path, interval, identity)
        if distributed_rank() is not None:
            import torch.distributed as dist

            dist.barrier()
        return checkpoint

    def elapsed(self) -> float:
        """Seconds of fitting so far, the checkpoint's earlier runs included."""
        return time.perf_counter() - self._started

    @property
    def started(self) -> float:
        """The ``time.perf_counter()`` reading at which the fit would have started had it
        run without interruption (so that time budgets count every run)."""
        return self._started

    def take_loop_state(self) -> dict | None:
        """The saved training loop's state, once (None: the checkpoint was written between
        phases, or there is none)."""
        state, self._loop_state = self._loop_state, None
        return state

    def tick(self, loop_state: Callable[[], dict]) -> None:
        """Called by the training loop after each step: write a checkpoint with
        ``loop_state()`` when ``interval`` seconds have passed since the last one."""
        if time.perf_counter() - self._last_write >= self.interval:
            self.write(loop_state())

    def write(self, loop_state: dict | None = None) -> None:
        """Write the checkpoint now: identity, ``progress`` and the loop's state (None:
        between phases, where ``progress`` says how to go on). Under ``torch.distributed``
        only rank 0 writes."""
        parallel = distributed_rank()
        if parallel is not None and parallel[0] != 0:
            return
        progress = {key: value.as_plain() if hasattr(value, "as_plain") else value
                    for key, value in self.progress.items()}
        contents = {"format": CHECKPOINT_FORMAT, "identity": self.identity,
                    "progress": progress, "loop": loop_state, "elapsed": self.elapsed(),
                    "extra": {name: value() for name, value in self.extra_state.items()}}
        atomic_write(self.path, lambda handle: torch.save(contents, handle))
        self._last_write = time.perf_counter()
        self.writes += 1
