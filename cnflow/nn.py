r"""Time-dependent networks for the dynamics of neural ODEs and continuous normalizing flows.

A CNF's velocity field :math:`f(z, t)` must depend on time as well as the state. The
concat-squash layer of FFJORD (Grathwohl et al. 2019) brings t in twice, as a gate and as a
bias,

.. math:: \operatorname{layer}(x, t) = (W x + b) \odot \sigma(a t + c) + d\, t,

and :class:`ConcatSquashMLP` stacks such layers with a smooth activation in between. Every
module here is called as ``module(t, x)``, the argument order of ODE dynamics ``f(t, z)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConcatSquashLinear", "ConcatSquashMLP", "ACTIVATIONS", "ACTIVATION_DERIVATIVES"]

#: Activations by name. Smooth ones suit ODE dynamics: the adaptive solvers assume a smooth
#: right-hand side, and the trace of the Jacobian must vary smoothly along a solution.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


#: σ'(p) of each built-in activation, from its input p and output h = σ(p) (reusing h where
#: that is cheaper). Used to propagate Jacobians forward through the layers.
ACTIVATION_DERIVATIVES = {
    nn.Tanh: lambda p, h: 1 - h * h,
    nn.Sigmoid: lambda p, h: h * (1 - h),
    nn.Softplus: lambda p, h: torch.sigmoid(p),
    nn.SiLU: lambda p, h: torch.sigmoid(p) * (1 + p * (1 - torch.sigmoid(p))),
    nn.ELU: lambda p, h: torch.where(p > 0, torch.ones_like(p), h + 1),
}


def _time_column(t: Tensor | float, like: Tensor) -> Tensor:
    """t as a column to broadcast against x (..., features): (1, 1) for a scalar, (n, 1)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, 1)


