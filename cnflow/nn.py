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

__all__ = ["ConcatSquashLinear", "ConcatSquashMLP", "ACTIVATIONS"]

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
