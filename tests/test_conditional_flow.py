"""Conditioning by composition: a CNF with ``context_features`` is p(y | c). Its network's
divergence against autograd, its density against an independent solve (scipy, autograd
Jacobians) and quadrature, its sampling against its scoring, context gradients through the
adjoint against backpropagation, user fields net(t, z, context), and the checks of a context."""

import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from cnflow import CNF
from cnflow.flows import ConditionalCNF
from cnflow.interfaces import AnalyticDivergence
from cnflow.nn import ConcatSquashMLP, ConditionalConcatSquashMLP, WithContext

D64 = torch.float64


def _autograd_divergence(net, t, z, c):
    """tr(∂f/∂z) and ‖∂f/∂z‖²_F row by row from full autograd Jacobians."""
    traces, frobs = [], []
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda row, i=i: net(t, row.unsqueeze(0), c[i:i + 1])[0], z[i])
        traces.append(torch.diagonal(jac).sum())
        frobs.append(jac.square().sum())
    return torch.stack(traces), torch.stack(frobs)


def _reference_log_prob(field, y, c, T=1.0):
    """log p(y_i | c_i) row by row by scipy's DOP853 at tolerance 1e-10 on [z, Δ] with
    dz/dt = field(t, z, c), dΔ/dt = tr ∂field/∂z from an autograd Jacobian."""
    out = []
    for i in range(y.shape[0]):
        ci = c[i:i + 1]

        def rhs(t, state, ci=ci):
            z = torch.tensor(state[:-1], dtype=D64)
            tt = torch.tensor(t, dtype=D64)
            with torch.no_grad():
                dz = field(tt, z[None], ci)[0]
            jac = torch.autograd.functional.jacobian(lambda r: field(tt, r[None], ci)[0], z)
            return np.append(dz.numpy(), float(torch.diagonal(jac).sum()))

        y0 = np.append(y[i].numpy(), 0.0)
        sol = solve_ivp(rhs, (0.0, T), y0, method="DOP853", rtol=1e-10, atol=1e-10)
        z_T, delta = sol.y[:-1, -1], sol.y[-1, -1]
        out.append(-0.5 * (z_T @ z_T) - 0.5 * len(z_T) * np.log(2 * np.pi) + delta)
    return torch.tensor(out, dtype=D64)


# ------------------------------------------------------------------ the network


@pytest.mark.parametrize("conditioning", ["gates", "concat"])
@pytest.mark.parametrize("hidden", [(), (7,), (6, 5)])
@pytest.mark.parametrize("per_row_time", [False, True])
def test_divergence_matches_autograd(conditioning, hidden, per_row_time):
    torch.manual_seed(0)
    net = ConcatSquashMLP(3, hidden=hidden, context_features=2,
                          conditioning=conditioning).double()
    z, c = torch.randn(5, 3, dtype=D64), torch.randn(5, 2, dtype=D64)
    t = torch.rand(5, 1, dtype=D64) if per_row_time else torch.tensor(0.3, dtype=D64)
    f, trace, frob = net.forward_with_divergence(t, z, c, frobenius=True)
    torch.testing.assert_close(f, net(t, z, c))
    if per_row_time:
        ref = [_autograd_divergence(net, t[i:i + 1], z[i:i + 1], c[i:i + 1]) for i in range(5)]
        ref_trace = torch.cat([r[0] for r in ref])
        ref_frob = torch.cat([r[1] for r in ref])
    else:
        ref_trace, ref_frob = _autograd_divergence(net, t, z, c)
    torch.testing.assert_close(trace, ref_trace, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(frob, ref_frob, rtol=1e-10, atol=1e-12)


def test_the_gated_layer_is_the_formula_with_the_context():
    """(W x + b) ⊙ σ(a t + G c + e) + d t + H c, from the layer's own weights."""
    net = ConcatSquashMLP(2, hidden=(), context_features=3).double()
    layer = net.layers[0]
    z, c, t = torch.randn(4, 2, dtype=D64), torch.randn(4, 3, dtype=D64), 0.3
    tc = torch.cat([torch.full((4, 1), t, dtype=D64), c], dim=1)
    gate = torch.sigmoid(tc @ layer.gate.weight.T + layer.gate.bias)
    expected = (z @ layer.linear.weight.T + layer.linear.bias) * gate \
        + tc @ layer.hyper_bias.weight.T
    torch.testing.assert_close(net(t, z, c), expected, rtol=1e-14, atol=1e-14)


def test_the_context_changes_the_field_and_a_bad_context_is_refused():
    net = ConcatSquashMLP(2, hidden=(8,), context_features=1)
    z = torch.randn(4, 2)
    a, b = net(0.5, z, torch.zeros(4, 1)), net(0.5, z, torch.ones(4, 1))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"context must have shape \(4, 1\)"):
        net(0.5, z, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="reads a context"):
        net(0.5, z)
    with pytest.raises(ValueError, match="takes no context"):
        ConcatSquashMLP(2, hidden=(8,))(0.5, z, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="conditioning"):
        ConcatSquashMLP(2, context_features=1, conditioning="film")
    with pytest.raises(ValueError, match="context_features"):
        ConcatSquashMLP(2, context_features=-1)
    assert net.divergence_vjp(torch.tensor(0.5), z) is None  # no hand-written pullback


