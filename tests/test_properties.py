"""Property tests (hypothesis): the ODE core against exact solutions on random problems, and the
estimators' input checks on random bad inputs."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cnflow import CNFDensity, odeint
from cnflow.datasets import make_toy

D64 = torch.float64
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def linear_systems(draw):
    """dy/dt = A y with A of norm at most 2, and a start y0 (float64)."""
    d = draw(st.integers(1, 4))
    entries = draw(arrays(np.float64, (d, d), elements=st.floats(-1, 1)))
    y0 = draw(arrays(np.float64, (d,), elements=st.floats(-2, 2)))
    return torch.from_numpy(entries) / max(1.0, float(np.abs(entries).sum(1).max()) / 2), \
        torch.from_numpy(y0)


@st.composite
def time_grids(draw):
    """2 to 6 strictly monotone times in [-2, 2], increasing or decreasing."""
    values = draw(st.lists(st.floats(-2, 2), min_size=2, max_size=6, unique=True))
    values = sorted(round(v, 3) for v in values)
    values = sorted(set(values))
    if len(values) < 2 or min(np.diff(values)) < 1e-3:
        values = [0.0, 1.0]
    if draw(st.booleans()):
        values = values[::-1]
    return torch.tensor(values, dtype=D64)


@FAST
@given(system=linear_systems(), t=time_grids(), method=st.sampled_from(["dopri5", "bosh3"]))
def test_linear_systems_match_the_matrix_exponential(system, t, method):
    A, y0 = system
    ys = odeint(lambda s, y: A @ y, y0, t, method=method, rtol=1e-10, atol=1e-10)
    assert ys.shape == (len(t), len(y0))
    torch.testing.assert_close(ys[0], y0, rtol=0, atol=0)  # the start, returned as given
    exact = torch.stack([torch.linalg.matrix_exp(A * (s - t[0])) @ y0 for s in t])
    torch.testing.assert_close(ys, exact, rtol=1e-7, atol=1e-7)


@FAST
@given(system=linear_systems(), span=st.floats(0.1, 2.0))
def test_forward_then_backward_returns_the_start(system, span):
    A, y0 = system
    forward = odeint(lambda s, y: A @ y, y0, torch.tensor([0.0, span], dtype=D64),
                     rtol=1e-10, atol=1e-10)[-1]
    back = odeint(lambda s, y: A @ y, forward, torch.tensor([span, 0.0], dtype=D64),
                  rtol=1e-10, atol=1e-10)[-1]
    torch.testing.assert_close(back, y0, rtol=1e-7, atol=1e-7)


@pytest.fixture(scope="module")
def fitted():
    X = make_toy("moons", 200, random_state=0)
    return CNFDensity(hidden=(8,), max_iter=3, n_members=1, validation_fraction=0.0,
                      stacking=False, random_state=0, device="cpu").fit(X)


BAD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.one_of(st.tuples(st.integers(0, 4)), st.tuples(st.integers(0, 4),
                                                                st.integers(0, 4)),
                       st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2))),
       dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_, object]),
       bad=st.one_of(st.none(), BAD_VALUES), data=st.data())
def test_bad_inputs_get_a_clear_error_or_a_finite_result(fitted, shape, dtype, bad, data):
    X = np.zeros(shape, dtype=dtype) if dtype is not object else np.full(shape, "a", object)
    if bad is not None and X.size and np.issubdtype(X.dtype, np.floating):
        index = data.draw(st.tuples(*[st.integers(0, n - 1) for n in shape]))
        X[index] = bad
    try:
        out = fitted.score_samples(X)
    except ValueError as err:  # scikit-learn's and cnflow's input errors
        assert str(err)
        return
    assert out.shape == (X.shape[0],) and np.isfinite(out).all()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 6), d=st.integers(0, 3),
       bad=st.one_of(st.none(), BAD_VALUES), data=st.data())
def test_fit_on_random_bad_tables_gives_a_clear_error_or_a_finite_model(n, d, bad, data):
    X = data.draw(arrays(np.float64, (n, d), elements=st.floats(-3, 3)))
    if bad is not None and X.size:
        X[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))] = bad
    est = CNFDensity(hidden=(4,), max_iter=1, random_state=0, device="cpu")
    try:
        est.fit(X)
    except ValueError as err:
        assert str(err)
        return
    assert np.isfinite(est.score_samples(X)).all()
