"""The staged-fit driver (cnflow.training.stages): budget shares, typed progress through a
checkpoint file, resuming at the right stage, faults, interruptions, history tags and
iteration numbering."""

import pytest
import torch

from cnflow import ModelFileError
from cnflow.training import FitCheckpoint, TrainConfig, TrainingFault, TrainResult, train
from cnflow.training.stages import (
    FitProgress,
    Stage,
    StagedFit,
    StageRecord,
    join_results,
    tag_result,
)


class FakeClock:
    """A clock that moves only when a stage spends its seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _result(n_iter, stop_reason="max_iter", best=None):
    return TrainResult(history=[{"iteration": i, "loss": float(i)} for i in range(1, n_iter + 1)],
                       n_iter=n_iter, best_val_loss=best, stop_reason=stop_reason)


def _spending(clock, granted, fraction=1.0, n_iter=2):
    """A stage body that spends ``fraction`` of its seconds and records what it was granted."""
    def body(run):
        granted.append(run.seconds)
        clock.now += fraction * run.seconds
        return _result(n_iter)
    return body


# ------------------------------------------------------------------ budgets
def test_equal_shares_split_the_time_left_and_add_up_to_the_budget():
    clock, granted = FakeClock(), []
    clock.now = 10.0  # spent before the stages (e.g. preprocessing)
    StagedFit(None, 100.0, clock=clock).run([Stage("a"), Stage("b"), Stage("c")],
                                            _spending(clock, granted))
    assert granted == pytest.approx([30.0, 30.0, 30.0])
    assert sum(granted) == pytest.approx(100.0 - 10.0)


def test_a_stage_that_ends_early_leaves_its_time_to_the_later_ones():
    clock, granted = FakeClock(), []
    StagedFit(None, 90.0, clock=clock).run([Stage("a"), Stage("b"), Stage("c")],
                                           _spending(clock, granted, fraction=0.5))
    # 30 granted, 15 spent; then (90 - 15) / 2 = 37.5, 18.75 spent; then the rest
    assert granted == pytest.approx([30.0, 37.5, 90.0 - 15.0 - 18.75])


def test_fixed_shares_and_the_rest():
    clock, granted = FakeClock(), []
    StagedFit(None, 200.0, clock=clock).run([Stage("fm", share=0.75), Stage("ft")],
                                            _spending(clock, granted, fraction=1.0))
    assert granted == pytest.approx([150.0, 50.0])
    # a later fixed share is reserved from what the stages without one split
    clock, granted = FakeClock(), []
    StagedFit(None, 100.0, clock=clock).run([Stage("a"), Stage("b", share=0.5)],
                                            _spending(clock, granted))
    assert granted == pytest.approx([50.0, 50.0])
    # an overrun leaves nothing, never a negative budget
    clock, granted = FakeClock(), []
    StagedFit(None, 10.0, clock=clock).run([Stage("a"), Stage("b")],
                                           _spending(clock, granted, fraction=3.0))
    assert granted == pytest.approx([5.0, 0.0])


def test_without_a_budget_no_stage_has_a_limit():
    granted = []

    def body(run):
        granted.append(run.seconds)
        return _result(1)

    StagedFit(None, None).run([Stage("a"), Stage("b", share=0.5)], body)
    assert granted == [None, None]


def test_bad_stages_and_budgets_are_refused():
    with pytest.raises(ValueError, match="share"):
        Stage("a", share=1.5)
    with pytest.raises(ValueError, match="add up to"):
        StagedFit(None, 10.0).run([Stage("a", share=0.6), Stage("b", share=0.6)],
                                  lambda run: _result(1))
    with pytest.raises(ValueError, match="budget"):
        StagedFit(None, -1.0)


def test_substages_share_their_stage_s_seconds_from_its_start():
    clock, inner = FakeClock(), []

    def member(run):
        clock.now += 4.0  # after the stage started: counts against its phases
        return run.substages().run([Stage("fm", share=0.75), Stage("ft")],
                                   _spending(clock, inner, fraction=0.5))

    StagedFit(None, 80.0, clock=clock).run([Stage("m0"), Stage("m1")], member)
    # member 0: 40 s; fm 30 (15 spent), ft 40 - 4 - 15 = 21; member 1 the rest
    left = 80.0 - (4.0 + 15.0 + 10.5)
    assert inner[:2] == pytest.approx([30.0, 21.0])
    assert inner[2:] == pytest.approx([0.75 * left, left - 4.0 - 0.375 * left])


# ------------------------------------------------------------------ history
def test_tags_and_iterations_numbered_on():
    prior = _result(3)
    first, second = _result(2, best=1.5), _result(4, stop_reason="early_stopping")
    joined = join_results([tag_result(first, {"member": 0}), tag_result(second, {"member": 1})],
                          prior)
    assert [h["iteration"] for h in joined.history] == list(range(1, 10))
    assert [h.get("member") for h in joined.history] == [None] * 3 + [0] * 2 + [1] * 4
    assert joined.n_iter == 9 and joined.best_val_loss == 1.5
    assert joined.stop_reason == "early_stopping"
    # nothing was changed in place
    assert [h["iteration"] for h in second.history] == [1, 2, 3, 4]
    assert "member" not in second.history[0]


def test_the_driver_tags_each_stage_s_history():
    lengths = iter([2, 3])
    result = StagedFit(None, None).run(
        [Stage("fm", tags={"objective": "flow_matching"}),
         Stage("ft", tags={"objective": "maximum_likelihood"})],
        lambda run: _result(next(lengths)))
    assert [(h["iteration"], h["objective"][0]) for h in result.history] == [
        (1, "f"), (2, "f"), (3, "m"), (4, "m"), (5, "m")]
    assert result.n_iter == 5


# ------------------------------------------------------------------ faults, interruptions
def test_a_fault_in_stage_two_keeps_stage_one_and_raises_with_the_joined_result():
    fit = StagedFit(None, None)

    def body(run):
        if run.index == 1:
            fault = TrainingFault("the loss became nan")
            fault.result = _result(2, stop_reason="fault")
            raise fault
        return _result(3)

    with pytest.raises(TrainingFault, match="nan") as error:
        fit.run([Stage("one", tags={"k": 1}), Stage("two", tags={"k": 2}), Stage("three")],
                body)
    joined = error.value.result
    assert joined.n_iter == 5 and joined.stop_reason == "fault"
    assert [(h["iteration"], h["k"]) for h in joined.history] == [
        (1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert [r.status for r in fit.progress.stages] == ["done", "running", "pending"]
    assert fit.progress.stages[0].result.n_iter == 3


def test_an_interrupted_stage_ends_the_fit_unfinished():
    called = []

    def body(run):
        called.append(run.index)
        return _result(2, stop_reason="interrupted" if run.index == 1 else "max_iter")

    fit = StagedFit(None, None)
    result = fit.run([Stage("a"), Stage("b"), Stage("c")], body)
    assert called == [0, 1] and result.stop_reason == "interrupted" and result.n_iter == 4
    assert [r.status for r in fit.progress.stages] == ["done", "running", "pending"]


@pytest.mark.parametrize("independent", [False, True])
def test_a_warned_fault_ends_dependent_stages_only(independent):
    called = []

    def body(run):
        called.append(run.index)
        return _result(1, stop_reason="fault" if run.index == 0 else "max_iter")

    StagedFit(None, None).run([Stage("a"), Stage("b")], body,
                              continue_after_fault=independent)
    assert called == ([0, 1] if independent else [0])


# ------------------------------------------------------------------ checkpoints
class _Stop(Exception):
    pass


def _toy_fit(path, stop_at_step=None, trained=None):
    """Three stages training one linear model on a fixed least-squares problem, each from
    where the last one ended, with the checkpoint at ``path`` (None: none); raises _Stop at
    the ``stop_at_step``-th loss evaluation."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    X = torch.randn(40, 4)
    generator = torch.Generator().manual_seed(1)
    calls = [0]

    def loss(m, batch):
        calls[0] += 1
        if calls[0] == stop_at_step:
            raise _Stop
        noise = 0.01 * torch.randn(len(batch))  # the global generator: restored on resume
        return (m(batch[:, :3]).squeeze(1) - batch[:, 3] + noise).square().mean()

    def body(run):
        if trained is not None:
            trained.append(run.index)
        return train(model, X, loss, TrainConfig(max_iter=6, batch_size=8, lr=0.05),
                     generator=generator, checkpoint=run.checkpoint)

    checkpoint = None if path is None else FitCheckpoint.open(path, 0, {"toy": 1})
    fit = StagedFit(checkpoint, None)
    seed = fit.seed(1234)
    stages = [Stage(f"s{k}", tags={"stage": k}) for k in range(3)]
    result = fit.run(stages, body, module=model, generator=generator)
    return model, result, seed


