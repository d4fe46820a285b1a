"""Toy densities: shapes, repeatability and support."""

import math

import numpy as np
import pytest
import torch

from cnflow.datasets import TOY_DATASETS, log_density, make_toy, true_entropy


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_shape_dtype_and_repeatability(name):
    a = make_toy(name, 501, random_state=3)
    assert a.shape == (501, 2) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, make_toy(name, 501, random_state=3))
    assert not np.array_equal(a, make_toy(name, 501, random_state=4))


def test_checkerboard_lies_on_black_squares_uniformly():
    x = make_toy("checkerboard", 40_000, random_state=0)
    assert np.abs(x).max() <= 4
    cells = np.floor(x / 2).astype(int)  # 4×4 board of side-2 cells in [-4, 4]²
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    counts = np.unique(cells, axis=0, return_counts=True)[1]
    assert len(counts) == 8
    assert counts.min() > 0.9 * 40_000 / 8


def test_eight_gaussians_modes_and_entropy():
    x = make_toy("8gaussians", 80_000, random_state=0)
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.median(radius) - 4 / 1.414) < 0.05
    # Entropy of 8 well-separated Gaussians: log 8 + entropy of one (std 0.5/1.414).
    sigma = 0.5 / 1.414
    separated = math.log(8) + 1 + math.log(2 * math.pi * sigma**2)
    assert true_entropy("8gaussians", n_monte_carlo=200_000) == pytest.approx(separated, abs=0.01)
    assert true_entropy("checkerboard") == pytest.approx(math.log(32))
    assert true_entropy("moons") is None


@pytest.mark.slow
def test_pinwheel_entropy_agrees_with_a_nearest_neighbour_estimate():
    """Kozachenko–Leonenko (k = 4) on 100,000 samples: an estimate independent of the
    root finding behind log_density (slightly biased low at this n)."""
    from scipy.special import digamma
    from sklearn.neighbors import NearestNeighbors

    n, k = 100_000, 4
    x = make_toy("pinwheel", n, random_state=1)
    eps = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]
    estimate = digamma(n) - digamma(k) + math.log(math.pi) + 2 * np.log(eps).mean()
    assert true_entropy("pinwheel") == pytest.approx(2.3174, abs=2e-3)
    assert 0 <= true_entropy("pinwheel") - estimate < 0.01


def _pinwheel_draws(n, seed):
    """Pinwheel draws with their arm and preimage f known, and the own term's log-density."""
    rng = np.random.RandomState(seed)
    f0, f1 = 1 + 0.3 * rng.randn(n), 0.1 * rng.randn(n)
    angle = 2 * np.pi * rng.randint(5, size=n) / 5 + 0.25 * np.exp(f0)
    x = 2 * np.stack([f0 * np.cos(angle) - f1 * np.sin(angle),
                      f0 * np.sin(angle) + f1 * np.cos(angle)], axis=1)
    # change of variables by hand: N(f) / (5 |det|), the determinant of f -> 2 R(theta(f0)) f
    # by central differences, so the test does not rely on the closed form log_density uses
    h = 1e-6
    def image(a, b):
        th = 0.25 * np.exp(a)
        return 2 * np.stack([a * np.cos(th) - b * np.sin(th), a * np.sin(th) + b * np.cos(th)])
    d0 = (image(f0 + h, f1) - image(f0 - h, f1)) / (2 * h)
    d1 = (image(f0, f1 + h) - image(f0, f1 - h)) / (2 * h)
    det = d0[0] * d1[1] - d0[1] * d1[0]
    log_own = (-np.log(5 * 2 * np.pi * 0.3 * 0.1) - 0.5 * ((f0 - 1) / 0.3) ** 2
               - 0.5 * (f1 / 0.1) ** 2 - np.log(np.abs(det)))
    return x, log_own, np.hypot(f0, f1)


