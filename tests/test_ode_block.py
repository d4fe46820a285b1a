"""ODEBlock: h ↦ h(T) is the ODE's solution (odeint, a closed form, scipy), its gradients are
backprop's, and it reports its evaluations."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from cnflow import ODEBlock, SolverStats, odeint
from cnflow.nn import ODEBlock as ODEBlockFromNN

F64 = torch.float64


class TimeMLP(nn.Module):
    """f(t, h) = W2 tanh(W1 [h, t] + b1) + b2 on the last axis: nonlinear, non-autonomous."""

    def __init__(self, dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim + 1, hidden), nn.Linear(hidden, dim)

    def forward(self, t, h):
        return self.l2(torch.tanh(self.l1(torch.cat([h, t.expand(*h.shape[:-1], 1)], -1))))


class Linear(nn.Module):
    """f(t, h) = h Aᵀ, whose flow is h(T) = h(0) exp(A T)ᵀ."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, h):
        return h @ self.A.T


def test_public_name_is_the_nn_class():
    assert ODEBlock is ODEBlockFromNN


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("method,kw", [("dopri5", {"rtol": 1e-6, "atol": 1e-7}),
                                       ("bosh3", {"rtol": 1e-4, "atol": 1e-5}),
                                       ("rk4", {"step_size": 0.1})])
def test_output_is_odeint_of_its_function(adjoint, method, kw):
    func = TimeMLP().double()
    block = ODEBlock(func, T=1.5, method=method, adjoint=adjoint, **kw)
    h = torch.randn(6, 3, dtype=F64)
    stats = SolverStats()
    direct = odeint(func, h, torch.tensor([0.0, 1.5], dtype=F64), method=method, stats=stats,
                    **kw)[-1]
    out = block(h)
    torch.testing.assert_close(out, direct, rtol=0, atol=0)
    assert block.nfe_forward == stats.nfe > 0
    with torch.no_grad():
        torch.testing.assert_close(block(h), direct, rtol=0, atol=0)


def test_linear_dynamics_give_the_matrix_exponential():
    A = torch.tensor([[-0.3, 1.2, 0.0], [-1.1, -0.2, 0.4], [0.3, 0.0, -0.5]], dtype=F64)
    block = ODEBlock(Linear(A), T=2.0, rtol=1e-11, atol=1e-12)
    h = torch.randn(4, 3, dtype=F64)
    expected = h @ torch.linalg.matrix_exp(A * 2.0).T
    torch.testing.assert_close(block(h), expected, rtol=1e-9, atol=1e-9)


def test_nonlinear_dynamics_match_scipy():
    func = TimeMLP().double()
    block = ODEBlock(func, T=1.0, rtol=1e-10, atol=1e-10)
    h = torch.randn(5, 3, dtype=F64)

    def rhs(t, y):
        with torch.no_grad():
            return func(torch.tensor(t, dtype=F64),
                        torch.as_tensor(y).reshape(5, 3)).reshape(-1).numpy()

    ref = solve_ivp(rhs, (0.0, 1.0), h.reshape(-1).numpy(), method="DOP853", rtol=1e-12,
                    atol=1e-12).y[:, -1].reshape(5, 3)
    np.testing.assert_allclose(block(h).detach().numpy(), ref, rtol=1e-7, atol=1e-8)


def test_adjoint_gradients_equal_backprop():
    torch.manual_seed(1)
    func = TimeMLP().double()
    h = torch.randn(7, 3, dtype=F64, requires_grad=True)
    weights = torch.randn(7, 3, dtype=F64)
    grads = {}
    for adjoint in (True, False):
        block = ODEBlock(func, T=1.2, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        loss = (block(h) * weights).sum() + block(h).square().sum()
        grads[adjoint] = torch.autograd.grad(loss, (h, *func.parameters()))
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_gradients_match_the_closed_form():
    """For f = A h, ∂/∂A and ∂/∂h(0) of a loss of h(T) = exp(A T) h(0), by autograd through
    torch.linalg.matrix_exp, against the block's adjoint gradients."""
    A = torch.tensor([[-0.2, 0.9], [-0.8, -0.1]], dtype=F64)
    h = torch.randn(5, 2, dtype=F64, requires_grad=True)
    weights = torch.randn(5, 2, dtype=F64)
    block = ODEBlock(Linear(A), T=1.3, rtol=1e-11, atol=1e-12)
    g_block = torch.autograd.grad((block(h) * weights).sum(), (h, block.func.A))
    A_ref = A.clone().requires_grad_(True)
    out = h @ torch.linalg.matrix_exp(A_ref * 1.3).T
    g_ref = torch.autograd.grad((out * weights).sum(), (h, A_ref))
    for a, b in zip(g_block, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_nfe_counts_forward_and_backward():
    func = TimeMLP()
    h = torch.randn(4, 3)
    block = ODEBlock(func, method="rk4", step_size=0.1)  # 10 steps of 4 evaluations
    out = block(h)
    assert block.nfe_forward == 40
    assert block.nfe_backward == 0  # nothing solved backwards yet
    out.sum().backward()
    assert block.nfe_backward == 40  # the adjoint solve, rk4 with the same steps
    backprop = ODEBlock(func, method="rk4", step_size=0.1, adjoint=False)
    backprop(h).sum().backward()
    assert backprop.nfe_forward == 40 and backprop.nfe_backward == 0
    adaptive = ODEBlock(func)
    adaptive(h).sum().backward()
    first = (adaptive.nfe_forward, adaptive.nfe_backward)
    assert first[0] > 0 and first[1] > 0
    with torch.no_grad():
        adaptive(h)
    assert adaptive.nfe_forward == first[0] and adaptive.nfe_backward == 0  # reset per call


def test_feature_maps_and_parameters_train():
    class ConvFunc(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, t, h):
            return torch.tanh(self.conv(h))

    block = ODEBlock(ConvFunc())
    h = torch.randn(2, 4, 5, 5)
    out = block(h)
    assert out.shape == h.shape
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert list(block.parameters()) == list(block.func.parameters())


@pytest.mark.parametrize("kwargs,match", [
    ({"T": 0.0}, "T must be a positive"),
    ({"T": -1.0}, "T must be a positive"),
    ({"T": float("nan")}, "T must be a positive"),
    ({"T": True}, "T must be a positive"),
    ({"method": "heun"}, "unknown method"),
    ({"rtol": -1.0}, "rtol"),
    ({"method": "dopri5", "step_size": 0.1}, "step_size"),
    ({"max_num_steps": 0}, "max_num_steps"),
])
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODEBlock(TimeMLP(), **kwargs)


def test_func_must_be_a_module():
    with pytest.raises(ValueError, match="nn.Module"):
        ODEBlock(lambda t, h: -h)


@pytest.mark.parametrize("h,match", [
    (torch.tensor([[1.0, float("nan"), 0.0]]), "NaN"),
    (torch.ones(2, 3, dtype=torch.int64), "floating"),
    (np.ones((2, 3)), "torch.Tensor"),
    (torch.ones(0, 3), "empty"),
])
def test_bad_inputs_raise_value_error(h, match):
    with pytest.raises(ValueError, match=match):
        ODEBlock(TimeMLP())(h)


def test_wrong_output_shape_of_func_is_reported():
    class Drops(nn.Module):
        def forward(self, t, h):
            return h[..., :2]

    with pytest.raises(ValueError, match="shape"):
        ODEBlock(Drops())(torch.randn(2, 4))
