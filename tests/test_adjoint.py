"""odeint_adjoint: same values as odeint, gradients equal to backprop, memory flat in steps."""

import numpy as np
import pytest
import torch
from torch import nn

from cnflow import SolverStats, odeint, odeint_adjoint

F64 = torch.float64


class MLPDynamics(nn.Module):
    """f(t, y) = W2 tanh(W1 [y, t] + b1) + b2: non-autonomous, nonlinear."""

    def __init__(self, dim: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1))


def gradients(solver, f, y0, t, weights, **kw):
    ys = solver(f, y0, t, **kw)
    loss = (ys * weights).sum() + (ys**2).sum() * 0.1
    return ys, torch.autograd.grad(loss, (y0, *f.parameters()))


@pytest.mark.parametrize("method,kw", [
    ("dopri5", {"rtol": 1e-10, "atol": 1e-10}),
    ("bosh3", {"rtol": 1e-9, "atol": 1e-9}),
    ("rk4", {"step_size": 0.005}),
])
@pytest.mark.parametrize("seminorm", [True, False])
def test_adjoint_gradients_equal_backprop(method, kw, seminorm):
    f = MLPDynamics().double()
    y0 = torch.randn(8, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 0.7, 1.5], dtype=F64)  # several output times
    weights = torch.randn(4, 8, 2, dtype=F64)
    ys_bp, g_bp = gradients(odeint, f, y0, t, weights, method=method, **kw)
    ys_adj, g_adj = gradients(odeint_adjoint, f, y0, t, weights, method=method,
                              seminorm=seminorm, **kw)
    torch.testing.assert_close(ys_adj, ys_bp, rtol=0, atol=0)  # same forward solve
    for a, b in zip(g_adj, g_bp):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()


def test_adjoint_reverse_time_and_tuple_state():
    """Decreasing output times and a tuple state, against backprop."""
    f = MLPDynamics(dim=3).double()

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = f

        def forward(self, t, state):
            out = self.f(t, torch.cat(state, dim=-1))
            return out[..., :1], out[..., 1:]

    g = Split()
    a0 = torch.randn(5, 1, dtype=F64, requires_grad=True)
    b0 = torch.randn(5, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([1.0, 0.2, -0.5], dtype=F64)
    kw = {"rtol": 1e-10, "atol": 1e-10}
    results = []
    for solver in (odeint, odeint_adjoint):
        a, b = solver(g, (a0, b0), t, **kw)
        loss = (a[1:] ** 2).sum() + (b[-1] * torch.arange(2.0, dtype=F64)).sum()
        results.append(torch.autograd.grad(loss, (a0, b0, *g.parameters())))
    for x, y in zip(*results):
        assert (x - y).abs().max() <= 1e-6 * y.abs().max()


def test_time_gradients_match_finite_differences():
    f = MLPDynamics().double()
    y0 = torch.randn(4, 2, dtype=F64)
    weights = torch.randn(3, 4, 2, dtype=F64)
    t = torch.tensor([0.1, 0.5, 1.2], dtype=F64)

    def loss(solver, times):
        return (solver(f, y0, times, rtol=1e-12, atol=1e-12) * weights).sum()

    eps = 1e-6
    fd = []
    for i in range(3):
        step = torch.zeros(3, dtype=F64)
        step[i] = eps
        fd.append((loss(odeint, t + step) - loss(odeint, t - step)).item() / (2 * eps))
    for solver in (odeint, odeint_adjoint):
        tt = t.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(solver, tt), tt)
        np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5, atol=1e-8)


def test_gradcheck_small_problem():
    """torch.autograd.gradcheck: adjoint gradients vs finite differences of the solve (ten
    rk4 steps per output interval: the check passes at atol=1e-8 with steps of 0.01 or 0.05
    alike, the finite differences' own error)."""
    f = MLPDynamics(dim=2, hidden=4).double()
    params = tuple(f.parameters())

    def run(y0, w1):
        def dyn(t, y):
            h = torch.tanh(torch.cat([y, t.expand(y.shape[0], 1)], -1) @ w1.T + params[1])
            return h @ params[2].T + params[3]

        return odeint_adjoint(dyn, y0, torch.tensor([0.0, 0.5, 1.0], dtype=F64),
                              method="rk4", step_size=0.05, adjoint_params=(w1,))

    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    w1 = params[0].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(run, (y0, w1), atol=1e-6, rtol=1e-4)


def test_counts_forward_and_backward_separately():
    f = MLPDynamics().double()
    y0 = torch.randn(8, 2, dtype=F64, requires_grad=True)
    fwd, bwd = SolverStats(), SolverStats()
    ys = odeint_adjoint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), stats=fwd, adjoint_stats=bwd)
    assert fwd.nfe > 0 and bwd.nfe == 0
    ys[-1].sum().backward()
    # the backward solve starts from the forward's next step: f at its start, no probe
    assert bwd.nfe == 1 + 6 * bwd.n_steps
    # with other tolerances it estimates its own first step (one more evaluation)
    bwd_own = SolverStats()
    ys = odeint_adjoint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), adjoint_rtol=1e-7,
                        adjoint_stats=bwd_own)
    ys[-1].sum().backward()
    assert bwd_own.nfe == 2 + 6 * bwd_own.n_steps