def test_pinwheel_log_density_sums_every_preimage():
    x, log_own, radius = _pinwheel_draws(20_000, seed=0)
    logp = log_density("pinwheel", x)
    # the draw's own preimage is always among the terms, and away from the origin (where the
    # arms overlap) it is the only one that counts
    assert (logp >= log_own - 1e-9).all()
    far = radius > 1.3
    np.testing.assert_allclose(logp[far], log_own[far], atol=1e-8)
    assert (logp[radius < 0.5] - log_own[radius < 0.5]).max() > 0.1  # overlaps are found


@pytest.mark.parametrize("name", [pytest.param("pinwheel", marks=pytest.mark.slow), "8gaussians",
                                  "checkerboard"])
def test_log_density_integrates_to_one_and_matches_sample_frequencies(name):
    edges = np.linspace(-6, 6, 241)
    mid = (edges[:-1] + edges[1:]) / 2
    grid = np.stack(np.meshgrid(mid, mid, indexing="ij"), -1).reshape(-1, 2)
    cell = (edges[1] - edges[0]) ** 2
    density = np.exp(log_density(name, grid)).reshape(len(mid), len(mid))
    assert density.sum() * cell == pytest.approx(1.0, abs=2e-3)
    # coarse 8×8 bins of [-6, 6]²: probability by the density against 200,000 draws
    n = 200_000
    x = make_toy(name, n, random_state=11)
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=[edges[::30], edges[::30]])[0]
    expected = density.reshape(8, 30, 8, 30).sum(axis=(1, 3)) * cell * n
    stderr = np.sqrt(expected + 1)
    assert (np.abs(counts - expected) < 5 * stderr + 0.01 * expected).all()


@pytest.mark.slow
def test_pinwheel_entropy_is_the_mean_negative_log_density():
    x = make_toy("pinwheel", 100_000, random_state=5)
    assert -log_density("pinwheel", x).mean() == pytest.approx(true_entropy("pinwheel"),
                                                               abs=0.006)


