r"""Time-dependent convolutional networks: the velocity field of a CNF on images.

:class:`ConcatSquashConv2d` is the concat-squash layer of FFJORD with a convolution for the
linear map: per output channel,

.. math:: \operatorname{layer}(x, t) = (W * x + b) \odot \sigma(a t + c) + d\, t,

and :class:`ConvVelocityField` stacks such layers with a smooth activation. It acts on flat
states (n, C·H·W), reshaping them to (n, C, H, W) inside, so it is a drop-in ``net`` for
:class:`cnflow.CNF`. Its divergence has no closed form: the exact trace takes D
vector-Jacobian products (fine for small images, e.g. 8 × 8), Hutchinson's estimator one
(:mod:`cnflow.divergence`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .activations import ACTIVATIONS

__all__ = ["ConcatSquashConv2d", "ConvVelocityField"]


def _time_rows(t: Tensor | float, like: Tensor) -> Tensor:
    """t as (1, 1) for a scalar or (n, 1) for one time per row."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(1, 1) if t.ndim == 0 else t.reshape(-1, 1)


class ConcatSquashConv2d(nn.Module):
    r"""A convolution gated and shifted by time, per output channel:
    :math:`(W * x + b) \odot \sigma(a t + c) + d t`.

    Arguments:
        in_channels, out_channels: as ``nn.Conv2d``.
        kernel_size: odd; the padding keeps the spatial size.

    Example:
        >>> import torch
        >>> from cnflow.nn import ConcatSquashConv2d
        >>> ConcatSquashConv2d(1, 8)(torch.tensor(0.5), torch.randn(2, 1, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2)
        self.gate = nn.Linear(1, out_channels)
        self.hyper_bias = nn.Linear(1, out_channels, bias=False)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        tc = _time_rows(t, x)
        gate = torch.sigmoid(self.gate(tc))[:, :, None, None]
        return self.conv(x) * gate + self.hyper_bias(tc)[:, :, None, None]


class ConvVelocityField(nn.Module):
    r"""A convolutional velocity field f(t, z) for flat image states.

    Arguments:
        shape: (C, H, W) of the images; states are (n, C·H·W).
        hidden: channels of the hidden layers.
        kernel_size: of every convolution (odd).
        activation: a name from :data:`cnflow.nn.ACTIVATIONS` (default ``"softplus"``, as
            FFJORD's image models).

    Example:
        >>> import torch
        >>> from cnflow.nn import ConvVelocityField
        >>> f = ConvVelocityField((4, 4, 4), hidden=(16, 16))
        >>> f(torch.tensor(0.0), torch.randn(3, 64)).shape
        torch.Size([3, 64])
    """

    def __init__(self, shape: Sequence[int], hidden: Sequence[int] = (64, 64, 64),
                 kernel_size: int = 3, activation: str = "softplus") -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) of positive sizes, got {shape}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: "
                             f"{', '.join(ACTIVATIONS)}")
        self.shape = shape
        channels = (shape[0], *tuple(hidden), shape[0])
        self.layers = nn.ModuleList(ConcatSquashConv2d(a, b, kernel_size)
                                    for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: Tensor | float, z: Tensor) -> Tensor:
        x = z.reshape(z.shape[0], *self.shape)
        for k, layer in enumerate(self.layers):
            x = layer(t, x)
            if k < len(self.layers) - 1:
                x = self.activation(x)
        return x.reshape(z.shape[0], -1)