# ------------------------------------------------------------------ the flow's checks


def test_a_conditional_flow_needs_a_context_and_a_plain_one_refuses_it():
    flow = CNF(2, hidden=(8,), context_features=1)
    z = torch.randn(4, 2)
    for call in (lambda: flow.log_prob(z), lambda: flow.sample(4),
                 lambda: flow.transform(z), lambda: flow.flow_matching_loss(z),
                 lambda: flow.sample_with_log_prob(4), lambda: flow.trajectory(z)):
        with pytest.raises(ValueError, match=r"conditional \(context_features=1\)"):
            call()
    with pytest.raises(ValueError, match="context has 3 rows for 4 rows"):
        flow.log_prob(z, torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"context must have shape \(n, 1\)"):
        flow.transform(z, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(z, torch.full((4, 1), float("nan")))
    with pytest.raises(ValueError, match="float32"):
        flow.log_prob(z, torch.zeros(4, 1, dtype=D64))
    with pytest.raises(ValueError, match="must be a tensor"):
        flow.flow_matching_loss(z, [[0.0]] * 4)
    with pytest.raises(ValueError, match="one x per context row"):
        flow.sample(5, torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"sample\(context=c\)"):
        flow.sample(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="empty"):
        flow.sample(context=torch.zeros(0, 1))
    plain = CNF(2, hidden=(8,))
    for call in (lambda: plain.log_prob(z, torch.zeros(4, 1)),
                 lambda: plain.sample(4, torch.zeros(4, 1)),
                 lambda: plain.flow_matching_loss(z, torch.zeros(4, 1))):
        with pytest.raises(ValueError, match="built without context_features"):
            call()


def test_the_context_is_an_argument_of_the_call_not_state_of_the_module():
    """Calls with other contexts in between leave a call's result as it was, and the module
    holds no tensor beyond its parameters and buffers."""
    flow = _flow()
    y = torch.randn(3, 1, dtype=D64)
    c1, c2 = torch.randn(3, 2, dtype=D64), torch.randn(3, 2, dtype=D64)
    with torch.no_grad():
        first = flow.log_prob(y, c1)
        flow.log_prob(y, c2)
        flow.sample(context=c2)
        torch.testing.assert_close(flow.log_prob(y, c1), first, rtol=0, atol=0)
    assert not [name for name, value in vars(flow).items() if isinstance(value, torch.Tensor)]
    assert flow._field(None) is flow.net  # the unconditional path: the network itself


# ------------------------------------------------------------------ the density


def _flow(seed=0, **kwargs):
    torch.manual_seed(seed)
    flow = CNF(1, hidden=(16, 16), context_features=2, rtol=1e-9, atol=1e-9, **kwargs).double()
    with torch.no_grad():  # a field far from zero, so the density is far from the base
        for p in flow.net.parameters():
            p.mul_(3)
    return flow


def test_log_prob_matches_the_autograd_trace_and_rows_are_independent():
    flow = _flow()
    loop = _flow(exact_method="loop")
    y, c = torch.randn(6, 1, dtype=D64), torch.randn(6, 2, dtype=D64)
    logp = flow.log_prob(y, c)
    torch.testing.assert_close(logp, loop.log_prob(y, c), rtol=1e-7, atol=1e-7)
    alone = torch.cat([flow.log_prob(y[i:i + 1], c[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(logp, alone, rtol=1e-7, atol=1e-7)
    assert (logp - torch.distributions.Normal(0, 1).log_prob(y[:, 0])).abs().max() > 0.1


@pytest.mark.parametrize("conditioning", ["gates", "concat"])
def test_log_prob_matches_an_independent_solve_for_each_fixed_context(conditioning):
    """The change of variables per fixed c against scipy's DOP853 with autograd traces."""
    flow = _flow(seed=4, conditioning=conditioning)
    y = torch.tensor([[-1.0], [0.3], [1.2]], dtype=D64)
    c = torch.tensor([[0.0, 0.0], [1.5, -2.0], [-1.0, 0.5]], dtype=D64)
    with torch.no_grad():
        ours = flow.log_prob(y, c)
    torch.testing.assert_close(ours, _reference_log_prob(flow.net, y, c), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("context", [[0.0, 0.0], [1.5, -2.0]])
def test_the_density_integrates_to_one_for_each_context(context):
    """∫ p(y | c) dy = 1 by the trapezoid rule on a fine grid (1-D y)."""
    flow = _flow(seed=1)
    flow.solve_options = flow.solve_options.replace(rtol=1e-7, atol=1e-7)
    grid = torch.linspace(-12, 12, 4001, dtype=D64).unsqueeze(1)
    c = torch.tensor([context], dtype=D64).expand(len(grid), 2)
    with torch.no_grad():
        density = flow.log_prob(grid, c).exp()
    assert float(torch.trapezoid(density, grid[:, 0])) == pytest.approx(1.0, abs=2e-3)


def test_sample_with_log_prob_agrees_with_log_prob_and_follows_the_context():
    flow = _flow(seed=2)
    c = torch.tensor([[2.0, 0.0]] * 500 + [[-2.0, 1.0]] * 500, dtype=D64)
    torch.manual_seed(3)
    with torch.no_grad():
        y, log_q = flow.sample_with_log_prob(context=c)
        torch.testing.assert_close(log_q, flow.log_prob(y, c), rtol=1e-6, atol=1e-6)
    assert y.shape == (1000, 1)
    first, second = y[:500, 0].numpy(), y[500:, 0].numpy()
    assert abs(np.mean(first) - np.mean(second)) > 0.2  # the contexts give other laws


def test_sampling_transform_and_trajectory_agree_given_the_context():
    flow = _flow(seed=2)
    c = torch.randn(6, 2, dtype=D64)
    with torch.no_grad():
        torch.manual_seed(4)
        y, _ = flow.sample_with_log_prob(6, c)
        torch.manual_seed(4)  # the same base draws, integrated without the trace
        torch.testing.assert_close(flow.sample(context=c), y, rtol=1e-7, atol=1e-7)
        z, _ = flow.transform(y, c)  # back to the base draws, and forth
        back, _ = flow.transform(z, c, reverse=True)
        times, states = flow.trajectory(z, c, n_times=3)
    torch.testing.assert_close(back, y, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(states[-1], y, rtol=1e-7, atol=1e-7)
    assert states.shape == (3, 6, 1) and times.shape == (3,)


# ------------------------------------------------------------------ gradients


def test_flow_matching_and_maximum_likelihood_gradients_reach_the_context_weights():
    flow = CNF(2, hidden=(8,), context_features=3)
    y, c = torch.randn(16, 2), torch.randn(16, 3)
    flow.flow_matching_loss(y, c).backward()
    gate = flow.net.layers[0].gate.weight
    assert gate.grad is not None and gate.grad[:, 1:].abs().sum() > 0
    flow.zero_grad()
    (-flow.log_prob(y, c).mean()).backward()
    assert gate.grad[:, 1:].abs().sum() > 0


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_gradients_reach_the_context_by_the_adjoint_as_by_backpropagation(trace):
    """An embedding e(x) trained jointly: ∂(-log p)/∂θ_e by the adjoint method equals
    backpropagation through the solver (the context is among the adjoint's parameters)."""
    y, x = torch.randn(5, 1, dtype=D64), torch.randn(5, 3, dtype=D64)
    grads = []
    for adjoint in (True, False):
        flow = _flow(seed=5, trace=trace, adjoint=adjoint)
        torch.manual_seed(6)
        embedding = nn.Linear(3, 2).double()
        torch.manual_seed(7)  # the same Hutchinson probes in both
        (-flow.log_prob(y, embedding(x)).sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in embedding.parameters()]))
        grads.append(flow.net.layers[0].gate.weight.grad.flatten())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], grads[3], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ user fields


class _TinyField(nn.Module):
    """A user's field: an MLP on [z, t, c]."""

    def __init__(self, dim: int, context_features: int, width: int = 16) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(dim + 1 + context_features, width), nn.Tanh(),
                                   nn.Linear(width, dim))

    def forward(self, t, z, context):
        t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1).expand(z.shape[0], 1)
        return self.inner(torch.cat([z, t, context], dim=1))


def test_a_user_field_with_a_context_scores_samples_and_survives_a_state_dict(tmp_path):
    torch.manual_seed(8)
    flow = CNF(2, net=_TinyField(2, 3), context_features=3, rtol=1e-9, atol=1e-9).double()
    y, c = torch.randn(4, 2, dtype=D64), torch.randn(4, 3, dtype=D64)
    with torch.no_grad():
        logp = flow.log_prob(y, c)
        torch.testing.assert_close(logp, _reference_log_prob(flow.net, y, c), rtol=1e-6,
                                   atol=1e-6)
        assert flow.sample(context=c).shape == (4, 2)
        assert flow.flow_matching_loss(y, c).ndim == 0
    path = tmp_path / "flow.pt"
    torch.save(flow.state_dict(), path)
    torch.manual_seed(9)  # other initial weights, replaced by the loaded ones
    again = CNF(2, net=_TinyField(2, 3), context_features=3, rtol=1e-9, atol=1e-9).double()
    again.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again.log_prob(y, c), logp, rtol=1e-12, atol=1e-12)


def test_a_linear_user_field_with_a_context_has_the_closed_form_density():
    """f = A z + B c: z(T) = e^{AT} y + A⁻¹(e^{AT} − I) B c and log p = log N(z(T)) + T tr A."""

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.A = nn.Parameter(torch.tensor([[-0.4, 0.7], [-0.3, 0.2]], dtype=D64))
            self.B = nn.Parameter(torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=D64))

        def forward(self, t, z, context):
            return z @ self.A.T + context @ self.B.T

    flow = CNF(2, net=Linear(), context_features=2, T=1.5, rtol=1e-10, atol=1e-10)
    y, c = torch.randn(6, 2, dtype=D64), torch.randn(6, 2, dtype=D64)
    A, B = flow.net.A.detach(), flow.net.B.detach()
    expm = torch.linalg.matrix_exp(1.5 * A)
    z_T = y @ expm.T + c @ (torch.linalg.solve(A, expm - torch.eye(2, dtype=D64)) @ B).T
    expected = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=D64), torch.eye(2, dtype=D64)).log_prob(z_T) + 1.5 * torch.trace(A)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(y, c), expected, rtol=1e-8, atol=1e-8)