def test_warm_started_backward_solve_meets_the_tolerance():
    """Starting the backward solve from the forward's step size: gradients as accurate as
    with the initial step estimate, against a tight reference."""
    import cnflow.ode.adjoint as adjoint_module

    torch.manual_seed(3)
    f = MLPDynamics(dim=2, hidden=32).double()
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(2.0)
    y0 = torch.randn(64, 2, dtype=F64)
    t = torch.tensor([0.0, 1.5], dtype=F64)

    def gradient(rtol, cold=False):
        f.zero_grad()
        settings_last_step = adjoint_module._Settings.last_step
        if cold:  # the forward's step is never handed over
            adjoint_module._Settings.last_step = property(lambda self: None,
                                                          lambda self, value: None)
        try:
            ys = odeint_adjoint(f, y0, t, rtol=rtol, atol=rtol)
            ys[-1].square().sum().backward()
        finally:
            adjoint_module._Settings.last_step = settings_last_step
        return torch.cat([p.grad.reshape(-1) for p in f.parameters()])

    reference = gradient(1e-11)
    for rtol in (1e-4, 1e-6):
        warm, cold = gradient(rtol), gradient(rtol, cold=True)
        assert not torch.equal(warm, cold)  # two different step sequences
        err_warm = float((warm - reference).norm() / reference.norm())
        err_cold = float((cold - reference).norm() / reference.norm())
        assert err_warm < 100 * rtol and err_warm < 10 * max(err_cold, rtol / 100)


def _saved_bytes(solver, n_steps: int) -> int:
    """Bytes autograd keeps for backward in one training step (saved tensors), rk4."""
    f = MLPDynamics(dim=2, hidden=32)
    y0 = torch.randn(64, 2, requires_grad=True)
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ys = solver(f, y0, torch.tensor([0.0, 1.0]), method="rk4", step_size=1.0 / n_steps)
    ys[-1].sum().backward()
    return total


def test_adjoint_memory_does_not_grow_with_steps():
    adjoint = [_saved_bytes(odeint_adjoint, n) for n in (10, 100)]
    backprop = [_saved_bytes(odeint, n) for n in (10, 100)]
    assert adjoint[0] == adjoint[1]
    assert backprop[1] > 8 * backprop[0]
    assert adjoint[1] * 50 < backprop[1]


def test_frozen_and_unused_parameters():
    """Parameters that do not require grad are left alone; unused ones get zero gradient."""
    f = MLPDynamics().double()
    unused = nn.Parameter(torch.ones(3, dtype=F64))
    f.register_parameter("unused", unused)
    f.net[0].bias.requires_grad_(False)
    y0 = torch.randn(4, 2, dtype=F64)
    ys = odeint_adjoint(f, y0, torch.tensor([0.0, 1.0], dtype=F64))
    ys[-1].sum().backward()
    assert f.net[0].bias.grad is None
    assert torch.equal(unused.grad, torch.zeros(3, dtype=F64))
    assert f.net[0].weight.grad.abs().sum() > 0


def test_repeated_parameters_count_once():
    """Tied or repeated tensors in adjoint_params get their gradient once, as backprop does."""
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    (g_bp,) = torch.autograd.grad(odeint(lambda t, y: -w * y, y0, t)[-1].sum(), w)
    ys = odeint_adjoint(lambda t, y: -w * y, y0, t, adjoint_params=(w, w))
    (g_adj,) = torch.autograd.grad(ys[-1].sum(), w)
    assert g_adj.item() == pytest.approx(g_bp.item(), rel=1e-4)


def test_double_backward_raises_instead_of_returning_zeros():
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ys = odeint_adjoint(lambda t, y: -w * y**2, y0, torch.tensor([0.0, 1.0], dtype=F64),
                        adjoint_params=(w,))
    (g,) = torch.autograd.grad(ys[-1].sum(), y0, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


class _LinearWithVJP(nn.Module):
    """dy/dt = A y with a hand-written vector-Jacobian product (the protocol f.vjp)."""

    def __init__(self, decline: bool = False, bad_shape: bool = False) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64))
        self.decline, self.bad_shape, self.calls = decline, bad_shape, 0

    def forward(self, t, y):
        return y @ self.A.T

    def vjp(self, t, y, v, params):
        self.calls += 1
        if self.decline:
            return None
        y_bar = v @ self.A
        if self.bad_shape:
            y_bar = y_bar[:1]
        grads = {id(self.A): v.T @ y}  # Σ_rows v_r y_rᵀ
        return y @ self.A.T, y_bar, [grads.get(id(p)) for p in params]


@pytest.mark.parametrize("decline", [False, True])
def test_dynamics_with_their_own_vjp(decline):
    """f.vjp is used by the backward pass (or declined, then autograd) with the same
    gradients as autograd, for y0, A and t."""
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)
    grads = []
    for f in [_LinearWithVJP(decline=decline), nn.Module()]:
        if not isinstance(f, _LinearWithVJP):
            f = _LinearWithVJP()
            f.vjp = None  # not callable: autograd
        y = y0.clone().requires_grad_(True)
        t = torch.tensor([0.0, 0.4, 1.3], dtype=torch.float64, requires_grad=True)
        ys = odeint_adjoint(f, y, t, rtol=1e-10, atol=1e-10)
        (ys[1].sin().sum() + ys[2].square().sum()).backward()
        grads.append((y.grad, f.A.grad, t.grad))
        if f.vjp is not None:
            assert f.calls > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_dynamics_vjp_of_the_wrong_shape_raises():
    f = _LinearWithVJP(bad_shape=True)
    y = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    ys = odeint_adjoint(f, y, torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="f.vjp returned shape"):
        ys.sum().backward()
