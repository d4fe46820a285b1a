"""Toy 2-D densities, generated (nothing is downloaded).

The first five follow the recipes of FFJORD's toy data (Grathwohl et al. 2019), the standard
benchmarks for 2-D density models; moons, circles and swissroll wrap scikit-learn's generators
with the same scalings.

Example:
    >>> from cnflow.datasets import make_toy, TOY_DATASETS
    >>> X = make_toy("checkerboard", 1000, random_state=0)
    >>> X.shape, X.dtype
    ((1000, 2), dtype('float64'))
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import numpy as np
from sklearn import datasets as skd
from sklearn.utils import check_random_state

from .checks import check_positive_int

__all__ = ["make_toy", "TOY_DATASETS", "log_density", "true_entropy", "empirical_entropy",
           "REAL_DATASETS", "load_real", "make_warped_mixture", "warped_mixture_log_density",
           "CONDITIONAL_DATASETS", "make_conditional", "conditional_log_density", "load_images"]


def _eight_gaussians(n: int, rng: np.random.RandomState) -> np.ndarray:
    """Eight isotropic Gaussians (std 0.5) on a circle of radius 4, all divided by √2."""
    s = 1 / math.sqrt(2)
    centers = 4 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s),
                            (-s, -s)])
    idx = rng.randint(8, size=n)
    return (0.5 * rng.randn(n, 2) + centers[idx]) / 1.414


def _checkerboard(n: int, rng: np.random.RandomState) -> np.ndarray:
    """Uniform on 8 squares of side 2 in [−4, 4]², the black fields of a 4×4 board (area 32)."""
    x1 = rng.rand(n) * 4 - 2
    x2 = rng.rand(n) - rng.randint(0, 2, n) * 2
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def _pinwheel(n: int, rng: np.random.RandomState) -> np.ndarray:
    """Five arms: Gaussian blobs (radial std 0.3, tangential 0.1) bent by a rate of 0.25."""
    n_arms, per_arm = 5, n // 5
    counts = np.full(n_arms, per_arm)
    counts[: n - per_arm * n_arms] += 1
    labels = np.repeat(np.arange(n_arms), counts)
    features = rng.randn(n, 2) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    return rng.permutation(_pinwheel_image(features[:, 0], features[:, 1], labels))


def _pinwheel_image(f0: np.ndarray, f1: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """2 R(θ) f with θ = 2πk/5 + 0.25 e^{f₀}: where arm k takes the point f = (f₀, f₁)."""
    angles = 2 * np.pi * arm / 5 + 0.25 * np.exp(f0)
    cos, sin = np.cos(angles), np.sin(angles)
    return 2 * np.stack([f0 * cos - f1 * sin, f0 * sin + f1 * cos], axis=1)


def _pinwheel_term(f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """log of one preimage's share of the density: N(f; (1, 0), diag(0.3², 0.1²)) divided
    by 5 arms and by the map's Jacobian determinant |4 (1 − 0.25 e^{f₀} f₁)|."""
    return (-math.log(5 * 4 * 2 * math.pi * 0.3 * 0.1) - 0.5 * ((f0 - 1) / 0.3) ** 2
            - 0.5 * (f1 / 0.1) ** 2 - np.log(np.abs(1 - 0.25 * np.exp(f0) * f1)))


def _two_spirals(n: int, rng: np.random.RandomState) -> np.ndarray:
    """Two interleaved Archimedean spirals (up to 540°) with uniform and Gaussian jitter."""
    half = n // 2
    sizes = (n - half, half)
    arms = []
    for sign, m in zip((1, -1), sizes):
        r = np.sqrt(rng.rand(m)) * 540 * (2 * np.pi) / 360
        x = -np.cos(r) * r + rng.rand(m) * 0.5
        y = np.sin(r) * r + rng.rand(m) * 0.5
        arms.append(sign * np.stack([x, y], axis=1))
    data = np.concatenate(arms) / 3
    return rng.permutation(data + 0.1 * rng.randn(n, 2))