def test_log_density_bad_arguments():
    with pytest.raises(ValueError, match="log-density of 'moons' is not known"):
        log_density("moons", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\), got \(3,\)"):
        log_density("pinwheel", np.zeros(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy dataset 'nope'; choose one of 8gaussians"):
        make_toy("nope", 10)
    with pytest.raises(ValueError, match="n_samples"):
        make_toy("moons", 0)


@pytest.mark.parametrize("name,radii,noise", [("rings", (0.75, 1.5, 2.25, 3.0), 0.08),
                                              ("circles", (1.5, 3.0), 0.24)])
def test_concentric_densities_lie_on_their_circles(name, radii, noise):
    x = make_toy(name, 20_000, random_state=0)
    r = np.linalg.norm(x, axis=1)
    nearest = np.abs(r[:, None] - np.array(radii)[None]).min(axis=1)
    assert np.quantile(nearest, 0.99) < 3.5 * noise
    counts = np.bincount(np.abs(r[:, None] - np.array(radii)[None]).argmin(axis=1))
    assert counts.min() > 0.8 * 20_000 / len(radii)  # every circle is populated


def test_pinwheel_has_five_arms_away_from_the_origin():
    x = make_toy("pinwheel", 50_000, random_state=0)
    r = np.linalg.norm(x, axis=1)
    assert np.quantile(r, 0.01) > 0.5 and np.quantile(r, 0.99) < 6
    # Five arms: the angle histogram at a fixed radius has five peaks.
    ring = x[(r > 2.5) & (r < 3.0)]
    hist = np.histogram(np.arctan2(ring[:, 1], ring[:, 0]), bins=60, range=(-np.pi, np.pi))[0]
    peaks = (hist > np.roll(hist, 1)) & (hist >= np.roll(hist, -1)) & (hist > hist.mean())
    assert peaks.sum() == 5


@pytest.mark.parametrize("name,bound", [("2spirals", 4.5), ("moons", 4.2), ("swissroll", 4.0)])
def test_bounded_support(name, bound):
    x = make_toy(name, 20_000, random_state=0)
    assert np.abs(x).max() < bound


# ---------------------------------------------------------------- real and synthetic tables

@pytest.mark.parametrize("name, shape", [("wine", (178, 13)), ("iris", (150, 4)),
                                         ("diabetes", (442, 9)), ("digits", (1797, 64))])
def test_load_real_splits_three_to_one(name, shape):
    from cnflow.datasets import load_real

    X_train, X_test = load_real(name)
    assert X_train.shape[1] == X_test.shape[1] == shape[1]
    assert len(X_train) + len(X_test) == shape[0] and len(X_test) == math.ceil(shape[0] / 4)
    again, _ = load_real(name)
    np.testing.assert_array_equal(again, X_train)  # fixed seeds
    if name == "digits":  # integers 0..16 spread over their unit step
        assert X_train.min() >= 0 and X_train.max() < 17 and (X_train % 1 > 0).mean() > 0.99
    if name == "iris":  # recorded to 0.1, spread over that step
        base = np.floor(np.round(X_train * 10, 6)) / 10
        assert ((X_train - base) < 0.1 + 1e-9).all()
    with pytest.raises(ValueError, match="unknown real data set"):
        load_real("boston")


def _warp_forward_torch(y, p):
    """The generator's map y -> x in torch (float64), for autograd's Jacobian."""
    w = (2 * torch.sinh(y / 2)) @ torch.as_tensor(p["mix"]).T
    skewed = torch.as_tensor(p["skewed"])
    return torch.where(skewed, torch.exp(w / 4), w)


def test_warped_mixture_log_density_is_the_change_of_variables():
    """log p(x) = log p_mix(y) − log|det ∂x/∂y| with the Jacobian from autograd."""
    from scipy.stats import multivariate_normal

    from cnflow.datasets import _warped_mixture_parameters, warped_mixture_log_density

    d = 5
    p = _warped_mixture_parameters(d)
    rng = np.random.RandomState(0)
    for _ in range(5):
        y = torch.as_tensor(rng.randn(d) * 1.5, dtype=torch.float64)
        x = _warp_forward_torch(y[None], p)[0]
        jac = torch.autograd.functional.jacobian(lambda v: _warp_forward_torch(v[None], p)[0], y)
        log_mix = np.log(sum(w * multivariate_normal(m, c @ c.T).pdf(y.numpy())
                             for w, m, c in zip(p["weights"], p["means"], p["chols"])))
        expected = log_mix - torch.linalg.slogdet(jac)[1].item()
        got = warped_mixture_log_density(x.numpy()[None])[0]
        assert got == pytest.approx(expected, abs=1e-9)


def test_warped_mixture_density_integrates_to_one_and_matches_samples():
    from cnflow.datasets import make_warped_mixture, warped_mixture_log_density

    xs = np.linspace(-12, 12, 1201)
    ys = np.linspace(1e-6, 8, 801)  # the odd column is positive
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(warped_mixture_log_density(grid)).reshape(len(xs), len(ys))
    mass = np.trapezoid(np.trapezoid(density, ys, axis=1), xs)
    assert mass == pytest.approx(1.0, abs=2e-3)
    X = make_warped_mixture(200_000, 2, random_state=0)
    inside = (np.abs(X[:, 0]) < 1) & (X[:, 1] > 0.5) & (X[:, 1] < 1.5)
    bx, by = np.linspace(-1, 1, 401), np.linspace(0.5, 1.5, 401)
    box = np.stack(np.meshgrid(bx, by, indexing="ij"), -1).reshape(-1, 2)
    inner = np.exp(warped_mixture_log_density(box)).reshape(len(bx), len(by))
    expected = np.trapezoid(np.trapezoid(inner, by, axis=1), bx)
    assert inside.mean() == pytest.approx(expected, abs=4e-3)
    assert np.isneginf(warped_mixture_log_density(np.array([[0.0, -1.0]])))[0]
