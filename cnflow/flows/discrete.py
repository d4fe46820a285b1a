r"""The plumbing shared by discrete flows: a stack of invertible layers and a Gaussian base.

A discrete flow is a composition :math:`g = g_K \circ \dots \circ g_1` of invertible layers,
each with a tractable log-determinant. Which way the layers run in closed form is a choice
with consequences: a layer's closed-form direction is cheap and differentiable, the other
direction needs an inverse (a root solve for a planar layer, a linear solve for a dense one).

- ``closed_form="log_prob"``: the layers map data to the base,
  :math:`\log q(x) = \log \mathcal{N}(g(x); 0, I) + \sum_k \log|\det \partial g_k|`, all in
  closed form: the direction maximum likelihood on samples needs.
- ``closed_form="sample"``: the layers map base draws to data (as in Rezende & Mohamed 2015);
  drawing x and its :math:`\log q(x)` together is closed form: the direction density matching
  (reverse KL, :math:`\mathbb{E}_q[\log q - \log \tilde p]`) needs.

Either way :meth:`DiscreteFlow.log_prob`, :meth:`DiscreteFlow.sample` and
:meth:`DiscreteFlow.sample_with_log_prob` all work; one of them runs the inverses.
"""

from __future__ import annotations

from torch import Tensor

from ..checks import check_positive_int
from .flow import Flow

__all__ = ["DiscreteFlow", "CLOSED_FORMS"]

#: Which direction a discrete flow's layers compute in closed form.
CLOSED_FORMS = ("log_prob", "sample")


class DiscreteFlow(Flow):
    """Base class: subclasses set ``self.dim``, ``self.closed_form`` and implement
    :meth:`forward_layers` (the closed-form direction) and :meth:`inverse_layers`."""

    dim: int
    closed_form: str

    def _init_common(self, dim: int, closed_form: str) -> None:
        dim = check_positive_int(dim, "dim")
        if closed_form not in CLOSED_FORMS:
            raise ValueError(f"closed_form must be one of {', '.join(CLOSED_FORMS)}, got "
                             f"{closed_form!r}")
        self.dim = dim
        self.closed_form = closed_form
        self.base = None  # N(0, I)

    # ------------------------------------------------------------ subclass interface
    def forward_layers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The layers in closed form, g_K ∘ … ∘ g_1; returns (image, log|det| per row)."""
        raise NotImplementedError

    def inverse_layers(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The inverse, g_1⁻¹ ∘ … ∘ g_K⁻¹; returns (preimage, log|det| of the inverse)."""
        raise NotImplementedError

    # ------------------------------------------------------------ density model
    def to_base(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to base: (z, log|det ∂z/∂x|) per row."""
        x = self._check_data(x, "x")
        return self.forward_layers(x) if self.closed_form == "log_prob" \
            else self.inverse_layers(x)

    def to_data(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Base to data: (x, log|det ∂x/∂z|) per row."""
        z = self._check_data(z, "z")
        return self.forward_layers(z) if self.closed_form == "sample" \
            else self.inverse_layers(z)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log q(x) = \log \mathcal{N}(z; 0, I) + \log|\det \partial z/\partial x|`
        with z the image of x in the base; shape (n,)."""
        z, logdet = self.to_base(x)
        return self.base_log_prob(z) + logdet

    def sample(self, n: int) -> Tensor:
        """n draws: base draws z ~ N(0, I) mapped to data; shape (n, dim)."""
        return self.sample_with_log_prob(n)[0]

    def sample_with_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        r"""n draws x and their :math:`\log q(x) = \log \mathcal{N}(z) - \log|\det \partial x/
        \partial z|`, both differentiable in the parameters (reparametrised)."""
        z = self._base_draws(check_positive_int(n, "n"))
        x, logdet = self.to_data(z)
        return x, self.base_log_prob(z) - logdet
