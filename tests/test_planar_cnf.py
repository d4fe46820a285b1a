"""cnflow.nn.PlanarCNFField: the planar CNF of Chen et al. (2018) and its closed-form divergence.

Every check is against an independent reference: a per-unit loop over the hypernetwork's raw
outputs, the autograd Jacobian, the D-backward-pass trace of cnflow.divergence, and a scipy
DOP853 solve of the augmented ODE.
"""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from cnflow import CNF, divergence
from cnflow.nn import ACTIVATIONS, PlanarCNFField

D64 = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}


def field64(dim, n_units=3, **kwargs):
    return PlanarCNFField(dim, n_units, hyper_hidden=16, **kwargs).double()


def reference_forward(field, t, z):
    """Σ_m u_m h(w_mᵀ z + b_m), one row and one unit at a time, from the raw hypernetwork output
    laid out as documented: [w (M·D), u (M·D), gate (M·D, when gated), b (M)]."""
    m_units, d = field.n_units, field.dim
    t = torch.as_tensor(t, dtype=D64).reshape(-1)
    out = torch.zeros_like(z)
    for i in range(z.shape[0]):
        ti = t[0] if t.numel() == 1 else t[i]
        raw = field.hyper(ti.reshape(1, 1))[0]
        for m in range(m_units):
            w = raw[m * d:(m + 1) * d]
            u = raw[(m_units + m) * d:(m_units + m + 1) * d]
            if field.gated:
                u = u * torch.sigmoid(raw[(2 * m_units + m) * d:(2 * m_units + m + 1) * d])
            b = raw[-m_units + m]
            out[i] = out[i] + u * field.activation(w @ z[i] + b)
    return out


def autograd_jacobians(field, t, z):
    """The (n, D, D) Jacobians ∂f/∂z of each row, by torch.autograd.functional.jacobian."""
    per_row = torch.as_tensor(t).ndim > 0
    return torch.stack([torch.autograd.functional.jacobian(
        lambda x, i=i: field(t.reshape(-1)[i:i + 1] if per_row else t, x[None])[0], z[i])
        for i in range(z.shape[0])])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("per_row_t", [False, True])
def test_forward_is_the_sum_of_planar_units(activation, gated, per_row_t):
    field = field64(3, 4, activation=activation, gated=gated)
    z = torch.randn(5, 3, dtype=D64)
    t = torch.rand(5, dtype=D64) if per_row_t else torch.tensor(0.4, dtype=D64)
    with torch.no_grad():
        torch.testing.assert_close(field(t, z), reference_forward(field, t, z), **TOL)


def test_time_forms_agree_and_a_scalar_time_calls_the_hypernetwork_once():
    field = field64(2, 3)
    z = torch.randn(6, 2, dtype=D64)
    ts = torch.rand(6, dtype=D64)
    seen = []
    field.hyper.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    out = field(torch.tensor(0.3, dtype=D64), z)
    assert seen == [(1, 1)]
    torch.testing.assert_close(field(0.3, z), out, rtol=0, atol=0)
    # One time per row: row b is the field at time t_b, in either layout.
    per_row = field(ts, z)
    torch.testing.assert_close(field(ts[:, None], z), per_row, rtol=0, atol=0)
    for b in range(6):
        torch.testing.assert_close(per_row[b], field(ts[b], z[b:b + 1])[0], **TOL)
    # The parameters do depend on t.
    assert not torch.allclose(field(0.0, z), field(1.0, z))


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("n_units", [1, 3])
@pytest.mark.parametrize("per_row_t", [False, True])
def test_closed_form_divergence_matches_the_autograd_jacobian(dim, n_units, per_row_t):
    field = field64(dim, n_units)
    assert field.has_analytic_divergence and divergence.has_analytic_divergence(field)
    z = torch.randn(4, dim, dtype=D64)
    t = torch.rand(4, 1, dtype=D64) if per_row_t else torch.tensor(0.6, dtype=D64)
    dz, trace, frob = field.forward_with_divergence(t, z, frobenius=True)
    dz2, trace2 = field.forward_with_divergence(t, z)
    torch.testing.assert_close(dz, field(t, z), rtol=0, atol=0)
    torch.testing.assert_close((dz2, trace2), (dz, trace), rtol=0, atol=0)
    jac = autograd_jacobians(field, t, z)
    torch.testing.assert_close(trace, jac.diagonal(dim1=1, dim2=2).sum(-1), **TOL)
    torch.testing.assert_close(frob, jac.square().sum((1, 2)), **TOL)


