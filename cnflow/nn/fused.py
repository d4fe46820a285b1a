r"""A concat-squash MLP's output and exact divergence at one time t, with a hand-written
backward pass.

At one time t each concat-squash layer is affine, :math:`W'_k = \operatorname{diag}(g_k) W_k`,
:math:`b'_k = g_k \odot b_k + d_k t` with the gate :math:`g_k = \sigma(a_k t + c_k)`. For the
network :math:`x_k = \varphi(p_k)`, :math:`p_k = W'_k x_{k-1} + b'_k` (:math:`x_{-1} = z`,
hidden layers k = 0 … L−1) and output :math:`f = W'_L x_{L-1} + b'_L` (primes dropped below),
the Jacobian is carried forward with the activations (rows indexed by the input coordinate d),

.. math:: M_k = J_{k-1} W_k^\top, \qquad J_k = M_k \odot \varphi'(p_k), \qquad
    J_{-1} = I, \qquad \operatorname{tr} \frac{\partial f}{\partial z}
    = \sum_{d, i} W_L[d, i]\, J_{L-1}[d, i].

The vector-Jacobian product of :math:`(f, \operatorname{tr})` with :math:`(\bar f, \bar\tau)`
runs the chain rule back through those recurrences by hand:

.. math:: \bar J_{L-1} = \bar\tau\, W_L, \quad \bar x_{L-1} = W_L^\top \bar f, \quad
    \bar M_k = \bar J_k \odot \varphi'(p_k), \quad
    \bar s_k = \textstyle\sum_d \bar J_k[d] \odot M_k[d],

.. math:: \bar p_k = \varphi'(p_k) \odot \bar x_k + \varphi''(p_k) \odot \bar s_k, \quad
    \bar x_{k-1} = W_k^\top \bar p_k, \quad \bar J_{k-1} = \bar M_k W_k, \quad
    \bar W_k = \bar p_k x_{k-1}^\top + \textstyle\sum_d \bar M_k[d]^\top J_{k-1}[d],

and then through the folding: :math:`\bar W = \operatorname{diag}(g) \bar W'`,
:math:`\bar b = g \odot \bar b'`, :math:`\bar g = \sum_i \bar W'_{:, i} \odot W_{:, i} + \bar b'
\odot b`, :math:`\bar c = \bar g \odot g (1 - g)`, :math:`\bar a = t \bar c`,
:math:`\bar d = t \bar b'`, :math:`\bar t = \sum_k a_k \cdot \bar c_k + d_k \cdot \bar b'_k`.

The ODE solvers call this once per stage, and the adjoint once per backward stage; one
autograd node with a dozen matrix products and elementwise ops per layer replaces some 150
small autograd nodes (``benchmarks/bench_peers.py`` measures the training step). It is used by
:meth:`cnflow.nn.ConcatSquashMLP.forward_with_divergence` for one time for all rows and an
activation whose row of :data:`cnflow.nn.activations.ACTIVATION_TABLE` gives φ'' (tanh,
sigmoid, softplus: :data:`FUSED_ACTIVATIONS`), with or without the Frobenius norm
:math:`\|J_f\|_F^2 = \|J_{L-1} W_L^\top\|_F^2`; gradients through it are first order only
(a second derivative raises).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .activations import ACTIVATION_TABLE, Activation

__all__ = ["FUSED_ACTIVATIONS", "concat_squash_with_divergence", "concat_squash_vjp"]

#: The names of the fused-capable activations: the rows of
#: :data:`~cnflow.nn.activations.ACTIVATION_TABLE` with a second derivative.
FUSED_ACTIVATIONS = tuple(name for name, row in ACTIVATION_TABLE.items() if row.fused)


def _layer(act: Activation, x: Tensor, weight: Tensor,
           bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """h = φ(p), φ'(p) and q = c p for p = W x + b, c the row's ``input_scale`` (folded into
    the matrix product: tanh is evaluated as 2σ(2p) − 1, see :class:`Activation`)."""
    scale = act.input_scale
    q = torch.addmm(bias, x, weight.T, beta=scale, alpha=scale)
    h, s = act.evaluate(q)
    return h, s, q


def _forward(act: Activation, frobenius: bool, z: Tensor, t: Tensor,
             raw: Sequence[Tensor], keep: bool = True,
             ) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """The outputs ``(f, trace[, frobenius])`` and what :func:`_backward` needs (the
    pre-activations p too where the row's backward needs them). Without ``keep`` (no
    backward to follow) nothing is saved and each layer's Jacobian is scaled in place, so
    that one (n, D, width) buffer a layer is written once and none is held (about a quarter
    less time than the kept form when scoring a 64-D table with a 128-wide field on 2 CPU
    cores)."""
    # per layer: linear weight W, bias b, gate weight a (out, 1), gate bias c, shift d (out, 1)
    layers = [raw[i:i + 5] for i in range(0, len(raw), 5)]
    gates = [torch.sigmoid(torch.addcmul(c, a[:, 0], t)) for _, _, a, c, _ in layers]
    weights = [w * g.unsqueeze(1) for (w, *_), g in zip(layers, gates, strict=True)]
    biases = [torch.addcmul(d[:, 0] * t, b, g)
              for (_, b, _, _, d), g in zip(layers, gates, strict=True)]
    n, dim = z.shape
    keep_p = act.pre_activation_grad is None
    hs, ss, ms, js, ps = [], [], [], [], []
    x, jac = z, None
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        h, s, q = _layer(act, x, weight, bias)
        if jac is None:  # J_{-1} = I: M_0 = W_0ᵀ for every row (not stored)
            jac = s.unsqueeze(1) * weight.T.contiguous().unsqueeze(0)
        else:
            m = (jac.reshape(n * dim, -1) @ weight.T).reshape(n, dim, -1)
            if keep:
                ms.append(m)
                jac = m * s.unsqueeze(1)
            else:
                jac = m.mul_(s.unsqueeze(1))
        if keep:
            if keep_p:
                ps.append(q if act.input_scale == 1 else q / act.input_scale)
            hs.append(h)
            ss.append(s)
            js.append(jac)
        x = h
    out = torch.addmm(biases[-1], x, weights[-1].T)
    saved = [z, t, *raw, *gates, *weights, *hs, *ss, *ms, *js, *ps] if keep else []
    if not frobenius:
        return (out, jac.reshape(n, -1) @ weights[-1].reshape(-1)), saved
    # the whole D×D Jacobian of f (transposed): J_f[d, e] = ∂f_e/∂z_d
    jac_f = (jac.reshape(n * dim, -1) @ weights[-1].T).reshape(n, dim, dim)
    trace = torch.diagonal(jac_f, dim1=1, dim2=2).sum(-1)
    if keep:
        saved.append(jac_f)
    return (out, trace, jac_f.square().sum((1, 2))), saved


def _backward(act: Activation, frobenius: bool, saved: Sequence[Tensor], out_bar: Tensor,
              trace_bar: Tensor, frob_bar: Tensor | None,
              ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """z̄, t̄ and the raw parameters' gradients from the cotangents of the outputs."""
    # saved: z, t; per layer 5 raw, g, W'; per hidden layer h, s, J, (but the first) M and
    # (where the row's backward needs it) p
    keep_p = act.pre_activation_grad is None
    n_layers, leftover = divmod(len(saved) - frobenius + 3 + keep_p, 11 + keep_p)
    assert leftover == 0, "not what _forward saved"
    n_hidden = n_layers - 1
    z, t = saved[0], saved[1]
    raw = saved[2:2 + 5 * n_layers]
    gates = saved[2 + 5 * n_layers:2 + 6 * n_layers]
    weights = saved[2 + 6 * n_layers:2 + 7 * n_layers]
    rest = saved[2 + 7 * n_layers:]
    hs, ss = rest[:n_hidden], rest[n_hidden:2 * n_hidden]
    ms, js = rest[2 * n_hidden:3 * n_hidden - 1], rest[3 * n_hidden - 1:4 * n_hidden - 1]
    ps = rest[4 * n_hidden - 1:5 * n_hidden - 1] if keep_p else [None] * n_hidden
    n, dim = z.shape
    grads: list[Tensor] = [z] * (2 * len(weights))  # placeholders, all overwritten
    last = weights[-1]
    grads[-1] = out_bar.sum(0)
    grads[-2] = out_bar.T @ hs[-1] + (trace_bar @ js[-1].reshape(n, -1)).reshape(last.shape)
    x_bar = out_bar @ last
    jac_bar = trace_bar[:, None, None] * last.unsqueeze(0)
    if frobenius:  # ‖J_f‖²_F with J_f = J Wᵀ: J̄ += 2 r̄ J_f W, W̄ += Σ 2 r̄ J_fᵀ J
        jac_f_bar = (2 * frob_bar)[:, None, None] * rest[-1]
        jac_bar = jac_bar + (jac_f_bar.reshape(n * dim, dim) @ last).reshape(n, dim, -1)
        grads[-2] = grads[-2] + jac_f_bar.reshape(n * dim, dim).T @ js[-1].reshape(
            n * dim, -1)
    for k in range(n_hidden - 1, -1, -1):
        weight, h, s = weights[k], hs[k], ss[k]
        m_bar = jac_bar * s.unsqueeze(1)
        m = ms[k - 1] if k > 0 else weight.T.unsqueeze(0)
        p_bar = act.pre_activation_cotangent(ps[k], h, s, x_bar, (jac_bar * m).sum(1))
        x_prev = hs[k - 1] if k > 0 else z
        weight_bar = p_bar.T @ x_prev
        if k > 0:
            width = weight.shape[0]
            flat_m_bar = m_bar.reshape(n * dim, width)
            weight_bar = weight_bar + flat_m_bar.T @ js[k - 1].reshape(n * dim, -1)
            jac_bar = (flat_m_bar @ weight).reshape(n, dim, -1)
        else:
            weight_bar = weight_bar + m_bar.sum(0).T
        grads[2 * k], grads[2 * k + 1] = weight_bar, p_bar.sum(0)
        x_bar = p_bar @ weight
    # through the folding W' = diag(g) W, b' = g ⊙ b + d t, g = σ(a t + c)
    raw_grads: list[Tensor] = []
    t_bar = torch.zeros_like(t)
    for k, gate in enumerate(gates):
        w, b, a, _, d = raw[5 * k:5 * k + 5]
        w_bar, b_bar = grads[2 * k], grads[2 * k + 1]
        gate_bar = (w_bar * w).sum(1) + b_bar * b
        c_bar = gate_bar * gate * (1 - gate)
        raw_grads += [w_bar * gate.unsqueeze(1), b_bar * gate, (c_bar * t).unsqueeze(1),
                      c_bar, (b_bar * t).unsqueeze(1)]
        t_bar = t_bar + (c_bar * a[:, 0]).sum() + (b_bar * d[:, 0]).sum()
    return x_bar, t_bar, raw_grads


