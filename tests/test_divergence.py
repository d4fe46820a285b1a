"""cnflow.divergence against torch.autograd.functional.jacobian and Hutchinson's theory."""

import itertools

import pytest
import torch

from cnflow import divergence
from cnflow.nn import ConcatSquashMLP, WithContext

# torch's forward-mode AD (method="jvp") scripts a decomposition on first use, and torch 2.13
# warns that torch.jit.script is deprecated: torch's own internals, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

D64 = torch.float64
METHODS = divergence.EXACT_METHODS


def random_mlp(dim=3, hidden=(16, 16), activation="tanh"):
    net = ConcatSquashMLP(dim, hidden, activation=activation).double()
    with torch.no_grad():  # larger weights than the default init: a Jacobian far from 0
        for p in net.parameters():
            p.mul_(2.0)
    return net


def reference_jacobians(net, t, z, create_graph=False):
    """Per-row Jacobians ∂f_b/∂z_b from the full (n, D, n, D) autograd Jacobian."""
    full = torch.autograd.functional.jacobian(lambda x: net(t, x), z, create_graph=create_graph)
    idx = torch.arange(z.shape[0])
    return full[idx, :, idx, :]  # (n, D, D)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("conditioning", ["gates", "concat"])
def test_every_exact_method_takes_a_field_with_its_context_bound(method, conditioning):
    """f(t, z; c) bound to its context (as a conditional CNF's solves see it): the trace and
    ‖J‖²_F with respect to z alone, by every method, against the autograd Jacobian."""
    net = ConcatSquashMLP(3, (8, 8), context_features=2, conditioning=conditioning).double()
    t, z, c = torch.tensor(0.6, dtype=D64), torch.randn(5, 3, dtype=D64), torch.randn(5, 2,
                                                                                     dtype=D64)
    field = WithContext(net, c)
    J = reference_jacobians(field, t, z)
    fz, trace, frob = divergence.exact(field, t, z, method=method, frobenius=True)
    torch.testing.assert_close(fz, net(t, z, c))
    torch.testing.assert_close(trace, J.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(frob, J.square().sum((1, 2)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_exact_trace_and_frobenius_equal_autograd_jacobian(method, activation):
    net = random_mlp(activation=activation)
    t = torch.tensor(0.37, dtype=D64)
    z = torch.randn(6, 3, dtype=D64)
    J = reference_jacobians(net, t, z)
    assert J.abs().max() > 0.1  # not a trivially small Jacobian
    fz, div, frob = divergence.exact(net, t, z, method=method, frobenius=True)
    torch.testing.assert_close(fz, net(t, z), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(div, torch.diagonal(J, dim1=1, dim2=2).sum(-1), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(frob, J.square().sum((1, 2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_exact_trace_gradients_equal_autograd(method):
    """Training needs ∂tr(J)/∂θ and ∂tr(J)/∂z: compare with the autograd Jacobian's."""
    net = random_mlp()
    t = torch.tensor(0.2, dtype=D64)
    z = torch.randn(4, 3, dtype=D64, requires_grad=True)
    params = list(net.parameters())
    weights = torch.randn(4, dtype=D64)

    J = reference_jacobians(net, t, z, create_graph=True)
    ref = torch.autograd.grad((torch.diagonal(J, dim1=1, dim2=2).sum(-1) * weights).sum(),
                              [z, *params], materialize_grads=True)
    _, div = divergence.exact(net, t, z, method=method)
    got = torch.autograd.grad((div * weights).sum(), [z, *params], materialize_grads=True)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_exact_without_graph_returns_detached_values(method):
    net = random_mlp()
    t = torch.tensor(0.0, dtype=D64)
    z = torch.randn(5, 3, dtype=D64)
    _, div_graph = divergence.exact(net, t, z, method=method)
    assert div_graph.requires_grad
    with torch.no_grad():  # e.g. the adjoint's forward solve
        fz, div = divergence.exact(net, t, z, method=method)
    assert not fz.requires_grad and not div.requires_grad
    torch.testing.assert_close(div, div_graph.detach(), rtol=1e-13, atol=1e-13)
    fz, div = divergence.exact(net, t, z, method=method, create_graph=False)
    assert not div.requires_grad


def test_exact_of_linear_map_is_its_trace_and_of_constant_is_zero():
    A = torch.randn(5, 5, dtype=D64)
    z = torch.randn(7, 5, dtype=D64)
    t = torch.tensor(0.0, dtype=D64)
    for method in ("auto", "loop", "vjp", "jvp"):  # a plain function: no analytic method
        _, div, frob = divergence.exact(lambda t, z: z @ A.T, t, z, method=method, frobenius=True)
        torch.testing.assert_close(div, torch.trace(A).expand(7), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(frob, A.square().sum().expand(7), rtol=1e-13, atol=1e-13)
        # f independent of z: zero divergence, not an autograd error.
        _, div0 = divergence.exact(lambda t, z: torch.ones_like(z) * t, t, z, method=method)
        assert torch.equal(div0, torch.zeros(7, dtype=D64))


def test_analytic_method_needs_a_network_that_provides_it():
    z = torch.randn(3, 2, dtype=D64)
    with pytest.raises(ValueError, match="forward_with_divergence"):
        divergence.exact(lambda t, z: z, torch.tensor(0.0, dtype=D64), z, method="analytic")
    net = ConcatSquashMLP(2, (8,), activation=torch.nn.GELU()).double()
    assert not divergence.has_analytic_divergence(net)  # unknown activation: autograd instead
    _, div = divergence.exact(net, torch.tensor(0.0, dtype=D64), z)  # "auto" falls back
    jac = torch.stack([torch.autograd.functional.jacobian(
        lambda x: net(torch.tensor(0.0, dtype=D64), x[None])[0], zi) for zi in z])
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(-1))


def test_hutchinson_with_every_rademacher_probe_averages_to_the_exact_trace():
    """Over all 2^D sign vectors the Rademacher estimate averages to tr(J) exactly (unbiased)."""
    net = random_mlp(dim=4)
    t = torch.tensor(0.5, dtype=D64)
    z0 = torch.randn(1, 4, dtype=D64)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=D64)  # (16, 4)
    z = z0.expand(16, 4).clone()
    _, est, frob_est = divergence.hutchinson(net, t, z, signs, frobenius=True)
    J = reference_jacobians(net, t, z0)[0]
    torch.testing.assert_close(est.mean(), torch.trace(J), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(frob_est.mean(), J.square().sum(), rtol=1e-12, atol=1e-12)
    # Each single estimate is εᵀJε, and ‖εᵀJ‖² for the Frobenius norm.
    torch.testing.assert_close(est, torch.einsum("bi,ij,bj->b", signs, J, signs))
    torch.testing.assert_close(frob_est, (signs @ J).square().sum(-1))


@pytest.mark.parametrize("noise", divergence.NOISE_TYPES)
def test_hutchinson_mean_matches_exact_within_standard_error(noise):
    net = random_mlp(dim=5, hidden=(32,))
    t = torch.tensor(0.1, dtype=D64)
    z0 = torch.randn(1, 5, dtype=D64)
    m = 20000
    z = z0.expand(m, 5).clone()
    eps = divergence.sample_noise(z, noise)
    with torch.no_grad():
        _, est, frob_est = divergence.hutchinson(net, t, z, eps, frobenius=True)
    J = reference_jacobians(net, t, z0)[0]
    for sample, truth in ((est, torch.trace(J)), (frob_est, J.square().sum())):
        se = sample.std() / m ** 0.5
        assert abs(sample.mean() - truth) < 4 * se
    # The sample variance of the trace estimate agrees with the closed form.
    S = (J + J.T) / 2
    var = 2 * S.square().sum()
    if noise == "rademacher":
        var = var - 2 * torch.diagonal(S).square().sum()
    assert abs(est.var() / var - 1) < 0.1


def test_hutchinson_gradients_equal_autograd_of_the_quadratic_form():
    net = random_mlp()
    t = torch.tensor(0.3, dtype=D64)
    z = torch.randn(4, 3, dtype=D64, requires_grad=True)
    eps = divergence.sample_noise(z, "gaussian")
    params = list(net.parameters())
    J = reference_jacobians(net, t, z, create_graph=True)
    ref = torch.autograd.grad(torch.einsum("bi,bij,bj->", eps, J, eps), [z, *params],
                              materialize_grads=True)
    _, est = divergence.hutchinson(net, t, z, eps)
    got = torch.autograd.grad(est.sum(), [z, *params], materialize_grads=True)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)
    with torch.no_grad():
        _, est = divergence.hutchinson(net, t, z, eps)
    assert not est.requires_grad


def test_sample_noise_moments_and_kinds():
    like = torch.zeros(200000, 2, dtype=D64)
    r = divergence.sample_noise(like, "rademacher")
    assert r.dtype == D64 and r.shape == like.shape
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    g = divergence.sample_noise(like, "gaussian")
    for eps in (r, g):  # E[ε] = 0, E[εεᵀ] = I (5 standard errors)
        assert eps.mean(0).abs().max() < 5 * (1 / 200000) ** 0.5
        second = eps.T @ eps / len(eps)
        assert (second - torch.eye(2, dtype=D64)).abs().max() < 5 * (2 / 200000) ** 0.5
    gen = torch.Generator().manual_seed(3)
    a = divergence.sample_noise(like[:10], "gaussian", generator=gen)
    b = divergence.sample_noise(like[:10], "gaussian", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_arguments_raise_value_errors():
    t = torch.tensor(0.0)
    z = torch.randn(3, 2)
    f = lambda t, z: -z  # noqa: E731
    with pytest.raises(ValueError, match="unknown exact trace method"):
        divergence.exact(f, t, z, method="fast")
    with pytest.raises(ValueError, match="shape"):
        divergence.exact(f, t, torch.randn(2))
    with pytest.raises(ValueError, match="z's shape"):
        divergence.exact(lambda t, z: z[:, :1], t, z)
    with pytest.raises(ValueError, match="noise must have"):
        divergence.hutchinson(f, t, z, torch.randn(3, 3))
    with pytest.raises(ValueError, match="unknown noise"):
        divergence.sample_noise(z, "uniform")


def test_estimators_work_inside_inference_mode():
    """torch.enable_grad has no effect under inference_mode: the products must not vanish."""
    net = random_mlp()
    t = torch.tensor(0.4, dtype=D64)
    z = torch.randn(5, 3, dtype=D64)
    eps = divergence.sample_noise(z)
    with torch.no_grad():
        expected = [divergence.exact(net, t, z, method=m)[1] for m in METHODS]
        expected.append(divergence.hutchinson(net, t, z, eps)[1])
    with torch.inference_mode():
        ti, zi = t.clone(), z.clone()  # inference tensors, as a solver would make them
        got = [divergence.exact(net, ti, zi, method=m)[1] for m in METHODS]
        got.append(divergence.hutchinson(net, ti, zi, eps)[1])
    assert expected[0].abs().max() > 0.1
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-13)