@pytest.mark.parametrize("activation", ["softplus", "elu", "silu", "sigmoid"])
def test_closed_form_divergence_for_the_other_activations(activation):
    field = field64(3, 3, activation=activation)
    z = 2 * torch.randn(5, 3, dtype=D64)  # both signs of the pre-activations, for ELU
    t = torch.rand(5, dtype=D64)
    _, trace, frob = field.forward_with_divergence(t, z, frobenius=True)
    jac = autograd_jacobians(field, t, z)
    torch.testing.assert_close(trace, jac.diagonal(dim1=1, dim2=2).sum(-1), **TOL)
    torch.testing.assert_close(frob, jac.square().sum((1, 2)), **TOL)


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_divergence_exact_auto_uses_the_closed_form_and_equals_the_loop(grad_enabled):
    field = field64(4, 3)
    z = torch.randn(7, 4, dtype=D64)
    t = torch.tensor(0.25, dtype=D64)
    calls = []
    original = field.forward_with_divergence
    field.forward_with_divergence = lambda *a, **k: calls.append(1) or original(*a, **k)
    with torch.set_grad_enabled(grad_enabled):
        auto = divergence.exact(field, t, z, frobenius=True)
        loop = divergence.exact(field, t, z, method="loop", frobenius=True)
    assert calls == [1]
    torch.testing.assert_close(auto, loop, **TOL)


def test_gradients_of_the_closed_form_divergence_match_autograd():
    """d/dθ of Σ tr J and Σ ‖J‖²_F equal those of the autograd trace, and finite differences
    in z and t (gradcheck)."""
    field = field64(3, 3)
    z = torch.randn(5, 3, dtype=D64)
    t = torch.rand(5, dtype=D64)
    params = list(field.parameters())
    _, trace, frob = divergence.exact(field, t, z, method="analytic", frobenius=True,
                                      create_graph=True)
    _, trace_ref, frob_ref = divergence.exact(field, t, z, method="loop", frobenius=True,
                                              create_graph=True)
    for ours, ref in ((trace, trace_ref), (frob, frob_ref)):
        grads = torch.autograd.grad(ours.sum(), params, retain_graph=True)
        grads_ref = torch.autograd.grad(ref.sum(), params, retain_graph=True)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(g, g_ref, **TOL)

    small = field64(2, 2)

    def closed_form(t, z):
        return small.forward_with_divergence(t, z, frobenius=True)

    inputs = (torch.rand(3, dtype=D64, requires_grad=True),
              torch.randn(3, 2, dtype=D64, requires_grad=True))
    assert torch.autograd.gradcheck(closed_form, inputs)


def reference_log_prob(field, x, T):
    """log N(z(T); 0, I) + ∫_0^T tr(∂f/∂z) dt by scipy's DOP853, the trace from autograd."""
    n, d = x.shape

    def rhs(t, y):
        z = torch.as_tensor(y[:n * d].reshape(n, d))
        tt = torch.tensor(t, dtype=D64)
        with torch.no_grad():
            dz = field(tt, z)
        # Rows are independent, so the Jacobian of the column sums holds every row's Jacobian.
        jac = torch.autograd.functional.jacobian(lambda v: field(tt, v).sum(0), z)  # (D, n, D)
        trace = torch.einsum("ibi->b", jac)
        return np.concatenate([dz.numpy().ravel(), trace.numpy()])

    y0 = np.concatenate([x.numpy().ravel(), np.zeros(n)])
    sol = solve_ivp(rhs, (0.0, T), y0, method="DOP853", rtol=1e-10, atol=1e-10)
    assert sol.success
    zT, logdet = sol.y[:n * d, -1].reshape(n, d), sol.y[n * d:, -1]
    return -0.5 * (zT ** 2).sum(-1) - 0.5 * d * np.log(2 * np.pi) + logdet


@pytest.mark.parametrize("dim, T", [(1, 1.0), (2, 1.5)])
def test_cnf_log_prob_matches_a_scipy_solve(dim, T):
    field = field64(dim, 4)
    with torch.no_grad():  # a livelier field than the initialisation, so the test has teeth
        field.hyper[-1].weight.mul_(3.0)
        field.hyper[-1].bias.mul_(3.0)
    flow = CNF(dim, net=field, T=T, rtol=1e-8, atol=1e-8)
    x = torch.randn(4, dim, dtype=D64)
    with torch.no_grad():
        logp = flow.log_prob(x)
        base = flow.base_log_prob(x)  # what log p(x) would be with f = 0
    expected = torch.as_tensor(reference_log_prob(field, x, T))
    assert (expected - base).abs().max() > 0.05  # the flow changes the density noticeably
    torch.testing.assert_close(logp, expected, rtol=1e-7, atol=1e-7)


def test_flow_matching_loss_and_training_reach_the_hypernetwork():
    flow = CNF(2, net=PlanarCNFField(2, n_units=4))
    x = torch.randn(16, 2)
    flow.flow_matching_loss(x).backward()  # calls net with t of shape (n, 1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.net.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim must be a positive integer"),
    ({"dim": 2.0}, "dim must be a positive integer"),
    ({"dim": 2, "n_units": 0}, "n_units must be a positive integer"),
    ({"dim": 2, "hyper_hidden": 0}, "hyper_hidden must be a positive integer"),
    ({"dim": 2, "activation": "relu"}, "unknown activation 'relu'; valid: tanh"),
    ({"dim": 2, "activation": torch.nn.Tanh()}, "unknown activation"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlanarCNFField(**kwargs)


def test_bad_call_shapes():
    field = PlanarCNFField(3)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 3\)"):
        field(0.0, torch.randn(4, 2))
    with pytest.raises(ValueError, match="one time per row of z"):
        field(torch.rand(3), torch.randn(4, 3))
