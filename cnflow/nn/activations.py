r"""Activations for ODE dynamics, one table with their derivatives.

Smooth activations suit ODE dynamics: the adaptive solvers assume a smooth right-hand side, and
the trace of the Jacobian must vary smoothly along a solution. Each row of
:data:`ACTIVATION_TABLE` is an :class:`Activation`: the activation's module, its first
derivative φ' (used to carry Jacobians forward through a network,
:meth:`cnflow.nn.ConcatSquashMLP.forward_with_divergence`) and, where known, its second
derivative φ''. A row with a second derivative is *fused-capable*: the hand-written backward
of the exact divergence (:mod:`cnflow.nn.fused`) needs φ'', since the divergence depends on
φ' and its gradient therefore on φ''.

Adding an activation is adding one row; everything else (:data:`ACTIVATIONS`,
:data:`ACTIVATION_DERIVATIVES`, the networks' analytic divergence and, given φ'', the fused
path) reads the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Activation", "ACTIVATION_TABLE", "ACTIVATIONS", "ACTIVATION_DERIVATIVES",
           "activation_of"]


def _accept_all(module: nn.Module) -> bool:
    return True


@dataclass(frozen=True)
class Activation:
    r"""One activation φ and its derivatives, a row of :data:`ACTIVATION_TABLE`.

    The derivatives take the input p and what is already at hand where they are used, the
    output h = φ(p) and (for φ'') the slope s = φ'(p), so that a row can reuse them where
    that is cheaper (tanh: :math:`\varphi' = 1 - h^2`, :math:`\varphi'' = -2 h s`).

    Attributes:
        module: the ``nn.Module`` class that computes φ (default-constructed by name).
        derivative: φ'(p, h).
        second_derivative: φ''(p, h, s), or ``None`` if not given; the row is fused-capable
            (:attr:`fused`) iff it is given.
        accepts: whether an instance of ``module`` computes this φ (e.g. ELU only with
            alpha = 1); the default accepts every instance.
        value_and_slope: for the fused path, a fast ``q -> (h, s)`` from the scaled input
            q = ``input_scale`` · p (q is not to be modified in place); ``None``:
            ``h = module()(p)``, ``s = derivative(p, h)``.
        input_scale: the factor folded into the matrix product that makes q (tanh: 2, for
            tanh(p) = 2σ(2p) − 1); must be 1 without ``value_and_slope``.
        pre_activation_grad: for the fused path, a fast
            :math:`(h, s, \bar h, \bar s) \mapsto \bar p = s \odot \bar h + \varphi''(p)
            \odot \bar s` from h and s alone; ``None``: the generic formula with
            ``second_derivative``, for which the fused path keeps p.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from cnflow.nn.activations import Activation
        >>> sin = Activation(module=nn.Identity, derivative=lambda p, h: torch.cos(p),
        ...                  second_derivative=lambda p, h, s: -torch.sin(p))
        >>> sin.fused
        True
        >>> ACTIVATION_TABLE["tanh"].derivative(torch.zeros(1), torch.zeros(1))
        tensor([1.])
    """

    module: type[nn.Module]
    derivative: Callable[[Tensor, Tensor], Tensor]
    second_derivative: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    accepts: Callable[[nn.Module], bool] = _accept_all
    value_and_slope: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
    input_scale: float = 1.0
    pre_activation_grad: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.value_and_slope is None and self.input_scale != 1.0:
            raise ValueError("input_scale other than 1 needs value_and_slope")
        if self.pre_activation_grad is not None and self.second_derivative is None:
            raise ValueError("pre_activation_grad needs second_derivative")

    @property
    def fused(self) -> bool:
        """Whether the hand-written backward of :mod:`cnflow.nn.fused` applies: φ'' is known."""
        return self.second_derivative is not None

    def evaluate(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """``(h, s) = (φ(p), φ'(p))`` from q = ``input_scale`` · p."""
        if self.value_and_slope is not None:
            return self.value_and_slope(q)
        h = self.module()(q)
        return h, self.derivative(q, h)

    def pre_activation_cotangent(self, p: Tensor | None, h: Tensor, s: Tensor, h_bar: Tensor,
                                 s_bar: Tensor) -> Tensor:
        r""":math:`\bar p = \varphi'(p) \odot \bar h + \varphi''(p) \odot \bar s`, the
        cotangent of p from those of h = φ(p) and s = φ'(p) (p may be ``None`` where
        ``pre_activation_grad`` is given)."""
        if self.pre_activation_grad is not None:
            return self.pre_activation_grad(h, s, h_bar, s_bar)
        if self.second_derivative is None:
            raise ValueError("this activation has no second derivative")
        if p is None:
            raise ValueError("the generic formula needs the pre-activation p")
        return s * h_bar + self.second_derivative(p, h, s) * s_bar


def _tanh_value_and_slope(q: Tensor) -> tuple[Tensor, Tensor]:
    # tanh(p) = 2σ(2p) − 1 (absolute error of a few ulp of 1), q = 2p: torch's CPU sigmoid is
    # vectorised and several times faster than its tanh, and the doubling folds into the
    # matrix product (Activation.input_scale)
    h = torch.sigmoid(q).mul_(2).sub_(1)
    return h, 1 - h * h


def _sigmoid_value_and_slope(p: Tensor) -> tuple[Tensor, Tensor]:
    h = torch.sigmoid(p)
    return h, h * (1 - h)


def _silu_derivative(p: Tensor, h: Tensor) -> Tensor:
    sig = torch.sigmoid(p)
    return sig * (1 + p * (1 - sig))


_TANH = Activation(
    module=nn.Tanh,
    derivative=lambda p, h: 1 - h * h,
    second_derivative=lambda p, h, s: -2 * h * s,
    value_and_slope=_tanh_value_and_slope,
    input_scale=2.0,
    pre_activation_grad=lambda h, s, h_bar, s_bar: s * (h_bar - 2 * h * s_bar),
)
_SOFTPLUS = Activation(
    module=nn.Softplus,
    derivative=lambda p, h: torch.sigmoid(p),
    second_derivative=lambda p, h, s: s * (1 - s),
    accepts=lambda module: module.beta == 1.0,
    value_and_slope=lambda p: (F.softplus(p), torch.sigmoid(p)),
    pre_activation_grad=lambda h, s, h_bar, s_bar: s * (h_bar + (1 - s) * s_bar),
)
_ELU = Activation(
    module=nn.ELU,
    derivative=lambda p, h: torch.where(p > 0, torch.ones_like(p), h + 1),
    accepts=lambda module: module.alpha == 1.0,
)
_SILU = Activation(module=nn.SiLU, derivative=_silu_derivative)
_SIGMOID = Activation(
    module=nn.Sigmoid,
    derivative=lambda p, h: h * (1 - h),
    second_derivative=lambda p, h, s: s * (1 - 2 * h),
    value_and_slope=_sigmoid_value_and_slope,
    pre_activation_grad=lambda h, s, h_bar, s_bar: s * (h_bar + (1 - 2 * h) * s_bar),
)

#: The activations by name, one :class:`Activation` each (``"swish"`` is ``"silu"``).
ACTIVATION_TABLE: dict[str, Activation] = {
    "tanh": _TANH,
    "softplus": _SOFTPLUS,
    "elu": _ELU,
    "silu": _SILU,
    "swish": _SILU,
    "sigmoid": _SIGMOID,
}

#: Activations by name: the module class of each row of :data:`ACTIVATION_TABLE`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: row.module for name, row in ACTIVATION_TABLE.items()}

#: φ'(p, h) of each built-in activation by module class, from its input p and output
#: h = φ(p) (reusing h where that is cheaper): the ``derivative`` of each row of
#: :data:`ACTIVATION_TABLE`. Used to propagate Jacobians forward through the layers.
ACTIVATION_DERIVATIVES: dict[type[nn.Module], Callable[[Tensor, Tensor], Tensor]] = {
    row.module: row.derivative for row in ACTIVATION_TABLE.values()}

_BY_MODULE: dict[type[nn.Module], Activation] = {
    row.module: row for row in ACTIVATION_TABLE.values()}


def _settings(module: nn.Module) -> dict[str, object]:
    """A module's public settings (e.g. Softplus's beta and threshold)."""
    return {key: value for key, value in vars(module).items()
            if not key.startswith("_") and key != "training"}


_DEFAULT_SETTINGS = {cls: _settings(cls()) for cls in _BY_MODULE}


def activation_of(module: nn.Module, fused: bool = False) -> Activation | None:
    """The row of :data:`ACTIVATION_TABLE` that ``module`` computes, else ``None``.

    The module's type must be a row's ``module`` exactly (not a subclass) and the row must
    accept its settings. With ``fused``, also the row must be fused-capable and the module
    must have its default settings, since the fused path evaluates the default φ (e.g.
    Softplus only with threshold 20).

    Example:
        >>> from torch import nn
        >>> activation_of(nn.Softplus()) is ACTIVATION_TABLE["softplus"]
        True
        >>> activation_of(nn.Softplus(beta=2.0)) is None
        True
        >>> activation_of(nn.Softplus(threshold=10.0), fused=True) is None
        True
    """
    row = _BY_MODULE.get(type(module))
    if row is None or not row.accepts(module):
        return None
    if fused and (not row.fused or _settings(module) != _DEFAULT_SETTINGS[row.module]):
        return None
    return row
