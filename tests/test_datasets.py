"""Toy densities: shapes, repeatability and support."""

import math

import numpy as np
import pytest

from cnflow.datasets import TOY_DATASETS, make_toy, true_entropy


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


def test_pinwheel_entropy_agrees_with_a_nearest_neighbour_estimate():
    """Kozachenko–Leonenko (k = 4) on 100,000 samples: biased low by about 0.01 at this n."""
    from scipy.special import digamma
    from sklearn.neighbors import NearestNeighbors

    n, k = 100_000, 4
    x = make_toy("pinwheel", n, random_state=1)
    eps = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]
    estimate = digamma(n) - digamma(k) + math.log(math.pi) + 2 * np.log(eps).mean()
    assert true_entropy("pinwheel") == pytest.approx(2.3243, abs=2e-3)
    assert true_entropy("pinwheel") - estimate == pytest.approx(0.01, abs=0.015)


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
