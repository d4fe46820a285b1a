"""Planar and dense flows: log-determinants against autograd Jacobians and slogdet in float64,
exact inverses, the invertibility constraint, density matching, and PlanarFlowDensity's
scikit-learn contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from cnflow import CNF, DenseFlow, PlanarFlow, PlanarFlowDensity
from cnflow.datasets import make_toy
from cnflow.training import TrainConfig, fit_density_matching, reverse_kl_loss

D64 = torch.float64


def jacobian_logdets(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det ∂fn/∂x| per row, from the autograd Jacobian and torch.linalg.slogdet."""
    jac = torch.stack([torch.autograd.functional.jacobian(fn, row.unsqueeze(0)).squeeze()
                       .reshape(x.shape[1], x.shape[1]) for row in x])
    sign, logabs = torch.linalg.slogdet(jac)
    assert bool((sign > 0).all())  # orientation-preserving, as invertible layers must be
    return logabs


def random_planar(dim: int, n_layers: int, closed_form: str, scale: float = 1.0,
                  seed: int = 0) -> PlanarFlow:
    torch.manual_seed(seed)
    flow = PlanarFlow(dim, n_layers=n_layers, closed_form=closed_form).double()
    with torch.no_grad():  # raw parameters far from the initialisation, any signs
        for p in flow.parameters():
            p.copy_(scale * torch.randn_like(p))
    return flow


FLOWS = {
    "planar": lambda dim, cf: random_planar(dim, 5, cf, scale=1.5),
    "dense": lambda dim, cf: DenseFlow(dim, n_layers=3, closed_form=cf).double(),
}