def test_typed_progress_round_trips_through_a_checkpoint_and_resumes_at_the_right_stage(
        tmp_path):
    reference, expected, _ = _toy_fit(None)
    path = tmp_path / "stages.ckpt"
    with pytest.raises(_Stop):
        _toy_fit(path, stop_at_step=9)  # the third step of the second stage
    saved = torch.load(path, weights_only=True)["progress"]["staged fit"]
    progress = FitProgress.from_plain(saved)
    assert progress.seed == 1234
    assert [(r.index, r.name, r.status) for r in progress.stages] == [
        (0, "s0", "done"), (1, "s1", "running"), (2, "s2", "pending")]
    assert progress.stages[0].result.n_iter == 6 and progress.stages[0].parameters is not None
    assert isinstance(progress.stages[0], StageRecord)
    assert FitProgress.from_plain(progress.as_plain()) == progress

    trained = []
    model, result, seed = _toy_fit(path, trained=trained)
    assert trained == [1, 2] and seed == 1234  # stage 0 restored, stage 1 resumed
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    assert result.n_iter == expected.n_iter == 18
    assert [h["loss"] for h in result.history] == [h["loss"] for h in expected.history]
    assert [h["stage"] for h in result.history] == [0] * 6 + [1] * 6 + [2] * 6

    trained.clear()  # finished: nothing trains again, the result comes back
    model, again, _ = _toy_fit(path, trained=trained)
    assert trained == [] and again.history == result.history


