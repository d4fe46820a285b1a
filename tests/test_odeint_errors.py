"""Bad arguments raise ValueError; solves that cannot meet their tolerance raise quickly."""

import time

import pytest
import torch

from cnflow import (
    MaxStepsExceededError,
    NonFiniteStateError,
    ODESolveError,
    SolverStats,
    StepSizeUnderflowError,
    odeint,
    odeint_adjoint,
)

F64 = torch.float64
T01 = torch.tensor([0.0, 1.0], dtype=F64)


def decay(t, y):
    return -y


@pytest.mark.parametrize("t,match", [
    (torch.tensor([0.0, 1.0, 0.5]), "strictly increasing or strictly decreasing"),
    (torch.tensor([0.0, 1.0, 1.0]), "strictly increasing or strictly decreasing"),
    (torch.tensor([[0.0, 1.0]]), "1-D"),
    (torch.tensor([]), "1-D"),
    (torch.tensor([0.0, float("nan")]), "NaN"),
    (torch.tensor([0.0, float("inf")]), "NaN or infinite"),
])
def test_bad_times(t, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, torch.ones(2), t)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="dopri5.*bosh3.*euler.*midpoint.*rk4"):
        odeint(decay, torch.ones(2), T01, method="rk45")


@pytest.mark.parametrize("kw,match", [
    ({"rtol": -1e-3}, "rtol"),
    ({"atol": -1.0}, "atol"),
    ({"rtol": float("nan")}, "rtol"),
    ({"rtol": 0.0, "atol": 0.0}, "both be zero"),
    ({"step_size": 0.1}, "fixed-step methods only"),
    ({"method": "rk4", "step_size": 0.0}, "step_size must be a positive"),
    ({"method": "rk4", "step_size": -0.1}, "step_size must be a positive"),
    ({"max_num_steps": 0}, "max_num_steps"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, torch.ones(2), T01, **kw)


def test_bad_initial_states():
    with pytest.raises(ValueError, match="floating point"):
        odeint(decay, torch.ones(2, dtype=torch.int64), T01)
    with pytest.raises(ValueError, match="NaN or infinite"):
        odeint(decay, torch.tensor([1.0, float("nan")]), T01)
    with pytest.raises(ValueError, match="share dtype"):
        odeint(lambda t, s: s, (torch.ones(2), torch.ones(2, dtype=F64)), T01)
    with pytest.raises(ValueError, match="must be a tensor"):
        odeint(decay, [1.0, 2.0], T01)


def test_dynamics_returning_wrong_shapes():
    with pytest.raises(ValueError, match=r"shape \(3,\).*expected the state's shape \(2,\)"):
        odeint(lambda t, y: torch.ones(3), torch.ones(2), T01)
    with pytest.raises(ValueError, match="tuple of 2 tensors"):
        odeint(lambda t, s: s[0], (torch.ones(2), torch.ones(3)), T01)
    with pytest.raises(ValueError, match=r"at position 1"):
        odeint(lambda t, s: (s[0], s[0]), (torch.ones(2), torch.ones(3)), T01)
    with pytest.raises(ValueError, match="dtype"):
        odeint(lambda t, y: -y.float(), torch.ones(2, dtype=F64), T01)


def test_finite_time_blow_up_raises_within_seconds():
    """dy/dt = y², y(0) = 1 blows up at t = 1: the solve stops there with the time reached."""
    start = time.perf_counter()
    with pytest.raises(ODESolveError, match=r"t=1\.0") as info:
        odeint(lambda t, y: y**2, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0]))
    assert time.perf_counter() - start < 10
    assert isinstance(info.value, RuntimeError)
    assert info.value.t == pytest.approx(1.0, abs=1e-4)


def test_max_num_steps_reports_time_reached():
    stats = SolverStats()
    with pytest.raises(MaxStepsExceededError, match="max_num_steps=20") as info:
        odeint(lambda t, y: torch.cos(20 * t) * torch.ones_like(y), torch.ones(1, dtype=F64),
               torch.tensor([0.0, 10.0]), rtol=1e-9, atol=1e-9, max_num_steps=20, stats=stats)
    assert 0.0 < info.value.t < 10.0
    assert stats.n_steps == 20


def test_fixed_step_over_budget_raises_before_work():
    calls = []
    with pytest.raises(MaxStepsExceededError, match="needs 1000 steps"):
        odeint(lambda t, y: calls.append(1) or -y, torch.ones(1), T01, method="euler",
               step_size=1e-3, max_num_steps=999)
    assert not calls


def test_nan_in_dynamics_raises_with_time():
    """f defined only for t < 1 (sqrt(1 - t)): the solve stops near t = 1."""
    def f(t, y):
        return torch.sqrt(1 - t) * torch.ones_like(y)

    with pytest.raises(NonFiniteStateError, match="NaN or infinite") as info:
        odeint(f, torch.zeros(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64))
    assert info.value.t == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(NonFiniteStateError, match="between t=0.5 and t=1"):
        odeint(lambda t, y: torch.log(0.75 - t) * torch.ones_like(y), torch.zeros(1),
               torch.tensor([0.0, 0.5, 1.0]), method="rk4", step_size=0.1)


def test_nan_derivative_at_start():
    with pytest.raises(NonFiniteStateError, match="t=0"):
        odeint(lambda t, y: y / 0 * 0, torch.ones(1), T01)


def test_stiff_problem_underflows_or_hits_step_cap_not_hang():
    """A very stiff linear problem with an explicit method: a clear error, not an endless loop."""
    start = time.perf_counter()
    with pytest.raises((StepSizeUnderflowError, MaxStepsExceededError)):
        odeint(lambda t, y: -1e9 * (y - torch.cos(t)), torch.zeros(1, dtype=F64),
               torch.tensor([0.0, 1.0], dtype=F64), max_num_steps=2000)
    assert time.perf_counter() - start < 10


def test_adjoint_needs_to_know_its_parameters():
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint_adjoint(decay, torch.ones(2), T01)
    with pytest.raises(ValueError, match="unknown method"):
        odeint_adjoint(decay, torch.ones(2), T01, adjoint_params=(), adjoint_method="nope")
    with pytest.raises(ValueError, match="adjoint_rtol|rtol"):
        odeint_adjoint(decay, torch.ones(2), T01, adjoint_params=(), adjoint_rtol=-1.0)


def test_pure_relative_tolerance_with_zero_components():
    """atol = 0 and a component at exactly 0: 0/0 is no error, not a NaN step size."""
    stats = SolverStats()
    y = odeint(lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=F64), T01, rtol=1e-6,
               atol=0.0, stats=stats)
    assert y[-1].item() == pytest.approx(1.0, rel=1e-12) and stats.n_steps < 20
    y = odeint(lambda t, y: -y * torch.tensor([1.0, 0.0], dtype=F64),
               torch.tensor([1.0, 0.0], dtype=F64), T01, rtol=1e-8, atol=0.0)
    assert y[-1, 0].item() == pytest.approx(0.36787944117144233, rel=1e-7)
    assert y[-1, 1].item() == 0.0


def test_empty_state_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        odeint(decay, torch.zeros(0), T01)
