"""Image transforms against independent references: autograd Jacobians, explicit index maps,
closed-form Gaussian cell masses and quadrature of the dequantisation bound."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.autograd.functional import jacobian

from cnflow.flows.image_transforms import (
    LogitTransform,
    bits_per_dim,
    dequantize,
    discrete_log_likelihood_bound,
    squeeze,
    unsqueeze,
)

F64 = torch.float64


def _per_sample_jacobian_logdets(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn restricted to each sample, from the full autograd Jacobian."""
    out = []
    for xi in x:
        def flat(v, shape=xi.shape):
            return fn(v.reshape(1, *shape))[0].reshape(-1)

        jac = jacobian(flat, xi.reshape(-1))
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        out.append(logabsdet)
    return torch.stack(out)


# ---------------------------------------------------------------- LogitTransform

@pytest.mark.parametrize("shape", [(3, 1, 2, 2), (2, 2, 4, 4)])
@pytest.mark.parametrize("alpha", [0.0, 1e-6, 0.05])
def test_logit_round_trip_and_jacobians(shape, alpha):
    t = LogitTransform(alpha)
    x = torch.rand(shape, dtype=F64) * 0.98 + 0.01
    y, logdet = t.forward(x)
    assert y.shape == x.shape and logdet.shape == (shape[0],)
    assert y.dtype == F64 and logdet.dtype == F64

    x_back, logdet_inv = t.inverse(y)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-12, rtol=0)

    ref = _per_sample_jacobian_logdets(lambda v: t.forward(v)[0], x)
    torch.testing.assert_close(logdet, ref, atol=1e-9, rtol=0)
    ref_inv = _per_sample_jacobian_logdets(lambda v: t.inverse(v)[0], y)
    torch.testing.assert_close(logdet_inv, ref_inv, atol=1e-9, rtol=0)


def test_logit_matches_explicit_formula_and_sigmoid():
    alpha = 0.05
    t = LogitTransform(alpha)
    x = torch.rand(4, 3, dtype=F64)
    s = alpha + (1 - 2 * alpha) * x
    y, logdet = t.forward(x)
    torch.testing.assert_close(y, torch.logit(s), atol=1e-12, rtol=0)
    expected = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log(1 - s)).sum(1)
    torch.testing.assert_close(logdet, expected, atol=1e-12, rtol=0)


def test_logit_inverse_log_det_finite_for_large_inputs():
    t = LogitTransform(1e-6)
    y = torch.tensor([[-800.0, 800.0, 0.0]], dtype=F64)
    x, logdet = t.inverse(y)
    assert torch.isfinite(logdet).all()
    # log σ(y) + log σ(−y) = −|y| − 2 log(1 + e^{−|y|}), less log(1 − 2α) per element
    expected = (-y.abs() - 2 * torch.log1p(torch.exp(-y.abs())) - math.log1p(-2e-6)).sum()
    torch.testing.assert_close(logdet, expected.reshape(1), atol=1e-9, rtol=0)
    assert x[0, 0] == pytest.approx(-1e-6 / (1 - 2e-6), abs=1e-15)


def test_logit_keeps_float32_and_dequantised_edges_finite():
    t = LogitTransform(1e-6)
    x = dequantize(torch.tensor([[[[0, 255], [0, 255]]]]), 256)
    y, logdet = t.forward(x)
    assert y.dtype == torch.float32 and logdet.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()


@pytest.mark.parametrize("alpha", [-0.1, 0.5, 0.7, float("nan"), "0.1"])
def test_logit_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(alpha)


# ---------------------------------------------------------------- squeeze / unsqueeze

def test_squeeze_channel_order_on_one_block():
    a, b, c, d = 1.0, 2.0, 3.0, 4.0
    x = torch.tensor([[[[a, b], [c, d]]]])
    out = squeeze(x)
    assert out.shape == (1, 4, 1, 1)
    assert out.flatten().tolist() == [a, b, c, d]


def test_squeeze_matches_explicit_index_map():
    x = torch.randn(2, 3, 4, 6, dtype=F64)
    out = squeeze(x)
    assert out.shape == (2, 12, 2, 3)
    ref = torch.empty_like(out)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                for h in range(2):
                    for w in range(3):
                        ref[:, 4 * c + 2 * i + j, h, w] = x[:, c, 2 * h + i, 2 * w + j]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("shape", [(1, 2, 4, 4), (3, 1, 2, 6), (2, 3, 8, 2)])
