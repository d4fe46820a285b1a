r"""Exact, invertible transforms that put images into the form a density model needs.

An image density model (a multiscale CNF as in FFJORD, Grathwohl et al. 2019, or RealNVP,
Dinh et al. 2017) works on continuous data in :math:`\mathbb{R}^D`, while images are integers
in :math:`\{0, \dots, L-1\}^D`. The usual pipeline is

1. :func:`dequantize`: :math:`y = (x + u) / L`, :math:`u \sim U[0, 1)^D`, continuous in
   :math:`(0, 1)^D`;
2. :class:`LogitTransform`: :math:`z = \operatorname{logit}(\alpha + (1 - 2\alpha) y)`, which
   maps the bounded cube onto :math:`\mathbb{R}^D`, with its log-determinant;
3. :func:`squeeze` / :func:`unsqueeze`: trade spatial resolution for channels between the
   scales of a multiscale model (permutations, log-determinant 0);

and results are reported with :func:`discrete_log_likelihood_bound` (nats of the discrete data)
and :func:`bits_per_dim`. By the change of variables a model density :math:`q(z)` gives
:math:`\log p(y) = \log q(z) + \log|\det \partial z / \partial y|`, and
:math:`\log p(y) - D \log L` is a lower bound on :math:`\log P(x)` in expectation over u.

Everything here is a plain function or a small class without parameters: float32 or float64,
on any device, with the batch in dim 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_int, check_positive_int, check_real

__all__ = ["LogitTransform", "bits_per_dim", "dequantize", "discrete_log_likelihood_bound",
           "squeeze", "unsqueeze"]

#: Redraws allowed for the (rare) noise draws whose rounded value leaves its cell.
_MAX_REDRAWS = 100


def _check_levels(levels: int) -> int:
    return check_int(levels, "levels", 2)


def _check_n_dims(n_dims: int) -> int:
    return check_positive_int(n_dims, "n_dims")


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantisation: :math:`y = (x + u) / L` with :math:`u \sim U(0, 1)` i.i.d.

    Each integer value k in :math:`\{0, \dots, L-1\}` becomes a uniform draw from its cell
    :math:`(k/L, (k+1)/L)`, so y is continuous in :math:`(0, 1)^D`. A density p on
    :math:`[0, 1)^D` fitted to such y bounds the discrete log-likelihood from below: the mass
    of x is the integral of p over x's cell, :math:`P(x) = L^{-D} \mathbb{E}_u[p((x+u)/L)]`,
    and by Jensen's inequality

    .. math:: \log P(x) \ge \mathbb{E}_u\big[\log p\big((x + u)/L\big)\big] - D \log L

    (Theis et al. 2016, "A note on the evaluation of generative models"; Ho et al. 2019,
    "Flow++"), with equality when p is constant on each cell. See
    :func:`discrete_log_likelihood_bound`.

    Arguments:
        x: integer-valued images in :math:`\{0, \dots, L-1\}`, any shape (typically
            (n, C, H, W)), of an integer dtype or a floating dtype holding integers.
        levels: the number of values L a pixel can take (256 for 8-bit images); at least 2.
        generator: the random number generator for u (on x's device); default: torch's
            global one.

    Returns:
        y of x's shape, on x's device: float32 if x has an integer dtype, x's dtype otherwise.
        Every value lies strictly inside its cell, so :math:`0 < y < 1` and
        :math:`\lfloor yL \rfloor = x` hold in y's dtype (the rare draws that rounding would
        put on a cell edge are drawn again).

    Raises:
        ValueError: if ``levels`` is not an integer of at least 2, or x holds a value that is
            not an integer in :math:`[0, L-1]`.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0, 255], [17, 128]]]])
        >>> g = torch.Generator().manual_seed(0)
        >>> y = dequantize(x, 256, generator=g)
        >>> y.dtype, y.shape
        (torch.float32, torch.Size([1, 1, 2, 2]))
        >>> bool(torch.equal(torch.floor(y * 256).long(), x))
        True
    """
    levels = _check_levels(levels)
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise ValueError(f"x must hold real integer values, got dtype {x.dtype}")
    if x.is_floating_point():
        dtype = x.dtype
        if not bool(torch.isfinite(x).all()) or not bool((x == torch.round(x)).all()):
            raise ValueError("x must hold integer values; found non-integer or non-finite ones")
    else:
        dtype = torch.float32
    if x.numel() and (bool((x < 0).any()) or bool((x > levels - 1).any())):
        raise ValueError(f"x must lie in [0, {levels - 1}] for levels={levels}; found values "
                         f"in [{x.min().item()}, {x.max().item()}]")
    k = x.to(dtype)

    def draw() -> Tensor:
        u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
        return (k + u) / levels

    def outside(y: Tensor) -> Tensor:
        return (y <= 0) | (y >= 1) | (torch.floor(y * levels) != k)

    y = draw()
    bad = outside(y)
    for _ in range(_MAX_REDRAWS):
        if not bool(bad.any()):
            return y
        y = torch.where(bad, draw(), y)
        bad = outside(y)
    if bool(bad.any()):
        raise ValueError(f"levels={levels} is too fine for {dtype}: noise draws keep rounding "
                         "onto cell edges; use a wider floating dtype for x")
    return y


