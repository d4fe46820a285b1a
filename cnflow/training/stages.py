"""One driver for fits made of stages: cross-fitted members, an objective's phases, an image
flow's scales.

A staged fit runs its stages (:class:`Stage`) in order, each a call of
:func:`~cnflow.training.train` (or of a nested staged fit). :class:`StagedFit` does the
bookkeeping they share:

- **budgets**: with a time budget B counted from the fit's (or the enclosing stage's) start
  t₀, a stage with a fixed ``share`` s is granted s·B seconds; a stage without one an equal
  part of what is left, max(B − (t − t₀) − R, 0) / m at its start t, where R is the time the
  later fixed shares reserve and m the number of stages without a share from it on. So
  ``[Stage("a", share=0.75), Stage("b")]`` gives "a" the first 75 % and "b" the rest, and
  stages without shares split the time left equally.
- **progress** in the checkpoint: a :class:`StageRecord` per stage (index, name, status, the
  seconds granted and when, what the stage prepared before training, its result, the
  parameters and random states it ended with), held by :class:`FitProgress` with the fit's own
  set-up (seed, row order, ...) and written as plain values and tensors (files still load
  with ``weights_only=True``). A resumed fit skips the finished stages (restoring their
  parameters and generators) and continues the running one from the training loop's state:
  on a CPU it ends where an uninterrupted fit ends.
- **faults and interruptions**: a :class:`~cnflow.training.TrainingFault` in a stage is
  raised again with the results so far joined (``err.result``); a stage interrupted (Ctrl-C,
  stop_reason ``"interrupted"``) ends the fit without being recorded as finished; a stage that
  stopped on a fault it only warned about (held-out rows kept its best parameters, stop_reason
  ``"fault"``) ends the later stages unless they are independent (``continue_after_fault``).
- **history**: each stage's entries are marked with its ``tags`` (e.g. ``{"member": 2}``,
  ``{"objective": "flow_matching"}``, ``{"scale": 1}``) and the results are joined with
  iterations numbered on (:func:`join_results`).

Example:
    >>> import torch
    >>> from cnflow.training import TrainConfig, train
    >>> from cnflow.training.stages import Stage, StagedFit
    >>> model, X = torch.nn.Linear(2, 1), torch.randn(32, 2)
    >>> def run_stage(run):
    ...     return train(model, X, lambda m, x: m(x).square().mean(),
    ...                  TrainConfig(max_iter=3, max_seconds=run.seconds),
    ...                  checkpoint=run.checkpoint)
    >>> stages = [Stage("first", tags={"part": 1}), Stage("second", tags={"part": 2})]
    >>> result = StagedFit(None, budget=None).run(stages, run_stage, module=model)
    >>> [(h["iteration"], h["part"]) for h in result.history]
    [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..files import ModelFileError
from .checkpoint import FitCheckpoint, restore_rng_state, rng_state
from .types import TrainingFault, TrainResult

__all__ = ["Stage", "StageRecord", "FitProgress", "StageRun", "StagedFit", "tag_result",
           "join_results", "result_record", "result_from_record"]

#: The statuses of a stage: not started, started (granted its seconds), finished.
PENDING, RUNNING, DONE = "pending", "running", "done"
_STATUSES = (PENDING, RUNNING, DONE)
#: The key of a staged fit's progress in :attr:`FitCheckpoint.progress`.
PROGRESS_KEY = "staged fit"


@dataclass(frozen=True)
class Stage:
    """One stage of a staged fit.

    Attributes:
        name: what the stage is (checked against a resumed checkpoint's records).
        share: the fraction of the budget the stage is granted, in (0, 1]; None: an equal
            part of the time left among the stages without a share (see the module).
        tags: marked on each of the stage's history entries.
    """

    name: str
    share: float | None = None
    tags: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.share is not None and not (0 < self.share <= 1):
            raise ValueError(f"stage {self.name!r}: share must be in (0, 1] or None, got "
                             f"{self.share!r}")


def result_record(result: TrainResult) -> dict:
    """A :class:`TrainResult` as plain values (for a checkpoint; not copied)."""
    return {"history": result.history, "n_iter": int(result.n_iter),
            "best_val_loss": result.best_val_loss, "stop_reason": result.stop_reason}


def result_from_record(record: dict) -> TrainResult:
    """The inverse of :func:`result_record`."""
    best = record["best_val_loss"]
    return TrainResult(history=list(record["history"]), n_iter=int(record["n_iter"]),
                       best_val_loss=None if best is None else float(best),
                       stop_reason=str(record["stop_reason"]))


def tag_result(result: TrainResult, tags: dict) -> TrainResult:
    """A copy of ``result`` whose history entries are marked with ``tags``."""
    return TrainResult(history=[{**entry, **tags} for entry in result.history],
                       n_iter=result.n_iter, best_val_loss=result.best_val_loss,
                       stop_reason=result.stop_reason)


def join_results(results: Sequence[TrainResult], prior: TrainResult | None = None
                 ) -> TrainResult:
    """One result for runs made one after another: histories back to back with iterations
    numbered on (a run's iteration i becomes i plus the steps of the runs before it, ``prior``
    included, whose entries are kept as they are), the steps added up, the last validation
    loss recorded and the last run's stop reason. Entries are copied, not changed."""
    n_iter = 0 if prior is None else prior.n_iter
    history = [] if prior is None else [dict(entry) for entry in prior.history]
    best = None if prior is None else prior.best_val_loss
    stop_reason = "max_iter" if prior is None else prior.stop_reason
    for result in results:
        history.extend({**entry, "iteration": entry["iteration"] + n_iter}
                       for entry in result.history)
        n_iter += result.n_iter
        best = result.best_val_loss if result.best_val_loss is not None else best
        stop_reason = result.stop_reason
    return TrainResult(history=history, n_iter=n_iter, best_val_loss=best,
                       stop_reason=stop_reason)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


@dataclass
class StageRecord:
    """What a checkpoint keeps of one stage.

    Attributes:
        index, name: the stage's place and name.
        status: ``"pending"``, ``"running"`` (granted its seconds) or ``"done"``.
        seconds: the seconds granted (None: no budget), kept so that a resumed stage has the
            budget (and the learning-rate schedule) of its first run.
        started: the fit's clock when the stage started (the origin of its sub-stages'
            budget).
        setup: what the stage prepared before training (plain values and tensors, e.g. a
            fitted Gaussian mixture), reused when it resumes.
        result: its training result, once done.
        parameters: the parameters it ended with (a state dict, or the stage's own record of
            a model it built), once done.
        rng: the random generators' state it ended with (see
            :func:`~cnflow.training.checkpoint.rng_state`), once done; None where the next
            stage does not continue from it.
        substages: the records of the stages run inside this one, while it runs.
    """

    index: int
    name: str
    status: str = PENDING
    seconds: float | None = None
    started: float | None = None
    setup: Any = None
    result: TrainResult | None = None
    parameters: dict | None = None
    rng: dict | None = None
    substages: list[StageRecord] | None = None

    def as_plain(self) -> dict:
        """The record as plain values and tensors (nothing copied)."""
        return {"index": self.index, "name": self.name, "status": self.status,
                "seconds": self.seconds, "started": self.started, "setup": self.setup,
                "result": None if self.result is None else result_record(self.result),
                "parameters": self.parameters, "rng": self.rng,
                "substages": None if self.substages is None
                else [record.as_plain() for record in self.substages]}

    @classmethod
    def from_plain(cls, plain: dict) -> StageRecord:
        """The inverse of :meth:`as_plain` (KeyError, TypeError or ValueError where
        malformed)."""
        status = str(plain["status"])
        if status not in _STATUSES:
            raise ValueError(f"unknown stage status {status!r}")
        if status == DONE and plain["result"] is None:
            raise ValueError(f"stage {plain['name']!r} is done but has no result")
        substages = plain["substages"]
        return cls(index=int(plain["index"]), name=str(plain["name"]), status=status,
                   seconds=_optional_float(plain["seconds"]),
                   started=_optional_float(plain["started"]), setup=plain["setup"],
                   result=None if plain["result"] is None
                   else result_from_record(plain["result"]),
                   parameters=plain["parameters"], rng=plain["rng"],
                   substages=None if substages is None
                   else [cls.from_plain(record) for record in substages])


@dataclass
class FitProgress:
    """A staged fit's progress, as a checkpoint keeps it.

    Attributes:
        seed: the fit's seed, drawn by its first run (None: not recorded).
        setup: the fit's own values fixed before its stages (e.g. row order, preprocessing;
            plain values and tensors; None: none yet).
        stages: the records of its stages (None: not started).
    """

    seed: int | None = None
    setup: Any = None
    stages: list[StageRecord] | None = None

    def as_plain(self) -> dict:
        """The progress as plain values and tensors (nothing copied)."""
        return {"seed": self.seed, "setup": self.setup,
                "stages": None if self.stages is None
                else [record.as_plain() for record in self.stages]}

    @classmethod
    def from_plain(cls, plain: dict) -> FitProgress:
        """The inverse of :meth:`as_plain` (KeyError, TypeError or ValueError where
        malformed)."""
        stages = plain["stages"]
        return cls(seed=None if plain["seed"] is None else int(plain["seed"]),
                   setup=plain["setup"],
                   stages=None if stages is None
                   else [StageRecord.from_plain(record) for record in stages])


@dataclass
class StageRun:
    """A stage as its training callable sees it.

    Attributes:
        fit: the driver running it.
        stage: the stage.
        record: its record (``record.setup``: what ``prepare`` made, this run or the first).
        parameters: where the training callable may leave the stage's parameters (tensors
            and plain values) when the driver carries no module; recorded once it is done.
    """

    fit: StagedFit
    stage: Stage
    record: StageRecord
    parameters: dict | None = None

    @property
    def index(self) -> int:
        return self.record.index

    @property
    def seconds(self) -> float | None:
        """The seconds granted to the stage (None: no budget)."""
        return self.record.seconds

    @property
    def setup(self) -> Any:
        """What ``prepare`` made for the stage (in this run or the first)."""
        return self.record.setup

    @property
    def checkpoint(self) -> FitCheckpoint | None:
        """The fit's checkpoint, for :func:`~cnflow.training.train`."""
        return self.fit.checkpoint

    def substages(self) -> StagedFit:
        """A driver for stages run inside this one: its budget is this stage's seconds
        from this stage's start, and its records are kept in this stage's record."""
        return StagedFit(self.fit.checkpoint, self.seconds, clock=self.fit.clock,
                         _parent=self.record)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's state dict on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class StagedFit:
    """The driver of a staged fit (see the module's docstring).

    Arguments:
        checkpoint: the fit's checkpoint (None: none); its progress holds a
            :class:`FitProgress`, read back when it resumes.
        budget: the seconds the stages share (None: no limit), counted from the fit's start.
        clock: seconds of the fit so far (default: with a checkpoint, its clock, which counts
            earlier runs; else the time since this driver was made).

    Raises:
        cnflow.files.ModelFileError: the checkpoint's progress is not a staged fit's.
    """

    def __init__(self, checkpoint: FitCheckpoint | None, budget: float | None, *,
                 clock: Callable[[], float] | None = None,
                 _parent: StageRecord | None = None) -> None:
        if budget is not None and not (budget >= 0 and math.isfinite(budget)):
            raise ValueError(f"budget must be None or a finite number of seconds >= 0, got "
                             f"{budget!r}")
        self.checkpoint, self.budget = checkpoint, None if budget is None else float(budget)
        if clock is None:
            if checkpoint is not None:
                clock = checkpoint.elapsed
            else:
                started = time.perf_counter()

                def clock() -> float:
                    return time.perf_counter() - started
        self.clock = clock
        self._parent = _parent
        self.origin = 0.0 if _parent is None else float(_parent.started or 0.0)
        self.progress: FitProgress | None = None
        if _parent is None:
            self.progress = self._read_progress()

    # ------------------------------------------------------------ checkpoint records
    def _damaged(self, what: str) -> ModelFileError:
        path = None if self.checkpoint is None else self.checkpoint.path
        return ModelFileError(f"{path} is a damaged checkpoint: {what} (remove it or choose "
                              "another checkpoint path)")

    def _read_progress(self) -> FitProgress:
        """The checkpoint's progress (a new one if it has none yet), installed in it."""
        if self.checkpoint is None:
            return FitProgress()
        saved = self.checkpoint.progress.get(PROGRESS_KEY)
        if isinstance(saved, FitProgress):
            progress = saved
        elif saved is None:
            if self.checkpoint.resumed:
                raise self._damaged("it holds no record of a staged fit")
            progress = FitProgress()
        else:
            try:
                progress = FitProgress.from_plain(saved)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise self._damaged(f"malformed stage records ({err!r})") from None
        self.checkpoint.progress[PROGRESS_KEY] = progress  # written by its as_plain
        return progress

    def _write(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.write()

    def _top(self) -> FitProgress:
        if self.progress is None:
            raise RuntimeError("a staged fit's seed and set-up belong to the outermost stages")
        return self.progress

    def seed(self, fresh: int) -> int:
        """The fit's seed: the one a resumed checkpoint recorded, else ``fresh`` (recorded
        with the next write)."""
        progress = self._top()
        if progress.seed is None:
            progress.seed = int(fresh)
        return progress.seed

    def saved_setup(self, parse: Callable[[Any], Any]) -> Any:
        """``parse`` of the set-up a resumed checkpoint recorded (None: none recorded); a
        set-up that ``parse`` cannot read (KeyError, TypeError, ValueError) is a damaged
        checkpoint (:class:`cnflow.files.ModelFileError` naming the file)."""
        setup = self._top().setup
        if setup is None:
            return None
        try:
            return parse(setup)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise self._damaged(f"malformed set-up ({err!r})") from None

    def keep_setup(self, setup: Any) -> None:
        """Record the fit's set-up (plain values and tensors) and write the checkpoint."""
        self._top().setup = setup
        self._write()

    @property
    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` reading at which the budget ends (None: none)."""
        if self.budget is None:
            return None
        return time.perf_counter() + self.budget - (self.clock() - self.origin)

    def _records(self, stages: Sequence[Stage]) -> list[StageRecord]:
        """The stages' records: a resumed checkpoint's (checked to be of these stages), or
        new ones."""
        holder = self._parent if self._parent is not None else self.progress
        records = holder.substages if self._parent is not None else holder.stages
        names = [stage.name for stage in stages]
        if records is None:
            records = [StageRecord(index, stage.name) for index, stage in enumerate(stages)]
            if self._parent is not None:
                self._parent.substages = records
            else:
                self.progress.stages = records
        elif [record.name for record in records] != names:
            raise self._damaged(f"it records the stages {[r.name for r in records]}, this "
                                f"fit has {names}")
        return records

    # ------------------------------------------------------------ budgets
    def _grant(self, stages: Sequence[Stage], index: int) -> float | None:
        """The seconds stage ``index`` is granted now (see the module's docstring)."""
        if self.budget is None:
            return None
        stage = stages[index]
        if stage.share is not None:
            return stage.share * self.budget
        left = self.budget - (self.clock() - self.origin)
        reserved = sum(s.share for s in stages[index + 1:] if s.share is not None) * self.budget
        sharing = sum(1 for s in stages[index:] if s.share is None)
        return max(left - reserved, 0.0) / sharing

    # ------------------------------------------------------------ running
    def run(self, stages: Sequence[Stage], train: Callable[[StageRun], TrainResult], *,
            prepare: Callable[[StageRun], Any] | None = None,
            restore: Callable[[StageRun], None] | None = None,
            prior: TrainResult | None = None, module: nn.Module | None = None,
            generator: torch.Generator | None = None, device: torch.device | None = None,
            continue_after_fault: bool = False) -> TrainResult:
        """Run the stages that are not finished, in order.

        Arguments:
            stages: the stages (a resumed fit's must have the same names).
            train: trains one stage (passing ``run.checkpoint`` and ``run.seconds`` to
                :func:`~cnflow.training.train`); returns its result.
            prepare: makes what a stage needs before training and must reuse when it resumes
                (plain values and tensors, kept as ``run.setup``); called once per stage,
                before its seconds are granted (so that its time is not the stage's).
            restore: called for each stage a resumed checkpoint records as finished, in order
                (e.g. to rebuild a member from ``run.record.parameters``).
            prior: the result the fit continues (a warm start's), put first.
            module: the model the stages carry from one to the next: its state is recorded
                at the end of each stage and a finished stage's is loaded on resume.
            generator, device: the generator and device whose random states the stages
                carry (see :func:`~cnflow.training.checkpoint.rng_state`), recorded and
                restored with ``module``.
            continue_after_fault: the stages are independent: one that stopped on a fault it
                warned about does not end the others.

        Returns:
            The joined result (:func:`join_results`) of the finished stages and the one that
            stopped the fit (if any).

        Raises:
            TrainingFault: a stage's, with ``result`` the results so far joined.

        At the end of each stage the checkpoint is written, except after the last stage run
        inside another (whose own end is written next).
        """
        stages = list(stages)
        fixed = sum(stage.share for stage in stages if stage.share is not None)
        if fixed > 1 + 1e-9:
            raise ValueError(f"the stages' shares add up to {fixed} > 1")
        records = self._records(stages)
        carries = module is not None or generator is not None
        parts: list[TrainResult] = []
        for index, (stage, record) in enumerate(zip(stages, records)):
            run = StageRun(self, stage, record)
            if record.status == DONE:
                if module is not None:
                    module.load_state_dict(record.parameters)
                if record.rng is not None:
                    restore_rng_state(record.rng, generator, device or torch.device("cpu"))
                if restore is not None:
                    restore(run)
                result = record.result
            else:
                if record.status == PENDING:
                    record.setup = None if prepare is None else prepare(run)
                    record.started = self.clock()
                    record.seconds = self._grant(stages, index)
                    record.status = RUNNING
                try:
                    result = train(run)
                except TrainingFault as err:
                    partial = err.result if err.result is not None else TrainResult(
                        stop_reason="fault")
                    err.result = join_results(parts + [tag_result(partial, stage.tags)], prior)
                    raise
            parts.append(tag_result(result, stage.tags))
            if result.stop_reason == "interrupted":  # not finished: resumed from its loop
                break
            stops = result.stop_reason == "fault" and not continue_after_fault
            if record.status != DONE:
                record.status, record.result, record.substages = DONE, result, None
                record.parameters = _cpu_state(module) if module is not None else run.parameters
                if carries:
                    record.rng = rng_state(generator, device or torch.device("cpu"))
                if self._parent is None or not (stops or index == len(stages) - 1):
                    self._write()
            if stops:
                break
        return join_results(parts, prior)
