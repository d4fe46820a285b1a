r"""Invertible maps with exact log-determinants that bring tabular data near N(0, I) before a
flow models what is left.

A density estimator fitted to u = g(x) gives densities in the caller's units by the change of
variables, :math:`\log p(x) = \log q(g(x)) + \log|\det \partial g/\partial x|`. Four maps,
composed in this order:

- **Logarithms of positive columns** (``kind="log"``): :math:`x_j \mapsto \log x_j` on each
  column that is positive in the training rows and whose logarithm fits a normal
  distribution better than the column itself (by the Gaussian likelihood of the column in the
  caller's units, the Jacobian :math:`-\log x_j` included); log-determinant
  :math:`-\sum_{j\ \mathrm{logged}} \log x_j`. The map is onto the real line, so the model
  stays normalised on the positive half-line and its draws stay positive; a row with a value
  ≤ 0 in a logged column has density 0 (log-density −inf). Positive quantities that span
  decades (concentrations, sizes, counts plus noise) become near-symmetric while clusters stay
  clusters, unlike marginal Gaussianisation, which also flattens a multimodal column.
- **Standardisation**, u = (x − μ)/σ per column: log-determinant :math:`-\sum_j \log \sigma_j`.
- **Marginal Gaussianisation** (:class:`MarginalGaussianizer`, ``kind="gaussianize"``, or
  :class:`QuantileGaussianizer`, ``kind="quantile"``): each standardised column through its
  own distribution function F_j (a kernel one, or a piecewise-linear one through quantiles
  with exponential tails) and the normal quantile,
  :math:`z_j = \Phi^{-1}(F_j(u_j))`, with log-derivative :math:`\log f_j(u_j) - \log
  \varphi(z_j)`. Skewed, heavy-tailed, bounded or multimodal columns come out near N(0, 1),
  so a model of the joint starts from the right marginals.
- **Whitening** (:class:`Whitening`): :math:`w = L^{-1}(z - m)` with :math:`LL^\top` the
  shrunk covariance of z (Ledoit & Wolf 2004); log-determinant :math:`-\sum_j \log L_{jj}`.
  With a standard normal base and the identity flow, the model is then the Gaussian copula
  with the fitted marginals: the best Gaussian in that space.

Each map is fitted in float64 with numpy; its state is a dict of arrays (saved with the
estimator, loadable with ``torch.load(weights_only=True)``).

Only rows with a continuous density in every direction can be mapped: :func:`check_spread`
refuses, with a :class:`ValueError` naming the cause, rows that are all identical, a column
with a single value, and (with more rows than columns) columns that are exactly linearly
dependent, for instance two identical columns, after the logarithms and standardisation. Such
data lie on a point or a hyperplane, where a density in the full space is unbounded; the error
comes before anything is fitted.

Example:
    >>> import numpy as np
    >>> from cnflow.preprocessing import TabularPreprocessor
    >>> X = np.random.RandomState(0).lognormal(size=(200, 3))
    >>> pre = TabularPreprocessor("gaussianize").fit(X)
    >>> W, logdet = pre.transform(X)
    >>> np.allclose(pre.inverse_transform(W), X)
    True
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import special
from sklearn.covariance import LedoitWolf

__all__ = ["MarginalGaussianizer", "QuantileGaussianizer", "Whitening", "TabularPreprocessor",
           "PREPROCESSINGS", "CONTEXT_SCALINGS", "TargetContextPreprocessor", "check_spread",
           "choose_preprocessing", "log_columns"]

#: The preprocessing choices of :class:`TabularPreprocessor` (and of the estimators).
PREPROCESSINGS = ("standardize", "whiten", "log", "gaussianize", "quantile")
#: How :class:`TargetContextPreprocessor` standardises a conditional density's features:
#: per column, or by one mean and scale for all of them.
CONTEXT_SCALINGS = ("standardize", "global")

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_phi(z: np.ndarray) -> np.ndarray:
    return -0.5 * z * z - _LOG_SQRT_2PI


def _columns(indices: np.ndarray) -> str:
    """ "column 2" or "columns 0, 3" (0-based)."""
    indices = [int(i) for i in np.flatnonzero(indices)] if indices.dtype == bool \
        else [int(i) for i in indices]
    label = "column" if len(indices) == 1 else "columns"
    return f"{label} {', '.join(map(str, indices))}"


#: Columns are dependent when the rows' spread across some direction is below this fraction
#: of their largest spread (standardised columns): far below any measurement's precision,
#: far above float64 rounding.
_RANK_TOLERANCE = 1e-9


def check_spread(X: np.ndarray, name: str = "X") -> None:
    r"""A :class:`ValueError` unless the rows of ``X`` can have a density in every direction.

    Three cases are refused (with two rows or more; a single row is left to the caller):
    all rows identical; a column with one value (a point mass in that direction); and, with
    more rows than columns, columns that are linearly dependent, some column an affine
    function :math:`x_k = a + \sum_{j \ne k} b_j x_j` of the others (two identical columns,
    or one a multiple of another), judged by the rank of the centred and standardised rows
    (a rank-revealing QR; a spread below 1e-9 of the largest counts as none, so dependence up
    to float64 rounding is caught). The columns named are those that depend on earlier
    ones. With no more rows than columns the rows always span fewer directions than there
    are columns; whitening's shrinkage copes with that, so it is not refused.

    Arguments:
        X: the rows, (n_samples, n_features), finite.
        name: what to call X in the error ("X", "y", …).

    Raises:
        ValueError: naming the case and the columns (0-based).

    Example:
        >>> import numpy as np
        >>> from cnflow.preprocessing import check_spread
        >>> X = np.random.default_rng(0).normal(size=(10, 2))
        >>> check_spread(X)
        >>> check_spread(np.c_[X, X[:, 0] - X[:, 1]])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the columns of X are linearly dependent (rank 2 for 3 columns; column 2 ...
    """
    from scipy.linalg import qr

    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    if n < 2 or d == 0:
        return
    constant = (X == X[0]).all(axis=0)
    if constant.all():
        raise ValueError(f"all {n} rows of {name} are identical: a density needs rows that "
                         "differ; add distinct rows or noise")
    if constant.any():
        columns = np.flatnonzero(constant)
        values = ", ".join(f"{X[0, j]:g}" for j in columns)
        if len(columns) == 1:
            raise ValueError(f"{name} has a constant column (column {columns[0]}, every value "
                             f"{values}): its density is not continuous; drop it or add noise")
        raise ValueError(f"{name} has constant columns ({_columns(columns)}, values {values}): "
                         "their density is not continuous; drop them or add noise")
    if n <= d:
        return
    U = X - X.mean(axis=0)
    U /= np.sqrt((U * U).mean(axis=0))
    pivoted = np.abs(np.diag(qr(U, mode="r", pivoting=True)[0]))
    rank = int((pivoted > _RANK_TOLERANCE * pivoted[0]).sum())
    if rank < d:
        # each column's distance from the span of the columns before it, in order: the
        # smallest are the columns that depend on earlier ones
        in_order = np.abs(np.diag(qr(U, mode="r")[0]))
        dependent = np.sort(np.argsort(in_order, kind="stable")[:d - rank])
        verb = "is an affine function" if len(dependent) == 1 else "are affine functions"
        raise ValueError(f"the columns of {name} are linearly dependent (rank {rank} for {d} "
                         f"columns; {_columns(dependent)} {verb} of the others): the rows lie "
                         "on a hyperplane, where no density exists; drop the dependent columns "
                         "or add noise")


def resolution(column: np.ndarray) -> float:
    """The recording step of ``column``: the 10th percentile of the gaps between its sorted
    distinct values (0 if it has one value). For integer or rounded columns every gap is a
    multiple of the step, so this is at least the step; for continuous data it is about a
    tenth of the mean spacing, far below any useful bandwidth."""
    return _sorted_resolution(np.sort(np.asarray(column).ravel()))


def _sorted_resolution(ordered: np.ndarray) -> float:
    """:func:`resolution` of values already sorted."""
    gaps = np.diff(ordered)
    gaps = gaps[gaps > 0]
    return float(np.quantile(gaps, 0.1)) if len(gaps) else 0.0


class MarginalGaussianizer:
    r"""Per-column Gaussianisation by a smoothed kernel distribution function.

    For a standardised column u with centres :math:`c_1..c_m` (the training values, or m
    evenly spaced empirical quantiles when there are more rows than ``max_centres``), the
    marginal density is a kernel density mixed with a standard normal,

    .. math:: f(u) = (1 - w)\,\frac{1}{m h}\sum_{i=1}^m \varphi\!\left(\frac{u - c_i}{h}\right)
        + w\,\varphi(u),

    F its distribution function, and the map is :math:`z = \Phi^{-1}(F(u))` with
    :math:`\log|dz/du| = \log f(u) - \log\varphi(z)`. The normal share w keeps the tails
    Gaussian (a point beyond the training range is not given a vanishing density), and w = 1
    is the identity. The bandwidth h and w are chosen per column by leave-one-out likelihood
    over a grid; h never goes below the column's recording step (the smallest gap between its
    distinct values), so rounded or integer columns get a smooth density, not spikes on their
    grid.

    Arguments:
        max_centres: the most kernel centres a column keeps (memory and time of scoring grow
            with it).
        max_cv_rows: the most rows a column's leave-one-out search scores.
        random_state: seed for the rows the search scores when there are more than
            ``max_cv_rows``.
    """

    bandwidths = np.logspace(-2.5, 0.0, 16)
    normal_shares = (0.01, 0.03, 0.1, 0.3, 1.0)

    def __init__(self, max_centres: int = 1000, max_cv_rows: int = 1000,
                 random_state: int = 0) -> None:
        self.max_centres = max_centres
        self.max_cv_rows = max_cv_rows
        self.random_state = random_state

    # ------------------------------------------------------------ fitting
    def fit(self, U: np.ndarray) -> MarginalGaussianizer:
        """Choose each column's centres, bandwidth and normal share on standardised rows U."""
        U = np.asarray(U, dtype=np.float64)
        n, d = U.shape
        rng = np.random.RandomState(self.random_state)
        m = min(n, self.max_centres)
        centres = np.empty((d, m))
        self.bandwidth_ = np.ones(d)
        self.normal_share_ = np.ones(d)
        # with more rows than centres, the centres are a random subset and the search scores
        # other rows (held out); otherwise every row is a centre, scored leave-one-out
        subset = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
        others = np.setdiff1d(np.arange(n), subset)
        if len(others) > self.max_cv_rows:
            others = rng.choice(others, self.max_cv_rows, replace=False)
        if m == n and n > self.max_cv_rows:
            scored = rng.choice(n, self.max_cv_rows, replace=False)
        for j in range(d):
            centres[j] = np.sort(U[subset, j])
            if m < n:
                rows, own = U[others, j], None
            elif n > self.max_cv_rows:
                rows, own = U[scored, j], True
            else:
                rows, own = U[:, j], True
            self.bandwidth_[j], self.normal_share_[j] = self._select(
                rows, centres[j], resolution(U[:, j]), leave_one_out=own is not None)
        self.centres_ = centres
        return self

    def _select(self, rows: np.ndarray, centres: np.ndarray, step: float,
                leave_one_out: bool) -> tuple[float, float]:
        """(h, w) of the best mean leave-one-out log-likelihood on ``rows``."""
        normal = np.exp(_log_phi(rows))
        best = (np.mean(_log_phi(rows)), 1.0, 1.0)  # w = 1: the identity
        d2 = (rows[:, None] - centres[None, :]) ** 2
        for h in self.bandwidths:
            if h < step or h < 1e-12:
                continue
            kernel = np.exp(-0.5 * d2 / h ** 2) / (h * math.sqrt(2 * math.pi))
            total = kernel.sum(1)
            if leave_one_out:  # each row is a centre: drop its own kernel
                total = (total - 1 / (h * math.sqrt(2 * math.pi))) / (len(centres) - 1)
            else:
                total = total / len(centres)
            for w in self.normal_shares[:-1]:
                ll = np.mean(np.log((1 - w) * np.maximum(total, 0) + w * normal))
                if ll > best[0]:
                    best = (ll, float(h), float(w))
        return best[1], best[2]

    # ------------------------------------------------------------ the map
    def _log_cdfs(self, u: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log F(u), log(1 − F(u)) and log f(u) for column j; sums of plain normal
        probabilities, with a log-space pass for the rows in the far tails."""
        h, w, c = self.bandwidth_[j], self.normal_share_[j], self.centres_[j]
        s = (u[:, None] - c[None, :]) / h
        lower = special.ndtr(s)
        F = (1 - w) * lower.mean(1) + w * special.ndtr(u)
        S = (1 - w) * (1 - lower).mean(1) + w * special.ndtr(-u)
        f = (1 - w) * np.exp(_log_phi(s)).mean(1) / h + w * np.exp(_log_phi(u))
        with np.errstate(divide="ignore"):
            log_F, log_S, log_f = np.log(F), np.log(S), np.log(f)
        tail = (np.minimum(F, S) < 1e-8) | (f < 1e-200)
        if tail.any():
            st, ut = s[tail], u[tail]
            log_m, log_kw, log_w = math.log(len(c)), math.log1p(-w), math.log(w)
            log_F[tail] = np.logaddexp(
                log_kw + special.logsumexp(special.log_ndtr(st), 1) - log_m,
                log_w + special.log_ndtr(ut))
            log_S[tail] = np.logaddexp(
                log_kw + special.logsumexp(special.log_ndtr(-st), 1) - log_m,
                log_w + special.log_ndtr(-ut))
            log_f[tail] = np.logaddexp(
                log_kw + special.logsumexp(_log_phi(st), 1) - log_m - math.log(h),
                log_w + _log_phi(ut))
        return log_F, log_S, log_f

    def transform(self, U: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """Z = Φ⁻¹(F(U)) column by column, and log|det ∂Z/∂U| of each row, shape (n,)."""
        U = np.asarray(U, dtype=np.float64)
        Z = U.copy()
        logdet = np.zeros(len(U))
        for j in np.flatnonzero(self.normal_share_ < 1):
            for start in range(0, len(U), chunk):
                u = U[start:start + chunk, j]
                log_F, log_S, log_f = self._log_cdfs(u, j)
                z = np.where(log_F < log_S, special.ndtri_exp(np.minimum(log_F, 0)),
                             -special.ndtri_exp(np.minimum(log_S, 0)))
                Z[start:start + chunk, j] = z
                logdet[start:start + chunk] += log_f - _log_phi(z)
        return Z, logdet

    def inverse_transform(self, Z: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """U with Φ⁻¹(F(U)) = Z, by bisection on each column's monotone map (to 1e-12)."""
        Z = np.asarray(Z, dtype=np.float64)
        U = Z.copy()
        for j in np.flatnonzero(self.normal_share_ < 1):
            c = self.centres_[j]
            for start in range(0, len(Z), chunk):
                z = Z[start:start + chunk, j]
                # K(u) lies between Φ((u − c_max)/h) and Φ((u − c_min)/h), so F(lo) ≤ Φ(z)
                # ≤ F(hi): the root is bracketed
                h = self.bandwidth_[j]
                lo = np.minimum(z, c[0] + h * z) - 1e-9
                hi = np.maximum(z, c[-1] + h * z) + 1e-9
                # compare on the side where the probabilities are accurate: F(u) = Φ(z) below
                # the median, 1 − F(u) = Φ(−z) above it
                upper = z > 0
                target = special.log_ndtr(np.where(upper, -z, z))
                for _ in range(200):
                    mid = 0.5 * (lo + hi)
                    log_F, log_S, _ = self._log_cdfs(mid, j)
                    below = np.where(upper, log_S > target, log_F < target)
                    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
                    if np.max(hi - lo) < 1e-12 * max(1.0, float(np.max(np.abs(mid)))):
                        break
                U[start:start + chunk, j] = 0.5 * (lo + hi)
        return U

    # ------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray]:
        return {"centres": self.centres_, "bandwidth": self.bandwidth_,
                "normal_share": self.normal_share_}

    def load_state(self, state: dict) -> MarginalGaussianizer:
        self.centres_ = np.asarray(state["centres"], dtype=np.float64)
        self.bandwidth_ = np.asarray(state["bandwidth"], dtype=np.float64)
        self.normal_share_ = np.asarray(state["normal_share"], dtype=np.float64)
        return self


class QuantileGaussianizer:
    r"""Per-column Gaussianisation by a piecewise-linear distribution function with
    exponential tails: fast to apply to every row of a large table, exact box edges on
    dequantised columns.

    For a standardised column with training values of which K + 1 quantiles (training values
    themselves, at levels k/K) are the knots :math:`x_0 < \dots < x_K`, and a last knot
    :math:`x_{K+1} = x_K + \delta` (δ the column's recording step, :func:`resolution`), the
    distribution function is

    .. math:: F(u) = \tau + (1 - 2\tau)\,\hat F(u) \text{ on } [x_0, x_{K+1}],\qquad
        F(u) = \tau e^{(u - x_0)/s_L} \text{ below},\qquad
        1 - F(u) = \tau e^{-(u - x_{K+1})/s_R} \text{ above},

    with :math:`\hat F` linear between the knots through the share of training values below
    each knot (0 at :math:`x_0`, 1 at :math:`x_{K+1}`), τ = 1/(n + 1) the chance that a new
    value lies beyond either end, and :math:`s_L, s_R` the mean excess of the outer 1 % of
    the values over their 1st and 99th percentiles (an exponential tail's maximum-likelihood
    scale; at least 0.05). The map is :math:`z = \Phi^{-1}(F(u))` with
    :math:`\log|dz/du| = \log f(u) - \log\varphi(z)`, f the piecewise-constant density inside
    and the exponential one in the tails. K is chosen per column among
    :attr:`knot_counts` (8 to 8,192, at most a quarter of the values) by the log-likelihood
    of a fifth of the values held out (seeded), then the knots are placed on all values.
    Many knots are chosen where values repeat: a quantity of a unit copied onto each of its
    rows (a state's income on every row of that state and year), dequantised, is a few
    hundred narrow boxes, which a few knots per box resolve and a smooth density cannot.

    On a dequantised integer column the density is flat across each box [k, k + 1), as the
    data are, where a kernel distribution function (:class:`MarginalGaussianizer`) smooths
    the box edges into the neighbouring gaps; a value beyond the training range costs the
    exponential tail's log-density, not a Gaussian's. Applying it is a search among the
    knots, O(log K) a value, where the kernel map costs O(number of centres).

    Arguments:
        random_state: seed of the held-out fifth that chooses K.

    Example:
        >>> import numpy as np
        >>> U = np.random.RandomState(0).standard_exponential((5000, 2))
        >>> g = QuantileGaussianizer().fit(U)
        >>> Z, logdet = g.transform(U)
        >>> bool(np.allclose(g.inverse_transform(Z), U))
        True
    """

    knot_counts = (8, 32, 128, 512, 2048, 8192)
    tail_share = 0.01
    min_tail_scale = 0.05

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = random_state

    # ------------------------------------------------------------ fitting
    @staticmethod
    def _knots(ordered: np.ndarray, k: int, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Knots (the sorted values ``ordered`` at levels j/k, then max + step) and the share
        of the values below each; both strictly increasing."""
        n = len(ordered)
        at = ordered[np.floor(np.linspace(0, n - 1, min(k, n - 1) + 1)).astype(int)]
        knots = np.append(np.unique(at), ordered[-1] + step)
        levels = np.searchsorted(ordered, knots[:-1], side="left") / n
        return knots, np.append(levels, 1.0)

    @classmethod
    def _tail_scales(cls, ordered: np.ndarray) -> tuple[float, float]:
        """The mean excess of the outer 1 % of the sorted values ``ordered`` over the next
        value in, at each end (at least :attr:`min_tail_scale`)."""
        m = max(1, int(math.ceil(cls.tail_share * len(ordered))))
        left = ordered[m] - ordered[:m].mean() if len(ordered) > m else 0.0
        right = ordered[-m:].mean() - ordered[-m - 1] if len(ordered) > m else 0.0
        return max(left, cls.min_tail_scale), max(right, cls.min_tail_scale)

    def fit(self, U: np.ndarray) -> QuantileGaussianizer:
        """Choose each column's knots and tails on standardised rows U (n, d); a column with
        fewer than two distinct values is left as it is."""
        U = np.asarray(U, dtype=np.float64)
        n, d = U.shape
        rng = np.random.RandomState(self.random_state)
        held = np.zeros(n, dtype=bool)
        held[rng.permutation(n)[:n // 5]] = True
        columns = []
        for j in range(d):
            ordered = np.sort(U[:, j])
            if ordered[-1] == ordered[0]:  # fewer than two distinct values
                columns.append(None)
                continue
            step = max(_sorted_resolution(ordered), 1e-12)
            best_k, best = self.knot_counts[0], -np.inf
            train, test = np.sort(U[~held, j]), U[held, j]
            if train[-1] > train[0] and len(test):
                tails = self._tail_scales(train)
                for k in self.knot_counts:
                    if k > max(len(train) // 4, self.knot_counts[0]):
                        break
                    knots, levels = self._knots(train, k, step)
                    score = np.mean(self._pieces(test, knots, levels, tails,
                                                 1.0 / (len(train) + 1))[2])
                    if score > best:
                        best_k, best = k, score
            columns.append((*self._knots(ordered, best_k, step), self._tail_scales(ordered)))
        width = max((len(c[0]) for c in columns if c is not None), default=2)
        self.knots_ = np.full((d, width), np.nan)
        self.levels_ = np.full((d, width), np.nan)
        self.tails_ = np.ones((d, 2))
        self.sizes_ = np.zeros(d, dtype=np.int64)   # 0: the column is left as it is
        for j, column in enumerate(columns):
            if column is not None:
                knots, levels, tails = column
                self.sizes_[j] = len(knots)
                self.knots_[j, :len(knots)], self.levels_[j, :len(knots)] = knots, levels
                self.tails_[j] = tails
        self.tau_ = np.full(d, 1.0 / (n + 1))
        return self

    # ------------------------------------------------------------ the map
    @staticmethod
    def _pieces(u: np.ndarray, knots: np.ndarray, levels: np.ndarray, tails, tau: float):
        """Per value: log F, log(1 − F) and log f (see the class docstring)."""
        s_left, s_right = tails
        seg = np.clip(np.searchsorted(knots, u, side="right") - 1, 0, len(knots) - 2)
        width = knots[seg + 1] - knots[seg]
        slope = (levels[seg + 1] - levels[seg]) / width
        inner = levels[seg] + slope * (u - knots[seg])
        outer = (levels[seg + 1] - inner)  # 1 − F̂, accurate near the top
        log_tau = math.log(tau)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_F = np.log(tau + (1 - 2 * tau) * inner)
            log_S = np.log(tau + (1 - 2 * tau) * (1 - levels[seg + 1] + outer))
            log_f = np.log1p(-2 * tau) + np.log(slope)
        below, above = u < knots[0], u > knots[-1]
        log_F = np.where(below, log_tau + (u - knots[0]) / s_left, log_F)
        log_S = np.where(above, log_tau - (u - knots[-1]) / s_right, log_S)
        log_f = np.where(below, log_tau - math.log(s_left) + (u - knots[0]) / s_left, log_f)
        log_f = np.where(above, log_tau - math.log(s_right) - (u - knots[-1]) / s_right, log_f)
        with np.errstate(divide="ignore"):
            log_S = np.where(below, np.log1p(-np.exp(np.minimum(log_F, 0.0))), log_S)
            log_F = np.where(above, np.log1p(-np.exp(np.minimum(log_S, 0.0))), log_F)
        return log_F, log_S, log_f

    def _column(self, j: int):
        size = self.sizes_[j]
        return self.knots_[j, :size], self.levels_[j, :size], self.tails_[j], self.tau_[j]

    def transform(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Z = Φ⁻¹(F(U)) column by column, and log|det ∂Z/∂U| of each row, shape (n,)."""
        U = np.asarray(U, dtype=np.float64)
        Z = U.copy()
        logdet = np.zeros(len(U))
        for j in np.flatnonzero(self.sizes_ > 0):
            log_F, log_S, log_f = self._pieces(U[:, j], *self._column(j))
            z = np.where(log_F < log_S, special.ndtri_exp(np.minimum(log_F, 0.0)),
                         -special.ndtri_exp(np.minimum(log_S, 0.0)))
            Z[:, j] = z
            logdet += log_f - _log_phi(z)
        return Z, logdet

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """U with Φ⁻¹(F(U)) = Z: the tails and the linear pieces inverted in closed form."""
        Z = np.asarray(Z, dtype=np.float64)
        U = Z.copy()
        for j in np.flatnonzero(self.sizes_ > 0):
            knots, levels, (s_left, s_right), tau = self._column(j)
            z = Z[:, j]
            log_F, log_S = special.log_ndtr(z), special.log_ndtr(-z)
            log_tau = math.log(tau)
            inner = np.where(z <= 0, (np.exp(log_F) - tau) / (1 - 2 * tau),
                             1 - (np.exp(log_S) - tau) / (1 - 2 * tau))
            u = np.interp(np.clip(inner, 0.0, 1.0), levels, knots)
            u = np.where(log_F < log_tau, knots[0] + s_left * (log_F - log_tau), u)
            u = np.where(log_S < log_tau, knots[-1] - s_right * (log_S - log_tau), u)
            U[:, j] = u
        return U

    # ------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray]:
        return {"knots": self.knots_, "levels": self.levels_, "tails": self.tails_,
                "sizes": self.sizes_, "tau": self.tau_}

    def load_state(self, state: dict) -> QuantileGaussianizer:
        self.knots_ = np.asarray(state["knots"], dtype=np.float64)
        self.levels_ = np.asarray(state["levels"], dtype=np.float64)
        self.tails_ = np.asarray(state["tails"], dtype=np.float64)
        self.sizes_ = np.asarray(state["sizes"], dtype=np.int64)
        self.tau_ = np.asarray(state["tau"], dtype=np.float64)
        return self


class Whitening:
    r"""w = L⁻¹(z − m), with m the mean and LLᵀ the Ledoit–Wolf shrunk covariance of z.

    The shrinkage keeps L well conditioned with few rows or collinear columns, so the map
    and its log-determinant :math:`-\sum_j \log L_{jj}` are finite.

    References:
        Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance
        matrices".
    """

    def fit(self, Z: np.ndarray) -> Whitening:
        Z = np.asarray(Z, dtype=np.float64)
        self.mean_ = Z.mean(0)
        cov = LedoitWolf(assume_centered=False).fit(Z).covariance_ if len(Z) > 1 else (
            np.eye(Z.shape[1]))
        self.cholesky_ = np.linalg.cholesky(cov)
        return self

    def transform(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.linalg import solve_triangular

        W = solve_triangular(self.cholesky_, (np.asarray(Z) - self.mean_).T, lower=True).T
        logdet = np.full(len(W), -np.log(np.diag(self.cholesky_)).sum())
        return W, logdet

    def inverse_transform(self, W: np.ndarray) -> np.ndarray:
        return np.asarray(W) @ self.cholesky_.T + self.mean_

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "cholesky": self.cholesky_}

    def load_state(self, state: dict) -> Whitening:
        self.mean_ = np.asarray(state["mean"], dtype=np.float64)
        self.cholesky_ = np.asarray(state["cholesky"], dtype=np.float64)
        return self


#: The per-column Gaussianisations of :class:`TabularPreprocessor`, by ``kind``.
_MARGINAL_MAPS = {"gaussianize": MarginalGaussianizer, "quantile": QuantileGaussianizer}


class TabularPreprocessor:
    r"""Standardisation, then (by ``kind``) marginal Gaussianisation and whitening.

    ``kind``: ``"standardize"`` (per-column (x − μ)/σ only), ``"whiten"`` (then the full
    covariance), ``"log"`` (logarithms of the positive, right-skewed columns, then
    standardise and whiten), ``"gaussianize"`` (standardise, Gaussianise each column by a
    kernel distribution function (:class:`MarginalGaussianizer`), whiten) or ``"quantile"``
    (the same by a piecewise-linear one with exponential tails
    (:class:`QuantileGaussianizer`), fast on many rows).

    :meth:`transform` returns the mapped rows and :math:`\log|\det \partial g/\partial x|` of
    each, so that log p(x) = log q(g(x)) + logdet. :meth:`fit` refuses (a ValueError, before
    any fitted attribute is set) rows without a density in every direction: see
    :func:`check_spread`.
    """

    def __init__(self, kind: str = "gaussianize", random_state: int = 0) -> None:
        if kind not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got "
                             f"{kind!r}")
        self.kind = kind
        self.random_state = random_state

    def fit(self, X: np.ndarray, *, name: str = "X",
            check: bool = True) -> TabularPreprocessor:
        """Fit the maps to the rows X (n_samples, n_features).

        Arguments:
            X: the rows.
            name: what to call X in errors.
            check: refuse rows without a density in every direction (default). False for
                rows that are only conditioned on, such as a conditional density's
                features: a constant column is then centred and left at scale 1.

        Raises:
            ValueError: with ``check``, if the rows have no density in every direction
                (identical rows, a constant column, linearly dependent columns, after the
                logarithms with ``kind="log"``; see :func:`check_spread`). Nothing is
                fitted then.
        """
        X = np.asarray(X, dtype=np.float64)
        if check:
            check_spread(X, name)
        logged = log_columns(X) if self.kind == "log" else None
        if logged is not None and logged.any():
            X, _ = self._logged(X, logged)
            if check:
                check_spread(X, f"{name} (with {_columns(logged)} logged)")
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)  # a constant column: unchecked, or one row
        U = (X - mean) / scale
        marginals = whitening = None
        if self.kind in _MARGINAL_MAPS:
            marginals = _MARGINAL_MAPS[self.kind](random_state=self.random_state).fit(U)
            U, _ = marginals.transform(U)
        if self.kind in ("whiten", "log", *_MARGINAL_MAPS):
            whitening = Whitening().fit(U)
        self.log_columns_, self.mean_, self.scale_ = logged, mean, scale
        self.marginals_, self.whitening_ = marginals, whitening
        return self

    def _logged(self, X: np.ndarray, cols: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """X with its logged columns (``cols``, default the fitted ones) replaced by their
        logarithms, and the log-determinant of that map per row (−inf where a logged column
        holds a value ≤ 0, whose row is then given a finite placeholder)."""
        logdet = np.zeros(len(X))
        cols = self.log_columns_ if cols is None else cols
        if cols is None or not cols.any():
            return X, logdet
        values = X[:, cols]
        outside = (values <= 0).any(axis=1)
        logs = np.log(np.where(values > 0, values, 1.0))
        logdet = np.where(outside, -np.inf, -logs.sum(axis=1))
        X = X.copy()
        X[:, cols] = logs
        return X, logdet

    def transform(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        X, log_logdet = self._logged(X)
        U = (X - self.mean_) / self.scale_
        logdet = log_logdet - np.log(self.scale_).sum()
        if self.marginals_ is not None:
            U, extra = self.marginals_.transform(U)
            logdet = logdet + extra
        if self.whitening_ is not None:
            U, extra = self.whitening_.transform(U)
            logdet = logdet + extra
        return U, logdet

    def inverse_transform(self, W: np.ndarray) -> np.ndarray:
        U = np.asarray(W, dtype=np.float64)
        if self.whitening_ is not None:
            U = self.whitening_.inverse_transform(U)
        if self.marginals_ is not None:
            U = self.marginals_.inverse_transform(U)
        X = U * self.scale_ + self.mean_
        if self.log_columns_ is not None and self.log_columns_.any():
            X[:, self.log_columns_] = np.exp(X[:, self.log_columns_])
        return X

    def state(self) -> dict:
        state = {"kind": self.kind, "mean": self.mean_, "scale": self.scale_}
        if self.log_columns_ is not None:
            state["log_columns"] = self.log_columns_
        if self.marginals_ is not None:
            state["marginals"] = self.marginals_.state()
        if self.whitening_ is not None:
            state["whitening"] = self.whitening_.state()
        return state

    @classmethod
    def from_state(cls, state: dict) -> TabularPreprocessor:
        pre = cls(state["kind"])
        pre.mean_ = np.asarray(state["mean"], dtype=np.float64)
        pre.scale_ = np.asarray(state["scale"], dtype=np.float64)
        pre.log_columns_ = (np.asarray(state["log_columns"], dtype=bool)
                            if "log_columns" in state else None)
        pre.marginals_ = (_MARGINAL_MAPS[state["kind"]]().load_state(state["marginals"])
                          if "marginals" in state else None)
        pre.whitening_ = (Whitening().load_state(state["whitening"])
                          if "whitening" in state else None)
        return pre


def log_columns(X: np.ndarray) -> np.ndarray:
    r"""The columns of X to take logarithms of: those positive in every row whose logarithm
    has the higher Gaussian likelihood in X's units,
    :math:`-\tfrac12 \log \operatorname{var}(\log x_j) - \overline{\log x_j} >
    -\tfrac12 \log \operatorname{var}(x_j)` (the maximised normal log-likelihood per row, up to
    the same constant, with the Jacobian of the logarithm); a boolean mask (n_features,)."""
    X = np.asarray(X, dtype=np.float64)
    positive = (X > 0).all(axis=0) & (X.var(axis=0) > 0)
    logs = np.log(np.where(positive, X, 1.0))
    log_var = logs.var(axis=0)
    with np.errstate(divide="ignore"):
        gain = (-0.5 * np.log(np.where(positive, log_var, 1.0)) - logs.mean(axis=0)
                + 0.5 * np.log(np.where(positive, X.var(axis=0), 1.0)))
    return positive & (log_var > 0) & (gain > 0)


def choose_preprocessing(X: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                         kinds: tuple[str, ...] = ("whiten", "log", "gaussianize"),
                         components: tuple[int, ...] = (1, 2, 4, 8, 16),
                         random_state: int = 0, deadline: float | None = None,
                         name: str = "X") -> tuple[str, dict[str, float]]:
    r"""The preprocessing under which a flexible model generalises best, judged on held-out
    rows.

    For each kind, the map is fitted on ``X[train_rows]`` only, a full-covariance Gaussian
    mixture with each of ``components`` is fitted to the mapped training rows, and the held-out
    rows are scored in the caller's units (the map's log-determinant added back). The first
    kind is kept unless another one's best mixture beats its best by more than two standard
    errors of the paired per-row difference. Gaussianised marginals help columns that are
    skewed, bounded or dequantised, but can bend clusters that a linear map leaves simple; the
    mixture, fitted in seconds, is a cheap stand-in for the flow that follows, and the margin
    keeps the simpler map where the two are close.

    The numbers of components are tried in increasing order, every kind at each before any at
    the next; a kind's search ends at the first number that scores below its best so far.
    ``deadline`` (a ``time.perf_counter()`` value) ends every kind's search together: no
    larger round is started that, at the last round's time scaled by the ratio of the
    numbers of components, would end after it (the smallest is always tried), so the kinds
    are compared at the same sizes of mixture.

    ``X`` is checked first, all rows together (:func:`check_spread`; ``name``: what to call
    it in errors), then each map is fitted on the training rows.

    Returns:
        ``(kind, scores)``: the chosen kind and each kind's best held-out mean log-likelihood.

    Raises:
        ValueError: if X, or its training rows, have no density in every direction.
    """
    from .flows.base_density import ends_after_deadline, select_gaussian_mixture

    X = np.asarray(X, dtype=np.float64)
    check_spread(X, name)
    mapped = {}
    for kind in kinds:
        pre = TabularPreprocessor(kind, random_state=random_state).fit(
            X[train_rows], name=f"the training rows of {name}")
        W_val, logdet = pre.transform(X[val_rows])
        mapped[kind] = pre.transform(X[train_rows])[0], W_val, logdet
    # the mixtures grow in step across the kinds (every kind is tried at each number of
    # components before any at the next), so a deadline ends every kind's search at the
    # same size: a kind searched first would otherwise have the time to a larger mixture
    per_row: dict[str, np.ndarray] = {}
    best_score = dict.fromkeys(kinds, -np.inf)
    searching = list(kinds)
    last_seconds, last_k = 0.0, 1
    for k in sorted(components):
        if not searching or (per_row and ends_after_deadline(deadline, time.perf_counter,
                                                             last_seconds, last_k, k)):
            break
        started = time.perf_counter()
        for kind in list(searching):
            W_train, W_val, logdet = mapped[kind]
            try:
                mixture, scores = select_gaussian_mixture(W_train, W_val, (k,),
                                                          random_state=random_state)
            except ValueError:  # too few distinct rows for k components
                searching.remove(kind)
                continue
            if scores[k] < best_score[kind]:  # larger mixtures fit this kind worse
                searching.remove(kind)
                continue
            best_score[kind] = scores[k]
            per_row[kind] = mixture.score_samples(W_val) + logdet
        last_seconds, last_k = time.perf_counter() - started, k
    if not per_row:
        raise ValueError(f"no Gaussian mixture could be fitted to the training rows of {name}")
    kinds = tuple(kind for kind in kinds if kind in per_row)
    chosen = kinds[0]
    for kind in kinds[1:]:
        gain = per_row[kind] - per_row[chosen]
        if not np.isfinite(gain).all():
            if np.isfinite(per_row[kind]).all():
                chosen = kind
            continue
        if gain.mean() > 2 * gain.std() / math.sqrt(len(gain)):
            chosen = kind
    return chosen, {kind: float(rows.mean()) for kind, rows in per_row.items()}


class TargetContextPreprocessor:
    r"""The maps of a conditional density's rows [y, x]: ``kind`` for the targets y (see
    :class:`TabularPreprocessor`), standardisation for the context x.

    Only the targets' map enters the density, log p(y | x) = log q(g(y) | h(x)) +
    log|det ∂g/∂y|: :meth:`transform` returns the mapped rows [g(y), h(x)] and that
    log-determinant. The targets must have a density in every direction (see
    :func:`check_spread`; errors call them y); the context may hold constant or dependent
    columns, which a conditional density can ignore.

    ``context`` says how x is standardised: ``"standardize"`` (default), each column by its
    own mean and standard deviation; ``"global"``, every entry by one mean and one standard
    deviation, those of all the entries together, h(x) = (x − m)/s. The global map keeps the
    relative scale of the entries (the pixels of an image, read by an embedding network)
    and leaves a column with no spread (a pixel that is always 0) as it is but for the
    shift.

    Example:
        >>> import numpy as np
        >>> from cnflow.preprocessing import TargetContextPreprocessor
        >>> rows = np.random.default_rng(0).normal(size=(50, 3))   # y = column 0, x = 1, 2
        >>> pre = TargetContextPreprocessor(1, "standardize").fit(rows)
        >>> U, logdet = pre.transform(rows)
        >>> U.shape, logdet.shape
        ((50, 3), (50,))
    """

    def __init__(self, n_targets: int, kind: str = "whiten", random_state: int = 0,
                 context: str = "standardize") -> None:
        if context not in CONTEXT_SCALINGS:
            raise ValueError(f"context must be one of {', '.join(CONTEXT_SCALINGS)}, got "
                             f"{context!r}")
        self.n_targets = int(n_targets)
        self.context_scaling = context
        self.targets = TabularPreprocessor(kind, random_state=random_state)
        self.context = TabularPreprocessor("standardize", random_state=random_state)

    @property
    def kind(self) -> str:
        return self.targets.kind

    @property
    def mean_(self) -> np.ndarray:
        """The targets' column means."""
        return self.targets.mean_

    @property
    def scale_(self) -> np.ndarray:
        """The targets' column scales."""
        return self.targets.scale_

    def fit(self, rows: np.ndarray) -> TargetContextPreprocessor:
        rows = np.asarray(rows, dtype=np.float64)
        self.targets.fit(rows[:, :self.n_targets], name="y")
        features = rows[:, self.n_targets:]
        self.context.fit(features, check=False)
        if self.context_scaling == "global":  # one mean and scale for every entry
            scale = float(features.std()) if features.size else 0.0
            self.context.mean_ = np.full(features.shape[1], float(features.mean())
                                         if features.size else 0.0)
            self.context.scale_ = np.full(features.shape[1], scale if scale > 0 else 1.0)
        return self

    def transform(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.float64)
        U_y, logdet = self.targets.transform(rows[:, :self.n_targets])
        U_x, _ = self.context.transform(rows[:, self.n_targets:])
        return np.concatenate([U_y, U_x], axis=1), logdet

    def transform_context(self, X: np.ndarray) -> np.ndarray:
        """h(x) for context rows alone."""
        return self.context.transform(np.asarray(X, dtype=np.float64))[0]

    def inverse_transform(self, U_y: np.ndarray) -> np.ndarray:
        """The targets y = g⁻¹(u) of mapped targets."""
        return self.targets.inverse_transform(U_y)

    def state(self) -> dict:
        return {"kind": "target_context", "n_targets": self.n_targets,
                "context_scaling": self.context_scaling,
                "targets": self.targets.state(), "context": self.context.state()}

    @classmethod
    def from_state(cls, state: dict) -> TargetContextPreprocessor:
        pre = cls(int(state["n_targets"]),
                  context=state.get("context_scaling", "standardize"))
        pre.targets = TabularPreprocessor.from_state(state["targets"])
        pre.context = TabularPreprocessor.from_state(state["context"])
        return pre