@pytest.mark.parametrize("kind", sorted(FLOWS))
@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("closed_form", ["log_prob", "sample"])
def test_logdet_equals_slogdet_of_the_autograd_jacobian(kind, dim, closed_form):
    torch.manual_seed(1)
    flow = FLOWS[kind](dim, closed_form)
    x = 1.5 * torch.randn(7, dim, dtype=D64)
    _, logdet = flow.forward_layers(x)
    reference = jacobian_logdets(lambda v: flow.forward_layers(v)[0], x)
    torch.testing.assert_close(logdet, reference, rtol=0, atol=1e-10)
    _, logdet_inv = flow.inverse_layers(x)
    reference_inv = jacobian_logdets(lambda v: flow.inverse_layers(v)[0], x)
    torch.testing.assert_close(logdet_inv, reference_inv, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_inverse_undoes_forward(kind):
    torch.manual_seed(2)
    flow = FLOWS[kind](3, "log_prob")
    x = 3 * torch.randn(500, 3, dtype=D64)
    y, logdet = flow.forward_layers(x)
    back, logdet_inv = flow.inverse_layers(y)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=0, atol=1e-10)
    again, _ = flow.forward_layers(flow.inverse_layers(x)[0])
    torch.testing.assert_close(again, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_planar_constraint_holds_for_any_raw_parameters(scale):
    flow = random_planar(4, 50, "log_prob", scale=scale, seed=3)
    with torch.no_grad():  # the worst case: u pointing against w
        flow.u[:10] = -scale * flow.w[:10]
        flow.w[10] = 0.0  # a degenerate direction must not give NaN
    u_hat, c = flow.constrained()
    assert bool(torch.isfinite(u_hat).all())
    assert bool((c >= -1 + 1e-3).all())
    torch.testing.assert_close((flow.w * u_hat).sum(-1), c, rtol=1e-9, atol=1e-9)
    x = 2 * torch.randn(200, 4, dtype=D64)
    y, logdet = flow.forward_layers(x)
    assert bool(torch.isfinite(logdet).all())
    back = flow.inverse_layers(y)[0]
    # Backward stable: the recovered point maps to y to rounding; it is x itself to within
    # rounding amplified by layers that compress by up to 1/δ = 1000 along w.
    torch.testing.assert_close(flow.forward_layers(back)[0], y, rtol=0, atol=1e-9)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


def test_planar_inverse_gradients_match_finite_differences():
    flow = random_planar(2, 3, "sample", seed=4)
    x = torch.randn(6, 2, dtype=D64)
    params = [flow.w, flow.u, flow.b]

    # Autograd through the implicit step against central differences.
    loss = flow.log_prob(x).sum()
    grads = torch.autograd.grad(loss, params)
    h = 1e-6
    for p, g in zip(params, grads, strict=True):
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = float(flow.log_prob(x).sum())
                p.view(-1)[i] -= 2 * h
                down = float(flow.log_prob(x).sum())
                p.view(-1)[i] += h
            numeric.view(-1)[i] = (up - down) / (2 * h)
        torch.testing.assert_close(g, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("closed_form", ["log_prob", "sample"])
def test_planar_density_integrates_to_one_and_samples_agree(closed_form):
    flow = random_planar(2, 6, closed_form, scale=1.0, seed=5)
    xs = np.linspace(-8, 8, 241)
    grid = torch.tensor(np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2))
    with torch.no_grad():
        mass = float(flow.log_prob(grid).exp().sum()) * (xs[1] - xs[0]) ** 2
        x, log_q = flow.sample_with_log_prob(300)
        torch.testing.assert_close(log_q, flow.log_prob(x), rtol=0, atol=1e-9)
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_cnf_sample_with_log_prob_matches_log_prob():
    torch.manual_seed(6)
    flow = CNF(2, hidden=(16,), rtol=1e-9, atol=1e-9).double()
    x, log_q = flow.sample_with_log_prob(50)
    torch.testing.assert_close(log_q, flow.log_prob(x), rtol=0, atol=1e-7)
    assert x.requires_grad and log_q.requires_grad


def test_density_matching_recovers_a_gaussian():
    """An affine flow can be the target exactly, so the reverse KL reaches its floor −log Z."""
    mu, sigma = torch.tensor([2.0, -1.0], dtype=D64), 0.5

    def log_target(x):  # N(mu, σ²I) times Z = (2πσ²)^{D/2}
        return -0.5 * ((x - mu) / sigma).square().sum(-1)

    log_z = math.log(2 * math.pi * sigma ** 2)
    torch.manual_seed(7)
    flow = DenseFlow(2, n_layers=1, closed_form="sample").double()
    start = float(reverse_kl_loss(flow, log_target, 4000).detach()) + log_z
    fit_density_matching(flow, log_target, TrainConfig(max_iter=1500, batch_size=256, lr=2e-2,
                                                       lr_schedule="cosine"))
    with torch.no_grad():
        kl = float(reverse_kl_loss(flow, log_target, 20000)) + log_z
        samples = flow.sample(20000)
    assert start > 1.0 and kl < 1e-3
    torch.testing.assert_close(samples.mean(0), mu, rtol=0, atol=0.02)
    torch.testing.assert_close(samples.std(0), torch.full((2,), sigma, dtype=D64),
                               rtol=0, atol=0.02)


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        PlanarFlow(2, n_layers=0)
    with pytest.raises(ValueError, match="closed_form must be one of"):
        DenseFlow(2, closed_form="both")
    with pytest.raises(ValueError, match="negative_slope must be a number in"):
        DenseFlow(2, negative_slope=0.0)
    flow = PlanarFlow(3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        flow.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.full((1, 3), math.nan))
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        PlanarFlowDensity(n_layers=0).fit(np.zeros((5, 2)) + np.arange(5)[:, None])


def fast_planar(**kw):
    params = dict(n_layers=3, max_iter=3, batch_size=64, dtype="float64", random_state=0,
                  device="cpu")
    params.update(kw)
    return PlanarFlowDensity(**params)


@parametrize_with_checks([fast_planar()])
def test_planar_estimator_follows_sklearn_conventions(estimator, check):
    check(estimator)


def test_planar_estimator_density_integrates_to_one_in_the_callers_units(tmp_path):
    X = make_toy("2spirals", 3000, random_state=0) * 30 + 500
    est = fast_planar(n_layers=8, max_iter=300, lr=1e-2).fit(X)
    assert est.history_[-1]["loss"] < est.history_[0]["loss"]
    lo, hi = X.min(0) - 60, X.max(0) + 60
    xs, ys = np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    mass = np.exp(est.score_samples(grid)).sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert mass == pytest.approx(1.0, abs=0.03)
    est.save(tmp_path / "planar.pt")
    again = PlanarFlowDensity.load(tmp_path / "planar.pt")
    np.testing.assert_array_equal(again.score_samples(X[:50]), est.score_samples(X[:50]))
    assert again.sample(5, random_state=1).shape == (5, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planar_inverse_converges_where_newton_alone_cycles(dtype):
    """A steep layer (|c| = 5, |wᵀy| up to 22): plain Newton ping-pongs across tanh's
    inflection there; the safeguarded solve must still converge."""
    flow = PlanarFlow(2, n_layers=1).to(dtype)
    with torch.no_grad():
        flow.w.copy_(torch.tensor([[4.8195, -0.6624]]))
        flow.b.fill_(0.0525)
        flow.u.copy_(flow.w * 0.2)  # wᵀu ≈ 4.7, c = softplus(4.7) − 1 + δ ≈ 3.7
        flow.u.mul_(1.3)
    xs = torch.linspace(-4, 4, 120, dtype=dtype)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        z, _ = flow.inverse_layers(grid)
        back, _ = flow.forward_layers(z)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(back, grid, rtol=0, atol=atol)
