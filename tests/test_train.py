"""The shared training loop: it learns, it is repeatable, and faults never leave NaN weights."""

import math
import warnings

import pytest
import torch
from torch import nn

from cnflow import ODESolveError
from cnflow.training import TrainConfig, TrainingFault, train


class Gaussian(nn.Module):
    """A diagonal Gaussian with learnable mean and log-scale: the simplest density model."""

    def __init__(self, dim):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def log_prob(self, x):
        u = (x - self.mean) * torch.exp(-self.log_scale)
        return (-0.5 * u**2 - self.log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def nll(model, x):
    return -model.log_prob(x).mean()


def data(n=2000):
    return torch.randn(n, 2, dtype=torch.float64) * torch.tensor([2.0, 0.5]) + 3.0


def test_maximum_likelihood_recovers_mean_and_scale():
    X = data()
    model = Gaussian(2)
    result = train(model, X, nll, TrainConfig(max_iter=1500, batch_size=256, lr=0.02))
    torch.testing.assert_close(model.mean.detach(), X.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(model.log_scale.exp().detach(), X.std(0), atol=0.05, rtol=0)
    assert len(result.history) == 1500 and result.stop_reason == "max_iter"
    assert {"loss", "nfe_forward", "nfe_backward", "seconds"} <= set(result.history[0])


def test_repeatable_with_a_generator():
    X = data()
    runs = []
    for _ in range(2):
        model = Gaussian(2)
        train(model, X, nll, TrainConfig(max_iter=30, batch_size=64, lr=0.01),
              generator=torch.Generator().manual_seed(5))
        runs.append(torch.cat([p.detach() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def _faulty_loss(fail_at, exc=None):
    calls = {"n": 0}

    def loss(model, x):
        calls["n"] += 1
        out = nll(model, x)
        if calls["n"] >= fail_at:
            if exc is not None:
                raise exc
            return out * float("nan")
        return out

    return loss


@pytest.mark.parametrize("exc", [None, ODESolveError("step size underflow at t=0.5", t=0.5)])
def test_fault_without_validation_raises_and_keeps_last_good_parameters(exc):
    X = data()
    model = Gaussian(2)
    with pytest.raises(TrainingFault, match="iteration 11") as info:
        train(model, X, _faulty_loss(11, exc), TrainConfig(max_iter=50, lr=0.05))
    params = torch.cat([p.detach() for p in model.parameters()])
    assert torch.isfinite(params).all() and params.abs().sum() > 0
    assert len(info.value.result.history) == 10


def test_fault_with_validation_warns_and_keeps_best():
    X = data()
    model = Gaussian(2)
    with pytest.warns(RuntimeWarning, match="non-finite|nan"):
        result = train(model, X[:1500], _faulty_loss(45), TrainConfig(
            max_iter=100, lr=0.05, validation_interval=10), X_val=X[1500:], val_loss_fn=nll)
    assert result.stop_reason == "fault"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.best_val_loss == pytest.approx(nll(model, X[1500:]).item())


def test_early_stopping_keeps_best_validation_parameters():
    X = data(3000)
    model = Gaussian(2)
    result = train(model, X[:2000], nll, TrainConfig(max_iter=5000, lr=0.05,
                   validation_interval=10, n_iter_no_change=3, tol=1e-3),
                   X_val=X[2000:])
    assert result.stop_reason == "early_stopping" and result.n_iter < 5000
    assert nll(model, X[2000:]).item() == pytest.approx(result.best_val_loss)


def test_keyboard_interrupt_leaves_usable_model():
    X = data()
    model = Gaussian(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(model, X, _faulty_loss(20, KeyboardInterrupt()), TrainConfig(max_iter=50))
    assert result.stop_reason == "interrupted" and result.n_iter == 19
    assert any("interrupted" in str(w.message) for w in caught)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_failed_validation_solve_warns_and_keeps_best():
    X = data()
    model = Gaussian(2)
    calls = {"n": 0}

    def val_loss(m, x):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise ODESolveError("step size underflow at t=0.3", t=0.3)
        return nll(m, x)

    with pytest.warns(RuntimeWarning, match="validation solve failed"):
        result = train(model, X[:1500], nll, TrainConfig(max_iter=100, lr=0.05,
                       validation_interval=10), X_val=X[1500:], val_loss_fn=val_loss)
    assert result.stop_reason == "fault" and result.n_iter == 30
    assert nll(model, X[1500:]).item() == pytest.approx(result.best_val_loss)


def test_max_seconds_stops_training_on_time():
    import time as _time


    model = torch.nn.Linear(2, 1)

    def slow_loss(m, x):
        _time.sleep(0.02)
        return m(x).square().mean()

    result = train(model, torch.randn(64, 2), slow_loss,
                   TrainConfig(max_iter=10_000, batch_size=8, max_seconds=0.2))
    assert result.stop_reason == "time_limit"
    assert 3 <= result.n_iter <= 12 and len(result.history) == result.n_iter


def test_time_limit_scores_the_steps_since_the_last_validation():
    """When the time runs out between two validations, the last step's parameters are
    scored and kept if they are the best: the steps since the last scoring count."""
    import time as _time

    X = data(1200)
    model = Gaussian(2)

    def slow_nll(m, x):
        _time.sleep(0.01)
        return nll(m, x)

    result = train(model, X[:1000], slow_nll,
                   TrainConfig(max_iter=10_000, batch_size=128, lr=0.05, max_seconds=0.5,
                               validation_interval=10_000, validate_at_start=True),
                   X_val=X[1000:], val_loss_fn=nll)
    assert result.stop_reason == "time_limit" and result.n_iter >= 5
    last = result.history[-1]
    assert last["iteration"] == result.n_iter and "val_loss" in last
    # the fit improved on the start (mean 0, scale 1 against data at mean 3): the last step's
    # parameters are the ones kept, and their held-out loss is the one recorded
    assert result.best_val_loss == pytest.approx(last["val_loss"])
    assert nll(model, X[1000:]).item() == pytest.approx(last["val_loss"])
    assert result.best_val_loss < nll(Gaussian(2), X[1000:]).item() - 1


@pytest.mark.parametrize("scorings_after, steps", [(0, 8), (1, 4)])
def test_a_time_budget_keeps_back_the_last_validation(monkeypatch, scorings_after, steps):
    """On a clock that only the losses advance (a step 1/8 s, a validation 1/2 s), a 2-s
    budget with a validation at the start takes 8 steps, 1.5 s in, and its last validation
    ends at 2 s (taking steps until 2 s and then validating would end at 2.5 s); with one
    more scoring to follow the phase, 4 steps, so that it too ends at 2 s."""
    import types

    from cnflow.training import loop

    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def ticking(seconds):
        def loss(m, x):
            clock[0] += seconds
            return nll(m, x)
        return loss

    X = data(1100)
    result = train(Gaussian(2), X[:1000], ticking(0.125),
                   TrainConfig(max_iter=1000, batch_size=100, lr=0.05, max_seconds=2.0,
                               validation_interval=1000, validate_at_start=True,
                               scorings_after=scorings_after),
                   X_val=X[1000:], val_loss_fn=ticking(0.5))
    assert (result.stop_reason, result.n_iter) == ("time_limit", steps)
    assert "val_loss" in result.history[-1] and clock[0] == 2.0 - 0.5 * scorings_after


def test_cosine_schedule_by_iterations_and_by_time():
    """Iterations: lr (1 + cos(π (i − 1) / max_iter)) / 2. With a time budget the schedule
    reaches its end when the time does, however many iterations that is."""
    import time as _time

    model = torch.nn.Linear(2, 1)
    result = train(model, torch.randn(64, 2), lambda m, x: m(x).square().mean(),
                   TrainConfig(max_iter=10, batch_size=8, lr=0.1, lr_schedule="cosine"))
    expected = [0.05 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert [e["lr"] for e in result.history] == pytest.approx(expected, abs=1e-12)

    def slow_loss(m, x):
        _time.sleep(0.01)
        return m(x).square().mean()

    result = train(model, torch.randn(64, 2), slow_loss,
                   TrainConfig(max_iter=10**6, batch_size=8, lr=0.1, lr_schedule="cosine",
                               max_seconds=0.4))
    lrs = [e["lr"] for e in result.history]
    assert result.stop_reason == "time_limit" and len(lrs) >= 5
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.02
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_the_old_module_name_still_imports_with_a_deprecation_warning():
    import importlib
    import sys

    sys.modules.pop("cnflow.train", None)
    with pytest.warns(DeprecationWarning, match="cnflow.training"):
        old = importlib.import_module("cnflow.train")
    from cnflow import training

    assert old.train is training.train and old.TrainConfig is training.TrainConfig


def test_learning_rate_follows_the_cosine_by_iterations_and_by_time():
    from cnflow.training.loop import _learning_rate

    cosine = TrainConfig(max_iter=10, lr=0.2, lr_schedule="cosine")
    assert _learning_rate(cosine, 1, None) == pytest.approx(0.2)  # progress 0
    assert _learning_rate(cosine, 6, None) == pytest.approx(0.1)  # progress 1/2
    assert _learning_rate(cosine, 11, None) == pytest.approx(0.0, abs=1e-15)  # progress 1
    timed = TrainConfig(max_iter=10, lr=0.2, lr_schedule="cosine", max_seconds=4.0)
    assert _learning_rate(timed, 1, 2.0) == pytest.approx(0.1)  # the time budget is ahead
    assert _learning_rate(timed, 6, 0.4) == pytest.approx(0.1)  # the iterations are ahead
    assert _learning_rate(timed, 1, None) == pytest.approx(0.2)  # the clock not followed
    assert _learning_rate(timed, 2, 9.0) == pytest.approx(0.0, abs=1e-15)  # clipped at 1
    assert _learning_rate(cosine, 3, 100.0) == _learning_rate(cosine, 3, None)  # no budget
    constant = TrainConfig(max_iter=10, lr=0.2, max_seconds=4.0)
    assert _learning_rate(constant, 7, 3.0) == 0.2


def test_minibatch_sampler_visits_every_row_once_per_epoch_and_repeats_with_a_seed():
    from cnflow.training.loop import _MinibatchSampler

    sampler = _MinibatchSampler(12, 4, torch.Generator().manual_seed(3))
    for _ in range(3):  # three epochs
        epoch = torch.cat([sampler.next_indices() for _ in range(3)])
        assert sorted(epoch.tolist()) == list(range(12))
    ragged = _MinibatchSampler(10, 4, torch.Generator().manual_seed(3))
    first = torch.cat([ragged.next_indices() for _ in range(2)])  # the last 2 rows skipped
    assert len(set(first.tolist())) == 8
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, expected[:8], rtol=0, atol=0)
    again = _MinibatchSampler(10, 4, torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([again.next_indices() for _ in range(2)]), first)


def test_validation_keeps_the_best_parameters_and_stops_after_its_patience():
    from cnflow.training.loop import _Validation

    X = data(200)
    model = Gaussian(2)
    validation = _Validation(X, nll, 1024, TrainConfig(n_iter_no_change=2, tol=1e-3))
    start = nll(model, X).item()
    validation.start(model)
    assert validation.best_loss == pytest.approx(start) and validation.best_state is not None
    last_good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.mean.fill_(3.0)  # better
    entry = {}
    assert validation.update(model, 1, entry, last_good) is None
    assert entry["val_loss"] == pytest.approx(nll(model, X).item()) and entry["val_loss"] < start
    with torch.no_grad():
        model.mean.fill_(-5.0)  # worse, twice
    assert validation.update(model, 2, {}, last_good) is None
    assert validation.update(model, 3, {}, last_good) == "early_stopping"
    assert validation.evals_no_change == 2
    assert validation.restore_best(model) == pytest.approx(entry["val_loss"])
    torch.testing.assert_close(model.mean.detach(), torch.full((2,), 3.0, dtype=torch.float64))


def test_validation_fault_warns_and_undoes_the_step_when_nothing_was_validated():
    from cnflow.training.loop import _Validation

    X = data(200)
    model = Gaussian(2)
    last_good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.mean.fill_(1.0)
    validation = _Validation(X, lambda m, x: nll(m, x) * math.nan, 1024, TrainConfig())
    entry = {}
    with pytest.warns(RuntimeWarning, match="validation loss became nan at iteration 4"):
        assert validation.update(model, 4, entry, last_good) == "fault"
    assert "val_loss" not in entry and torch.equal(model.mean.detach(), last_good["mean"])
    assert validation.restore_best(model) is None
    assert [i for i in range(1, 26) if _Validation(X, nll, 1024, TrainConfig(
        max_iter=25, validation_interval=10)).due(i)] == [10, 20, 25]


def test_step_takes_no_step_on_non_finite_gradients():
    from cnflow.training.loop import _as_fault, _step

    model = Gaussian(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    batch = data(16)

    def bomb(x):
        mean = model.mean * 1.0
        mean.register_hook(lambda g: g * math.inf)
        return (x - mean).square().mean() + model.log_scale.sum()

    with pytest.raises(TrainingFault, match="non-finite gradients at iteration 3"):
        _step(model, optimizer, bomb, batch, None, 0.1, 3)
    assert torch.equal(model.mean.detach(), torch.zeros(2, dtype=torch.float64))
    loss = _step(model, optimizer, lambda x: nll(model, x), batch, None, 0.05, 4)
    assert not loss.requires_grad and optimizer.param_groups[0]["lr"] == 0.05
    assert model.mean.detach().abs().sum() > 0
    err = ODESolveError("step size underflow", t=0.5)
    assert str(_as_fault(err, 7)) == "the ODE solve failed at iteration 7: step size underflow"
    fault = TrainingFault("x")
    assert _as_fault(fault, 7) is fault
