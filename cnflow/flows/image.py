r"""A multiscale continuous normalizing flow for images (FFJORD's image architecture).

Images y ∈ (0, 1)^{C×H×W} (dequantised pixels) go through a logit transform, then at each
scale s: a squeeze (each 2 × 2 block of pixels into channels), a CNF block with a
convolutional velocity field, and, at every scale but the last, a factor-out: half of the
channels leave for the base N(0, I), the other half go on to the next scale. The density is
exact by composition:

.. math:: \log p(y) = \log\left|\det \frac{\partial\,\operatorname{logit}}{\partial y}\right|
    + \sum_s \Big(\int_0^T \operatorname{tr}\frac{\partial f_s}{\partial z}\,\mathrm{d}t
    + \log \mathcal{N}(z_s^{\text{out}}; 0, I)\Big),

with :math:`z_s^{\text{out}}` the channels factored out at scale s (all of them at the last).
Later scales see fewer dimensions at a coarser resolution (Dinh et al. 2017; Grathwohl et al.
2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_positive_int
from ..nn import ConvVelocityField
from .cnf import CNF
from .image_transforms import LogitTransform, squeeze, unsqueeze

__all__ = ["MultiscaleImageCNF"]


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) per sample, summed over all but the first axis."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat.square().sum(1) + flat.shape[1] * math.log(2 * math.pi))


class MultiscaleImageCNF(nn.Module):
    r"""A multiscale CNF on (n, C, H, W) images with values in (0, 1).

    Arguments:
        shape: (C, H, W); H and W divisible by 2^n_scales.
        n_scales: the number of scales (each squeezes; all but the last factor out half the
            channels).
        hidden: channels of each block's hidden convolutions.
        alpha: the logit transform's margin (see :class:`LogitTransform`).
        **cnf_options: for every block's :class:`cnflow.CNF` (trace, method, rtol, atol,
            adjoint, ...).

    Attributes:
        blocks: the CNF of each scale, on flat states of its scale's (C, H, W)
            (``block_shapes``).

    Example:
        >>> import torch
        >>> from cnflow.flows import MultiscaleImageCNF
        >>> flow = MultiscaleImageCNF((1, 4, 4), n_scales=2, hidden=(8,), rtol=1e-3, atol=1e-3)
        >>> x = torch.rand(3, 1, 4, 4)
        >>> flow.log_prob(x).shape, flow.sample(2).shape
        (torch.Size([3]), torch.Size([2, 1, 4, 4]))
    """

    def __init__(self, shape: Sequence[int], n_scales: int = 2,
                 hidden: Sequence[int] = (64, 64, 64), alpha: float = 1e-6,
                 **cnf_options) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        n_scales = check_positive_int(n_scales, "n_scales")
        c, h, w = shape
        if h % 2 ** n_scales or w % 2 ** n_scales:
            raise ValueError(f"H and W must be divisible by 2^n_scales = {2 ** n_scales}; "
                             f"got {h} × {w}")
        self.shape, self.n_scales = shape, n_scales
        self.logit = LogitTransform(alpha)
        block_shapes, blocks = [], []
        for s in range(n_scales):
            c, h, w = 4 * c, h // 2, w // 2
            block_shapes.append((c, h, w))
            blocks.append(CNF(c * h * w, net=ConvVelocityField((c, h, w), hidden),
                              **cnf_options))
            if s < n_scales - 1:
                c //= 2
        self.block_shapes = block_shapes
        self.blocks = nn.ModuleList(blocks)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def nfe_forward(self) -> int:
        """The blocks' function evaluations in their last forward solves, summed."""
        return sum(block.nfe_forward for block in self.blocks)

    @property
    def nfe_backward(self) -> int:
        """The blocks' function evaluations in their last backward (adjoint) solves, summed."""
        return sum(block.nfe_backward for block in self.blocks)

    def _check_images(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images must have shape (n, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(getattr(x, 'shape', ()))}")
        return x

    def block_inputs(self, x: Tensor, upto: int, **transform_options) -> Tensor:
        """The flat input of block ``upto`` for images x: the logit, then blocks 0..upto−1
        forward (each followed by its factor-out), with squeezes; no log-determinants."""
        h, _ = self.logit.forward(self._check_images(x))
        for s in range(upto + 1):
            h = squeeze(h)
            if s == upto:
                break
            n = h.shape[0]
            z, _ = self.blocks[s].transform(h.reshape(n, -1), **transform_options)
            z = z.reshape(n, *self.block_shapes[s])
            h = z[:, z.shape[1] // 2:]
        return h.reshape(h.shape[0], -1)

    def log_prob(self, x: Tensor, **transform_options) -> Tensor:
        """log p(x) of images x (n, C, H, W) in (0, 1), per image (nats). Keyword arguments
        go to each block's :meth:`cnflow.CNF.transform` (e.g. ``trace="exact"``)."""
        h, total = self.logit.forward(self._check_images(x))
        for s, block in enumerate(self.blocks):
            h = squeeze(h)
            n = h.shape[0]
            z, logdet = block.transform(h.reshape(n, -1), **transform_options)
            total = total + logdet
            z = z.reshape(n, *self.block_shapes[s])
            if s < self.n_scales - 1:
                half = z.shape[1] // 2
                total = total + _standard_normal_log_prob(z[:, :half])
                h = z[:, half:]
            else:
                total = total + _standard_normal_log_prob(z)
        return total

    def sample(self, n: int, steps: int | None = None, method: str | None = None,
               **transform_options) -> Tensor:
        """n images (n, C, H, W) in (0, 1): base draws carried back through the scales.

        Arguments:
            n: the number of images.
            steps: None (default): each block's own solve; K, a positive integer: each
                block's reverse map by K fixed steps of ``method`` (None:
                :data:`~cnflow.ode.FEW_STEP_METHOD`), as :meth:`cnflow.CNF.sample` with
                ``steps`` (:meth:`cnflow.CNF.fixed_step_options`), so a draw costs
                K × stages evaluations per block (:attr:`nfe_forward` sums them).
            method: with ``steps``, one of :data:`cnflow.ode.FIXED_METHODS`.
            transform_options: for each block's :meth:`cnflow.CNF.transform` (e.g.
                ``trace="hutchinson"``); ``solve_options`` only without ``steps``.
        """
        n = check_positive_int(n, "n")
        if steps is None and method is not None:
            raise ValueError(f"method={method!r} chooses the fixed-step method of "
                             "sample(steps=K); give steps too")
        if steps is not None:
            if "solve_options" in transform_options:
                raise ValueError("give steps or solve_options, not both")
            # checked here, before anything is drawn; every block has its own T
            options = [block.fixed_step_options(steps, method) for block in self.blocks]
        else:
            options = [transform_options.pop("solve_options", None)] * self.n_scales
        ref = next(self.parameters())
        c, h, w = self.block_shapes[-1]
        z = torch.randn(n, c, h, w, dtype=ref.dtype, device=ref.device)
        for s in reversed(range(self.n_scales)):
            c, h, w = self.block_shapes[s]
            if s < self.n_scales - 1:  # the factored-out half, drawn from the base
                out = torch.randn(n, c // 2, h, w, dtype=ref.dtype, device=ref.device)
                z = torch.cat([out, z], dim=1)
            y, _ = self.blocks[s].transform(z.reshape(n, -1), reverse=True,
                                            solve_options=options[s], **transform_options)
            z = unsqueeze(y.reshape(n, c, h, w))
        x, _ = self.logit.inverse(z)
        return x
