"""cnflow.preprocessing: exact log-determinants, inverses, densities that integrate to 1."""

import numpy as np
import pytest
from scipy import integrate, stats

from cnflow.preprocessing import (
    MarginalGaussianizer,
    QuantileGaussianizer,
    TabularPreprocessor,
    TargetContextPreprocessor,
    Whitening,
    check_spread,
    choose_preprocessing,
    log_columns,
    resolution,
)


def _skewed(n=300, seed=0):
    rng = np.random.RandomState(seed)
    a = rng.lognormal(0.0, 0.8, n)
    b = np.where(rng.rand(n) < 0.3, rng.randn(n) - 3, 0.5 * rng.randn(n) + 2)  # bimodal
    c = rng.standard_t(3, n)  # heavy tails
    return np.stack([a, b, c], axis=1)


def test_marginal_log_derivative_matches_finite_differences():
    U = _skewed()
    U = (U - U.mean(0)) / U.std(0)
    g = MarginalGaussianizer().fit(U)
    assert (g.normal_share_ < 1).any()  # some column is transformed
    x = np.linspace(-3, 4, 41)
    points = np.stack([x, x, x], axis=1)
    _, logdet = g.transform(points)
    eps = 1e-5
    numeric = np.zeros(len(x))
    for j in range(3):
        up, down = points.copy(), points.copy()
        up[:, j] += eps
        down[:, j] -= eps
        numeric += np.log((g.transform(up)[0][:, j] - g.transform(down)[0][:, j]) / (2 * eps))
    np.testing.assert_allclose(logdet, numeric, atol=1e-6)


def test_marginal_map_is_monotone_and_inverts():
    U = _skewed()
    U = (U - U.mean(0)) / U.std(0)
    g = MarginalGaussianizer().fit(U)
    grid = np.linspace(-6, 6, 500)[:, None].repeat(3, 1)
    Z, _ = g.transform(grid)
    assert (np.diff(Z, axis=0) > 0).all()
    np.testing.assert_allclose(g.inverse_transform(Z), grid, atol=1e-8)


def test_marginal_density_integrates_to_one():
    U = _skewed()
    U = (U - U.mean(0)) / U.std(0)
    for j in range(3):
        g = MarginalGaussianizer().fit(U[:, [j]])

        def density(u, g=g):
            z, logdet = g.transform(np.array([[u]]))
            return np.exp(stats.norm.logpdf(z[0, 0]) + logdet[0])
        total, _ = integrate.quad(density, -40, 40, limit=800, points=[-2, 0, 2])
        assert total == pytest.approx(1.0, abs=1e-6)


def test_bandwidth_never_below_recording_step():
    rng = np.random.RandomState(0)
    X = rng.poisson(3.0, size=(400, 1)).astype(float)  # integers: step 1
    U = (X - X.mean(0)) / X.std(0)
    step = resolution(U[:, 0])
    assert step == pytest.approx(1 / X.std(), rel=1e-12)
    g = MarginalGaussianizer().fit(U)
    assert g.normal_share_[0] == 1.0 or g.bandwidth_[0] >= step


def _dequantised_counts(n=4000, seed=0):
    """A Poisson count + U(0, 1), a lognormal column, a t(3) column: standardised."""
    rng = np.random.RandomState(seed)
    X = np.stack([rng.poisson(2.0, n) + rng.rand(n), rng.lognormal(0, 1, n),
                  rng.standard_t(3, n)], 1)
    return (X - X.mean(0)) / X.std(0)


def test_quantile_density_integrates_to_one_and_matches_its_log_derivative():
    U = _dequantised_counts()
    for j in range(3):
        g = QuantileGaussianizer().fit(U[:, [j]])
        knots = g.knots_[0, :g.sizes_[0]]

        def density(u, g=g):
            z, logdet = g.transform(np.array([[u]]))
            return np.exp(stats.norm.logpdf(z[0, 0]) + logdet[0])
        left = knots[0] - np.array([60.0, 8.0, 2.0, 0.5, 0.0])   # the tails in pieces
        right = knots[-1] + np.array([0.0, 0.5, 2.0, 8.0, 80.0])
        pieces = (list(zip(left[:-1], left[1:])) + list(zip(knots[:-1], knots[1:]))
                  + list(zip(right[:-1], right[1:])))
        total = sum(integrate.quad(density, a, b, limit=200)[0] for a, b in pieces)
        assert total == pytest.approx(1.0, abs=1e-7)
        # log dz/du by central differences, inside pieces and in both tails
        inside = 0.5 * (knots[:-1] + knots[1:])[::7]
        u = np.r_[knots[0] - [3.0, 0.5], inside, knots[-1] + [0.5, 4.0]][:, None]
        eps = 1e-7
        numeric = np.log((g.transform(u + eps)[0] - g.transform(u - eps)[0])[:, 0] / (2 * eps))
        np.testing.assert_allclose(g.transform(u)[1], numeric, atol=1e-5)


