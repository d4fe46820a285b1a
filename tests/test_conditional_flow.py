"""The conditional CNF p(y | c): its network's divergence against autograd, its density
against a brute-force solve and quadrature, and its sampling against its scoring."""

import numpy as np
import pytest
import torch

from cnflow.flows import ConditionalCNF
from cnflow.nn import ConditionalConcatSquashMLP, WithContext


def _autograd_divergence(net, t, z, c):
    """tr(∂f/∂z) and ‖∂f/∂z‖²_F row by row from full autograd Jacobians."""
    traces, frobs = [], []
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda row, i=i: net(t, row.unsqueeze(0), c[i:i + 1])[0], z[i])
        traces.append(torch.diagonal(jac).sum())
        frobs.append(jac.square().sum())
    return torch.stack(traces), torch.stack(frobs)


@pytest.mark.parametrize("conditioning", ["gates", "concat"])
@pytest.mark.parametrize("hidden", [(), (7,), (6, 5)])
@pytest.mark.parametrize("per_row_time", [False, True])
def test_divergence_matches_autograd(conditioning, hidden, per_row_time):
    torch.manual_seed(0)
    net = ConditionalConcatSquashMLP(3, context_features=2, hidden=hidden,
                                     conditioning=conditioning).double()
    z, c = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, 1, dtype=torch.float64) if per_row_time else torch.tensor(
        0.3, dtype=torch.float64)
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


def test_the_context_changes_the_field_and_a_bad_context_is_refused():
    net = ConditionalConcatSquashMLP(2, context_features=1, hidden=(8,))
    z = torch.randn(4, 2)
    a, b = net(0.5, z, torch.zeros(4, 1)), net(0.5, z, torch.ones(4, 1))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"context must have shape \(4, 1\)"):
        net(0.5, z, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="conditioning"):
        ConditionalConcatSquashMLP(2, 1, conditioning="film")
    flow = ConditionalCNF(2, context_features=1, hidden=(8,))
    with pytest.raises(ValueError, match="context has 3 rows for 4 rows of y"):
        flow.log_prob(z, torch.zeros(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(z, torch.full((4, 1), float("nan")))
    with pytest.raises(ValueError, match="float32"):
        flow.log_prob(z, torch.zeros(4, 1, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="with a context"):
        flow._field()


def _flow(seed=0, **kwargs):
    torch.manual_seed(seed)
    flow = ConditionalCNF(1, context_features=2, hidden=(16, 16), rtol=1e-9, atol=1e-9,
                          **kwargs).double()
    with torch.no_grad():  # a field far from zero, so the density is far from the base
        for p in flow.net.parameters():
            p.mul_(3)
    return flow


def test_log_prob_matches_the_autograd_trace_and_rows_are_independent():
    flow = _flow()
    loop = _flow(exact_method="loop")
    y, c = torch.randn(6, 1, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    logp = flow.log_prob(y, c)
    torch.testing.assert_close(logp, loop.log_prob(y, c), rtol=1e-7, atol=1e-7)
    alone = torch.cat([flow.log_prob(y[i:i + 1], c[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(logp, alone, rtol=1e-7, atol=1e-7)
    assert (logp - torch.distributions.Normal(0, 1).log_prob(y[:, 0])).abs().max() > 0.1


@pytest.mark.parametrize("context", [[0.0, 0.0], [1.5, -2.0]])
def test_the_density_integrates_to_one_for_each_context(context):
    """∫ p(y | c) dy = 1 by the trapezoid rule on a fine grid (1-D y)."""
    flow = _flow(seed=1)
    flow.solve_options = flow.solve_options.replace(rtol=1e-7, atol=1e-7)
    grid = torch.linspace(-12, 12, 4001, dtype=torch.float64).unsqueeze(1)
    c = torch.tensor([context], dtype=torch.float64).expand(len(grid), 2)
    with torch.no_grad():
        density = flow.log_prob(grid, c).exp()
    assert float(torch.trapezoid(density, grid[:, 0])) == pytest.approx(1.0, abs=2e-3)


def test_sample_with_log_prob_agrees_with_log_prob_and_follows_the_context():
    flow = _flow(seed=2)
    c = torch.tensor([[2.0, 0.0]] * 500 + [[-2.0, 1.0]] * 500, dtype=torch.float64)
    torch.manual_seed(3)
    with torch.no_grad():
        y, log_q = flow.sample_with_log_prob(c)
        torch.testing.assert_close(log_q, flow.log_prob(y, c), rtol=1e-6, atol=1e-6)
    assert y.shape == (1000, 1)
    first, second = y[:500, 0].numpy(), y[500:, 0].numpy()
    assert abs(np.mean(first) - np.mean(second)) > 0.2  # the contexts give other laws


def test_flow_matching_and_maximum_likelihood_gradients_reach_the_context_weights():
    flow = ConditionalCNF(2, context_features=3, hidden=(8,))
    y, c = torch.randn(16, 2), torch.randn(16, 3)
    flow.flow_matching_loss(y, c).backward()
    gate = flow.net.layers[0].gate.weight
    assert gate.grad is not None and gate.grad[:, 1:].abs().sum() > 0
    flow.zero_grad()
    (-flow.log_prob(y, c).mean()).backward()
    assert gate.grad[:, 1:].abs().sum() > 0


def test_with_context_is_an_analytic_divergence_field():
    from cnflow.interfaces import AnalyticDivergence

    net = ConditionalConcatSquashMLP(2, 1, hidden=(4,))
    assert isinstance(WithContext(net, torch.zeros(3, 1)), AnalyticDivergence)
