"""The CNF against closed forms (linear dynamics), autograd, and numerical integration."""

import math
import re

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from cnflow import CNF, CNFRegularizers, SolverStats
from cnflow.flows import FlowMixture, GaussianMixtureBase
from cnflow.nn import ConcatSquashMLP
from cnflow.ode import FEW_STEP_METHOD, TABLEAUX

# torch's forward-mode AD (exact_method="jvp") scripts a decomposition on first use, and torch
# 2.13 warns that torch.jit.script is deprecated: torch's own internals, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

D64 = torch.float64
A3 = [[-0.4, 0.9, 0.1], [-0.6, 0.3, -0.5], [0.2, 0.7, -0.1]]


class LinearDynamics(nn.Module):
    """f(t, z) = A z, counting its evaluations."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(A, dtype=D64))
        self.calls = 0

    def forward(self, t, z):
        self.calls += 1
        return z @ self.A.T


def expm(A, T):
    return torch.from_numpy(scipy.linalg.expm(np.asarray(A) * T))


def gaussian_log_prob(z):
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def linear_log_prob(A, T, x):
    """log p(x) = log N(e^{AT} x; 0, I) + T tr(A)."""
    return gaussian_log_prob(x @ expm(A, T).T) + T * float(np.trace(A))


def random_flow(dim=2, hidden=(32, 32), scale=2.0, **kwargs):
    """A CNF whose network has larger weights than the default init: far from the identity."""
    net = ConcatSquashMLP(dim, hidden).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return CNF(dim, net=net, **kwargs).double()


# ---------------------------------------------------------------- linear dynamics: closed forms


@pytest.mark.parametrize("exact_method", ["vjp", "jvp", "loop"])
@pytest.mark.parametrize("T", [0.5, 1.7])
def test_linear_log_prob_equals_closed_form(T, exact_method):
    flow = CNF(3, net=LinearDynamics(A3), T=T, rtol=1e-9, atol=1e-9, exact_method=exact_method)
    x = torch.randn(50, 3, dtype=D64)
    with torch.no_grad():
        logp = flow.log_prob(x)
    assert logp.shape == (50,)
    torch.testing.assert_close(logp, linear_log_prob(A3, T, x), rtol=0, atol=1e-6)


def test_linear_transform_both_ways_equals_closed_form():
    T = 1.3
    flow = CNF(3, net=LinearDynamics(A3), T=T, rtol=1e-9, atol=1e-9)
    x = torch.randn(20, 3, dtype=D64)
    with torch.no_grad():
        z, logdet = flow.transform(x)
        torch.testing.assert_close(z, x @ expm(A3, T).T, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(logdet, torch.full((20,), T * np.trace(A3), dtype=D64),
                                   rtol=0, atol=1e-7)
        x_back, logdet_back = flow.transform(z, reverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(logdet_back, -logdet, rtol=0, atol=1e-7)


def test_linear_samples_have_the_pushed_forward_covariance():
    """x = e^{-AT} z with z ~ N(0, I): covariance e^{-AT} e^{-AᵀT}, mean 0 (Monte Carlo)."""
    T, n = 0.8, 20000
    flow = CNF(3, net=LinearDynamics(A3), T=T, rtol=1e-7, atol=1e-7)
    with torch.no_grad():
        x = flow.sample(n)
    assert x.shape == (n, 3) and x.dtype == D64
    B = expm(A3, -T)
    cov = B @ B.T
    sample_cov = torch.cov(x.T)
    # Standard error of a sample covariance entry of a Gaussian: sqrt((Σii Σjj + Σij²) / n).
    se = ((torch.outer(cov.diagonal(), cov.diagonal()) + cov.square()) / n).sqrt()
    assert ((sample_cov - cov).abs() < 5 * se).all(), (sample_cov, cov)
    assert (x.mean(0).abs() < 5 * (cov.diagonal() / n).sqrt()).all()


def test_hutchinson_linear_log_prob_uses_one_probe_for_the_whole_solve():
    """With f = A z the estimate is exact + T(εᵀAε − tr A); for Rademacher ε in 2-D that is
    ± T(A12 + A21) per row, only if ε is held fixed along the solve. The Jacobian regulariser
    T‖Aᵀε‖² = T(‖A‖² ± 2 A1·A2) must use the same ε (same sign)."""
    A = [[0.3, -0.8], [0.5, -0.6]]
    T = 1.1
    flow = CNF(2, net=LinearDynamics(A), T=T, trace="hutchinson", rtol=1e-9, atol=1e-9)
    x = torch.randn(400, 2, dtype=D64)
    with torch.no_grad():
        logp, reg = flow.log_prob(x, return_regularizers=True)
    deviation = (logp - linear_log_prob(A, T, x)) / (T * (A[0][1] + A[1][0]))
    sign = deviation.round()
    torch.testing.assert_close(deviation, sign, rtol=0, atol=1e-6)
    assert set(sign.tolist()) == {-1.0, 1.0}
    frob = sum(a * a for row in A for a in row)
    cross = A[0][0] * A[1][0] + A[0][1] * A[1][1]
    torch.testing.assert_close(reg.jacobian, T * (frob + 2 * sign * cross), rtol=0, atol=1e-6)


def test_hutchinson_gaussian_log_prob_is_unbiased():
    T, m = 0.9, 20000
    flow = CNF(3, net=LinearDynamics(A3), T=T, trace="hutchinson", noise="gaussian", rtol=1e-6,
               atol=1e-6)
    x = torch.randn(1, 3, dtype=D64).expand(m, 3).contiguous()
    with torch.no_grad():
        logp = flow.log_prob(x)
    exact = linear_log_prob(A3, T, x[:1])
    assert logp.std() > 0.1  # a genuinely noisy estimate
    assert abs(logp.mean() - exact) < 4 * logp.std() / m ** 0.5


def test_linear_regularisers_equal_closed_forms():
    """Kinetic: ∫‖A e^{At}x‖² dt = xᵀXx with AᵀX + XA = e^{AᵀT}AᵀA e^{AT} − AᵀA (differentiate
    e^{Aᵀt}AᵀA e^{At} and integrate); Jacobian: T‖A‖_F²."""
    T = 1.2
    flow = CNF(3, net=LinearDynamics(A3), T=T, rtol=1e-9, atol=1e-9)
    x = torch.randn(10, 3, dtype=D64)
    with torch.no_grad():
        logp, reg = flow.log_prob(x, return_regularizers=True)
    assert isinstance(reg, CNFRegularizers)
    A = np.asarray(A3)
    E = scipy.linalg.expm(A * T)
    X = torch.from_numpy(scipy.linalg.solve_continuous_lyapunov(A.T, E.T @ A.T @ A @ E - A.T @ A))
    torch.testing.assert_close(reg.kinetic, torch.einsum("bi,ij,bj->b", x, X, x), rtol=1e-7,
                               atol=1e-8)
    torch.testing.assert_close(reg.jacobian, torch.full((10,), T * (A**2).sum(), dtype=D64),
                               rtol=1e-8, atol=1e-8)
    # the earlier spelling still works, with a DeprecationWarning, and gives the same values
    with pytest.warns(DeprecationWarning, match="return_regularizers"), torch.no_grad():
        old_logp, old_reg = flow.log_prob(x, return_regularisers=True)
    torch.testing.assert_close(old_reg.kinetic, reg.kinetic, rtol=0, atol=0)
    torch.testing.assert_close(old_logp, logp, rtol=0, atol=0)
    import cnflow
    import cnflow.flows

    for module in (cnflow, cnflow.flows, cnflow.flows.cnf):
        with pytest.warns(DeprecationWarning, match="CNFRegularizers"):
            assert module.CNFRegularisers is CNFRegularizers
    with pytest.raises(AttributeError, match="no attribute 'CNFRegulators'"):
        cnflow.CNFRegulators  # noqa: B018
    torch.testing.assert_close(logp, linear_log_prob(A3, T, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("adjoint", [True, False])
def test_learnable_T_gradient_equals_closed_form(adjoint):
    """d/dT log p(x) = −(e^{AT}x)ᵀ A e^{AT}x + tr A, and T = softplus(τ)."""
    T = 0.7
    flow = CNF(3, net=LinearDynamics(A3), T=T, train_T=True, adjoint=adjoint, rtol=1e-9,
               atol=1e-9)
    torch.testing.assert_close(flow.T, torch.tensor(T, dtype=D64), rtol=1e-14, atol=0)
    x = torch.randn(8, 3, dtype=D64)
    flow.log_prob(x).sum().backward()
    z = x @ expm(A3, T).T
    A = torch.tensor(A3, dtype=D64)
    dlogp_dT = (-(z * (z @ A.T)).sum(-1) + torch.trace(A)).sum()
    expected = dlogp_dT * torch.sigmoid(flow.T_raw.detach())
    torch.testing.assert_close(flow.T_raw.grad, expected, rtol=1e-6, atol=1e-8)


def test_input_gradient_through_the_adjoint_with_a_plain_function_net():
    """∇ₓ log p(x) = −e^{AᵀT} e^{AT} x for f = A z given as a plain function (no parameters)."""
    A = torch.tensor(A3, dtype=D64)
    T = 1.0
    flow = CNF(3, net=lambda t, z: z @ A.T, T=T, rtol=1e-9, atol=1e-9).double()
    assert len(list(flow.parameters())) == 0
    x = torch.randn(6, 3, dtype=D64, requires_grad=True)
    flow.log_prob(x).sum().backward()
    E = expm(A3, T)
    torch.testing.assert_close(x.grad, -(x.detach() @ E.T) @ E, rtol=1e-6, atol=1e-8)
    assert flow.nfe_backward > 0


def test_fixed_step_solver():
    flow = CNF(3, net=LinearDynamics(A3), method="rk4", step_size=0.01)
    x = torch.randn(10, 3, dtype=D64)
    with torch.no_grad():
        logp = flow.log_prob(x)
    torch.testing.assert_close(logp, linear_log_prob(A3, 1.0, x), rtol=0, atol=1e-6)
    assert flow.stats_forward.n_steps == 100


# ---------------------------------------------------------------- random networks


def test_density_of_a_random_2d_cnf_integrates_to_one():
    flow = random_flow(rtol=1e-6, atol=1e-6)
    h = 0.125
    g = torch.arange(-8.0, 8.0 + h / 2, h, dtype=D64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        logp = flow.log_prob(grid)
    # A flow far from the identity, whose density is still normalised.
    assert (logp - gaussian_log_prob(grid)).abs().max() > 1.0
    mass = logp.exp().sum() * h * h
    assert abs(mass.item() - 1.0) < 0.01


def test_transform_forward_then_inverse_returns_the_input():
    tol = 1e-6
    flow = random_flow(rtol=tol, atol=tol)
    x = 2 * torch.randn(200, 2, dtype=D64)
    with torch.no_grad():
        z, logdet = flow.transform(x)
        x_back, logdet_back = flow.transform(z, reverse=True)
    assert (z - x).abs().max() > 0.5  # the map moves points
    assert ((x_back - x).abs() <= 10 * (tol + tol * x.abs())).all()
    assert ((logdet + logdet_back).abs() <= 10 * (tol + tol * logdet.abs())).all()


def test_transform_log_determinant_equals_autograd_jacobian_of_the_map():
    flow = random_flow(rtol=1e-9, atol=1e-9, adjoint=False)
    x = torch.randn(3, 2, dtype=D64)
    J = torch.autograd.functional.jacobian(lambda v: flow.transform(v)[0], x)
    idx = torch.arange(3)
    _, expected = torch.linalg.slogdet(J[idx, :, idx, :])
    with torch.no_grad():
        _, logdet = flow.transform(x)
    assert expected.abs().max() > 0.05
    torch.testing.assert_close(logdet, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("trace, noise, exact_method", [
    ("exact", "rademacher", "auto"),  # the adjoint takes the network's hand-written pullback
    ("exact", "rademacher", "vjp"),
    ("exact", "rademacher", "jvp"),
    ("hutchinson", "rademacher", "vjp"),
    ("hutchinson", "gaussian", "vjp"),
])
def test_adjoint_and_backprop_gradients_agree(trace, noise, exact_method):
    """Gradients of the NLL plus both regularisers, for the parameters, T and x."""
    kwargs = {"trace": trace, "noise": noise, "exact_method": exact_method, "rtol": 1e-9,
              "atol": 1e-9, "train_T": True, "hidden": (16, 16)}
    flows = [random_flow(adjoint=True, **kwargs), random_flow(adjoint=False, **kwargs)]
    flows[1].load_state_dict(flows[0].state_dict())
    x = torch.randn(16, 2, dtype=D64, requires_grad=True)
    grads = []
    for flow in flows:
        torch.manual_seed(1)  # the same Hutchinson probes for both
        logp, reg = flow.log_prob(x, return_regularizers=True)
        loss = -logp.mean() + 0.1 * reg.kinetic.mean() + 0.1 * reg.jacobian.mean()
        grads.append(torch.autograd.grad(loss, [x, *flow.parameters()]))
    assert flows[0].nfe_backward > 0 and flows[1].nfe_backward == 0
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid"])
@pytest.mark.parametrize("regularise", [False, True])
def test_density_dynamics_vjp_equals_autograd(activation, regularise):
    """The pullback the adjoint uses against autograd through the same dynamics, float64."""
    from cnflow.flows.cnf import _DensityDynamics
    net = ConcatSquashMLP(3, (8, 8), activation=activation).double()
    f = _DensityDynamics(net, "auto", None, regularise)
    n = 6
    gen = torch.Generator().manual_seed(0)
    state = tuple(torch.randn(shape, generator=gen, dtype=D64)
                  for shape in [(n, 3), (n,), (n,), (n,)][:4 if regularise else 2])
    v = tuple(torch.randn(s.shape, generator=gen, dtype=D64) for s in state)
    t = torch.tensor(0.7, dtype=D64)
    params = list(net.parameters())
    value, state_bar, grads = f.vjp(t, state, v, params)
    z = state[0].clone().requires_grad_(True)
    expected_value = f(t, (z, *state[1:]))
    expected = torch.autograd.grad(expected_value, [z, *params], grad_outputs=v)
    for got, want in zip(value, expected_value, strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    assert all(part is None for part in state_bar[1:])  # Δ, K, J do not enter f
    for got, want in zip([state_bar[0], *grads], expected, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_adjoint_uses_the_hand_written_pullback_only_where_it_applies(monkeypatch):
    """Exact trace, method auto: the pullback replaces autograd; Hutchinson or an explicit
    method keep autograd."""
    calls = []
    original = ConcatSquashMLP.divergence_vjp

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConcatSquashMLP, "divergence_vjp", counted)
    x = torch.randn(8, 2, dtype=D64)
    for kwargs, used in [({}, True), ({"exact_method": "vjp"}, False),
                         ({"trace": "hutchinson"}, False)]:
        calls.clear()
        flow = random_flow(hidden=(8, 8), **kwargs)
        flow.log_prob(x).sum().backward()
        assert (len(calls) == flow.nfe_backward) if used else not calls


def test_sample_gradients_adjoint_and_backprop_agree():
    flows = [random_flow(adjoint=True, rtol=1e-9, atol=1e-9, hidden=(8,)),
             random_flow(adjoint=False, rtol=1e-9, atol=1e-9, hidden=(8,))]
    flows[1].load_state_dict(flows[0].state_dict())
    grads = []
    for flow in flows:
        torch.manual_seed(2)
        x = flow.sample(32)
        grads.append(torch.autograd.grad(x.square().sum(), list(flow.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_sample_inverts_transform():
    flow = random_flow(rtol=1e-8, atol=1e-8)
    torch.manual_seed(3)
    with torch.no_grad():
        x = flow.sample(10)
        z, _ = flow.transform(x)
    torch.manual_seed(3)
    torch.testing.assert_close(z, torch.randn(10, 2, dtype=D64), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- fixed-step sampling


def taylor_map(A, h, order):
    """Σ_{j ≤ order} (hA)^j / j!: the one-step map of an explicit Runge–Kutta method of that
    order with as many stages (euler 1, midpoint 2, rk4 4) on the linear field f = A z."""
    M = torch.as_tensor(A, dtype=D64) * h
    term, total = torch.eye(len(M), dtype=D64), torch.eye(len(M), dtype=D64)
    for j in range(1, order + 1):
        term = term @ M / j
        total = total + term
    return total


@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_sample_is_the_runge_kutta_map_of_a_linear_field(method, order):
    """sample(n, steps=K) on f = A z: x = Φ^K z with Φ the order-p Taylor polynomial of
    e^{-hA}, h = T/K (to rounding); its error against x = e^{-TA} z falls by 2^p when K
    doubles."""
    T, n = 0.8, 7
    flow = CNF(3, net=LinearDynamics(A3), T=T)
    errors = []
    for K in (1, 3, 8, 16):
        torch.manual_seed(4)
        z = torch.randn(n, 3, dtype=D64)
        torch.manual_seed(4)
        with torch.no_grad():
            x = flow.sample(n, steps=K, method=method)
        expected = z @ torch.linalg.matrix_power(taylor_map(A3, -T / K, order), K).T
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)
        errors.append((x - z @ expm(A3, -T).T).norm())
    ratio = float(errors[2] / errors[3])
    assert 0.85 * 2 ** order < ratio < 1.15 * 2 ** order, (errors, ratio)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_step_sample_takes_exactly_k_steps_and_reports_its_evaluations(method):
    """K steps, K × stages evaluations, whatever T's rounding in float32: T = 0.1 is
    0.10000000149… there, and a step of 0.1/K from the float64 0.1 would cut the interval
    into K + 1 steps."""
    stages = TABLEAUX[method].stages
    flows = [CNF(3, net=LinearDynamics(A3), T=0.8),
             CNF(2, hidden=(8,), T=0.1),                       # float32
             CNF(2, hidden=(8,), T=0.7, train_T=True)]         # T = softplus(τ), float32
    for flow in flows:
        for K in (1, 3, 7, 10, 64):
            with torch.no_grad():
                x = flow.sample(5, steps=K, method=method)
            assert x.shape == (5, flow.dim)
            assert flow.stats_forward.n_accepted == K and flow.stats_forward.n_rejected == 0
            assert flow.nfe_forward == K * stages
    net = LinearDynamics(A3)
    flow = CNF(3, net=net, max_num_steps=4)   # K above the flow's step limit still runs
    flow.sample(2, steps=6)
    assert net.calls == flow.nfe_forward == 12   # midpoint by default: 2 per step
    assert FEW_STEP_METHOD == "midpoint"


def test_fixed_step_sample_of_a_conditional_flow_and_its_gradients():
    flow = random_flow(hidden=(8,))
    cond = CNF(2, hidden=(8,), context_features=1).double()
    c = torch.randn(6, 1, dtype=D64)
    assert cond.sample(context=c, steps=3).shape == (6, 2) and cond.nfe_forward == 6
    # gradients reach the parameters through the fixed-step solve: backpropagation's are the
    # discrete map's, the adjoint's the continuous path's (its backward solve also by K rk4
    # steps), equal to rk4's error
    grads = []
    for adjoint in (True, False):
        flow.adjoint = adjoint
        torch.manual_seed(5)
        x = flow.sample(16, steps=4, method="rk4")
        grads.append(torch.autograd.grad(x.square().sum(), list(flow.net.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3 * float(b.abs().max()))


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"steps": -1}, "steps must be a positive integer, got -1"),
    ({"steps": 2.5}, "steps must be a positive integer, got 2.5"),
    ({"steps": True}, "steps must be a positive integer, got True"),
    ({"steps": "4"}, "steps must be a positive integer, got '4'"),
    ({"steps": 4, "method": "dopri5"}, "one of euler, midpoint, rk4; got 'dopri5'"),
    ({"steps": 4, "method": "heun"}, "one of euler, midpoint, rk4; got 'heun'"),
    ({"method": "rk4"}, "give steps too"),
])
def test_bad_steps_are_refused_before_anything_is_drawn(kwargs, match):
    net = LinearDynamics(A3)
    flow = CNF(3, net=net)
    stats, options = flow.stats_forward, flow.solve_options
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=re.escape(match)):
        flow.sample(4, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng) and net.calls == 0
    assert flow.stats_forward is stats and flow.solve_options is options


def test_a_mixture_passes_steps_to_its_cnf_members_nested_ones_too():
    """FlowMixture([CNF, FlowMixture([CNF, Gaussian mixture])]): both CNFs take K rk4 steps;
    the Gaussian mixture samples exactly (the same draws with or without steps)."""
    gaussians = GaussianMixtureBase(torch.tensor([0.5, 0.5]), torch.tensor([[0.0], [3.0]]),
                                    torch.ones(2, 1, 1)).double()
    inner_flow = CNF(1, net=LinearDynamics([[-0.5]]))
    outer_flow = CNF(1, net=LinearDynamics([[0.3]]))
    mixture = FlowMixture([outer_flow, FlowMixture([inner_flow, gaussians])])
    torch.manual_seed(0)
    with torch.no_grad():
        x = mixture.sample(200, steps=3, method="rk4")
    assert x.shape == (200, 1)
    for flow in (inner_flow, outer_flow):
        assert flow.stats_forward.n_accepted == 3 and flow.nfe_forward == 12
    assert mixture.nfe_forward == 24
    exact = FlowMixture([gaussians, gaussians])
    draws = []
    for options in ({}, {"steps": 2}):
        torch.manual_seed(6)
        draws.append(exact.sample(50, **options))
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    rng = torch.get_rng_state()
    for options, match in (({"steps": 0}, "steps must be"), ({"method": "bosh3", "steps": 2},
                           "fixed-step"), ({"stepz": 2}, "no member's sample takes stepz")):
        with pytest.raises(ValueError, match=match):
            mixture.sample(5, **options)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_mixture_member_that_draws_nothing_counts_no_evaluations():
    gaussians = GaussianMixtureBase(torch.tensor([1.0]), torch.zeros(1, 1),
                                    torch.ones(1, 1, 1)).double()
    flow = CNF(1, net=LinearDynamics([[-0.5]]))
    with torch.no_grad():
        flow.sample(10)  # an adaptive solve leaves its count behind
        assert flow.nfe_forward > 0
        mixture = FlowMixture([flow, gaussians], weights=[0.0, 1.0])
        mixture.sample(20, steps=2)
    assert flow.nfe_forward == 0 and mixture.nfe_forward == 0


# ---------------------------------------------------------------- bookkeeping


def test_nfe_are_recorded_per_call():
    net = LinearDynamics(A3)
    flow = CNF(3, net=net, rtol=1e-6, atol=1e-6)
    x = torch.randn(5, 3, dtype=D64)
    with torch.no_grad():
        flow.log_prob(x)
    assert flow.nfe_forward == net.calls > 0  # one network call per evaluation ("vjp")
    assert flow.nfe_backward == 0
    assert isinstance(flow.stats_forward, SolverStats)
    # A tighter solve is a new record, not added to the last.
    flow.rtol = flow.atol = 1e-9
    net.calls = 0
    loss = -flow.log_prob(x).mean()
    assert flow.nfe_forward == net.calls
    net.calls = 0
    loss.backward()
    assert flow.nfe_backward == net.calls > 0
    flow.adjoint = False
    flow.log_prob(x).sum().backward()
    assert flow.nfe_backward == 0


def test_built_in_network_default_float32_and_state_dict():
    flow = CNF(2, hidden=(16,), train_T=True, T=2.0)
    assert isinstance(flow.net, ConcatSquashMLP)
    x = torch.randn(32, 2)
    logp = flow.log_prob(x)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    logp.mean().backward()
    assert all(p.grad is not None for p in flow.parameters())
    assert flow.sample(4).dtype == torch.float32
    other = CNF(2, hidden=(16,), train_T=True, T=0.5)
    other.load_state_dict(flow.state_dict())
    assert other.T.item() == pytest.approx(2.0)
    with torch.no_grad():
        torch.testing.assert_close(other.log_prob(x), flow.log_prob(x))
    assert "trace='exact'" in repr(flow)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim"),
    ({"trace": "stochastic"}, "unknown trace"),
    ({"noise": "uniform"}, "unknown noise"),
    ({"method": "rk45"}, "unknown method"),
    ({"T": True}, "T must be"),
    ({"adjoint": 1}, "adjoint must be True or False"),
    ({"exact_method": "fast"}, "unknown exact_method"),
    ({"T": 0.0}, "T must be"),
    ({"T": float("nan")}, "T must be"),
    ({"rtol": -1e-3}, "rtol"),
    ({"net": 3}, "net must be callable"),
    ({"step_size": 0.1}, "step_size"),
    ({"max_num_steps": 0}, "max_num_steps"),
])
def test_bad_constructor_arguments(kwargs, match):
    kwargs = {"dim": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        CNF(**kwargs)


def test_bad_inputs():
    flow = CNF(2, hidden=(4,)).double()
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        flow.log_prob(torch.randn(5, 3, dtype=D64))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        flow.log_prob(torch.randn(2, dtype=D64))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]], dtype=D64))
    with pytest.raises(ValueError, match="dtype"):
        flow.log_prob(torch.randn(5, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="tensor"):
        flow.transform([[0.0, 1.0]])
    with pytest.raises(ValueError, match="empty"):
        flow.log_prob(torch.zeros(0, 2, dtype=D64))
    with pytest.raises(ValueError, match="positive integer"):
        flow.sample(0)
