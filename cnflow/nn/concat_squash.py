r"""The concat-squash network of FFJORD: a time-dependent MLP for a CNF's velocity field,
with an optional context c (a conditional CNF's f(z, t; c)).

The concat-squash layer (Grathwohl et al. 2019) brings t in twice, as a gate and as a bias,

.. math:: \operatorname{layer}(x, t) = (W x + b) \odot \sigma(a t + c) + d\, t,

and :class:`ConcatSquashMLP` stacks such layers with a smooth activation in between. With
``context_features`` the network also reads a context c, brought in where time is,

.. math:: \operatorname{layer}(x, t; c) = (W x + b) \odot \sigma(a t + G c + e)
    + d\, t + H c

(``conditioning="gates"``), or concatenated to the first layer's input,
:math:`(W_z z + W_c c + b) \odot \sigma(a t + e) + d\, t` (``"concat"``). Either way the
context does not depend on z, so :math:`\partial f/\partial z` and its trace involve only the
z-columns of the weights, and the forward Jacobian propagation of
:meth:`ConcatSquashMLP.forward_with_divergence` carries over, with gates that differ by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_nonnegative_int, check_positive_int, check_positive_int_sequence
from .activations import ACTIVATIONS, Activation, activation_of
from .fused import concat_squash_vjp, concat_squash_with_divergence

__all__ = ["CONDITIONINGS", "ConcatSquashLinear", "ConcatSquashMLP"]

#: Where the context enters a :class:`ConcatSquashMLP` built with ``context_features``.
CONDITIONINGS = ("gates", "concat")


def _time_column(t: Tensor | float, like: Tensor) -> Tensor:
    """t as a column to broadcast against x (..., features): (1, 1) for a scalar, (n, 1)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, 1)