def test_quantile_map_is_monotone_and_inverts_far_into_the_tails():
    U = _dequantised_counts()
    g = QuantileGaussianizer().fit(U)
    grid = np.linspace(-30, 60, 4001)[:, None].repeat(3, 1)
    Z, logdet = g.transform(grid)
    assert (np.diff(Z, axis=0) > 0).all() and np.isfinite(logdet).all()
    np.testing.assert_allclose(g.inverse_transform(Z), grid, atol=1e-7)
    W = np.random.RandomState(1).randn(2000, 3) * 2
    np.testing.assert_allclose(g.transform(g.inverse_transform(W))[0], W, atol=1e-7)


def test_quantile_map_keeps_a_dequantised_column_inside_its_boxes():
    """Below the smallest value (a count of 0) lies only the tail mass τ, where a kernel
    distribution function puts the half of the first box's kernels that cross its edge."""
    U = _dequantised_counts()
    g = QuantileGaussianizer().fit(U)
    lowest = U[:, 0].min()
    z, _ = g.transform(np.full((1, 3), lowest))
    assert stats.norm.cdf(z[0, 0]) == pytest.approx(g.tau_[0], rel=1e-6)
    kernel = MarginalGaussianizer().fit(U)
    z_kernel, _ = kernel.transform(np.full((1, 3), lowest))
    assert stats.norm.cdf(z_kernel[0, 0]) > 10 * g.tau_[0]
    # a value beyond every training value costs its exponential tail, not a Gaussian's
    far = np.array([[0.0, 0.0, U[:, 2].max() + 10.0]])
    z, logdet = g.transform(far)
    log_density = stats.norm.logpdf(z[0, 2]) + logdet[0]
    assert log_density > np.log(g.tau_[2]) - 10.0 / 0.05 - 5 and log_density < np.log(g.tau_[2])


def test_quantile_map_resolves_repeated_values_and_keeps_smooth_columns_smooth():
    """A column of 300 values each repeated about 40 times (a unit-level quantity copied onto
    every row of the unit, dequantised by 1e-3) has density log(1/300/1e-3) = 1.20 per fresh
    draw; the held-out choice of K must find the knots that resolve the repeats (512 knots,
    two per value, cannot), and must not give a smooth column that many."""
    rng = np.random.RandomState(0)
    atoms, width = np.sort(rng.randn(300)), 1e-3

    def draw(n, rng):
        return (atoms[rng.randint(300, size=n)] + width * rng.rand(n))[:, None]

    U, fresh = draw(12000, rng), draw(4000, np.random.RandomState(1))
    truth = np.log(1 / 300 / width)

    def fresh_log_density(knot_counts):
        g = QuantileGaussianizer()
        g.knot_counts = knot_counts
        z, logdet = g.fit(U).transform(fresh)
        return g.sizes_[0] - 1, np.mean(stats.norm.logpdf(z[:, 0]) + logdet)

    k, chosen = fresh_log_density(QuantileGaussianizer.knot_counts)
    _, capped = fresh_log_density((8, 32, 128, 512))
    assert k >= 2048 and chosen > truth - 0.7 and chosen > capped + 0.7
    smooth = QuantileGaussianizer().fit(rng.standard_t(5, size=(12000, 1)))
    assert smooth.sizes_[0] - 1 <= 512


def test_whitening_log_determinant_is_slogdet_of_the_map():
    rng = np.random.RandomState(1)
    Z = rng.randn(200, 4) @ rng.randn(4, 4)
    w = Whitening().fit(Z)
    W, logdet = w.transform(Z)
    inverse_map = np.linalg.inv(w.cholesky_)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(inverse_map)[1])
    np.testing.assert_allclose(w.inverse_transform(W), Z, atol=1e-10)
    assert np.abs(np.cov(W.T) - np.eye(4)).max() < 0.2


