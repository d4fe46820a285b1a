"""cnflow.nn.HollowMLP: its closed-form divergence is the trace of the autograd Jacobian, its
conditioner is blind to each output's own coordinate, and CNF, CNFDensity and
ConditionalCNFDensity train, score, save and load with it."""

import numpy as np
import pytest
import torch
from test_divergence import reference_jacobians

from cnflow import CNF, CNFDensity, ConditionalCNFDensity, divergence
from cnflow.estimators.policy import FitSettings, resolve_fit_settings
from cnflow.nn import FIELDS, HollowMLP, WithContext
from cnflow.nn.hollow import hollow_degrees

D64 = torch.float64


@pytest.mark.parametrize("dim,context,units", [(1, 0, 5), (2, 0, 5), (7, 0, 5), (33, 0, 5),
                                               (2, 3, 5), (9, 4, 5), (6, 2, 0)])
def test_divergence_is_the_trace_of_the_autograd_jacobian(dim, context, units):
    net = HollowMLP(dim, hidden=(16, 11), context_features=context, units=units).double()
    z = torch.randn(6, dim, dtype=D64)
    c = torch.randn(6, context, dtype=D64) if context else None
    t = torch.tensor(0.37, dtype=D64)
    dz, trace, frob = net.forward_with_divergence(t, z, c, frobenius=True)
    jac = reference_jacobians(net if c is None else WithContext(net, c), t, z)
    reference = torch.diagonal(jac, dim1=1, dim2=2).sum(-1)
    torch.testing.assert_close(trace, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(frob, jac.square().sum((1, 2)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dz, net(t, z, c), rtol=0, atol=0)


def test_the_conditioner_of_each_output_is_blind_to_its_own_coordinate():
    dim = 6
    net = HollowMLP(dim, hidden=(13, 13), units=3).double()
    z = torch.randn(dim, dtype=D64)
    t = torch.tensor(0.5, dtype=D64)

    def conditioner(x):
        b, s, u = net._transformer_inputs(t, x.unsqueeze(0), None)
        return torch.cat([b, s, u.flatten(1)], dim=1)[0]   # b, s, then u per coordinate

    jac = torch.autograd.functional.jacobian(conditioner, z)  # (D (K + 2), D)
    per_coordinate = torch.cat([jac[:dim], jac[dim:2 * dim],
                                jac[2 * dim:].reshape(dim, 3, dim).sum(1)])
    for i in range(dim):
        for block in range(3):
            row = per_coordinate[block * dim + i]
            assert row[i] == 0.0                      # hollow: nothing of z_i
            others = torch.cat([row[:i], row[i + 1:]])
            assert (others != 0).all()                # every other coordinate is read


def test_the_masks_order_the_two_directions_oppositely():
    masks = hollow_degrees(4, (6, 2))
    out = masks[0]
    for layer in masks[1:]:
        out = (layer @ out).clamp(max=1)              # which inputs reach each unit
    reach = out.reshape(2, 4, 2, 4)[:, :, 0]          # (direction, output i, input j)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(reach[0].bool(), j < i)
    assert torch.equal(reach[1].bool(), j > i)


def test_one_time_per_row_matches_the_scalar_time_and_zero_output_is_the_zero_field():
    net = HollowMLP(3, hidden=(8,), context_features=2).double()
    z, c = torch.randn(5, 3, dtype=D64), torch.randn(5, 2, dtype=D64)
    ts = torch.rand(5, dtype=D64)
    rows = torch.cat([net(ts[b], z[b:b + 1], c[b:b + 1]) for b in range(5)])
    torch.testing.assert_close(net(ts, z, c), rows, rtol=1e-13, atol=1e-13)
    net.zero_output_()
    dz, trace = net.forward_with_divergence(0.3, z, c)
    assert torch.equal(dz, torch.zeros_like(dz)) and torch.equal(trace, torch.zeros(5, dtype=D64))


def test_bad_arguments_are_refused_with_their_reason():
    with pytest.raises(ValueError, match="at least one hidden layer"):
        HollowMLP(3, hidden=())
    with pytest.raises(ValueError, match="unknown activation"):
        HollowMLP(3, activation="relu6")
    net = HollowMLP(3, hidden=(8,), context_features=2)
    with pytest.raises(ValueError, match=r"context of shape \(4, 2\)"):
        net(0.0, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        net(0.0, torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="unknown field"):
        CNF(2, field="sparse")
    with pytest.raises(ValueError, match="gates only"):
        CNF(2, field="hollow", context_features=1, conditioning="concat")


@pytest.mark.parametrize("adjoint", [False, True])
def test_cnf_log_prob_and_gradients_with_the_hollow_field(adjoint):
    flow = CNF(3, hidden=(12, 12), field="hollow", rtol=1e-10, atol=1e-10,
               adjoint=adjoint).double()
    assert isinstance(flow.net, HollowMLP) and flow.field == "hollow"
    x = torch.randn(5, 3, dtype=D64)
    # the same solve with the loop of D vector-Jacobian products as the trace
    loop = CNF(3, net=flow.net, rtol=1e-10, atol=1e-10, exact_method="loop",
               adjoint=False).double()
    torch.testing.assert_close(flow.log_prob(x), loop.log_prob(x), rtol=1e-9, atol=1e-9)
    flow.log_prob(x).sum().backward()
    grads = [p.grad.clone() for p in flow.net.parameters()]
    flow.zero_grad()
    loop.log_prob(x).sum().backward()
    for got, want in zip(grads, [p.grad for p in flow.net.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


def test_hollow_density_integrates_to_one_in_2d():
    torch.manual_seed(3)
    flow = CNF(2, hidden=(16, 16), field="hollow").double()
    with torch.no_grad():
        for p in flow.net.parameters():
            p.mul_(1.5)                                # a field far from zero
        g = torch.linspace(-15, 15, 201, dtype=D64)
        grid = torch.cartesian_prod(g, g)
        density = flow.log_prob(grid).exp()
    mass = float(density.sum() * (g[1] - g[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cnf_density_fits_scores_saves_and_loads_with_the_hollow_field(tmp_path, dtype):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 600)
    X = np.c_[x, np.sin(3 * x) + 0.1 * rng.normal(size=600), rng.normal(size=600)]
    est = CNFDensity(field="hollow", max_iter=60, random_state=0, n_members=1, stacking=False,
                     dtype="float32" if dtype == torch.float32 else "float64").fit(X)
    assert est.settings_.field == "hollow" and isinstance(est.flow_.net, HollowMLP)
    scores = est.score_samples(X[:20])
    assert np.isfinite(scores).all()
    est.save(tmp_path / "m.cnf")
    loaded = CNFDensity.load(tmp_path / "m.cnf")
    assert loaded.settings_.field == "hollow"
    np.testing.assert_allclose(loaded.score_samples(X[:20]), scores, rtol=0, atol=0)


def test_conditional_density_with_the_hollow_field(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.uniform(-2, 2, size=(500, 2))
    y = np.c_[np.sin(X[:, 0]), X[:, 1] ** 2] + 0.1 * rng.normal(size=(500, 2))
    est = ConditionalCNFDensity(field="hollow", max_iter=60, random_state=0, n_members=1)
    est.fit(X, y)
    assert est.settings_.field == "hollow" and isinstance(est.flow_.net, HollowMLP)
    scores = est.score_samples(X[:10], y[:10])
    est.save(tmp_path / "c.cnf")
    np.testing.assert_allclose(ConditionalCNFDensity.load(tmp_path / "c.cnf")
                               .score_samples(X[:10], y[:10]), scores, rtol=0, atol=0)
    with pytest.raises(ValueError, match="gates only"):
        ConditionalCNFDensity(field="hollow", conditioning="concat").fit(X, y)


def test_the_policy_names_the_field_and_older_settings_read_as_dense():
    s = resolve_fit_settings("CNFDensity", {}, 1000, 4)
    assert s.field in FIELDS
    assert resolve_fit_settings("CNFDensity", {"field": "hollow"}, 1000, 4).field == "hollow"
    assert resolve_fit_settings("PlanarFlowDensity", {}, 1000, 4).field is None
    old = s.as_dict()
    del old["field"]
    assert FitSettings.from_dict(old).field == "dense"


def test_exact_divergence_takes_the_closed_form():
    net = HollowMLP(5, hidden=(8,)).double()
    z = torch.randn(4, 5, dtype=D64)
    t = torch.tensor(0.2, dtype=D64)
    assert divergence.has_analytic_divergence(net)
    fz, trace = divergence.exact(net, t, z)
    _, loop = divergence.exact(net, t, z, method="loop")
    torch.testing.assert_close(trace, loop, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hollow_field_on_cuda_agrees_with_the_cpu():
    net = HollowMLP(4, hidden=(8, 8), context_features=1).double()
    z, c = torch.randn(6, 4, dtype=D64), torch.randn(6, 1, dtype=D64)
    cpu = net.forward_with_divergence(0.5, z, c)
    gpu = net.cuda().forward_with_divergence(0.5, z.cuda(), c.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-12, atol=1e-12)