class _MLPWithDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, act: Activation, frobenius: bool, z: Tensor, t: Tensor, *raw: Tensor):
        outputs, saved = _forward(act, frobenius, z, t, raw)
        ctx.act, ctx.frobenius = act, frobenius
        ctx.save_for_backward(*saved)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, out_bar: Tensor, trace_bar: Tensor, frob_bar: Tensor | None = None):
        z_bar, t_bar, raw_grads = _backward(ctx.act, ctx.frobenius, ctx.saved_tensors,
                                            out_bar, trace_bar, frob_bar)
        return (None, None, z_bar, t_bar, *raw_grads)


def _check(activation: str | Activation, layers: Sequence[Sequence[Tensor]]) -> Activation:
    """The row of the activation, after checking that it and the layers suit the fused path."""
    if isinstance(activation, Activation):
        if not activation.fused:
            raise ValueError("the activation has no second derivative, needed by the fused "
                             "backward")
        act = activation
    elif activation in FUSED_ACTIVATIONS:
        act = ACTIVATION_TABLE[activation]
    else:
        raise ValueError(
            f"unknown activation {activation!r}; valid: {', '.join(FUSED_ACTIVATIONS)}")
    if len(layers) < 2 or any(len(layer) != 5 for layer in layers):
        raise ValueError("need at least two layers, each given as (W, b, a, c, d)")
    return act