@pytest.mark.parametrize("kind", ["standardize", "whiten", "log", "gaussianize"])
def test_gaussian_model_through_preprocessing_integrates_to_one(kind):
    rng = np.random.RandomState(2)
    a = rng.gamma(4.0, size=400)
    X = np.stack([a, 0.5 * a + rng.randn(400)], 1)
    pre = TabularPreprocessor(kind).fit(X)
    # a 0.2-spaced grid: the trapezoid sums differ from a 0.1-spaced grid's by under 1e-10
    # (the log map's 8e-5 short of 1 is its zero density below 0, on both grids)
    x = np.linspace(-12, 28, 201)
    y = np.linspace(-14, 24, 191)
    grid = np.stack(np.meshgrid(x, y, indexing="ij"), -1).reshape(-1, 2)
    W, logdet = pre.transform(grid)
    density = np.exp(stats.norm.logpdf(W).sum(1) + logdet).reshape(len(x), len(y))
    total = integrate.trapezoid(integrate.trapezoid(density, y, axis=1), x)
    assert total == pytest.approx(1.0, abs=2e-3)
    W, _ = pre.transform(X)
    np.testing.assert_allclose(pre.inverse_transform(W), X, atol=1e-7)


def test_log_columns_are_the_positive_right_skewed_ones():
    rng = np.random.RandomState(0)
    X = np.c_[rng.lognormal(0.0, 1.0, 500), 10 + rng.randn(500), rng.randn(500),
              np.r_[0.0, rng.lognormal(size=499)], np.full(500, 2.0)]
    np.testing.assert_array_equal(log_columns(X), [True, False, False, False, False])
    X = X[:, :4]  # the constant column has no density: the map is fitted without it
    pre = TabularPreprocessor("log").fit(X)
    W, logdet = pre.transform(X)
    np.testing.assert_allclose(pre.inverse_transform(W), X, atol=1e-9)
    # the log-determinant is that of the whole map, by finite differences of each column
    # (the map is triangular after the logarithms: whitening is linear)
    h = 1e-6
    jac = np.zeros((20, X.shape[1], X.shape[1]))
    for j in range(X.shape[1]):
        step = np.zeros(X.shape[1])
        step[j] = h
        jac[:, :, j] = (pre.transform(X[:20] + step)[0] - pre.transform(X[:20] - step)[0]) / (2 * h)
    numeric = np.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(logdet[:20], numeric, atol=1e-5)
    # a value <= 0 in a logged column has density 0; other rows are untouched
    bad = X[:3].copy()
    bad[1, 0] = -1.0
    W_bad, logdet_bad = pre.transform(bad)
    assert np.isfinite(W_bad).all() and logdet_bad[1] == -np.inf
    np.testing.assert_array_equal(logdet_bad[[0, 2]], logdet[[0, 2]])
    # and the draws of a model stay in the logged columns' support
    assert (pre.inverse_transform(np.random.RandomState(1).randn(1000, 4) * 3)[:, 0] > 0).all()


@pytest.mark.parametrize("kind", ["gaussianize", "log", "quantile"])
def test_state_round_trip_gives_the_same_map(kind):
    X = _skewed(200, seed=3)
    pre = TabularPreprocessor(kind).fit(X)
    again = TabularPreprocessor.from_state(pre.state())
    a, la = pre.transform(X)
    b, lb = again.transform(X)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize("shape", [(10, 3), (3, 5)])
def test_few_rows_stay_finite_even_with_fewer_rows_than_columns(shape):
    X = np.random.RandomState(0).randn(*shape)
    X[:, 0] = np.arange(shape[0])  # an evenly spaced column
    pre = TabularPreprocessor("gaussianize").fit(X)
    W, logdet = pre.transform(X)
    assert np.isfinite(W).all() and np.isfinite(logdet).all()
    np.testing.assert_allclose(pre.inverse_transform(W), X, atol=1e-7)


def _degenerate(case, n=40, seed=0):
    """Rows without a density in every direction, and the error each must raise."""
    rng = np.random.RandomState(seed)
    X = rng.lognormal(size=(n, 3))
    if case == "identical rows":
        return np.tile([[1.0, 2.5, 3.0]], (n, 1)), f"all {n} rows of X are identical"
    if case == "constant column":
        X[:, 1] = 4.0
        return X, r"X has a constant column \(column 1, every value 4\)"
    if case == "constant columns":
        X[:, 0], X[:, 2] = 4.0, -1.0
        return X, r"X has constant columns \(columns 0, 2, values 4, -1\)"
    if case == "identical columns":
        X[:, 2] = X[:, 0]
        return X, r"linearly dependent \(rank 2 for 3 columns; column 2 is an affine"
    X[:, 1] = 3.0 - 2.0 * X[:, 0] + 0.5 * X[:, 2]  # an affine combination of the others
    return X, r"linearly dependent \(rank 2 for 3 columns; column \d is an affine"