def test_substage_records_live_in_their_stage_until_it_is_done(tmp_path):
    checkpoint = FitCheckpoint.open(tmp_path / "nested.ckpt", 60, {"toy": 2})
    fit, seen, writes = StagedFit(checkpoint, None), [], []
    checkpoint.write = lambda loop_state=None: writes.append(
        [r.status for r in fit.progress.stages])

    def member(run):
        def phase(inner):
            seen.append([r.status for r in run.record.substages])
            return _result(1)
        return run.substages().run([Stage("fm"), Stage("ft")], phase)

    fit.run([Stage("m0"), Stage("m1")], member)
    assert seen == [["running", "pending"], ["done", "running"]] * 2
    # the phases' last end is written with its member's
    assert writes == [["running", "pending"], ["done", "pending"],
                      ["done", "running"], ["done", "done"]]
    assert all(r.substages is None for r in fit.progress.stages)


def test_checkpoints_of_other_fits_or_formats_are_clear_errors(tmp_path):
    path = tmp_path / "fit.ckpt"
    checkpoint = FitCheckpoint.open(path, 0, {"toy": 3})
    StagedFit(checkpoint, None).run([Stage("a"), Stage("b")], lambda run: _result(1))
    with pytest.raises(ModelFileError, match="records the stages"):
        StagedFit(FitCheckpoint.open(path, 0, {"toy": 3}), None).run(
            [Stage("a"), Stage("c")], lambda run: _result(1))

    saved = torch.load(path, weights_only=True)
    del saved["progress"]["staged fit"]["stages"][0]["status"]
    torch.save(saved, path)
    with pytest.raises(ModelFileError, match="damaged checkpoint") as error:
        StagedFit(FitCheckpoint.open(path, 0, {"toy": 3}), None)
    assert str(path) in str(error.value)

    saved["progress"] = {}
    torch.save(saved, path)
    with pytest.raises(ModelFileError, match="no record of a staged fit"):
        StagedFit(FitCheckpoint.open(path, 0, {"toy": 3}), None)

    saved["format"] = "cnflow-checkpoint/1"
    torch.save(saved, path)
    with pytest.raises(ModelFileError, match="another format"):
        FitCheckpoint.open(path, 0, {"toy": 3})


def test_a_finished_float64_fit_comes_back_from_its_checkpoint_unrounded(tmp_path):
    """A finished member is rebuilt from its stage record in the fit's dtype (cast before
    its parameters are loaded, so float64 values are not rounded through float32)."""
    import numpy as np

    from cnflow import PlanarFlowDensity

    X = np.random.default_rng(0).normal(size=(64, 2))
    settings = dict(n_layers=2, max_iter=5, dtype="float64", random_state=0, device="cpu",
                    checkpoint=tmp_path / "f64.ckpt")
    fitted = PlanarFlowDensity(**settings).fit(X)
    again = PlanarFlowDensity(**settings).fit(X)  # finished: restored, not trained
    for name, value in fitted.flow_.state_dict().items():
        assert again.flow_.state_dict()[name].dtype == torch.float64
        torch.testing.assert_close(again.flow_.state_dict()[name], value, rtol=0, atol=0)
    assert again.history_ == fitted.history_


def test_a_finished_stage_without_its_result_is_a_damaged_record():
    record = StageRecord(0, "a", status="done", result=_result(1)).as_plain()
    assert StageRecord.from_plain(record).result.n_iter == 1
    record["result"] = None
    with pytest.raises(ValueError, match="no result"):
        StageRecord.from_plain(record)
    with pytest.raises(ValueError, match="status"):
        StageRecord.from_plain({**record, "status": "half"})