def _rings(n: int, rng: np.random.RandomState) -> np.ndarray:
    """Four concentric circles of radii 3, 2.25, 1.5, 0.75 with Gaussian noise (std 0.08)."""
    sizes = [n - 3 * (n // 4)] + [n // 4] * 3
    parts = []
    for radius, m in zip((1.0, 0.75, 0.5, 0.25), sizes):
        angle = np.linspace(0, 2 * np.pi, m, endpoint=False)
        parts.append(radius * np.stack([np.cos(angle), np.sin(angle)], axis=1))
    data = 3 * np.concatenate(parts)
    return rng.permutation(data + 0.08 * rng.randn(n, 2))


def _moons(n: int, rng: np.random.RandomState) -> np.ndarray:
    data = skd.make_moons(n, noise=0.1, random_state=rng)[0]
    return data * 2 + np.array([-1.0, -0.2])


def _circles(n: int, rng: np.random.RandomState) -> np.ndarray:
    return skd.make_circles(n, factor=0.5, noise=0.08, random_state=rng)[0] * 3


def _swissroll(n: int, rng: np.random.RandomState) -> np.ndarray:
    return skd.make_swiss_roll(n, noise=1.0, random_state=rng)[0][:, [0, 2]] / 5


_GENERATORS: dict[str, Callable[[int, np.random.RandomState], np.ndarray]] = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "rings": _rings,
    "moons": _moons,
    "circles": _circles,
    "swissroll": _swissroll,
}

#: The names :func:`make_toy` knows.
TOY_DATASETS: tuple[str, ...] = tuple(_GENERATORS)


def make_toy(name: str, n_samples: int, *, random_state=None) -> np.ndarray:
    """Draw ``n_samples`` points of a toy 2-D density.

    Arguments:
        name: one of :data:`TOY_DATASETS`.
        n_samples: number of points (≥ 1).
        random_state: None, an int seed or a ``numpy.random.RandomState``.

    Returns:
        A float64 array of shape (n_samples, 2).
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    n_samples = check_positive_int(n_samples, "n_samples")
    rng = check_random_state(random_state)
    return np.asarray(_GENERATORS[name](n_samples, rng), dtype=np.float64)


def _eight_gaussians_log_density(x: np.ndarray) -> np.ndarray:
    s = 1 / math.sqrt(2)
    centers = 4 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s),
                            (-s, -s)]) / 1.414
    std = 0.5 / 1.414
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    log_comp = -d2 / (2 * std**2) - math.log(2 * math.pi * std**2) - math.log(8)
    m = log_comp.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(log_comp - m).sum(axis=1, keepdims=True)))[:, 0]


def _checkerboard_log_density(x: np.ndarray) -> np.ndarray:
    cells = np.floor(x / 2)
    inside = (np.abs(x) <= 4).all(axis=1) & ((cells[:, 0] + cells[:, 1]) % 2 == 0)
    return np.where(inside, -math.log(32.0), -np.inf)


#: Grid over the polar angle on which the pinwheel's preimages are bracketed, and the
#: bisection steps that refine each bracket (2π/256 / 2^40: far below float64's spacing).
_PINWHEEL_GRID, _PINWHEEL_BISECTIONS = 256, 40


def _pinwheel_wrapped(alpha: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """α + θ(r cos α) − c wrapped to [−π, π): zero where the polar angle α, at radius r,
    maps onto the angle c (θ(f₀) = 0.25 e^{f₀} without the arm's offset)."""
    g = alpha + 0.25 * np.exp(r * np.cos(alpha)) - c
    return (g + math.pi) % (2 * math.pi) - math.pi


def _pinwheel_log_density(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Sum over every preimage: y = x/2 comes from f with |f| = |y| (the rotation keeps the
    norm) at polar angle α solving α + 2πk/5 + 0.25 e^{|y| cos α} ≡ ∠y (mod 2π), found by
    bracketing on a grid in α and bisection; each preimage adds
    N(f; (1, 0), diag(0.3², 0.1²)) / (5 · 4 |1 − 0.25 e^{f₀} f₁|)."""
    out = np.full(len(x), -np.inf)
    alpha = np.linspace(-math.pi, math.pi, _PINWHEEL_GRID + 1)
    arm_angles = 2 * math.pi * np.arange(5) / 5
    for start in range(0, len(x), chunk):
        y = x[start:start + chunk] / 2
        r = np.hypot(y[:, 0], y[:, 1])
        c = (np.arctan2(y[:, 1], y[:, 0])[:, None] - arm_angles).reshape(-1)  # (rows·arms,)
        r_arm = np.repeat(r, 5)
        w = _pinwheel_wrapped(alpha, r_arm[:, None], c[:, None])
        left, right = w[:, :-1], w[:, 1:]
        # a sign change that is not the wrap-around jump brackets a root
        crossing = (np.sign(left) != np.sign(right)) & (np.abs(right - left) < math.pi)
        rows, cols = np.nonzero(crossing)
        lo, hi = alpha[cols], alpha[cols + 1]
        rr, cc = r_arm[rows], c[rows]
        f_lo = _pinwheel_wrapped(lo, rr, cc)
        for _ in range(_PINWHEEL_BISECTIONS):
            mid = 0.5 * (lo + hi)
            f_mid = _pinwheel_wrapped(mid, rr, cc)
            keep_lo = np.sign(f_mid) == np.sign(f_lo)
            lo, f_lo, hi = (np.where(keep_lo, mid, lo), np.where(keep_lo, f_mid, f_lo),
                            np.where(keep_lo, hi, mid))
        root = 0.5 * (lo + hi)
        log_terms = _pinwheel_term(rr * np.cos(root), rr * np.sin(root))
        np.logaddexp.at(out, start + rows // 5, log_terms)
    return out


_LOG_DENSITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "8gaussians": _eight_gaussians_log_density,
    "checkerboard": _checkerboard_log_density,
    "pinwheel": _pinwheel_log_density,
}


def log_density(name: str, X) -> np.ndarray:
    r"""The exact log-density log p(x) of a toy density at each row of X, where it is known.

    8gaussians: the mixture of eight Gaussians. checkerboard: −log 32 on the black squares,
    −inf elsewhere. pinwheel: each arm is the image of f ~ N((1, 0), diag(0.3², 0.1²)) under
    f ↦ 2 R(θ(f₀)) f with θ = 2πk/5 + 0.25 e^{f₀}, whose Jacobian determinant is
    4 (1 − 0.25 e^{f₀} f₁); the density sums N(f)/(5 · 4|1 − 0.25 e^{f₀} f₁|) over every
    preimage f of x in every arm (the arms overlap near the origin), the preimages found by
    root finding in the polar angle.

    With it, the KL divergence of a model q is estimated from test samples as the paired
    mean of log p(x) − log q(x), whose variance vanishes as q approaches p (unlike
    test NLL − H(p), which carries the test set's own sampling noise).

    Arguments:
        name: "8gaussians", "checkerboard" or "pinwheel".
        X: points, shape (n, 2).

    Returns:
        A float64 array of shape (n,).

    Example:
        >>> import numpy as np
        >>> from cnflow.datasets import log_density
        >>> np.round(log_density("checkerboard", np.array([[1.0, 1.0], [1.0, -1.0]])), 4)
        array([-3.4657,    -inf])
    """
    if name not in _LOG_DENSITIES:
        known = ", ".join(_LOG_DENSITIES)
        raise ValueError(f"the log-density of {name!r} is not known; it is for {known}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"X must have shape (n, 2), got {X.shape}")
    return _LOG_DENSITIES[name](X)


def true_entropy(name: str, *, n_monte_carlo: int = 1_000_000, random_state=0) -> float | None:
    """The differential entropy H(p) = −E log p(x) in nats, where it is known.

    checkerboard: uniform on area 32, so log 32 exactly. 8gaussians: Monte Carlo over the exact
    mixture density (standard error ≈ 1e-3 with the default draws). pinwheel: each arm is the
    image of f ~ N((1, 0), diag(0.3², 0.1²)) under f ↦ 2 R(θ(f₀)) f, θ = 2πk/5 + 0.25 e^{f₀},
    whose Jacobian determinant is 4 (1 − 0.25 e^{f₀} f₁), so if the five arms were disjoint
    H would be log 5 + log(2πe · 0.3 · 0.1) + log 4 + E log(1 − 0.25 e^{f₀} f₁) (2.3241 nats).
    They overlap near the origin, which lowers H by E log(p(x)/p_own(x)), p_own being the
    term of the draw's own arm and preimage; that correction (about 0.0065 nats) is
    estimated on the first min(n_monte_carlo, 100,000) draws with :func:`log_density` (it
    is 0 for most draws, so its standard error is about 1e-4), giving H ≈ 2.317. Others:
    None.

    To compare a model with the truth on a test set, prefer the paired estimate
    test NLL − :func:`empirical_entropy` (name, X_test): it subtracts the test set's own
    entropy, and so its sampling noise, which NLL − H(p) keeps (about ±0.007 nats with
    20,000 pinwheel rows).
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    if name == "checkerboard":
        return math.log(32.0)
    if name == "pinwheel":
        if isinstance(random_state, numbers.Integral):  # repeatable: computed once per seed
            return _pinwheel_entropy_of_seed(int(n_monte_carlo), int(random_state))
        return _pinwheel_entropy(int(n_monte_carlo), random_state)
    if name == "8gaussians":
        return empirical_entropy(name, make_toy(name, n_monte_carlo, random_state=random_state))
    return None


def _pinwheel_entropy(n_monte_carlo: int, random_state) -> float:
    rng = check_random_state(random_state)
    f0 = 1 + 0.3 * rng.randn(n_monte_carlo)
    f1 = 0.1 * rng.randn(n_monte_carlo)
    arm = rng.randint(5, size=n_monte_carlo)
    log_det = np.log(1 - 0.25 * np.exp(f0) * f1)
    disjoint = math.log(5) + math.log(2 * math.pi * math.e * 0.03) + math.log(4) + log_det.mean()
    m = min(n_monte_carlo, 100_000)
    f0, f1 = f0[:m], f1[:m]
    x = _pinwheel_image(f0, f1, arm[:m])
    log_own = _pinwheel_term(f0, f1)
    return float(disjoint - (_pinwheel_log_density(x) - log_own).mean())


#: Entropies for integer seeds, which always give the same draws.
_pinwheel_entropy_of_seed = functools.lru_cache(maxsize=8)(_pinwheel_entropy)


def empirical_entropy(name: str, X) -> float | None:
    r"""−(1/n) Σ log p(xᵢ) over the rows of X, with the exact log-density; None where it is
    not known (see :func:`log_density`).

    For X drawn from p, a model q's test NLL minus this value is the paired estimate of
    KL(p‖q) = E_p[log p − log q]: the test set's own sampling noise cancels, so the estimate
    is exact as q → p, whereas NLL − H(p) keeps that noise.

    Example:
        >>> from cnflow.datasets import empirical_entropy, make_toy
        >>> X = make_toy("checkerboard", 100, random_state=0)
        >>> round(empirical_entropy("checkerboard", X), 4)  # log 32
        3.4657
    """
    if name not in _LOG_DENSITIES:
        return None
    return float(-log_density(name, X).mean())


# ---------------------------------------------------------------- real tabular data

#: Real tabular data sets that scikit-learn ships (nothing is downloaded), see :func:`load_real`.
REAL_DATASETS = ("wine", "iris", "diabetes", "digits")


def load_real(name: str, *, random_state=0) -> tuple[np.ndarray, np.ndarray]:
    """A real data set that scikit-learn ships, split 75/25 into train and test rows.

    - ``"wine"``: 178 × 13 chemical measurements (as recorded).
    - ``"iris"``: 150 × 4 flower measurements plus U(0, 0.1) noise: they are recorded to
      0.1 cm, and the noise spreads each value over its recording step (dequantisation).
    - ``"diabetes"``: 442 × 9, the continuous columns of ``load_diabetes(scaled=False)``
      (the binary ``sex`` column dropped).
    - ``"digits"``: 1797 × 64 pixel intensities (integers 0..16) plus U(0, 1) noise.

    Arguments:
        name: one of :data:`REAL_DATASETS`.
        random_state: seed of the noise and of ``train_test_split``.

    Returns:
        ``(X_train, X_test)``, float64 arrays.

    Example:
        >>> from cnflow.datasets import load_real
        >>> X_train, X_test = load_real("wine")
        >>> X_train.shape, X_test.shape
        ((133, 13), (45, 13))
    """
    from sklearn.model_selection import train_test_split

    rng = check_random_state(random_state)
    if name == "wine":
        X = skd.load_wine().data
    elif name == "iris":
        X = skd.load_iris().data
        X = X + rng.uniform(0, 0.1, X.shape)
    elif name == "diabetes":
        X = np.delete(skd.load_diabetes(scaled=False).data, 1, axis=1)
    elif name == "digits":
        X = skd.load_digits().data
        X = X + rng.uniform(0, 1, X.shape)
    else:
        raise ValueError(f"unknown real data set {name!r}; choose one of "
                         f"{', '.join(REAL_DATASETS)}")
    X_train, X_test = train_test_split(np.asarray(X, dtype=np.float64), test_size=0.25,
                                       random_state=random_state)
    return X_train, X_test


# ---------------------------------------------------------------- synthetic tables, exact log p

def _warped_mixture_parameters(n_features: int) -> dict:
    """The fixed mixture and map of :func:`make_warped_mixture` in ``n_features`` dimensions
    (drawn from a seed of their own, so every call agrees)."""
    rng = np.random.RandomState(1000 + n_features)
    d, k = n_features, 4
    means = rng.randn(k, d) * 1.5
    chols = []
    for _ in range(k):
        a = rng.randn(d, d) / math.sqrt(d)
        chols.append(np.linalg.cholesky(0.3 * (a @ a.T) + 0.2 * np.eye(d)))
    q, _ = np.linalg.qr(rng.randn(d, d))
    mix = q * rng.uniform(0.5, 1.5, d)  # columns of an orthogonal matrix, scaled
    return {"weights": np.full(k, 1 / k), "means": means, "chols": np.stack(chols),
            "mix": mix, "skewed": np.arange(d) % 2 == 1}


def make_warped_mixture(n_samples: int, n_features: int, *, random_state=None) -> np.ndarray:
    r"""Rows of a skewed, heavy-tailed, multimodal density in any dimension, with an exact
    log-density (:func:`warped_mixture_log_density`): a tabular benchmark whose KL to the truth
    can be measured as the dimension grows.

    y is drawn from a mixture of four correlated Gaussians; then v = 2 sinh(y/2) elementwise
    (heavier tails), w = M v with M a fixed scaled rotation (mixes the columns), and x_j = w_j
    for even j, x_j = exp(w_j / 4) for odd j (positive, right-skewed columns). Every step is
    invertible with a known Jacobian, so log p(x) is exact.

    Arguments:
        n_samples: number of rows.
        n_features: dimension D ≥ 1 (the mixture and map are fixed per D).
        random_state: seed of the draws.

    Returns:
        A float64 array (n_samples, n_features).
    """
    n_features = check_positive_int(n_features, "n_features")
    n_samples = check_positive_int(n_samples, "n_samples")
    p = _warped_mixture_parameters(n_features)
    rng = check_random_state(random_state)
    comp = rng.choice(len(p["weights"]), size=n_samples, p=p["weights"])
    eps = rng.randn(n_samples, n_features)
    y = np.empty_like(eps)
    for k in range(len(p["weights"])):  # per component: no (n, d, d) gather of factors
        rows = comp == k
        y[rows] = p["means"][k] + eps[rows] @ p["chols"][k].T
    w = 2 * np.sinh(y / 2) @ p["mix"].T
    return np.where(p["skewed"], np.exp(w / 4), w)


def warped_mixture_log_density(X) -> np.ndarray:
    r"""The exact log-density of :func:`make_warped_mixture` at each row of X (D from X):
    log p(x) = log p_mix(y) − Σ_j log cosh(y_j/2) − log|det M| − Σ_{odd j} (w_j/4 − log 4),
    with w, y the preimages (w_j = 4 log x_j on the skewed columns, −inf where x_j ≤ 0)."""
    from scipy.special import logsumexp

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n, n_features), got {X.shape}")
    p = _warped_mixture_parameters(X.shape[1])
    skewed = p["skewed"]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(skewed, 4 * np.log(np.where(skewed, X, 1.0)), X)
    bad = (skewed & (X <= 0)).any(axis=1)
    w = np.where(np.isfinite(w), w, 0.0)
    y = 2 * np.arcsinh(np.linalg.solve(p["mix"], w.T).T / 2)
    log_comp = []
    for mean, chol, weight in zip(p["means"], p["chols"], p["weights"], strict=True):
        r = np.linalg.solve(chol, (y - mean).T).T
        log_comp.append(math.log(weight) - 0.5 * (r * r).sum(1) - np.log(np.diag(chol)).sum()
                        - 0.5 * X.shape[1] * math.log(2 * math.pi))
    log_mix = logsumexp(np.stack(log_comp), axis=0)
    log_det = ((np.logaddexp(y / 2, -y / 2) - math.log(2)).sum(1)
               + np.linalg.slogdet(p["mix"])[1]
               + np.where(skewed, w / 4 - math.log(4), 0.0).sum(1))
    return np.where(bad, -np.inf, log_mix - log_det)


# ---------------------------------------------------------------------- conditional toys
#: Synthetic conditional densities p(y | x) with an exact log-density
#: (:func:`make_conditional`, :func:`conditional_log_density`).
CONDITIONAL_DATASETS = ("bimodal", "bimodal_2d")


def _conditional_components(name: str, x: np.ndarray) -> list[tuple[float, np.ndarray,
                                                                      np.ndarray]]:
    """The Gaussian components of p(y | x) at each x (n,): (weight, means (n, d), covariances
    (n, d, d))."""
    if name == "bimodal":
        sigma = 0.15 + 0.25 * np.abs(x)
        cov = (sigma ** 2)[:, None, None]
        centre = 1.5 * np.sin(x)
        return [(0.5, (centre + 1.0)[:, None], cov), (0.5, (centre - 1.0)[:, None], cov)]
    if name == "bimodal_2d":
        s1, s2 = 0.2 + 0.2 * np.abs(x), 0.3 + 0.1 * x
        rho = 0.45 * x
        cov = np.stack([np.stack([s1 ** 2, rho * s1 * s2], -1),
                        np.stack([rho * s1 * s2, s2 ** 2], -1)], -2)
        mean_a = np.stack([np.full_like(x, 1.2), np.sin(1.5 * x)], -1)
        mean_b = np.stack([-np.cos(x), -1.0 + 0.5 * x], -1)
        return [(0.6, mean_a, cov), (0.4, mean_b, cov[:, ::-1, ::-1].copy())]
    raise ValueError(f"unknown conditional dataset {name!r}; valid: "
                     f"{', '.join(CONDITIONAL_DATASETS)}")


def make_conditional(name: str, n_samples: int, *, random_state=None
                     ) -> tuple[np.ndarray, np.ndarray]:
    r"""Pairs (x, y) from a synthetic conditional density with an exact log-density.

    x ~ U(−2, 2) (one feature); y | x is a two-component Gaussian mixture whose means,
    scales and (in 2-D) correlation move with x:

    - ``"bimodal"``: y ∈ ℝ, :math:`\tfrac12 \mathcal{N}(1.5 \sin x \pm 1,\ \sigma(x)^2)`
      with :math:`\sigma(x) = 0.15 + 0.25 |x|`: two modes near x = 0 that merge as the noise
      grows with :math:`|x|` (bimodal and heteroscedastic).
    - ``"bimodal_2d"``: y ∈ ℝ², weights 0.6 and 0.4, means (1.2, sin 1.5x) and
      (−cos x, −1 + x/2), scales and correlation (0.45 x) that change with x.

    Returns:
        ``(X, y)``: X of shape (n, 1); y of shape (n,) (``"bimodal"``) or (n, 2).

    Example:
        >>> from cnflow.datasets import make_conditional, conditional_log_density
        >>> X, y = make_conditional("bimodal", 5, random_state=0)
        >>> X.shape, y.shape, conditional_log_density("bimodal", X, y).shape
        ((5, 1), (5,), (5,))
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    rng = check_random_state(random_state)
    x = rng.uniform(-2.0, 2.0, size=n_samples)
    components = _conditional_components(name, x)
    weights = np.array([w for w, _, _ in components])
    which = rng.choice(len(components), size=n_samples, p=weights)
    d = components[0][1].shape[1]
    y = np.empty((n_samples, d))
    for k, (_, mean, cov) in enumerate(components):
        rows = which == k
        chol = np.linalg.cholesky(cov[rows])
        y[rows] = mean[rows] + (chol @ rng.normal(size=(rows.sum(), d, 1)))[..., 0]
    return x[:, None], (y[:, 0] if name == "bimodal" else y)


def conditional_log_density(name: str, X, y) -> np.ndarray:
    """The exact log p(y | x) of :func:`make_conditional`'s density at each pair, (n,)."""
    from scipy.special import logsumexp

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y = y.reshape(len(y), -1)
    x = X.reshape(len(X), -1)[:, 0]
    terms = []
    for weight, mean, cov in _conditional_components(name, x):
        chol = np.linalg.cholesky(cov)
        r = np.linalg.solve(chol, (y - mean)[..., None])[..., 0]
        log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)
        terms.append(math.log(weight) - 0.5 * (r * r).sum(1) - log_det
                     - 0.5 * y.shape[1] * math.log(2 * math.pi))
    return logsumexp(np.stack(terms), axis=0)


def load_images(path, key: str | None = None) -> np.ndarray:
    """Images from a user's .npy or .npz file (e.g. their own copy of MNIST), as an array
    (n, C, H, W) or (n, H, W), for :class:`cnflow.ImageCNFDensity`.

    Arguments:
        path: a .npy file holding the array, or a .npz file.
        key: the array's name in a .npz file (default: its only array, or ``"x_train"``,
            ``"images"`` or ``"x"`` when it holds several).

    Raises:
        ValueError: another suffix, no such array, or an array that is not 3-D or 4-D.
    """
    from pathlib import Path

    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"images are read from .npy or .npz files, got {path.name!r}")
    if path.suffix == ".npy":
        images = np.load(path, allow_pickle=False)
    else:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            if key is None:
                common = [n for n in ("x_train", "images", "x") if n in names]
                if len(names) == 1:
                    key = names[0]
                elif common:
                    key = common[0]
                else:
                    raise ValueError(f"{path.name} holds several arrays ({', '.join(names)});"
                                     " name one with key=")
            if key not in names:
                raise ValueError(f"{path.name} has no array {key!r}; it has "
                                 f"{', '.join(names)}")
            images = archive[key]
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be an array (n, C, H, W) or (n, H, W); {path.name} "
                         f"holds shape {images.shape}")
    return images