DEGENERATE = ["identical rows", "constant column", "constant columns", "identical columns",
              "affine combination"]


@pytest.mark.parametrize("kind", ["standardize", "whiten", "log", "gaussianize", "quantile"])
@pytest.mark.parametrize("case", DEGENERATE)
def test_rows_without_a_density_are_refused_before_anything_is_fitted(kind, case):
    X, message = _degenerate(case)
    pre = TabularPreprocessor(kind)
    with pytest.raises(ValueError, match=message):
        pre.fit(X)
    assert not [name for name in vars(pre) if name.endswith("_")]  # nothing half-written
    good = _skewed(60)
    fitted = TabularPreprocessor(kind).fit(good)
    before = fitted.transform(good)
    with pytest.raises(ValueError, match=message):
        fitted.fit(X)
    after = fitted.transform(good)  # a refused refit leaves the previous fit whole
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_the_rank_test_finds_planted_dependencies_and_only_those():
    """Against numpy's SVD rank at the same relative tolerance (1e-9 of the spread): the
    last column of a planted affine combination is named; with noise of 1e-6 of its spread
    added, the rows pass."""
    rng = np.random.RandomState(1)
    for _ in range(20):
        n, d = rng.randint(8, 60), rng.randint(2, 7)
        X = rng.randn(n, d) * rng.lognormal(size=d) + 10 * rng.randn(d)
        k = rng.randint(1, d)
        X[:, k] = rng.randn() + X[:, :k] @ rng.randn(k)  # a combination of earlier ones
        if n <= d:
            check_spread(X)  # too few rows to judge: left alone
            continue
        singular = np.linalg.svd((X - X.mean(0)) / X.std(0), compute_uv=False)
        assert (singular > 1e-9 * singular[0]).sum() == d - 1  # the reference agrees
        with pytest.raises(ValueError, match=f"rank {d - 1} for {d} columns; column {k} is"):
            check_spread(X)
        X[:, k] += 1e-6 * rng.randn(n) * X[:, k].std()
        check_spread(X)


def test_dependence_after_the_logarithms_is_refused_by_the_log_map_only():
    rng = np.random.RandomState(2)
    X = rng.lognormal(0.0, 1.0, size=(200, 2))
    X = np.c_[X, X[:, 0] * X[:, 1]]  # log x2 = log x0 + log x1
    assert log_columns(X).all()
    with pytest.raises(ValueError, match=r"X \(with columns 0, 1, 2 logged\) are linearly"):
        TabularPreprocessor("log").fit(X)
    W, logdet = TabularPreprocessor("whiten").fit(X).transform(X)
    assert np.isfinite(W).all() and np.isfinite(logdet).all()


def test_conditional_maps_refuse_degenerate_targets_but_not_features():
    rng = np.random.RandomState(3)
    y, x = rng.randn(50, 2), rng.randn(50, 2)
    with pytest.raises(ValueError, match=r"y has a constant column \(column 1"):
        TargetContextPreprocessor(2).fit(np.c_[y[:, :1], np.ones(50), x])
    x[:, 1] = 5.0  # a constant feature is harmless to p(y | x)
    pre = TargetContextPreprocessor(2).fit(np.c_[y, x, x[:, 0]])
    U, logdet = pre.transform(np.c_[y, x, x[:, 0]])
    assert np.isfinite(U).all() and np.isfinite(logdet).all()
    assert (U[:, 3] == 0).all()


def test_choosing_a_map_checks_all_rows_first():
    X, message = _degenerate("identical columns")
    rows = np.arange(len(X))
    with pytest.raises(ValueError, match=message.replace("X", "y")):
        choose_preprocessing(X, rows[:30], rows[30:], name="y")


def test_an_estimator_refuses_identical_rows_before_training():
    from cnflow import CNFDensity

    with pytest.raises(ValueError, match="all 20 rows of X are identical"):
        CNFDensity(max_iter=1, random_state=0, device="cpu").fit(np.ones((20, 2)))


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        TabularPreprocessor("box-cox")
