r"""A velocity field whose exact divergence costs one evaluation: the hollow network of Chen &
Duvenaud (2019), with an optional context.

Each output reads its own coordinate only through a small one-dimensional network whose
other inputs are blind to that coordinate,

.. math:: f_i(z, t; c) = \tau_i\bigl(z_i, h_i(z_{-i}, t, c)\bigr),

so that :math:`\partial f_i/\partial z_i = \partial\tau_i/\partial z_i` with :math:`h_i` held
fixed, and the trace :math:`\sum_i \partial f_i/\partial z_i` comes with the forward pass in
closed form: no Jacobian-vector products, whatever D (a dense network needs D of them, about
D + 1 forward passes). The off-diagonal entries of the Jacobian are still there (each f_i
depends on every z_j through h_i): the field is as free as a dense one to move mass between
coordinates, only its diagonal is cheap.

The conditioner h is two masked networks (MADE, Germain et al. 2015) with opposite orders:
one reads :math:`z_{<i}` for output i, the other :math:`z_{>i}`, and their outputs are added,
so that :math:`h_i` depends on every coordinate but :math:`z_i`. Time and the context enter
every layer as a concat-squash gate and shift (FFJORD), and never through a mask (they are
not state). The transformer of coordinate i is a one-hidden-layer network of K units,

.. math:: \tau_i(z_i, h_i) = b_i + s_i z_i + \sum_{k=1}^K w_{ik}\,
    \varphi(a_{ik} z_i + u_{ik}), \qquad
    \frac{\partial \tau_i}{\partial z_i} = s_i + \sum_k w_{ik} a_{ik}\,
    \varphi'(a_{ik} z_i + u_{ik}),

with :math:`(b_i, s_i, u_{i1..K}) = h_i` and the slopes :math:`a` and weights :math:`w`
parameters of the network.

Example:
    >>> import torch
    >>> from cnflow.nn import HollowMLP
    >>> f = HollowMLP(3, hidden=(16, 16))
    >>> z = torch.randn(5, 3)
    >>> dz, trace = f.forward_with_divergence(torch.tensor(0.5), z)
    >>> dz.shape, trace.shape
    (torch.Size([5, 3]), torch.Size([5]))

References:
    Chen & Duvenaud (2019), "Neural networks with cheap differential operators", NeurIPS.
    Germain, Gregor, Murray & Larochelle (2015), "MADE: masked autoencoder for distribution
    estimation", ICML.
    Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), "FFJORD".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_nonnegative_int, check_positive_int, check_positive_int_sequence
from .activations import ACTIVATIONS, activation_of
from .concat_squash import _time_column

__all__ = ["HollowMLP", "hollow_degrees"]

#: The conditioner's two masked networks: output i reads z_j for j before i, and after i.
DIRECTIONS = 2


def hollow_degrees(dim: int, widths: Sequence[int]) -> list[Tensor]:
    r"""The masks of the conditioner's layers, each of shape (2, out, in), as floats.

    Direction 0 orders the coordinates :math:`1, \dots, D`, direction 1 the reverse. A hidden
    unit of degree m (assigned in turn over :math:`1, \dots, D - 1`) reads the inputs of
    order at most m and the units of the layer below of degree at most m; output i reads the
    last hidden layer's units of degree below i's order. So output i of direction 0 depends
    on :math:`z_{<i}` only, of direction 1 on :math:`z_{>i}` only.

    Arguments:
        dim: D, the number of coordinates.
        widths: the hidden layers' widths, then the outputs per coordinate.

    Returns:
        One mask per layer: the input layer's (2, widths[0], D), …, the output layer's
        (2, D × widths[-1], widths[-2]).
    """
    hidden, per_output = list(widths[:-1]), widths[-1]
    orders = torch.stack([torch.arange(1, dim + 1), torch.arange(dim, 0, -1)])  # (2, D)
    degrees = [(torch.arange(w) % max(1, dim - 1) + 1).expand(DIRECTIONS, w) for w in hidden]
    masks = [(orders.unsqueeze(1) <= degrees[0].unsqueeze(2))]  # (2, h0, D)
    for below, above in zip(degrees[:-1], degrees[1:], strict=False):
        masks.append(below.unsqueeze(1) <= above.unsqueeze(2))
    out_order = orders.repeat_interleave(per_output, dim=1)  # (2, D × P)
    masks.append(degrees[-1].unsqueeze(1) < out_order.unsqueeze(2))
    return [m.float() for m in masks]


def _uniform_by_fan_in_(weight: Tensor, bias: Tensor, mask: Tensor) -> None:
    """nn.Linear's initialisation, uniform in ±1/√fan-in, the fan-in being the inputs the mask
    keeps."""
    bound = 1.0 / mask.sum(-1, keepdim=True).clamp(min=1).sqrt()
    with torch.no_grad():
        weight.uniform_(-1.0, 1.0).mul_(bound)
        bias.uniform_(-1.0, 1.0).mul_(bound.squeeze(-1))


class _MaskedGatedLayer(nn.Module):
    r"""Both directions' masked hidden layer, gated and shifted by time and the context:
    :math:`((W \odot M) x + b) \odot \sigma(a t + G c + e) + d\, t + H c`, with x of shape
    (2, n, in) and the output (2, n, out)."""

    def __init__(self, mask: Tensor, context_features: int) -> None:
        super().__init__()
        _, out, width_in = mask.shape
        self.register_buffer("mask", mask, persistent=False)
        self.weight = nn.Parameter(torch.empty(DIRECTIONS, out, width_in))
        self.bias = nn.Parameter(torch.empty(DIRECTIONS, out))
        self.gate = nn.Linear(1 + context_features, DIRECTIONS * out)
        self.shift = nn.Linear(1 + context_features, DIRECTIONS * out, bias=False)
        _uniform_by_fan_in_(self.weight, self.bias, mask)

    def forward(self, x: Tensor, tc: Tensor) -> Tensor:
        """x (2, n, in), tc (1 or n, 1 + context_features) -> (2, n, out)."""
        weight = (self.weight * self.mask).transpose(1, 2)
        p = torch.baddbmm(self.bias.unsqueeze(1), x, weight)
        gate = torch.sigmoid(self.gate(tc)).reshape(tc.shape[0], DIRECTIONS, -1).transpose(0, 1)
        shift = self.shift(tc).reshape(tc.shape[0], DIRECTIONS, -1).transpose(0, 1)
        return torch.addcmul(shift, p, gate)


class _MaskedOutputLayer(nn.Module):
    r"""The conditioner's outputs, both directions added and shifted by time and the context,
    as one product: :math:`[x_0, x_1, t, c] \, [W_0 \odot M_0, W_1 \odot M_1, d, H]^\top + b`,
    x of shape (2, n, in), the output (n, out)."""

    def __init__(self, mask: Tensor, context_features: int) -> None:
        super().__init__()
        _, out, width_in = mask.shape
        both = torch.cat([mask[0], mask[1], torch.ones(out, 1 + context_features)], dim=1)
        self.register_buffer("mask", both, persistent=False)
        self.weight = nn.Parameter(torch.empty(out, both.shape[1]))
        self.bias = nn.Parameter(torch.empty(out))
        _uniform_by_fan_in_(self.weight, self.bias, both)

    def forward(self, x: Tensor, tc: Tensor) -> Tensor:
        """x (2, n, in), tc (1 or n, 1 + context_features) -> (n, out)."""
        n = x.shape[1]
        inputs = torch.cat([x[0], x[1], tc.expand(n, tc.shape[1])], dim=1)
        return torch.addmm(self.bias, inputs, (self.weight * self.mask).T)


class HollowMLP(nn.Module):
    r"""A hollow velocity field f(t, z) (or f(t, z; c)) with its exact divergence in closed
    form (see the module's formulas).

    Arguments:
        in_features: D, the size of the state z.
        hidden: the hidden widths of each of the conditioner's two masked networks.
        activation: a name from :data:`ACTIVATIONS` (``"tanh"`` default), used in the
            conditioner and the transformers.
        context_features: size of the context c (0, the default: no context).
        conditioning: where c enters: ``"gates"`` only (every layer's gate and shift; the
            argument mirrors :class:`ConcatSquashMLP`'s).
        units: K, the hidden units of each coordinate's transformer (0: the affine
            transformer b_i + s_i z_i).

    Example:
        >>> import torch
        >>> from cnflow.nn import HollowMLP
        >>> f = HollowMLP(2, hidden=(8, 8), context_features=1)
        >>> f(torch.tensor(0.0), torch.randn(4, 2), torch.zeros(4, 1)).shape
        torch.Size([4, 2])

    References:
        Chen & Duvenaud (2019), "Neural networks with cheap differential operators".
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64, 64),
                 activation: str = "tanh", *, context_features: int = 0,
                 units: int = 8, conditioning: str = "gates") -> None:
        super().__init__()
        if conditioning != "gates":
            raise ValueError("a hollow field reads its context through its gates only; "
                             f"conditioning={conditioning!r} needs the dense field")
        dim = check_positive_int(in_features, "in_features")
        hidden = check_positive_int_sequence(hidden, "hidden")
        if not hidden:
            raise ValueError("a hollow field needs at least one hidden layer in its "
                             "conditioner, got hidden=()")
        self.units = check_nonnegative_int(units, "units")
        self.context_features = check_nonnegative_int(context_features, "context_features")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; a hollow field takes one "
                             f"of: {', '.join(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[activation]()
        self._derivative = activation_of(self.activation).derivative
        self.in_features = self.out_features = dim
        self.hidden = tuple(hidden)
        masks = hollow_degrees(dim, (*hidden, self.units + 2))
        self.layers = nn.ModuleList([
            *(_MaskedGatedLayer(m, self.context_features) for m in masks[:-1]),
            _MaskedOutputLayer(masks[-1], self.context_features)])
        # the transformers' slopes a (N(0, 1)) and output weights w
        self.slope = nn.Parameter(torch.randn(dim, self.units))
        self.scale = nn.Parameter(torch.empty(dim, self.units).uniform_(-1.0, 1.0)
                                  / math.sqrt(self.units))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, units={self.units}, "
                f"context_features={self.context_features}")

    @property
    def has_analytic_divergence(self) -> bool:
        """Always: the divergence is in closed form (:meth:`forward_with_divergence`)."""
        return True

    @property
    def trace_entries_per_row(self) -> int:
        """The widest intermediate of one row of an evaluation with the trace (the
        conditioner's output, 2 × D × (K + 2), or its widest hidden layer), which sets how
        many rows a CPU solve takes at once."""
        return DIRECTIONS * max(self.in_features * (self.units + 2), *self.hidden)

    def zero_output_(self) -> HollowMLP:
        """Make the field zero (the identity flow): the conditioner's last layer and the
        transformers' weights at zero; gradients still reach them. Returns the network."""
        last = self.layers[-1]
        with torch.no_grad():
            for param in (last.weight, last.bias, self.scale):
                param.zero_()
        return self

    # ---------------------------------------------------------------- evaluation
    def _time_context(self, t: Tensor | float, z: Tensor, context: Tensor | None) -> Tensor:
        tc = _time_column(t, z)
        if not self.context_features:
            if context is not None:
                raise ValueError("this network was built without context_features; it takes "
                                 "no context")
            return tc
        if not isinstance(context, Tensor) or context.shape != (z.shape[0],
                                                                 self.context_features):
            got = (tuple(context.shape) if isinstance(context, Tensor)
                   else "none" if context is None else type(context).__name__)
            raise ValueError(f"this network reads a context of shape ({z.shape[0]}, "
                             f"{self.context_features}); got {got}")
        return torch.cat([tc.expand(z.shape[0], 1), context], dim=1)

    def _transformer_inputs(self, t: Tensor | float, z: Tensor, context: Tensor | None
                            ) -> tuple[Tensor, Tensor, Tensor]:
        """The conditioner's (b, s, u) for every coordinate: (n, D), (n, D), (n, D, K)."""
        if z.ndim != 2 or z.shape[1] != self.in_features:
            raise ValueError(f"z must have shape (n, {self.in_features}), got "
                             f"{tuple(z.shape)}")
        tc = self._time_context(t, z, context)
        x = z.unsqueeze(0).expand(DIRECTIONS, *z.shape)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x, tc))
        h = self.layers[-1](x, tc).reshape(z.shape[0], self.in_features, self.units + 2)
        return h[..., 0], h[..., 1], h[..., 2:]

    def forward(self, t: Tensor | float, z: Tensor, context: Tensor | None = None) -> Tensor:
        """f(t, z) (or f(t, z; c)): t a scalar or one time per row, z of shape (n, D), the
        context (n, context_features) exactly when the network has ``context_features``."""
        return self._evaluate(t, z, context, trace=False)[0]

    def forward_with_divergence(self, t: Tensor | float, z: Tensor,
                                context: Tensor | None = None,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        r"""f(t, z) (or f(t, z; c)) with the exact divergence :math:`\sum_i \partial
        \tau_i/\partial z_i` per row, in closed form (see the module's formulas).

        Arguments:
            t: a scalar or one time per row.
            z: shape (n, D).
            context: shape (n, context_features), exactly when the network has
                ``context_features``.
            frobenius: also return :math:`\|\partial f/\partial z\|_F^2` per row; the
                off-diagonal entries have no closed form, so this costs D vector-Jacobian
                products (as a dense network's).

        Returns:
            ``(f, trace)`` of shapes (n, D) and (n,), or ``(f, trace, frobenius)``.
        """
        if frobenius:
            return self._with_frobenius(t, z, context)
        return self._evaluate(t, z, context, trace=True)

    def _evaluate(self, t: Tensor | float, z: Tensor, context: Tensor | None,
                  trace: bool) -> tuple[Tensor, Tensor | None]:
        """f and, with ``trace``, Σ_i ∂τ_i/∂z_i (else None: flow matching needs f alone)."""
        b, s, u = self._transformer_inputs(t, z, context)
        dz = torch.addcmul(b, s, z)
        if not self.units:  # the affine transformer b + s z_i
            return dz, s.sum(-1) if trace else None
        p = torch.addcmul(u, z.unsqueeze(-1), self.slope)  # a_ik z_i + u_ik
        h = self.activation(p)
        dz = dz + (h * self.scale).sum(-1)
        if not trace:
            return dz, None
        diagonal = s + (self._derivative(p, h) * (self.slope * self.scale)).sum(-1)
        return dz, diagonal.sum(-1)

    def _with_frobenius(self, t: Tensor | float, z: Tensor, context: Tensor | None
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """(f, trace, ‖J‖_F²) with the Jacobian's rows by D backward passes."""
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z if (keep and z.requires_grad) else z.detach().requires_grad_(True)
            dz, trace = self.forward_with_divergence(t, zz, context)
            frob = torch.zeros_like(trace)
            for i in range(self.in_features):
                (row,) = torch.autograd.grad(dz[:, i].sum(), zz, create_graph=keep,
                                             retain_graph=True)
                frob = frob + row.square().sum(-1)
        if not keep:
            dz, trace, frob = dz.detach(), trace.detach(), frob.detach()
        return dz, trace, frob