def test_squeeze_round_trips_exactly(shape):
    x = torch.randn(shape, dtype=F64)
    assert torch.equal(unsqueeze(squeeze(x)), x)
    n, c, h, w = shape
    z = torch.randn(n, 4 * c, h // 2, w // 2, dtype=F64)
    assert torch.equal(squeeze(unsqueeze(z)), z)


@pytest.mark.parametrize("fn, shape", [(squeeze, (1, 2, 4, 4)), (unsqueeze, (1, 8, 2, 2))])
def test_squeeze_jacobian_is_a_permutation(fn, shape):
    x = torch.randn(shape, dtype=F64)
    jac = jacobian(lambda v: fn(v.reshape(shape)).reshape(-1), x.reshape(-1))
    assert jac.shape == (32, 32)
    assert torch.all((jac == 0) | (jac == 1))
    assert torch.equal(jac.sum(0), torch.ones(32, dtype=F64))
    assert torch.equal(jac.sum(1), torch.ones(32, dtype=F64))
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign.abs() == 1 and logabsdet == 0


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (1, 1, 4, 5), (2, 4, 4), (1, 1, 1, 2, 2)])
def test_squeeze_rejects_bad_shapes(shape):
    with pytest.raises(ValueError):
        squeeze(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 6, 2, 2), (1, 3, 1, 1), (4, 2, 2)])
def test_unsqueeze_rejects_bad_shapes(shape):
    with pytest.raises(ValueError):
        unsqueeze(torch.zeros(shape))


# ---------------------------------------------------------------- dequantize

@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, F64, torch.float32])
def test_dequantize_stays_in_its_cell(levels, dtype):
    if dtype == torch.uint8 and levels > 256:
        pytest.skip("uint8 holds at most 256 levels")
    x = torch.randint(0, levels, (4, 3, 8, 8)).to(dtype)
    x[0, 0, 0, :2] = torch.tensor([0, levels - 1]).to(dtype)
    y = dequantize(x, levels)
    expected_dtype = dtype if dtype.is_floating_point else torch.float32
    assert y.dtype == expected_dtype and y.shape == x.shape
    assert torch.all(y > 0) and torch.all(y < 1)
    assert torch.equal(torch.floor(y * levels), x.to(expected_dtype))


def test_dequantize_noise_is_uniform_on_the_cell():
    x = torch.full((20000,), 5, dtype=torch.int64)
    u = dequantize(x, 17).double() * 17 - 5
    # Kolmogorov-Smirnov against U(0, 1); the seed is fixed, so this is deterministic.
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_dequantize_is_repeatable_with_a_generator():
    x = torch.randint(0, 256, (2, 3, 4, 4))
    y1 = dequantize(x, 256, generator=torch.Generator().manual_seed(123))
    y2 = dequantize(x, 256, generator=torch.Generator().manual_seed(123))
    y3 = dequantize(x, 256, generator=torch.Generator().manual_seed(124))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


@pytest.mark.parametrize("x, levels", [
    (torch.tensor([0, 256]), 256),
    (torch.tensor([-1, 3]), 256),
    (torch.tensor([0.0, 1.5]), 256),
    (torch.tensor([0.0, float("nan")]), 256),
    (torch.tensor([0.0, float("inf")]), 256),
    (torch.tensor([0, 1]), 1),
    (torch.tensor([0, 1]), 0),
    (torch.tensor([0, 1]), 2.0),
    (torch.tensor([0, 1]), True),
])
def test_dequantize_rejects_bad_input(x, levels):
    with pytest.raises(ValueError):
        dequantize(x, levels)


# ---------------------------------------------------------------- bits per dim and the bound

@pytest.mark.parametrize("levels", [17, 256])
def test_uniform_model_gives_log2_levels_bits_per_dim(levels):
    x = torch.randint(0, levels, (5, 3, 4, 4))
    n_dims = 3 * 4 * 4
    y = dequantize(x, levels).double()
    # The uniform density on [0, 1)^D: log p(y) = 0 at every dequantised image.
    log_p = torch.zeros(y.shape[0], dtype=F64)
    assert torch.all((y >= 0) & (y < 1))
    bound = discrete_log_likelihood_bound(log_p, n_dims, levels)
    torch.testing.assert_close(bound, torch.full_like(log_p, -n_dims * math.log(levels)),
                               atol=1e-12, rtol=0)
    bpd = bits_per_dim(bound, n_dims)
    assert isinstance(bpd, torch.Tensor)
    torch.testing.assert_close(bpd, torch.full_like(bpd, math.log2(levels)), atol=1e-13, rtol=0)

    as_array = bits_per_dim(bound.numpy(), n_dims)
    assert isinstance(as_array, np.ndarray)
    np.testing.assert_allclose(as_array, math.log2(levels), atol=1e-13, rtol=0)
    as_float = bits_per_dim(discrete_log_likelihood_bound(0.0, n_dims, levels), n_dims)
    assert isinstance(as_float, float)
    assert as_float == pytest.approx(math.log2(levels), abs=1e-13)