class LogitTransform:
    r"""The logit transform of RealNVP (Dinh et al. 2017), from :math:`(0, 1)^D` to
    :math:`\mathbb{R}^D`.

    Elementwise,

    .. math:: s = \alpha + (1 - 2\alpha)\, x, \qquad y = \log s - \log(1 - s),

    with log-determinant (per sample, summed over all non-batch dims)

    .. math:: \log\Big|\det \frac{\partial y}{\partial x}\Big|
        = \sum_i \big[\log(1 - 2\alpha) - \log s_i - \log(1 - s_i)\big].

    The margin α keeps s away from 0 and 1, so dequantised pixels near the edges of
    :math:`[0, 1]` map to finite values (α = 0 is the plain logit). The inverse is
    :math:`x = (\sigma(y) - \alpha)/(1 - 2\alpha)` with log-determinant
    :math:`\sum_i [\log\sigma(y_i) + \log\sigma(-y_i) - \log(1 - 2\alpha)]`, the negative of
    the forward one at that x, evaluated with log-sigmoids so it stays finite for large
    :math:`|y|`.

    Arguments:
        alpha: the margin α, with :math:`0 \le \alpha < 1/2`.

    Raises:
        ValueError: if alpha is outside :math:`[0, 1/2)`.

    Example:
        >>> import torch
        >>> t = LogitTransform(alpha=0.05)
        >>> x = torch.tensor([[0.5, 0.25], [0.9, 0.1]], dtype=torch.float64)
        >>> y, logdet = t.forward(x)
        >>> y[0, 0].item(), logdet.shape
        (0.0, torch.Size([2]))
        >>> x_back, logdet_inv = t.inverse(y)
        >>> torch.allclose(x_back, x), torch.allclose(logdet_inv, -logdet)
        (True, True)
    """

    def __init__(self, alpha: float = 1e-6) -> None:
        self.alpha = check_real(alpha, "alpha", 0, 0.5, closed="left")
        #: log(1 - 2α), the log of the affine map's slope.
        self._log_scale = math.log1p(-2 * self.alpha)

    def __repr__(self) -> str:
        return f"LogitTransform(alpha={self.alpha!r})"

    @staticmethod
    def _per_sample(t: Tensor) -> Tensor:
        if t.dim() == 0:
            raise ValueError("expected a batch in dim 0, got a 0-d tensor")
        return t.reshape(t.shape[0], -1).sum(dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Map x in :math:`[0, 1]` to :math:`y = \operatorname{logit}(\alpha + (1-2\alpha) x)`.

        Arguments:
            x: a floating tensor of shape (n, ...) with values in :math:`[0, 1]` (values
                outside give NaN).

        Returns:
            (y, logdet): y of x's shape, and logdet of shape (n,), the log-determinant of
            :math:`\partial y / \partial x` for each sample.
        """
        a, c = self.alpha, 1 - 2 * self.alpha
        s = a + c * x
        # 1 - s = α + (1 - 2α)(1 - x), accurate also where x is close to 1.
        s_bar = a + c * (1 - x)
        log_s, log_s_bar = torch.log(s), torch.log(s_bar)
        y = log_s - log_s_bar
        logdet = self._per_sample(self._log_scale - log_s - log_s_bar)
        return y, logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""Map y in :math:`\mathbb{R}` back to :math:`x = (\sigma(y) - \alpha)/(1 - 2\alpha)`.

        Arguments:
            y: a floating tensor of shape (n, ...).

        Returns:
            (x, logdet): x of y's shape, and logdet of shape (n,), the log-determinant of
            :math:`\partial x / \partial y` for each sample,
            :math:`\sum_i [\log\sigma(y_i) + \log\sigma(-y_i) - \log(1 - 2\alpha)]`.
        """
        a, c = self.alpha, 1 - 2 * self.alpha
        x = (torch.sigmoid(y) - a) / c
        logdet = self._per_sample(F.logsigmoid(y) + F.logsigmoid(-y) - self._log_scale)
        return x, logdet


def squeeze(x: Tensor) -> Tensor:
    r"""Move each 2×2 spatial block into channels: (n, C, H, W) → (n, 4C, H/2, W/2).

    The squeeze of RealNVP (Dinh et al. 2017) and FFJORD's multiscale model:

    .. math:: \mathrm{out}[n, 4c + 2i + j, h, w] = x[n, c, 2h + i, 2w + j],
        \qquad i, j \in \{0, 1\},

    so the four pixels :math:`\begin{pmatrix} a & b \\ c & d \end{pmatrix}` of a block become
    channels a, b, c, d (row by row) of the input channel's group of four. It only reorders
    the entries: a permutation, with log-determinant 0. :func:`unsqueeze` is its inverse.

    Arguments:
        x: a tensor of shape (n, C, H, W) with H and W even.

    Raises:
        ValueError: if x is not 4-D or H or W is odd.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[1, 2], [3, 4]]]])
        >>> squeeze(x).flatten().tolist()
        [1, 2, 3, 4]
        >>> squeeze(torch.zeros(2, 3, 8, 6)).shape
        torch.Size([2, 12, 4, 3])
    """
    if x.dim() != 4:
        raise ValueError(f"squeeze expects a 4-D (n, C, H, W) tensor, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got H={h}, W={w}")
    return (x.reshape(n, c, h // 2, 2, w // 2, 2)
            .permute(0, 1, 3, 5, 2, 4)
            .reshape(n, 4 * c, h // 2, w // 2))


def unsqueeze(x: Tensor) -> Tensor:
    r"""The inverse of :func:`squeeze`: (n, 4C, h, w) → (n, C, 2h, 2w).

    .. math:: \mathrm{out}[n, c, 2h + i, 2w + j] = x[n, 4c + 2i + j, h, w].

    A permutation of the entries, with log-determinant 0.

    Arguments:
        x: a tensor of shape (n, 4C, h, w).

    Raises:
        ValueError: if x is not 4-D or its channel count is not divisible by 4.

    Example:
        >>> import torch
        >>> x = torch.arange(2 * 8 * 3 * 5).reshape(2, 8, 3, 5)
        >>> unsqueeze(x).shape
        torch.Size([2, 2, 6, 10])
        >>> bool(torch.equal(squeeze(unsqueeze(x)), x))
        True
    """
    if x.dim() != 4:
        raise ValueError(f"unsqueeze expects a 4-D (n, C, h, w) tensor, got shape "
                         f"{tuple(x.shape)}")
    n, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got {c4}")
    c = c4 // 4
    return (x.reshape(n, c, 2, 2, h, w)
            .permute(0, 1, 4, 2, 5, 3)
            .reshape(n, c, 2 * h, 2 * w))


def bits_per_dim(log_prob: Tensor | np.ndarray | float, n_dims: int
                 ) -> Tensor | np.ndarray | float:
    r"""Convert a log-likelihood in nats per image to bits per dimension.

    .. math:: \mathrm{bpd} = -\frac{\log P(x)}{D \ln 2}.

    Arguments:
        log_prob: :math:`\log P(x)` of the discrete data in nats per image, i.e. already
            including the :math:`-D \log L` of dequantisation (see
            :func:`discrete_log_likelihood_bound`); a tensor, an array or a number.
        n_dims: D, the number of dimensions of one image (C·H·W).

    Returns:
        The bits per dimension, of the same type as ``log_prob`` (a float for a number).

    Raises:
        ValueError: if n_dims is not a positive integer.

    Example:
        >>> import math
        >>> D = 3 * 32 * 32
        >>> bits_per_dim(-D * math.log(256), D)  # the uniform model of 8-bit images
        8.0
    """
    n_dims = _check_n_dims(n_dims)
    scale = n_dims * math.log(2)
    if isinstance(log_prob, (Tensor, np.ndarray)):
        return -log_prob / scale
    return -float(log_prob) / scale


def discrete_log_likelihood_bound(log_density_dequantised: Tensor | np.ndarray | float,
                                  n_dims: int, levels: int) -> Tensor | np.ndarray | float:
    r"""Turn the log-density of dequantised data into a bound on the discrete log-likelihood.

    For :math:`y = (x + u)/L` the cell of x in y-space has volume :math:`L^{-D}`, so the
    mass a density p on :math:`[0, 1)^D` gives x is
    :math:`P(x) = L^{-D}\, \mathbb{E}_u[p((x+u)/L)]` and, by Jensen's inequality,

    .. math:: \log P(x) \ge \mathbb{E}_u\big[\log p\big((x + u)/L\big)\big] - D \log L,

    with equality when p is constant on the cell. This returns
    ``log_density_dequantised - n_dims * log(levels)``: given :math:`\log p(y)` at a
    dequantised y (one draw of u) it is an unbiased estimate of the right-hand side, in nats
    per image, ready for :func:`bits_per_dim`. A density of the scaled data
    :math:`x + u \in [0, L)^D` instead would need no correction.

    Arguments:
        log_density_dequantised: :math:`\log p(y)`, nats per image; a tensor, an array or a
            number.
        n_dims: D, the number of dimensions of one image.
        levels: L, the number of values per dimension (at least 2).

    Returns:
        The bound in nats, of the same type as the input (a float for a number).

    Raises:
        ValueError: if n_dims is not a positive integer or levels is not an integer of at
            least 2.

    Example:
        >>> import math
        >>> bound = discrete_log_likelihood_bound(0.0, n_dims=4, levels=256)  # uniform model
        >>> math.isclose(bound, -4 * math.log(256))
        True
    """
    n_dims = _check_n_dims(n_dims)
    levels = _check_levels(levels)
    shift = n_dims * math.log(levels)
    if isinstance(log_density_dequantised, (Tensor, np.ndarray)):
        return log_density_dequantised - shift
    return float(log_density_dequantised) - shift
