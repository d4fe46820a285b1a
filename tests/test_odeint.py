"""odeint against independent references: closed forms and scipy's DOP853 at 1e-12."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

from cnflow import SolverStats, odeint
from problems import LINEAR_A, NONLINEAR, linear_exact, linear_problem, lotka_volterra, van_der_pol

F64 = torch.float64


def solve(problem, times, **kw):
    y0 = torch.tensor(problem.y0, dtype=F64)
    return odeint(problem.f_torch, y0, torch.tensor(times, dtype=F64), **kw).numpy()


@pytest.mark.parametrize("method,tol", [("dopri5", 1e-5), ("dopri5", 1e-8), ("bosh3", 1e-4),
                                        ("bosh3", 1e-6)])
@pytest.mark.parametrize("problem", NONLINEAR + [linear_problem()], ids=lambda p: p.name)
def test_adaptive_matches_reference(problem, method, tol):
    """Global error within a small multiple of the tolerance, at many output times."""
    times = np.linspace(*problem.t_span, 41)
    ref = linear_exact(problem.y0, times) if problem.name == "linear" else problem.reference(times)
    got = solve(problem, times, method=method, rtol=tol, atol=tol)
    error = np.abs(got - ref).max()
    assert error < 50 * tol * (1 + np.abs(ref).max())
    # As accurate as scipy's own implementation of the same pair (RK45 is dopri5; RK23 bosh3).
    scipy_method = {"dopri5": "RK45", "bosh3": "RK23"}[method]
    theirs = scipy.integrate.solve_ivp(problem.f_numpy, problem.t_span, problem.y0,
                                       method=scipy_method, t_eval=times, rtol=tol, atol=tol)
    assert error < 2 * np.abs(theirs.y.T - ref).max()
    # The tolerance is not met for free: a much looser solve is visibly worse.
    loose = solve(problem, times, method=method, rtol=tol * 1e3, atol=tol * 1e3)
    assert np.abs(loose - ref).max() > np.abs(got - ref).max()


def test_dense_output_costs_no_evaluations():
    """Asking for 200 intermediate times gives the same steps as asking for the end only."""
    p = van_der_pol()
    y0 = torch.tensor(p.y0, dtype=F64)
    few, many = SolverStats(), SolverStats()
    end = odeint(p.f_torch, y0, torch.tensor(p.t_span, dtype=F64), stats=few)
    ys = odeint(p.f_torch, y0, torch.linspace(*p.t_span, 200, dtype=F64), stats=many)
    assert few == many
    assert torch.equal(end[-1], ys[-1])


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_convergence_order(method, order):
    """Halving the step divides the global error by about 2^order."""
    p = van_der_pol()
    times = np.array([0.0, 0.5, 1.0])
    ref = p.reference(times)
    errors = [np.abs(solve(p, times, method=method, step_size=h) - ref).max()
              for h in (0.02, 0.01, 0.005)]
    observed = [math.log2(e1 / e2) for e1, e2 in zip(errors[:-1], errors[1:])]
    assert observed == pytest.approx([order, order], abs=0.15)


def test_fixed_step_counts_and_lands_on_output_times():
    stats = SolverStats()
    f_times = []

    def f(t, y):
        f_times.append(t.item())
        return -y

    y = odeint(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 0.25, 1.0], dtype=F64),
               method="euler", step_size=0.1, stats=stats)
    # [0, 0.25] takes 3 steps of 1/12, [0.25, 1] takes 8 steps of 0.09375.
    assert stats.n_accepted == 11 and stats.nfe == 11
    assert f_times[3] == pytest.approx(0.25)
    expected = (1 - 0.25 / 3) ** 3 * (1 - 0.75 / 8) ** 8
    assert y[-1].item() == pytest.approx(expected, rel=1e-14)


def test_one_step_per_interval_without_step_size():
    stats = SolverStats()
    odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 5), method="rk4", stats=stats)
    assert stats.n_accepted == 4 and stats.nfe == 16


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_reverse_time(method):
    """Decreasing t integrates backwards: matches scipy from t=3 down to 0, and round-trips."""
    p = van_der_pol()
    kw = {"step_size": 0.001} if method == "rk4" else {"rtol": 1e-9, "atol": 1e-9}
    y3 = p.reference(np.array([0.0, 3.0]))[-1]
    times = np.linspace(3.0, 0.0, 13)
    got = odeint(p.f_torch, torch.tensor(y3), torch.tensor(times), method=method, **kw).numpy()
    ref = dataclasses.replace(p, y0=y3, t_span=(3.0, 0.0)).reference(times)
    np.testing.assert_allclose(got, ref, atol=5e-7)
    np.testing.assert_allclose(got[-1], p.y0, atol=5e-7)


def test_batched_state_equals_individual_solves():
    """A batch of initial states is solved as one system; each row agrees with its own solve."""
    p = van_der_pol()
    y0 = torch.tensor([[2.0, 0.0], [0.5, 1.0], [-1.0, 0.3]], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    batched = odeint(p.f_torch, y0, t, rtol=1e-10, atol=1e-10)
    assert batched.shape == (2, 3, 2)
    for i in range(3):
        single = odeint(p.f_torch, y0[i], t, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(batched[:, i], single, atol=1e-8, rtol=0)


def test_tuple_state_matches_tensor_state():
    a, b, c, d = 1.5, 1.0, 3.0, 1.0

    def f_tuple(t, state):
        x, z = state
        return a * x - b * x * z, -c * z + d * x * z

    x0 = torch.tensor([1.0, 2.0], dtype=F64)
    z0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0, 4, 9, dtype=F64)
    xs, zs = odeint(f_tuple, (x0, z0), t, rtol=1e-10, atol=1e-10)
    assert xs.shape == zs.shape == (9, 2)
    for i in range(2):
        start = np.array([x0[i].item(), z0[i].item()])
        ref = dataclasses.replace(lotka_volterra(), y0=start).reference(t.numpy())
        np.testing.assert_allclose(xs[:, i].numpy(), ref[:, 0], atol=1e-8)
        np.testing.assert_allclose(zs[:, i].numpy(), ref[:, 1], atol=1e-8)


def test_float32_state_keeps_dtype_and_accuracy():
    p = van_der_pol()
    t = torch.tensor([0.0, 6.0])
    y32 = odeint(p.f_torch, torch.tensor(p.y0, dtype=torch.float32), t, rtol=1e-5, atol=1e-5)
    assert y32.dtype == torch.float32
    ref = p.reference(np.array([0.0, 6.0]))[-1]
    np.testing.assert_allclose(y32[-1].numpy(), ref, atol=3e-4)


def test_single_output_time_returns_initial_state():
    y0 = torch.randn(3, 2)
    ys = odeint(lambda t, y: y, y0, torch.tensor([0.5]))
    assert ys.shape == (1, 3, 2) and torch.equal(ys[0], y0)


def test_stats_count_every_evaluation():
    p = van_der_pol()
    calls = []

    def f(t, y):
        calls.append(1)
        return p.f_torch(t, y)

    stats = SolverStats()
    odeint(f, torch.tensor(p.y0), torch.tensor([0.0, 6.0]), rtol=1e-6, atol=1e-6, stats=stats)
    assert stats.nfe == len(calls)
    # f(y0), one probe for the initial step, then 6 new stages per attempted step (FSAL).
    assert stats.nfe == 2 + 6 * stats.n_steps
    assert stats.n_accepted > 10


def test_backprop_gradient_matches_closed_form():
    """d y(T)/d y0 = expm(A T) for linear dynamics, through backprop-through-the-solver."""
    p = linear_problem()
    y0 = torch.tensor(p.y0, requires_grad=True)
    ys = odeint(p.f_torch, y0, torch.tensor([0.0, 2.0], dtype=F64), rtol=1e-10, atol=1e-10)
    w = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    (ys[-1] @ w).backward()
    expected = scipy.linalg.expm(LINEAR_A * 2.0).T @ w.numpy()
    np.testing.assert_allclose(y0.grad.numpy(), expected, rtol=1e-8)


def test_first_step_replaces_the_estimate_and_keeps_the_accuracy():
    """With ``first_step`` the first step tried has that size (no probe evaluation of f), the
    solution still meets the tolerance against scipy's reference, and a solve started at the
    step another solve suggests takes no more steps than that solve."""
    p = van_der_pol()
    times = [0.0, 6.0]
    ref = p.reference(np.array(times))[-1]
    estimated = SolverStats()
    y_est = odeint(p.f_torch, torch.tensor(p.y0), torch.tensor(times, dtype=F64), rtol=1e-6,
                   atol=1e-6, stats=estimated)
    suggested = estimated.suggested_first_step
    assert suggested is not None and suggested > 0
    seen = []

    def f(t, y):
        seen.append(float(t))
        return p.f_torch(t, y)

    started = SolverStats()
    y_given = odeint(f, torch.tensor(p.y0), torch.tensor(times, dtype=F64), rtol=1e-6,
                     atol=1e-6, stats=started, first_step=suggested)
    assert started.nfe == 1 + 6 * started.n_steps  # f(y0), then 6 new stages a step
    # dopri5's last stage of the first step is at t0 + h
    assert seen[6] == pytest.approx(suggested, rel=1e-12)
    assert started.n_steps <= estimated.n_steps
    for y in (y_est, y_given):
        np.testing.assert_allclose(y[-1].numpy(), ref, rtol=0, atol=1e-4)
    # a first step larger than the interval is cut to it; fixed-step methods ignore it
    y_whole = odeint(p.f_torch, torch.tensor(p.y0), torch.tensor(times, dtype=F64), rtol=1e-6,
                     atol=1e-6, first_step=100.0)
    np.testing.assert_allclose(y_whole[-1].numpy(), ref, rtol=0, atol=1e-4)
    fixed = SolverStats()
    odeint(p.f_torch, torch.tensor(p.y0), torch.tensor(times, dtype=F64), method="rk4",
           step_size=0.5, first_step=0.01, stats=fixed)
    assert fixed.n_steps == 12


@pytest.mark.parametrize("bad", [0.0, -0.1, math.inf, math.nan, "0.1", True])
def test_bad_first_step_is_rejected(bad):
    with pytest.raises(ValueError, match="first_step"):
        odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), first_step=bad)