def test_a_user_field_must_take_the_arguments_the_flow_passes():
    with pytest.raises(ValueError, match=r"net\(t, z, context\)"):
        CNF(2, net=lambda t, z: z, context_features=1)
    with pytest.raises(ValueError, match="context_features=k"):
        CNF(2, net=_TinyField(2, 1))
    with pytest.raises(ValueError, match="reads a context of 3 features"):
        CNF(2, net=ConcatSquashMLP(2, (4,), context_features=3), context_features=1)
    CNF(2, net=ConcatSquashMLP(2, (4,), context_features=1), context_features=1)


def test_with_context_is_an_analytic_divergence_field_only_where_the_net_is():
    net = ConcatSquashMLP(2, hidden=(4,), context_features=1)
    bound = WithContext(net, torch.zeros(3, 1))
    assert isinstance(bound, AnalyticDivergence) and bound.has_analytic_divergence
    assert not WithContext(_TinyField(2, 1), torch.zeros(3, 1)).has_analytic_divergence


# ------------------------------------------------------------------ the former names


def test_the_former_names_build_the_merged_classes_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="ConditionalCNF"):
        flow = ConditionalCNF(1, 2, (8,), conditioning="concat", rtol=1e-4)
    assert type(flow) is CNF and flow.context_features == 2 and flow.rtol == 1e-4
    assert flow.net.conditioning == "concat"
    with pytest.warns(DeprecationWarning, match="ConditionalConcatSquashMLP"):
        net = ConditionalConcatSquashMLP(2, 3, hidden=(4,))
    assert type(net) is ConcatSquashMLP and net.context_features == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = ConcatSquashMLP(2, (4,), context_features=3)
    assert same.load_state_dict(net.state_dict()) is not None  # the same parameters
