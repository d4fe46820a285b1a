r"""A flow with dense Jacobians: full invertible linear maps between elementwise bijections.

The layers are :math:`x \mapsto W_k x + b_k` with :math:`W_k` a full D×D matrix, each but the
last followed by a leaky ReLU with slope :math:`s \in (0, 1)` on negative inputs. The
Jacobian of the linear map is :math:`W_k` itself, a dense matrix, so its log-determinant is
computed as a general determinant must be, by an LU factorisation
(``torch.linalg.slogdet``): O(D³). The elementwise map contributes
:math:`\sum_i \log s\,[a_i < 0]`, O(D). This flow is the O(D³) reference in the determinant
cost comparison (``benchmarks/bench_logdet.py``): O(D³) log-det, against the O(D²) exact trace of
a CNF and the O(D) of Hutchinson's estimator or a planar layer.

The inverse is closed form too: a linear solve (again O(D³)) and the leaky ReLU's inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_positive_int, check_real
from .discrete import DiscreteFlow

__all__ = ["DenseFlow"]


class DenseFlow(DiscreteFlow):
    r"""K full-rank linear layers with leaky ReLUs between them, and a standard normal base.

    Arguments:
        dim: the data dimension D.
        n_layers: the number of linear layers K.
        negative_slope: the leaky ReLU's slope s on negative inputs, in (0, 1].
        closed_form: which way the layers run, ``"log_prob"`` (data to base, default) or
            ``"sample"``; both directions are exact here (see :mod:`cnflow.flows.discrete`).

    Example:
        >>> import torch
        >>> from cnflow.flows.dense import DenseFlow
        >>> flow = DenseFlow(3, n_layers=2).double()
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> z, _ = flow.forward_layers(x)
        >>> torch.allclose(flow.inverse_layers(z)[0], x, atol=1e-10)
        True
    """

    def __init__(self, dim: int, n_layers: int = 4, negative_slope: float = 0.5,
                 closed_form: str = "log_prob") -> None:
        super().__init__()
        self._init_common(dim, closed_form)
        self.n_layers = check_positive_int(n_layers, "n_layers")
        self.negative_slope = check_real(negative_slope, "negative_slope", 0, 1, closed="right")
        # Near the identity, so the initial flow is well conditioned.
        self.weight = nn.Parameter(torch.eye(dim).repeat(n_layers, 1, 1)
                                   + 0.1 * dim ** -0.5 * torch.randn(n_layers, dim, dim))
        self.bias = nn.Parameter(torch.zeros(n_layers, dim))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_layers={self.n_layers}, "
                f"negative_slope={self.negative_slope}, closed_form={self.closed_form!r}")

    def linear_logdets(self) -> Tensor:
        """log|det W_k| of each layer, shape (K,), by ``torch.linalg.slogdet`` (O(D³))."""
        return torch.linalg.slogdet(self.weight)[1]

    def forward_layers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Linear, leaky ReLU, …, linear; returns (image, log|det| per row)."""
        log_s = math.log(self.negative_slope)
        logdet = self.linear_logdets().sum().expand(x.shape[0])
        for k in range(self.n_layers):
            x = x @ self.weight[k].T + self.bias[k]
            if k < self.n_layers - 1:
                negative = x < 0
                logdet = logdet + log_s * negative.sum(-1).to(x.dtype)
                x = torch.where(negative, self.negative_slope * x, x)
        return x, logdet

    def inverse_layers(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The inverse: leaky ReLU⁻¹ and linear solves; returns (preimage, log|det| per row)."""
        log_s = math.log(self.negative_slope)
        logdet = -self.linear_logdets().sum().expand(y.shape[0])
        for k in reversed(range(self.n_layers)):
            if k < self.n_layers - 1:
                negative = y < 0
                logdet = logdet - log_s * negative.sum(-1).to(y.dtype)
                y = torch.where(negative, y / self.negative_slope, y)
            y = torch.linalg.solve(self.weight[k], (y - self.bias[k]).T).T
        return y, logdet
