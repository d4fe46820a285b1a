"""SolveOptions: one validated description of a solve, and the one place above the numerical
core that picks between odeint and odeint_adjoint."""

import math
import re
from pathlib import Path

import pytest
import torch

from cnflow import CNF, ODEBlock, SolveOptions, SolverStats, odeint


@pytest.mark.parametrize("changes, message", [
    ({"method": "rk45"}, "unknown method"),
    ({"rtol": -1.0}, "rtol must be a non-negative number"),
    ({"rtol": 0.0, "atol": 0.0}, "cannot both be zero"),
    ({"step_size": 0.1}, "fixed-step methods only"),
    ({"max_num_steps": 0}, "max_num_steps must be a positive integer"),
    ({"max_num_steps": True}, "max_num_steps must be a positive integer"),
    ({"adjoint": 1}, "adjoint must be True or False"),
    ({"seminorm": "yes"}, "seminorm must be True or False"),
    ({"first_step": 0.0}, "first_step must be positive and finite"),
    ({"first_step": "auto"}, "first_step must be a positive number or None"),
])
def test_bad_settings_fail_where_they_are_written(changes, message):
    with pytest.raises(ValueError, match=message):
        SolveOptions(**changes)
    with pytest.raises(ValueError, match=message):
        SolveOptions().replace(**changes)


def test_solve_is_odeint_and_takes_adjoint_gradients_only_when_asked():
    f = torch.nn.Linear(3, 3).double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    options = SolveOptions(rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        reference = odeint(lambda s, y: f(y), y0, t, rtol=1e-9, atol=1e-9)
        # under no_grad nothing is recorded: a plain solve, the same values
        torch.testing.assert_close(options.solve(lambda s, y: f(y), y0, t), reference,
                                   rtol=0, atol=0)
    grads = {}
    for adjoint in (True, False):
        forward, backward = SolverStats(), SolverStats()
        ys = options.replace(adjoint=adjoint).solve(
            lambda s, y: f(y), y0, t, params=tuple(f.parameters()), stats=forward,
            adjoint_stats=backward)
        torch.testing.assert_close(ys, reference, rtol=1e-12, atol=1e-12)
        f.zero_grad()
        ys[-1].square().sum().backward()
        grads[adjoint] = f.weight.grad.clone()
        assert forward.nfe > 0 and (backward.nfe > 0) is adjoint
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-6, atol=1e-8)


def test_fixed_step_solve_matches_the_exponential():
    options = SolveOptions(method="rk4", step_size=0.01, adjoint=False)
    ys = options.solve(lambda s, y: -y, torch.ones(1, dtype=torch.float64),
                       torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(ys[-1, 0]) == pytest.approx(math.exp(-1), abs=1e-9)


def test_models_describe_their_solves_by_the_options():
    flow = CNF(2, hidden=(8,), method="bosh3", rtol=1e-4, atol=1e-6, adjoint=False)
    assert flow.solve_options == SolveOptions(method="bosh3", rtol=1e-4, atol=1e-6,
                                              adjoint=False)

    class Decay(torch.nn.Module):
        def forward(self, t, h):
            return -h

    block = ODEBlock(Decay(), rtol=1e-8, atol=1e-8).double()
    h = torch.ones(3, 2, dtype=torch.float64)
    torch.testing.assert_close(block(h), h * math.exp(-1), rtol=1e-7, atol=1e-9)


def test_only_the_options_module_calls_odeint_adjoint_outside_the_core():
    """Above cnflow/ode/, no module chooses between odeint and odeint_adjoint itself."""
    root = Path(__file__).resolve().parents[1] / "cnflow"
    callers = []
    for path in root.rglob("*.py"):
        if "ode" in path.relative_to(root).parts[:1]:
            continue
        code = [line for line in path.read_text().splitlines()
                if not line.lstrip().startswith((">>>", "...", "#"))]
        if any(re.search(r"\bodeint(_adjoint)?\(", line) for line in code):
            callers.append(path.name)
    assert callers == []


class _Decay(torch.nn.Module):
    def forward(self, t, h):
        return -h


@pytest.mark.parametrize("make", [
    lambda **kw: CNF(2, hidden=(8,), **kw),
    lambda **kw: ODEBlock(_Decay(), **kw),
])
def test_models_hold_one_options_object_and_check_each_setting_that_is_changed(make):
    model = make(method="rk4", step_size=0.5)
    assert model.solve_options.method == "rk4" and model.method == "rk4"
    model.adjoint = False
    assert model.solve_options.adjoint is False and model.solve_options.step_size == 0.5
    with pytest.raises(ValueError, match="rtol must be a non-negative number"):
        model.rtol = -1.0
    assert model.solve_options.rtol > 0  # the failed change left the options as they were
    given = SolveOptions(method="bosh3", rtol=1e-6, atol=1e-8)
    assert make(solve_options=given).solve_options is given
    with pytest.raises(ValueError, match="not both .*rtol"):
        make(solve_options=given, rtol=1e-2)
    with pytest.raises(ValueError, match="solve_options must be a SolveOptions"):
        make(solve_options={"method": "rk4"})


@pytest.mark.parametrize("make", [
    lambda **kw: CNF(2, hidden=(8,), **kw),
    lambda **kw: ODEBlock(_Decay(), **kw),
])
def test_the_old_name_solver_still_works_for_one_release_with_a_warning(make):
    with pytest.warns(DeprecationWarning, match="use method"):
        model = make(solver="bosh3")
    assert model.method == "bosh3"
    with pytest.warns(DeprecationWarning, match="use method"):
        assert model.solver == "bosh3"


def test_log_prob_takes_this_calls_trace_and_options_without_changing_the_flow():
    torch.manual_seed(0)
    flow = CNF(2, hidden=(8, 8), trace="hutchinson").double()
    x = torch.randn(16, 2, dtype=torch.float64)
    tight = flow.solve_options.replace(rtol=1e-10, atol=1e-10)
    exact = CNF(2, net=flow.net, trace="exact", solve_options=tight).double()
    with torch.no_grad():
        reference = exact.log_prob(x)
        got = flow.log_prob(x, trace="exact", solve_options=tight)
    torch.testing.assert_close(got, reference, rtol=0, atol=0)
    assert flow.trace == "hutchinson" and flow.solve_options.rtol == 1e-5
    with pytest.raises(ValueError, match="unknown trace"):
        flow.log_prob(x, trace="stochastic")


@pytest.mark.parametrize("adjoint", [False, True])
def test_first_step_reaches_the_forward_solve(adjoint):
    """SolveOptions(first_step=h) starts the forward solve, plain or adjoint, at h: the
    probe evaluation of the estimate is skipped and the first step ends at t0 + h."""
    f = torch.nn.Linear(2, 2).double()
    times = []

    def dynamics(s, y):
        times.append(float(s))
        return f(y)

    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=adjoint)
    stats = SolverStats()
    with torch.set_grad_enabled(adjoint):
        SolveOptions(first_step=0.125, adjoint=adjoint).solve(
            dynamics, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), stats=stats,
            params=tuple(f.parameters()))
    assert stats.nfe == 1 + 6 * stats.n_steps
    assert times[6] == pytest.approx(0.125)