@pytest.mark.parametrize("n_dims", [0, -3, 2.5, True])
def test_bits_per_dim_and_bound_reject_bad_sizes(n_dims):
    with pytest.raises(ValueError):
        bits_per_dim(-1.0, n_dims)
    with pytest.raises(ValueError):
        discrete_log_likelihood_bound(0.0, n_dims, 256)
    with pytest.raises(ValueError):
        discrete_log_likelihood_bound(0.0, 4, 1)


L = 17
MU, SIGMA = 0.4, 0.2


def _expected_log_density_on_cell(log_p, k: int) -> float:
    """E_u[log p((k + u)/L)], u ~ U(0, 1), by adaptive quadrature."""
    value, _ = integrate.quad(lambda u: log_p((k + u) / L), 0.0, 1.0, epsabs=1e-13, epsrel=1e-13)
    return value


def test_dequantised_bound_is_below_the_exact_gaussian_cell_mass():
    def log_p(y):
        return stats.norm.logpdf(y, MU, SIGMA)

    gaps = []
    for k in range(L):
        expected = _expected_log_density_on_cell(log_p, k)
        # log p is quadratic in y: E[(y − μ)²] = (centre − μ)² + 1/(12 L²) on the cell.
        centre = (k + 0.5) / L
        closed = (-0.5 * math.log(2 * math.pi * SIGMA**2)
                  - ((centre - MU) ** 2 + 1 / (12 * L**2)) / (2 * SIGMA**2))
        assert expected == pytest.approx(closed, abs=1e-11)

        bound = discrete_log_likelihood_bound(expected, n_dims=1, levels=L)
        exact = math.log(stats.norm.cdf((k + 1) / L, MU, SIGMA)
                         - stats.norm.cdf(k / L, MU, SIGMA))
        gaps.append(exact - bound)
    gaps = np.array(gaps)
    # Jensen: strictly positive where p varies on the cell, and small for cells of width 1/17.
    assert np.all(gaps > 0)
    assert gaps.max() < 0.05
    # Smallest gap where log p is flattest (the cell holding μ), largest in the tails.
    assert np.argmin(gaps) == int(MU * L)
    assert np.argmax(gaps) in (0, L - 1)


def test_dequantised_bound_for_an_image_sums_over_pixels():
    # Independent pixels: the bound and the exact log mass both add up over the image.
    x = torch.tensor([[[[0, 6], [12, 16]]]])
    n_dims = x[0].numel()

    def log_p(y):
        return stats.norm.logpdf(y, MU, SIGMA)

    per_pixel = [_expected_log_density_on_cell(log_p, int(k)) for k in x.flatten()]
    bound = discrete_log_likelihood_bound(sum(per_pixel), n_dims, L)
    exact = sum(math.log(stats.norm.cdf((int(k) + 1) / L, MU, SIGMA)
                         - stats.norm.cdf(int(k) / L, MU, SIGMA)) for k in x.flatten())
    assert bound < exact
    assert bits_per_dim(bound, n_dims) > bits_per_dim(exact, n_dims)

    # One dequantised draw of log p gives an unbiased estimate of the bound.
    draws = dequantize(x.expand(40000, 1, 2, 2), L, generator=torch.Generator().manual_seed(1))
    log_p_draws = stats.norm.logpdf(draws.double().reshape(40000, -1).numpy(), MU, SIGMA).sum(1)
    estimates = discrete_log_likelihood_bound(log_p_draws, n_dims, L)
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - bound) < 4 * standard_error


def test_dequantised_bound_is_exact_for_a_density_constant_on_cells():
    rng = np.random.default_rng(0)
    masses = rng.dirichlet(np.ones(L))

    def log_p(y):
        # The density L·P(k) on cell k = floor(yL): a density on [0, 1) with cell masses P.
        return math.log(L * masses[min(int(math.floor(y * L)), L - 1)])

    for k in range(L):
        expected, _ = integrate.quad(lambda u, k=k: log_p((k + u) / L), 1e-12, 1 - 1e-12,
                                     epsabs=1e-13, epsrel=1e-13)
        expected /= 1 - 2e-12
        bound = discrete_log_likelihood_bound(expected, n_dims=1, levels=L)
        assert bound == pytest.approx(math.log(masses[k]), abs=1e-9)
