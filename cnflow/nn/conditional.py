r"""A concat-squash network that also takes a context c: the velocity field f(z, t; c) of a
conditional CNF.

Each layer is FFJORD's concat-squash layer with the context brought in where time is,

.. math:: \operatorname{layer}(x, t; c) = (W x + b) \odot \sigma(a t + G c + e)
    + d\, t + H c

(``conditioning="gates"``), or with the context concatenated to the first layer's input,
:math:`(W_z z + W_c c + b) \odot \sigma(a t + e) + d\, t` (``"concat"``). Either way the
context does not depend on z, so :math:`\partial f/\partial z` and its trace involve only the
z-columns of the weights, and :meth:`ConditionalConcatSquashMLP.forward_with_divergence`
propagates the Jacobian forward as :class:`~cnflow.nn.ConcatSquashMLP` does, with gates that
differ by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_positive_int, check_positive_int_sequence
from .activations import ACTIVATIONS, activation_of
from .concat_squash import _time_column

__all__ = ["CONDITIONINGS", "ConditionalConcatSquashLinear", "ConditionalConcatSquashMLP",
           "WithContext"]

#: Where the context enters a :class:`ConditionalConcatSquashMLP`.
CONDITIONINGS = ("gates", "concat")


class ConditionalConcatSquashLinear(nn.Module):
    r"""A concat-squash layer whose gate and shift also read a context:
    :math:`(W x + b) \odot \sigma(a t + G c + e) + d\, t + H c`.

    Arguments:
        in_features: size of x (with ``concat_features``, of x and the context together).
        out_features: size of the output.
        context_features: size of c entering the gate and the shift (0: time only).

    Attributes:
        linear: :math:`W, b`.
        gate: :math:`[a, G], e`, an ``nn.Linear(1 + context_features, out_features)``.
        hyper_bias: :math:`[d, H]`, an ``nn.Linear(1 + context_features, out_features,
            bias=False)``.
    """

    def __init__(self, in_features: int, out_features: int, context_features: int) -> None:
        super().__init__()
        self.context_features = context_features
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1 + context_features, out_features)
        self.hyper_bias = nn.Linear(1 + context_features, out_features, bias=False)

    def gate_and_shift(self, tc: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """σ(a t + G c + e) and d t + H c, each (n, out) (or (1, out) without a context)."""
        if self.context_features:
            tc = torch.cat([tc.expand(context.shape[0], 1), context], dim=1)
        return torch.sigmoid(self.gate(tc)), self.hyper_bias(tc)

    def forward(self, t: Tensor | float, x: Tensor, context: Tensor) -> Tensor:
        gate, shift = self.gate_and_shift(_time_column(t, x), context)
        return self.linear(x) * gate + shift


class ConditionalConcatSquashMLP(nn.Module):
    r"""A velocity field f(z, t; c): concat-squash layers that also take a context.

    Arguments:
        in_features: size of the state z (and of the output).
        context_features: size of the context c.
        hidden: widths of the hidden layers.
        activation: a name from :data:`cnflow.nn.ACTIVATIONS` (default ``"tanh"``).
        conditioning: ``"gates"`` (default): c enters every layer's gate and shift;
            ``"concat"``: c is concatenated to the first layer's input.

    Example:
        >>> import torch
        >>> from cnflow.nn import ConditionalConcatSquashMLP
        >>> f = ConditionalConcatSquashMLP(2, context_features=3, hidden=(16, 16))
        >>> z, c = torch.randn(5, 2), torch.randn(5, 3)
        >>> dz, trace = f.forward_with_divergence(torch.tensor(0.5), z, c)
        >>> dz.shape, trace.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, in_features: int, context_features: int,
                 hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh",
                 conditioning: str = "gates") -> None:
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        context_features = check_positive_int(context_features, "context_features")
        hidden = check_positive_int_sequence(hidden, "hidden")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: "
                             f"{', '.join(ACTIVATIONS)}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: "
                             f"{', '.join(CONDITIONINGS)}")
        self.in_features, self.context_features = in_features, context_features
        self.conditioning = conditioning
        self.activation = ACTIVATIONS[activation]()
        sizes = (in_features, *hidden, in_features)
        gated = context_features if conditioning == "gates" else 0
        self.layers = nn.ModuleList(
            ConditionalConcatSquashLinear(
                a + (context_features if k == 0 and conditioning == "concat" else 0), b, gated)
            for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)))

    has_analytic_divergence = True

    def _check_context(self, z: Tensor, context: Tensor) -> None:
        if context.ndim != 2 or context.shape != (z.shape[0], self.context_features):
            raise ValueError(f"context must have shape ({z.shape[0]}, "
                             f"{self.context_features}) for {z.shape[0]} states, got "
                             f"{tuple(context.shape)}")

    def _pre_activation(self, k: int, tc: Tensor, x: Tensor, context: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """Layer k's pre-activation p, its gate g (per row) and the z-columns of its weight
        (with ``"concat"``, the first layer's input is [x, c] and only x's columns count)."""
        layer = self.layers[k]
        gate, shift = layer.gate_and_shift(tc, context)
        weight = layer.linear.weight
        if k == 0 and self.conditioning == "concat":
            x = torch.cat([x, context], dim=1)
            weight = weight[:, :self.in_features]
        return layer.linear(x) * gate + shift, gate, weight

    def forward(self, t: Tensor | float, z: Tensor, context: Tensor) -> Tensor:
        """f(t, z; c) for z (n, in_features), c (n, context_features), t a scalar or one
        time per row."""
        self._check_context(z, context)
        tc = _time_column(t, z)
        x = z
        for k in range(len(self.layers)):
            x = self._pre_activation(k, tc, x, context)[0]
            if k < len(self.layers) - 1:
                x = self.activation(x)
        return x

    def forward_with_divergence(self, t: Tensor | float, z: Tensor, context: Tensor,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        r"""f(t, z; c) with the exact divergence tr(∂f/∂z) per row (and ‖∂f/∂z‖²_F with
        ``frobenius``), by forward Jacobian propagation: with x_0 = z, p_k the pre-activation
        and g_k the gate of layer k,
        :math:`\partial x_k/\partial z = \operatorname{diag}(\varphi'(p_k) \odot g_k)\,W_k\,
        \partial x_{k-1}/\partial z` (W_k's z-columns for the first layer)."""
        self._check_context(z, context)
        derivative = activation_of(self.activation).derivative
        tc = _time_column(t, z)
        n = z.shape[0]
        x, jac = z, None  # jac (n, D, width): row d is ∂x/∂z_d
        last = len(self.layers) - 1
        for k in range(len(self.layers)):
            p, gate, weight = self._pre_activation(k, tc, x, context)
            gate = gate.expand(n, -1)
            if k == last:
                if jac is None:  # one layer: the Jacobian is diag(g) W
                    jac_last = gate.unsqueeze(1) * weight.T.unsqueeze(0)  # (n, D, D)
                else:
                    jac_last = (jac @ weight.T) * gate.unsqueeze(1)
                trace = torch.diagonal(jac_last, dim1=1, dim2=2).sum(-1)
                if frobenius:
                    return p, trace, jac_last.square().sum((1, 2))
                return p, trace
            h = self.activation(p)
            scale = (derivative(p, h) * gate).unsqueeze(1)  # (n, 1, out)
            jac = scale * (weight.T.unsqueeze(0) if jac is None else jac @ weight.T)
            x = h
        raise AssertionError("unreachable")


class WithContext:
    """A conditional field with its context bound: callable as ``f(t, z)`` like any
    dynamics, with the exact divergence of :meth:`ConditionalConcatSquashMLP.
    forward_with_divergence` (:class:`cnflow.interfaces.AnalyticDivergence`).

    Example:
        >>> import torch
        >>> from cnflow.nn import ConditionalConcatSquashMLP, WithContext
        >>> net = ConditionalConcatSquashMLP(2, context_features=1, hidden=(8,))
        >>> f = WithContext(net, torch.zeros(4, 1))
        >>> f(torch.tensor(0.0), torch.randn(4, 2)).shape
        torch.Size([4, 2])
    """

    def __init__(self, net: ConditionalConcatSquashMLP, context: Tensor) -> None:
        self.net, self.context = net, context

    has_analytic_divergence = True

    def __call__(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(t, z, self.context)

    def forward_with_divergence(self, t: Tensor, z: Tensor,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        return self.net.forward_with_divergence(t, z, self.context, frobenius=frobenius)