class ConcatSquashLinear(nn.Module):
    r"""A linear layer gated and shifted by time: :math:`(W x + b) \odot \sigma(a t + c) + d t`.

    Arguments:
        in_features: size of x.
        out_features: size of the output.

    Attributes:
        linear: :math:`W, b`, an ``nn.Linear(in_features, out_features)``.
        gate: :math:`a, c`, an ``nn.Linear(1, out_features)``.
        hyper_bias: :math:`d`, an ``nn.Linear(1, out_features, bias=False)``.

    Example:
        >>> import torch
        >>> from cnflow.nn import ConcatSquashLinear
        >>> layer = ConcatSquashLinear(3, 5)
        >>> layer(torch.tensor(0.5), torch.randn(10, 3)).shape
        torch.Size([10, 5])

    References:
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), "FFJORD: Free-form
        continuous dynamics for scalable reversible generative models".
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.hyper_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        """The layer at time t.

        Arguments:
            t: a scalar (0-d tensor or float), or one time per row of x, shape (n,) or (n, 1).
            x: inputs, shape (n, in_features).

        Returns:
            Shape (n, out_features).
        """
        tc = _time_column(t, x)
        return self.linear(x) * torch.sigmoid(self.gate(tc)) + self.hyper_bias(tc)


class ConcatSquashMLP(nn.Module):
    r"""A time-dependent MLP of :class:`ConcatSquashLinear` layers: f(t, z) for an ODE.

    The layers map ``in_features → hidden[0] → … → hidden[-1] → out_features``, with the
    activation after every layer but the last.

    Arguments:
        in_features: size of the state z.
        hidden: widths of the hidden layers (may be empty: a single time-dependent affine map).
        out_features: size of the output; default ``in_features`` (a velocity field).
        activation: a name from :data:`ACTIVATIONS` (``"tanh"`` default, ``"softplus"``,
            ``"elu"``, ``"silu"``/``"swish"``, ``"sigmoid"``) or an ``nn.Module`` to use.

    Example:
        >>> import torch
        >>> from cnflow.nn import ConcatSquashMLP
        >>> f = ConcatSquashMLP(2, hidden=(32, 32), activation="softplus")
        >>> f(torch.tensor(0.0), torch.randn(5, 2)).shape
        torch.Size([5, 2])

    References:
        Grathwohl et al. (2019), "FFJORD".
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64, 64),
                 out_features: int | None = None, activation: str | nn.Module = "tanh") -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        hidden = tuple(hidden)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
            self.activation = ACTIVATIONS[activation]()
        elif isinstance(activation, nn.Module):
            self.activation = activation
        else:
            raise ValueError("activation must be a name or an nn.Module, got "
                             f"{type(activation).__name__}")
        out_features = in_features if out_features is None else out_features
        sizes = (in_features, *hidden, out_features)
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, t: Tensor | float, z: Tensor) -> Tensor:
        """f(t, z): t a scalar or one time per row, z of shape (n, in_features)."""
        x = z
        for i, layer in enumerate(self.layers):
            x = layer(t, x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x

    @property
    def has_analytic_divergence(self) -> bool:
        """Whether :meth:`forward_with_divergence` applies: a velocity field (out = in) with a
        built-in activation (type exactly one of :data:`ACTIVATION_DERIVATIVES`; ELU only with
        alpha = 1, Softplus only with beta = 1)."""
        act = self.activation
        if type(act) not in ACTIVATION_DERIVATIVES:
            return False
        if isinstance(act, nn.ELU) and act.alpha != 1.0:
            return False
        if isinstance(act, nn.Softplus) and act.beta != 1.0:
            return False
        first, last = self.layers[0].linear, self.layers[-1].linear
        return first.in_features == last.out_features

    def forward_with_divergence(self, t: Tensor | float, z: Tensor,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        r"""f(t, z) with the exact divergence tr(∂f/∂z) per row, by forward Jacobian propagation.

        The Jacobian of the activations with respect to z is carried through the layers with
        them: with x_0 = z, p_k = (W_k x_{k−1} + b_k) ⊙ g_k + d_k t, g_k = σ(a_k t + c_k),
        x_k = φ(p_k),

        .. math:: \frac{\partial x_k}{\partial z} = \operatorname{diag}(\varphi'(p_k) \odot g_k)
            \, W_k \, \frac{\partial x_{k-1}}{\partial z},

        one batched matrix product of D rows per layer (the cost of D extra forward passes,
        as plain operations with no double backward), and only the diagonal of the last
        layer's Jacobian is formed unless the Frobenius norm is asked for. Use for small D; for
        large D, Hutchinson's estimator is cheaper.

        Arguments:
            t: a scalar or one time per row.
            z: shape (n, D).
            frobenius: also return ‖∂f/∂z‖²_F per row.

        Returns:
            ``(f, trace)`` of shapes (n, D) and (n,), or ``(f, trace, frobenius)``.
        """
        if not self.has_analytic_divergence:
            raise ValueError("forward_with_divergence needs a built-in activation and "
                             "out_features == in_features")
        derivative = ACTIVATION_DERIVATIVES[type(self.activation)]
        tc = _time_column(t, z)
        x = z
        jac = None  # (n or 1, D, width): row d is ∂x/∂z_d, i.e. the Jacobian transposed
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            weight = layer.linear.weight  # (out, in)
            gate = torch.sigmoid(layer.gate(tc))  # (1 or n, out)
            p = layer.linear(x) * gate + layer.hyper_bias(tc)
            if k == last:
                dz = p
                if jac is None:  # a single layer: the Jacobian is diag(g) W for every row
                    jac_last = gate.unsqueeze(1) * weight.T.unsqueeze(0)
                    trace = (gate * torch.diagonal(weight)).sum(-1).expand(z.shape[0])
                    frob = jac_last.square().sum((1, 2)).expand(z.shape[0])
                else:
                    # diag_d = g_d Σ_i W[d, i] J[:, d, i]
                    trace = (gate * (jac * weight.unsqueeze(0)).sum(-1)).sum(-1)
                    frob = ((jac @ weight.T) * gate.unsqueeze(1)).square().sum((1, 2)) \
                        if frobenius else trace
                break
            h = self.activation(p)
            scale = (derivative(p, h) * gate).unsqueeze(1)  # (n, 1, out)
            jac = scale * (weight.T.unsqueeze(0) if jac is None else jac @ weight.T)
            x = h
        return (dz, trace, frob) if frobenius else (dz, trace)