def concat_squash_with_divergence(activation: str | Activation, z: Tensor, t: Tensor,
                                  layers: Sequence[Sequence[Tensor]],
                                  frobenius: bool = False) -> tuple[Tensor, ...]:
    r"""f(t, z) and tr(∂f/∂z) (and ‖∂f/∂z‖²_F) of a concat-squash MLP at one time t (at least
    one hidden layer), with ``activation`` between the layers.

    Arguments:
        activation: a name from :data:`FUSED_ACTIVATIONS`, or a fused-capable row
            (:class:`cnflow.nn.activations.Activation` with a second derivative).
        z: shape (n, D).
        t: the time, a 0-d tensor of z's dtype.
        layers: per layer ``(W, b, a, c, d)``: the linear weight (out, in) and bias (out,), the
            gate's weight (out, 1) and bias (out,), the time shift's weight (out, 1) (the
            parameters of :class:`cnflow.nn.ConcatSquashLinear`, as
            :meth:`cnflow.nn.ConcatSquashMLP.layer_parameters` gives them).
        frobenius: also return ‖∂f/∂z‖²_F per row (the RNODE regulariser's integrand).

    Returns:
        ``(f, trace)``, shapes (n, D) and (n,); or ``(f, trace, frobenius)``.

    Example:
        >>> import torch
        >>> from cnflow.nn.fused import concat_squash_with_divergence
        >>> from cnflow.nn import ConcatSquashMLP
        >>> net = ConcatSquashMLP(2, hidden=(8,))
        >>> layers = net.layer_parameters()  # (W, b, a, c, d) per layer
        >>> f, tr = concat_squash_with_divergence("tanh", torch.randn(5, 2), torch.tensor(0.5),
        ...                                       layers)
        >>> f.shape, tr.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    act = _check(activation, layers)
    raw = [p for layer in layers for p in layer]
    if not torch.is_grad_enabled():  # e.g. the adjoint's forward solve: no graph to record
        return _forward(act, bool(frobenius), z, t, raw, keep=False)[0]
    return _MLPWithDivergence.apply(act, bool(frobenius), z, t, *raw)


#: ``pullback(f̄, τ̄, r̄) -> (z̄, parameter gradients)``, see :func:`concat_squash_vjp`.
Pullback = Callable[[Tensor, Tensor, "Tensor | None"], tuple[Tensor, list[Tensor]]]


def concat_squash_vjp(activation: str | Activation, z: Tensor, t: Tensor,
                      layers: Sequence[Sequence[Tensor]], frobenius: bool = False,
                      ) -> tuple[tuple[Tensor, ...], Pullback]:
    r"""The outputs of :func:`concat_squash_with_divergence` and their pullback, without
    autograd: ``pullback(f̄, τ̄, r̄)`` returns the vector-Jacobian products
    :math:`\bar z = \bar f^\top \partial f/\partial z + \bar\tau^\top \partial\tau/\partial z
    (+ \bar r^\top \partial r/\partial z)` and the same for every parameter, in the order
    of ``layers`` flattened (r̄ only with ``frobenius``).

    The adjoint method needs exactly this at every stage of its backward solve; calling the
    forward and backward passes directly skips the autograd graph and engine.

    Example:
        >>> import torch
        >>> from cnflow.nn.fused import concat_squash_vjp
        >>> from cnflow.nn import ConcatSquashMLP
        >>> net = ConcatSquashMLP(2, hidden=(8,))
        >>> layers = net.layer_parameters()  # (W, b, a, c, d) per layer
        >>> (f, tr), pullback = concat_squash_vjp("tanh", torch.randn(5, 2), torch.tensor(0.5),
        ...                                       layers)
        >>> z_bar, grads = pullback(torch.ones(5, 2), torch.ones(5), None)
        >>> z_bar.shape, len(grads)
        (torch.Size([5, 2]), 10)
    """
    act = _check(activation, layers)
    raw = [p.detach() for layer in layers for p in layer]
    with torch.no_grad():
        outputs, saved = _forward(act, bool(frobenius), z.detach(), t.detach(), raw)

    def pullback(out_bar: Tensor, trace_bar: Tensor,
                 frob_bar: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        if frobenius and frob_bar is None:
            raise ValueError("frobenius=True needs the cotangent of the Frobenius norm")
        with torch.no_grad():
            z_bar, _, raw_grads = _backward(act, bool(frobenius), saved, out_bar, trace_bar,
                                            frob_bar)
        return z_bar, raw_grads

    return outputs, pullback