class ConcatSquashLinear(nn.Module):
    r"""A linear layer gated and shifted by time: :math:`(W x + b) \odot \sigma(a t + c) + d t`;
    with ``context_features``, by time and a context c:
    :math:`(W x + b) \odot \sigma(a t + G c + e) + d\, t + H c`.

    Arguments:
        in_features: size of x.
        out_features: size of the output.
        context_features: size of the context c entering the gate and the shift (0, the
            default: time only).

    Attributes:
        linear: :math:`W, b`, an ``nn.Linear(in_features, out_features)``.
        gate: :math:`a, c` (:math:`[a, G], e` with a context), an ``nn.Linear(1 +
            context_features, out_features)``.
        hyper_bias: :math:`d` (:math:`[d, H]`), an ``nn.Linear(1 + context_features,
            out_features, bias=False)``.

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

    def __init__(self, in_features: int, out_features: int, context_features: int = 0) -> None:
        super().__init__()
        context_features = check_nonnegative_int(context_features, "context_features")
        self.context_features = context_features
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1 + context_features, out_features)
        self.hyper_bias = nn.Linear(1 + context_features, out_features, bias=False)

    def forward(self, t: Tensor | float, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The layer at time t (given the context c when the layer reads one).

        Arguments:
            t: a scalar (0-d tensor or float), or one time per row of x, shape (n,) or (n, 1).
            x: inputs, shape (n, in_features).
            context: shape (n, context_features), exactly when ``context_features`` > 0.

        Returns:
            Shape (n, out_features).
        """
        tc = _time_column(t, x)
        if self.context_features:
            if context is None:
                raise ValueError(f"this layer reads a context of {self.context_features} "
                                 "features; none was given")
            gate, shift = self.gate_and_shift(tc, context)
            return self.linear(x) * gate + shift
        if context is not None:
            raise ValueError("this layer has no context_features; it takes no context")
        if tc.shape[0] == 1:  # one time for all rows: one affine map
            return F.linear(x, *self.affine_at(tc))
        return self.linear(x) * torch.sigmoid(self.gate(tc)) + self.hyper_bias(tc)

    def gate_and_shift(self, tc: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """σ(a t + G c + e) and d t + H c, each (n, out) (σ(a t + e) and d t without a
        context, (1, out) for one time)."""
        if self.context_features:
            tc = torch.cat([tc.expand(context.shape[0], 1), context], dim=1)
        return torch.sigmoid(self.gate(tc)), self.hyper_bias(tc)

    def affine_at(self, tc: Tensor) -> tuple[Tensor, Tensor]:
        r"""The layer at one time t as an affine map: :math:`(\operatorname{diag}(g) W,\;
        g \odot b + d\, t)` with :math:`g = \sigma(a t + c)`.

        Folding the gate into the weights turns the layer into a single matrix product on
        the batch (the gate is applied to the 64×64 weights, not to every row), which is how
        the ODE solvers, with one t for all rows, evaluate it. (A layer without a context
        only: a context makes the gate differ by row.)

        Arguments:
            tc: the time, shape (1, 1).

        Returns:
            ``(weight, bias)`` of shapes (out, in) and (out,).
        """
        t = tc.reshape(())
        # the submodules' parameters used directly: one small op each, no module calls
        gate = torch.sigmoid(torch.addcmul(self.gate.bias, self.gate.weight[:, 0], t))
        weight = self.linear.weight * gate.unsqueeze(1)
        shift = self.hyper_bias.weight[:, 0] * t
        bias = torch.addcmul(shift, self.linear.bias, gate)
        return weight, bias


class ConcatSquashMLP(nn.Module):
    r"""A time-dependent MLP of :class:`ConcatSquashLinear` layers: f(t, z) for an ODE, or
    f(t, z; c) with a context c.

    The layers map ``in_features → hidden[0] → … → hidden[-1] → out_features``, with the
    activation after every layer but the last. With ``context_features`` the network is
    called ``f(t, z, context)`` and the context enters as ``conditioning`` says (see the
    module's formulas); without, ``f(t, z)``, and a context is refused.

    Arguments:
        in_features: size of the state z.
        hidden: widths of the hidden layers (may be empty: a single time-dependent affine map).
        out_features: size of the output; default ``in_features`` (a velocity field).
        activation: a name from :data:`ACTIVATIONS` (``"tanh"`` default, ``"softplus"``,
            ``"elu"``, ``"silu"``/``"swish"``, ``"sigmoid"``) or an ``nn.Module`` to use.
        context_features: size of the context c (0, the default: no context).
        conditioning: where c enters, one of :data:`CONDITIONINGS`: ``"gates"`` (default):
            every layer's gate and shift; ``"concat"``: concatenated to the first layer's input.

    Example:
        >>> import torch
        >>> from cnflow.nn import ConcatSquashMLP
        >>> f = ConcatSquashMLP(2, hidden=(32, 32), activation="softplus")
        >>> f(torch.tensor(0.0), torch.randn(5, 2)).shape
        torch.Size([5, 2])
        >>> g = ConcatSquashMLP(2, hidden=(16, 16), context_features=3)
        >>> z, c = torch.randn(5, 2), torch.randn(5, 3)
        >>> dz, trace = g.forward_with_divergence(torch.tensor(0.5), z, c)
        >>> dz.shape, trace.shape
        (torch.Size([5, 2]), torch.Size([5]))

    References:
        Grathwohl et al. (2019), "FFJORD".
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64, 64),
                 out_features: int | None = None, activation: str | nn.Module = "tanh", *,
                 context_features: int = 0, conditioning: str = "gates") -> None:
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        if out_features is not None:
            out_features = check_positive_int(out_features, "out_features")
        context_features = check_nonnegative_int(context_features, "context_features")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: "
                             f"{', '.join(CONDITIONINGS)}")
        hidden = check_positive_int_sequence(hidden, "hidden")
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
        self.in_features, self.out_features = in_features, out_features
        self.context_features, self.conditioning = context_features, conditioning
        sizes = (in_features, *hidden, out_features)
        concat = context_features if conditioning == "concat" else 0
        gated = context_features if conditioning == "gates" else 0
        self.layers = nn.ModuleList(
            ConcatSquashLinear(a + (concat if k == 0 else 0), b, gated)
            for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)))

    def _check_context(self, z: Tensor, context: Tensor | None) -> bool:
        """Whether a context is used, after checking it against the network and z."""
        if not self.context_features:
            if context is not None:
                raise ValueError("this network was built without context_features; it takes "
                                 "no context")
            return False
        if not isinstance(context, Tensor):
            raise ValueError(f"this network reads a context of shape (n, "
                             f"{self.context_features}); got "
                             f"{'none' if context is None else type(context).__name__}")
        if context.ndim != 2 or context.shape != (z.shape[0], self.context_features):
            raise ValueError(f"context must have shape ({z.shape[0]}, "
                             f"{self.context_features}) for {z.shape[0]} states, got "
                             f"{tuple(context.shape)}")
        return True

    def _pre_activation(self, k: int, tc: Tensor, x: Tensor, context: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """With a context: layer k's pre-activation p, its gate g (per row) and the
        z-columns of its weight (with ``"concat"``, the first layer's input is [x, c] and only
        x's columns count)."""
        layer = self.layers[k]
        gate, shift = layer.gate_and_shift(tc, context if layer.context_features else None)
        weight = layer.linear.weight
        if k == 0 and self.conditioning == "concat":
            x = torch.cat([x, context], dim=1)
            weight = weight[:, :self.in_features]
        return layer.linear(x) * gate + shift, gate, weight

    def forward(self, t: Tensor | float, z: Tensor, context: Tensor | None = None) -> Tensor:
        """f(t, z) (or f(t, z; c)): t a scalar or one time per row, z of shape (n,
        in_features), the context (n, context_features) exactly when the network has
        ``context_features``."""
        if self._check_context(z, context):
            tc = _time_column(t, z)
            x = z
            for k in range(len(self.layers)):
                x = self._pre_activation(k, tc, x, context)[0]
                if k < len(self.layers) - 1:
                    x = self.activation(x)
            return x
        x = z
        for i, layer in enumerate(self.layers):
            x = layer(t, x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x

    @property
    def has_analytic_divergence(self) -> bool:
        """Whether :meth:`forward_with_divergence` applies: a velocity field (out = in) with a
        built-in activation (a row of :data:`cnflow.nn.activations.ACTIVATION_TABLE`, see
        :func:`~cnflow.nn.activations.activation_of`: type exactly the row's module; ELU only
        with alpha = 1, Softplus only with beta = 1)."""
        if activation_of(self.activation) is None:
            return False
        return self.in_features == self.out_features

    def _fused_activation(self) -> Activation | None:
        """The activation's row when the hand-written backward applies (no context, at least
        one hidden layer, a fused-capable activation), else None."""
        if len(self.layers) < 2 or self.context_features or not self.has_analytic_divergence:
            return None
        return activation_of(self.activation, fused=True)

    def zero_output_(self) -> ConcatSquashMLP:
        """Make the field zero (the identity flow): the last layer's weights, bias and time
        shift at zero; gradients still reach them. Returns the network."""
        last = self.layers[-1]
        with torch.no_grad():
            for module in (last.linear, last.hyper_bias):
                for param in module.parameters():
                    param.zero_()
        return self

    def layer_parameters(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
        r"""The parameters of each layer as ``(W, b, a, c, d)``, the layer being
        :math:`(W x + b) \odot \sigma(a t + c) + d\, t` (:class:`ConcatSquashLinear`).

        Shapes (out, in), (out,), (out, 1), (out,), (out, 1); the tensors are the parameters
        themselves (not copies), in the form :func:`cnflow.nn.fused.concat_squash_with_divergence`
        and :func:`cnflow.nn.fused.concat_squash_vjp` take.

        Example:
            >>> from cnflow.nn import ConcatSquashMLP
            >>> net = ConcatSquashMLP(2, hidden=(8,))
            >>> [tuple(p.shape) for p in net.layer_parameters()[0]]
            [(8, 2), (8,), (8, 1), (8,), (8, 1)]
        """
        return [(layer.linear.weight, layer.linear.bias, layer.gate.weight, layer.gate.bias,
                 layer.hyper_bias.weight) for layer in self.layers]

    def divergence_vjp(self, t: Tensor, z: Tensor, frobenius: bool = False
                       ) -> tuple[tuple[Tensor, ...], Callable] | None:
        r""":meth:`forward_with_divergence` at one time t with its pullback, outside autograd.

        Returns ``None`` where the hand-written backward does not apply (an activation whose
        table row has no second derivative, see :data:`cnflow.nn.fused.FUSED_ACTIVATIONS`, a
        single layer, or a network with ``context_features``). Else ``(outputs, pullback)``:
        ``outputs`` as :meth:`forward_with_divergence` (computed without a graph), and
        ``pullback(f̄, τ̄, r̄)`` returns :math:`\bar z` and a dict from each parameter to
        its vector-Jacobian product :math:`\bar f^\top \partial f/\partial\theta +
        \bar\tau^\top \partial\tau/\partial\theta (+ \bar r^\top \partial r/
        \partial\theta)`, r the Frobenius norm (r̄ only with ``frobenius``). The adjoint
        method calls this at every backward stage (see :class:`cnflow.CNF`).

        Example:
            >>> import torch
            >>> from cnflow.nn import ConcatSquashMLP
            >>> net = ConcatSquashMLP(2, hidden=(8, 8))
            >>> (f, tr), pullback = net.divergence_vjp(torch.tensor(0.5), torch.randn(4, 2))
            >>> z_bar, grads = pullback(torch.ones(4, 2), torch.ones(4), None)
            >>> z_bar.shape, grads[net.layers[0].linear.weight].shape
            (torch.Size([4, 2]), torch.Size([8, 2]))
        """
        act = self._fused_activation()
        if act is None:
            return None
        layers = self.layer_parameters()
        outputs, raw_pullback = concat_squash_vjp(act, z, t.reshape(()), layers,
                                                  frobenius=frobenius)
        params = [p for layer in layers for p in layer]

        def pullback(out_bar: Tensor, trace_bar: Tensor, frob_bar: Tensor | None = None):
            z_bar, grads = raw_pullback(out_bar, trace_bar, frob_bar)
            return z_bar, dict(zip(params, grads, strict=True))

        return outputs, pullback

    def forward_with_divergence(self, t: Tensor | float, z: Tensor,
                                context: Tensor | None = None,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        r"""f(t, z) (or f(t, z; c)) with the exact divergence tr(∂f/∂z) per row, by forward
        Jacobian propagation.

        The Jacobian of the activations with respect to z is carried through the layers with
        them: with x_0 = z, p_k = (W_k x_{k−1} + b_k) ⊙ g_k + d_k t, g_k = σ(a_k t + c_k),
        x_k = φ(p_k),

        .. math:: \frac{\partial x_k}{\partial z} = \operatorname{diag}(\varphi'(p_k) \odot g_k)
            \, W_k \, \frac{\partial x_{k-1}}{\partial z},

        one batched matrix product of D rows per layer (the cost of D extra forward passes,
        as plain operations with no double backward), and only the diagonal of the last
        layer's Jacobian is formed unless the Frobenius norm is asked for. Use for small D; for
        large D, Hutchinson's estimator is cheaper. Without a context and with one time for all
        rows the gates fold into the weights and a fused-capable activation takes the
        hand-written backward of :mod:`cnflow.nn.fused` (the solvers' hot path); a context
        makes the gates differ by row (and with ``"concat"`` only the first layer's z-columns
        of W enter the Jacobian), and autograd differentiates the propagation.

        Arguments:
            t: a scalar or one time per row.
            z: shape (n, D).
            context: shape (n, context_features), exactly when the network has
                ``context_features``.
            frobenius: also return ‖∂f/∂z‖²_F per row.

        Returns:
            ``(f, trace)`` of shapes (n, D) and (n,), or ``(f, trace, frobenius)``.
        """
        if not self.has_analytic_divergence:
            raise ValueError("forward_with_divergence needs a built-in activation and "
                             "out_features == in_features")
        derivative = activation_of(self.activation).derivative
        tc = _time_column(t, z)
        if self._check_context(z, context):
            return self._with_divergence_given(derivative, tc, z, context, frobenius)
        n = z.shape[0]
        fused = self._fused_activation()
        if tc.shape[0] == 1 and fused is not None:
            # the solvers' case: hand-written backward (cnflow.nn.fused)
            return concat_squash_with_divergence(fused, z, tc.reshape(()),
                                                 self.layer_parameters(), frobenius=frobenius)
        x = z
        jac = None  # (n, D, width): row d is ∂x/∂z_d, i.e. the Jacobian transposed
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if tc.shape[0] == 1:  # one time: the gate folds into the weights (see affine_at)
                weight, bias = layer.affine_at(tc)
                p = F.linear(x, weight, bias)
            else:  # one time per row: diag(g_row) W differs by row; gate the outputs
                gate = torch.sigmoid(layer.gate(tc))  # (n, out)
                p = layer.linear(x) * gate + layer.hyper_bias(tc)
                weight = layer.linear.weight
            if k == last:
                dz = p
                if jac is None:  # a single layer: the Jacobian is diag(g) W for every row
                    jac_last = weight.T.unsqueeze(0) if tc.shape[0] == 1 else \
                        gate.unsqueeze(1) * weight.T.unsqueeze(0)
                    trace = torch.diagonal(jac_last, dim1=1, dim2=2).sum(-1).expand(n)
                    frob = jac_last.square().sum((1, 2)).expand(n)
                elif tc.shape[0] == 1:
                    # Σ_d Σ_i W'[d, i] J[:, d, i]: one matrix-vector product
                    trace = jac.reshape(n, -1) @ weight.reshape(-1)
                    frob = (jac @ weight.T).square().sum((1, 2)) if frobenius else trace
                else:
                    # diag_d = g_d Σ_i W[d, i] J[:, d, i]
                    trace = (gate * (jac * weight.unsqueeze(0)).sum(-1)).sum(-1)
                    frob = ((jac @ weight.T) * gate.unsqueeze(1)).square().sum((1, 2)) \
                        if frobenius else trace
                break
            h = self.activation(p)
            scale = derivative(p, h)
            if tc.shape[0] != 1:
                scale = scale * gate
            scale = scale.unsqueeze(1)  # (n, 1, out)
            # (the first layer's D×width Jacobian made contiguous, so that the next product
            # is one matrix multiply rather than a strided batched one)
            jac = scale * (weight.T.contiguous().unsqueeze(0) if jac is None
                           else jac @ weight.T)
            x = h
        return (dz, trace, frob) if frobenius else (dz, trace)

    def _with_divergence_given(self, derivative: Callable, tc: Tensor, z: Tensor,
                               context: Tensor, frobenius: bool) -> tuple[Tensor, ...]:
        """:meth:`forward_with_divergence` with a context: per-row gates throughout."""
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
