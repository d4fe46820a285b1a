r"""Base densities of a flow other than :math:`\mathcal{N}(0, I)`.

A flow's likelihood is the base density at the image of a row times the Jacobian factor,
:math:`\log p(x) = \log p_0(z) + \log|\det \partial z/\partial x|`, so any normalised density
with a tractable ``log_prob`` and ``sample`` can be the base. A Gaussian mixture fitted to the
(preprocessed) data is a strong one on small tables: with the flow at the identity the model
*is* that mixture, and training only has to correct what the mixture misses (the flows of
Papamakarios et al. 2021, §3.3, and the multimodal bases of Izmailov et al. 2020 use such
bases).

For flow matching, :meth:`GaussianMixtureBase.draw_coupled` pairs each data row with a base
draw from the component that row belongs to (drawn by its responsibilities), so paths stay
inside their cluster. The pairs' base marginal is :math:`\sum_k \bar r_k\,
\mathcal{N}(\mu_k, \Sigma_k)` with :math:`\bar r_k` the mean responsibility over the data,
which equals the mixture itself at a fixed point of EM (its M-step sets
:math:`\pi_k = \bar r_k`), so the regression's minimiser carries the data to the base, as
flow matching requires of any coupling with the right marginals (Tong et al. 2024; Liu et al.
2023).

Example:
    >>> import torch
    >>> from cnflow.flows.base_density import GaussianMixtureBase
    >>> base = GaussianMixtureBase(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0], [2.0]]),
    ...                            torch.ones(2, 1, 1))
    >>> base.log_prob(torch.zeros(3, 1)).shape, base.sample(4).shape
    (torch.Size([3]), torch.Size([4, 1]))

References:
    Papamakarios, Nalisnick, Rezende, Mohamed & Lakshminarayanan (2021), "Normalizing flows
    for probabilistic modeling and inference". Izmailov, Kirichenko, Finzi & Wilson (2020),
    "Semi-supervised learning with normalizing flows". Liu, Gong & Liu (2023), "Flow straight
    and fast: learning to generate and transfer data with rectified flow".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["GaussianMixtureBase", "ends_after_deadline", "fit_gaussian_mixture_base",
           "select_gaussian_mixture"]


class GaussianMixtureBase(nn.Module):
    r"""The density :math:`p_0(z) = \sum_{k=1}^K \pi_k\, \mathcal{N}(z; \mu_k, L_k L_k^\top)`.

    Its tensors are buffers (moved by ``.to()``, saved in ``state_dict``, not trained).

    Arguments:
        weights: :math:`\pi`, shape (K,), positive, summing to 1.
        means: :math:`\mu`, shape (K, D).
        covariances: :math:`\Sigma_k`, shape (K, D, D), symmetric positive definite.
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        super().__init__()
        weights, means, covariances = (torch.as_tensor(a) for a in (weights, means, covariances))
        if means.ndim != 2 or weights.shape != means.shape[:1] or covariances.shape != (
                *means.shape, means.shape[1]):
            raise ValueError(f"weights (K,), means (K, D) and covariances (K, D, D) disagree: "
                             f"{tuple(weights.shape)}, {tuple(means.shape)}, "
                             f"{tuple(covariances.shape)}")
        if not bool(torch.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError("the mixture weights must be positive and finite")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"the mixture weights must sum to 1, got {float(weights.sum())}")
        scale_tril, info = torch.linalg.cholesky_ex(covariances.double())
        if bool((info != 0).any()):
            raise ValueError("every covariance must be symmetric positive definite")
        dtype = means.dtype if means.is_floating_point() else torch.get_default_dtype()
        self.register_buffer("log_weights", weights.double().log().to(dtype))
        self.register_buffer("means", means.to(dtype))
        self.register_buffer("scale_tril", scale_tril.to(dtype))

    @classmethod
    def empty(cls, n_components: int, dim: int) -> GaussianMixtureBase:
        """A mixture of the given shape (equal weights, standard components), to be filled by
        ``load_state_dict``."""
        return cls(torch.full((n_components,), 1.0 / n_components),
                   torch.zeros(n_components, dim),
                   torch.eye(dim).expand(n_components, dim, dim))

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, dim={self.dim}"

    def component_log_probs(self, z: Tensor) -> Tensor:
        r""":math:`\log \pi_k + \log \mathcal{N}(z_i; \mu_k, \Sigma_k)`, shape (n, K)."""
        diff = (z.unsqueeze(0) - self.means.unsqueeze(1)).transpose(1, 2)  # (K, D, n)
        white = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        log_normal = (-0.5 * white.square().sum(1) - half_log_det.unsqueeze(1)
                      - 0.5 * self.dim * math.log(2 * math.pi))
        return (log_normal + self.log_weights.unsqueeze(1)).T

    def log_prob(self, z: Tensor) -> Tensor:
        """The log-density of each row, shape (n,); differentiable in z."""
        return torch.logsumexp(self.component_log_probs(z), dim=-1)

    def _draw(self, components: Tensor, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(len(components), self.dim, generator=generator,
                          dtype=self.means.dtype, device=self.means.device)
        return self.means[components] + (self.scale_tril[components]
                                         @ eps.unsqueeze(-1)).squeeze(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, shape (n, D): a component by the weights, then its Gaussian."""
        components = torch.multinomial(self.log_weights.exp(), n, replacement=True,
                                       generator=generator)
        return self._draw(components, generator)

    def draw_coupled(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One base draw per row of x from a component drawn by x's responsibilities (the
        coupling for flow matching, see the module's docstring); shape (n, D)."""
        with torch.no_grad():
            weights = torch.softmax(self.component_log_probs(x.detach()), dim=-1)
            components = torch.multinomial(weights, 1, generator=generator).squeeze(-1)
        return self._draw(components, generator)


def ends_after_deadline(deadline: float | None, clock: Callable[[], float],
                        last_seconds: float, last_k: int, k: int) -> bool:
    """Whether fitting mixtures of k components, started now (``clock()``), would end after
    ``deadline``, predicting their time as the last fit's (``last_seconds``, of ``last_k``
    components) times k / last_k: EM's cost per iteration is linear in the components.
    Without a deadline, never."""
    return deadline is not None and clock() + last_seconds * k / last_k > deadline


def select_gaussian_mixture(U_train: np.ndarray, U_val: np.ndarray | None = None,
                            components: tuple[int, ...] = (1, 2, 4, 8, 16),
                            reg_covar: float = 1e-3, n_init: int = 3, random_state: int = 0,
                            deadline: float | None = None):
    """The full-covariance Gaussian mixture (scikit-learn's) that best fits ``U_train``.

    The numbers of components in ``components`` (at most half the training rows) are tried in
    increasing order, each by EM from ``n_init`` k-means starts (a single start lands in a
    poor local optimum often enough to matter: on 64-D data from four clusters, one seed in
    four gave four components a held-out score 6 nats below the other seeds'); the search
    stops at the first number that scores below the best so far. The score is the mean
    log-likelihood of ``U_val``, or without held-out rows minus the BIC per row.
    ``reg_covar`` is added to each covariance's diagonal (the data are expected
    standardised or whitened). With ``deadline`` (a ``time.perf_counter()`` value), no larger
    mixture is tried that would end after it, predicting its time as the last one's scaled by
    the ratio of their numbers of components (EM's cost per iteration is linear in it; the
    smallest is always tried), so a fit's time budget also bounds the search.

    Returns:
        ``(mixture, scores)``: the best fitted ``GaussianMixture`` and each tried candidate's
        score, keyed by its number of components.
    """
    from sklearn.mixture import GaussianMixture

    U_train = np.asarray(U_train, dtype=np.float64)
    held_out = U_val is not None and len(U_val) > 0
    best, best_score, scores = None, -np.inf, {}
    last_seconds, last_k = 0.0, 1
    for k in sorted(components):
        if k > max(len(U_train) // 2, 1):
            break
        if best is not None and ends_after_deadline(deadline, time.perf_counter,
                                                    last_seconds, last_k, k):
            break
        started = time.perf_counter()
        try:
            mixture = GaussianMixture(k, covariance_type="full", reg_covar=reg_covar,
                                      n_init=n_init, random_state=random_state).fit(U_train)
        except ValueError:  # too few distinct rows for k components
            break
        last_seconds, last_k = time.perf_counter() - started, k
        if held_out:
            score = float(mixture.score(np.asarray(U_val, dtype=np.float64)))
        else:
            score = -float(mixture.bic(U_train)) / len(U_train)
        scores[k] = score
        if best is not None and score < best_score:
            break
        best, best_score = mixture, score
    if best is None:
        raise ValueError(f"no Gaussian mixture could be fitted to {len(U_train)} rows")
    return best, scores


def fit_gaussian_mixture_base(U_train: np.ndarray, U_val: np.ndarray | None = None,
                              components: tuple[int, ...] = (1, 2, 4, 8, 16),
                              reg_covar: float = 1e-3, n_init: int = 3,
                              random_state: int = 0, deadline: float | None = None
                              ) -> tuple[GaussianMixtureBase, dict]:
    """The Gaussian mixture of :func:`select_gaussian_mixture` as a base density (float64),
    with the candidates' scores."""
    best, scores = select_gaussian_mixture(U_train, U_val, components, reg_covar, n_init,
                                           random_state, deadline)
    weights = best.weights_ / best.weights_.sum()
    base = GaussianMixtureBase(torch.from_numpy(weights), torch.from_numpy(best.means_),
                               torch.from_numpy(best.covariances_))
    return base, scores
