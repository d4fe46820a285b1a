r"""Planar flows (Rezende & Mohamed 2015): K layers :math:`g(z) = z + \hat u\,h(w^\top z + b)`.

Each layer moves points along one direction :math:`\hat u` by an amount set by their position
along :math:`w`. By the matrix determinant lemma its Jacobian
:math:`I + h'(w^\top z + b)\,\hat u w^\top` has

.. math:: \log|\det \partial g/\partial z| = \log|1 + h'(w^\top z + b)\, w^\top \hat u|,

O(D) a row, against the O(D³) of a general determinant. With :math:`h = \tanh`
(:math:`0 < h' \le 1`) the layer is invertible when :math:`w^\top \hat u \ge -1`; the raw
parameter u is mapped to one that satisfies it (Rezende & Mohamed 2015, appendix A),

.. math:: \hat u = u + \big(m(w^\top u) - w^\top u\big)\, \frac{w}{\|w\|^2}, \qquad
    m(a) = -1 + \delta + \log(1 + e^a),

so that :math:`w^\top \hat u = m(w^\top u) > -1 + \delta` for any raw parameters (Rezende &
Mohamed's m has δ = 0; δ = 10⁻³ here keeps layers strictly invertible, with finite
log-determinants, even where the softplus underflows). The inverse has no
closed form but reduces to a scalar equation along w: with :math:`\alpha = w^\top z`,
:math:`y = g(z)` gives :math:`w^\top y = \alpha + c \tanh(\alpha + b)`, :math:`c = w^\top \hat
u`, whose left side is strictly increasing in α, so the root is unique, lies within
:math:`|c|` of :math:`w^\top y`, and is found by safeguarded Newton iterations; then
:math:`z = y - \hat u \tanh(\alpha + b)`. Gradients of the inverse come from one Newton step
taken with autograd at the converged root (the implicit function theorem), not from the
iterations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int, check_positive_real
from .discrete import DiscreteFlow

__all__ = ["PlanarFlow"]

#: m(a) = −1 + δ + softplus(a): c = wᵀû stays at least δ above −1 even where softplus
#: underflows, so every layer's derivative along w is at least δ and its log-det finite.
_MARGIN = 1e-3


class PlanarFlow(DiscreteFlow):
    r"""A stack of K planar layers with a standard normal base.

    Arguments:
        dim: the data dimension D.
        n_layers: the number of layers K.
        closed_form: ``"log_prob"`` (default): the layers map data to the base, so
            :meth:`log_prob` is closed form and :meth:`sample` inverts the layers (for
            maximum likelihood on samples); ``"sample"``: the layers map base draws to data
            (Rezende & Mohamed's direction, for density matching by reverse KL), and
            :meth:`log_prob` inverts them. See :mod:`cnflow.flows.discrete`.
        inverse_tol: the absolute tolerance of the scalar root solves, in units of
            :math:`1 + |w^\top y| + |w^\top \hat u|`; default: 8 machine epsilons of the dtype.
        max_inverse_iter: Newton iterations allowed per layer before giving up.

    Example:
        >>> import torch
        >>> from cnflow.flows.planar import PlanarFlow
        >>> flow = PlanarFlow(2, n_layers=4).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> flow.log_prob(x).shape
        torch.Size([5])
        >>> z, _ = flow.forward_layers(x)
        >>> torch.allclose(flow.inverse_layers(z)[0], x, atol=1e-10)
        True

    References:
        Rezende & Mohamed (2015), "Variational inference with normalizing flows".
    """

    def __init__(self, dim: int, n_layers: int = 8, closed_form: str = "log_prob",
                 inverse_tol: float | None = None, max_inverse_iter: int = 100) -> None:
        super().__init__()
        self._init_common(dim, closed_form)
        self.n_layers = check_positive_int(n_layers, "n_layers")
        self.inverse_tol = None if inverse_tol is None \
            else check_positive_real(inverse_tol, "inverse_tol")
        self.max_inverse_iter = check_positive_int(max_inverse_iter, "max_inverse_iter")
        scale = dim ** -0.5
        self.w = nn.Parameter(torch.randn(n_layers, dim) * scale)
        self.u = nn.Parameter(torch.randn(n_layers, dim) * 0.1 * scale)
        self.b = nn.Parameter(torch.zeros(n_layers))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_layers={self.n_layers}, closed_form={self.closed_form!r}"

    def constrained(self) -> tuple[Tensor, Tensor]:
        r"""(û, c): the layers' û (K, D) and :math:`c = w^\top \hat u > -1 + \delta` (K,)."""
        wu = (self.w * self.u).sum(-1)
        norm2 = self.w.square().sum(-1)
        degenerate = norm2 == 0  # w = 0: the layer is a translation, c = wᵀû = 0
        c = torch.where(degenerate, torch.zeros_like(wu), F.softplus(wu) - 1 + _MARGIN)
        norm2 = torch.where(degenerate, torch.ones_like(norm2), norm2)
        u_hat = self.u + ((c - wu) / norm2).unsqueeze(-1) * self.w
        return u_hat, c

    def forward_layers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """g_K ∘ … ∘ g_1 in closed form; returns (image, Σ_k log|det ∂g_k|) per row."""
        u_hat, c = self.constrained()
        logdet = x.new_zeros(x.shape[0])
        for k in range(self.n_layers):
            h = torch.tanh(x @ self.w[k] + self.b[k])
            x = x + h.unsqueeze(-1) * u_hat[k]
            logdet = logdet + torch.log1p((1 - h * h) * c[k])
        return x, logdet

    def inverse_layers(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """g_1⁻¹ ∘ … ∘ g_K⁻¹ by a scalar root solve per layer; returns (preimage, log|det| of
        the inverse) per row. Raises RuntimeError if a solve does not converge."""
        u_hat, c = self.constrained()
        logdet = y.new_zeros(y.shape[0])
        for k in reversed(range(self.n_layers)):
            w, b, ck = self.w[k], self.b[k], c[k]
            s = y @ w
            with torch.no_grad():
                alpha0 = self._solve_along_w(s.detach(), float(b), float(ck))
            # One Newton step with autograd at the root: its value is the root (g = 0 there),
            # its derivatives are those of the implicit function α(s, b, c).
            t0 = torch.tanh(alpha0 + b)
            g = alpha0 + ck * t0 - s
            alpha = alpha0 - g / (1 + ck * (1 - t0 * t0))
            h = torch.tanh(alpha + b)
            y = y - h.unsqueeze(-1) * u_hat[k]
            logdet = logdet - torch.log1p((1 - h * h) * ck)
        return y, logdet

    def _solve_along_w(self, s: Tensor, b: float, c: float) -> Tensor:
        """The α with α + c·tanh(α + b) = s (elementwise), c > −1: safeguarded Newton."""
        tol = self.inverse_tol
        if tol is None:
            tol = 8 * torch.finfo(s.dtype).eps
        lo, hi = s - abs(c), s + abs(c)
        alpha = s - c * torch.tanh(s + b)
        bound = tol * (1 + s.abs() + abs(c))
        previous = torch.full_like(s, torch.inf)  # |g| one iteration ago
        for _ in range(self.max_inverse_iter):
            t = torch.tanh(alpha + b)
            g = alpha + c * t - s
            if bool(((g.abs() <= bound) | (hi - lo <= bound)).all()):
                return alpha
            lo = torch.where(g < 0, alpha, lo)
            hi = torch.where(g > 0, alpha, hi)
            newton = alpha - g / (1 + c * (1 - t * t))
            # Newton where it lands inside the bracket and is converging (|g| at least
            # halved); otherwise bisect, so the bracket shrinks and Newton cannot cycle
            # (it does, from either side of tanh's inflection, when |c| is large).
            use_newton = (newton > lo) & (newton < hi) & (g.abs() <= 0.5 * previous)
            alpha = torch.where(use_newton, newton, 0.5 * (lo + hi))
            previous = g.abs()
        raise RuntimeError(f"planar inverse: the root solve did not converge in "
                           f"{self.max_inverse_iter} iterations (c = {c:.3g})")
