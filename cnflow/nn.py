r"""Time-dependent networks for the dynamics of neural ODEs and continuous normalizing flows.

A CNF's velocity field :math:`f(z, t)` must depend on time as well as the state. The
concat-squash layer of FFJORD (Grathwohl et al. 2019) brings t in twice, as a gate and as a
bias,

.. math:: \operatorname{layer}(x, t) = (W x + b) \odot \sigma(a t + c) + d\, t,

and :class:`ConcatSquashMLP` stacks such layers with a smooth activation in between.
:class:`PlanarCNFField` is the planar CNF of Chen et al. (2018): a sum of M planar units whose
parameters a hypernetwork makes from t, with a closed-form divergence. Every module here is
called as ``module(t, x)``, the argument order of ODE dynamics ``f(t, z)``, except
:class:`ODEBlock`, the ODE-Net layer h ↦ h(T) that wraps such dynamics (Chen et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._fused_divergence import concat_squash_vjp, concat_squash_with_divergence
from .ode import NFECounts, SolveOptions, SolverStats
from .ode.inputs import check_tolerances, resolve_method
from .ode.solve import DEFAULT_MAX_NUM_STEPS

__all__ = ["ConcatSquashLinear", "ConcatSquashMLP", "PlanarCNFField", "ODEBlock", "ACTIVATIONS",
           "ACTIVATION_DERIVATIVES"]

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


#: The activations with a hand-written backward of the exact divergence.
_FUSED_KINDS = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Softplus: "softplus"}


def _time_column(t: Tensor | float, like: Tensor) -> Tensor:
    """t as a column to broadcast against x (..., features): (1, 1) for a scalar, (n, 1)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, 1)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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
        if tc.shape[0] == 1:  # one time for all rows: one affine map
            return F.linear(x, *self.affine_at(tc))
        return self.linear(x) * torch.sigmoid(self.gate(tc)) + self.hyper_bias(tc)

    def affine_at(self, tc: Tensor) -> tuple[Tensor, Tensor]:
        r"""The layer at one time t as an affine map: :math:`(\operatorname{diag}(g) W,\;
        g \odot b + d\, t)` with :math:`g = \sigma(a t + c)`.

        Folding the gate into the weights turns the layer into a single matrix product on
        the batch (the gate is applied to the 64×64 weights, not to every row), which is how
        the ODE solvers, with one t for all rows, evaluate it.

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

    def _fused_kind(self) -> str | None:
        """The activation's name when the hand-written backward applies, else None."""
        fused = _FUSED_KINDS.get(type(self.activation))
        if isinstance(self.activation, nn.Softplus) and self.activation.threshold != 20.0:
            return None  # F.softplus's default threshold is what the fused path computes
        if len(self.layers) < 2 or not self.has_analytic_divergence:
            return None
        return fused

    def _fused_layers(self) -> list[tuple[Tensor, ...]]:
        return [(layer.linear.weight, layer.linear.bias, layer.gate.weight, layer.gate.bias,
                 layer.hyper_bias.weight) for layer in self.layers]

    def divergence_vjp(self, t: Tensor, z: Tensor, frobenius: bool = False
                       ) -> tuple[tuple[Tensor, ...], Callable] | None:
        r""":meth:`forward_with_divergence` at one time t with its pullback, outside autograd.

        Returns ``None`` where the hand-written backward does not apply (an activation other
        than tanh, sigmoid or softplus, or a single layer). Else ``(outputs, pullback)``:
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
        kind = self._fused_kind()
        if kind is None:
            return None
        layers = self._fused_layers()
        outputs, raw_pullback = concat_squash_vjp(kind, z, t.reshape(()), layers,
                                                  frobenius=frobenius)
        params = [p for layer in layers for p in layer]

        def pullback(out_bar: Tensor, trace_bar: Tensor, frob_bar: Tensor | None = None):
            z_bar, grads = raw_pullback(out_bar, trace_bar, frob_bar)
            return z_bar, dict(zip(params, grads, strict=True))

        return outputs, pullback

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
        n = z.shape[0]
        fused = self._fused_kind()
        if tc.shape[0] == 1 and fused is not None:
            # the solvers' case: hand-written backward (cnflow._fused_divergence)
            return concat_squash_with_divergence(fused, z, tc.reshape(()), self._fused_layers(),
                                                 frobenius=frobenius)
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



class PlanarCNFField(nn.Module):
    r"""The planar CNF of Chen et al. (2018): M planar units with time-dependent parameters.

    .. math:: f(z, t) = \sum_{m=1}^{M} u_m(t)\, h\big(w_m(t)^\top z + b_m(t)\big),

    with :math:`u_m(t), w_m(t) \in \mathbb{R}^D` and :math:`b_m(t) \in \mathbb{R}` the outputs
    of a hypernetwork of the scalar t, ``Linear(1, H) → tanh → Linear(H, H) → tanh →
    Linear(H, ·)``. As in Chen et al.'s reference code, :math:`u_m` is gated,
    :math:`u_m = \hat u_m \odot \sigma(g_m)`, by a further output :math:`g_m \in \mathbb{R}^D`
    (``gated=False`` drops the gate). The continuous flow is the limit of a stack of planar
    flows, but unlike them needs no invertibility constraint on :math:`u, w`, and its
    divergence is in closed form, :math:`O(MD)` a row:

    .. math:: \operatorname{tr}\frac{\partial f}{\partial z}
        = \sum_m h'(w_m^\top z + b_m)\, u_m^\top w_m,
        \qquad \Big\|\frac{\partial f}{\partial z}\Big\|_F^2 = s^\top \big((U U^\top) \odot
        (W W^\top)\big)\, s,

    with :math:`s_m = h'(w_m^\top z + b_m)` and U, W the (M, D) matrices of rows
    :math:`u_m, w_m` (the Frobenius norm costs :math:`O(M^2 D)`), see
    :meth:`forward_with_divergence`.

    Arguments:
        dim: the dimension D of the state.
        n_units: the number M of planar units.
        hyper_hidden: the width H of the hypernetwork's hidden layers.
        activation: h, a name from :data:`ACTIVATIONS` (``"tanh"`` default, ``"softplus"``,
            ``"elu"``, ``"silu"``/``"swish"``, ``"sigmoid"``).
        gated: gate :math:`u_m` by a sigmoid of a hypernetwork output (Chen et al.'s code).

    Attributes:
        hyper: the hypernetwork, an ``nn.Sequential`` from t, shape (k, 1), to the
            parameters of the k times, shape (k, M (3D + 1)) (k, M (2D + 1) without the gate).
        activation: h, an ``nn.Module``.

    Example:
        >>> import torch
        >>> from cnflow.nn import PlanarCNFField
        >>> f = PlanarCNFField(2, n_units=4)
        >>> z = torch.randn(5, 2)
        >>> f(torch.tensor(0.5), z).shape
        torch.Size([5, 2])
        >>> dz, div = f.forward_with_divergence(0.5, z)
        >>> div.shape
        torch.Size([5])

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations",
        section 4 (continuous normalizing flows).
        Rezende & Mohamed (2015), "Variational inference with normalizing flows".
    """

    def __init__(self, dim: int, n_units: int = 8, hyper_hidden: int = 32,
                 activation: str = "tanh", *, gated: bool = True) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("n_units", n_units), ("hyper_hidden", hyper_hidden)):
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        valid = [name for name, cls in ACTIVATIONS.items() if cls in ACTIVATION_DERIVATIVES]
        if not isinstance(activation, str) or activation not in valid:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(valid)}")
        self.dim, self.n_units, self.gated = dim, n_units, bool(gated)
        self.activation = ACTIVATIONS[activation]()
        n_out = n_units * ((3 if self.gated else 2) * dim + 1)
        self.hyper = nn.Sequential(
            nn.Linear(1, hyper_hidden), nn.Tanh(),
            nn.Linear(hyper_hidden, hyper_hidden), nn.Tanh(),
            nn.Linear(hyper_hidden, n_out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_units={self.n_units}, gated={self.gated}"

    def parameters_at(self, t: Tensor | float, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The units' parameters :math:`u(t), w(t), b(t)` from the hypernetwork.

        Arguments:
            t: a scalar (0-d tensor or float), or one time per row, shape (k,) or (k, 1).
            like: a tensor whose dtype and device t takes.

        Returns:
            ``(u, w, b)`` of shapes (k, M, D), (k, M, D) and (k, M), with k = 1 for a scalar t
            (one hypernetwork call, shared by every row).
        """
        tc = _time_column(t, like)
        k, m, d = tc.shape[0], self.n_units, self.dim
        params = self.hyper(tc)
        w = params[:, : m * d].reshape(k, m, d)
        u = params[:, m * d: 2 * m * d].reshape(k, m, d)
        if self.gated:
            u = u * torch.sigmoid(params[:, 2 * m * d: 3 * m * d].reshape(k, m, d))
        b = params[:, -m:]
        return u, w, b

    def _units(self, t: Tensor | float, z: Tensor):
        """u, w, b, the pre-activations p = w_mᵀz + b_m (n, M) and h(p)."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (n, {self.dim}), got {tuple(z.shape)}")
        u, w, b = self.parameters_at(t, z)
        if u.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"t must be a scalar or hold one time per row of z ({z.shape[0]}),"
                             f" got {u.shape[0]} times")
        if u.shape[0] == 1:
            p = z @ w[0].T + b
        else:
            p = torch.einsum("nmd,nd->nm", w, z) + b
        return u, w, p, self.activation(p)

    @staticmethod
    def _combine(u: Tensor, h: Tensor) -> Tensor:
        """Σ_m h_m u_m per row: (n, M) with u (1 or n, M, D) -> (n, D)."""
        if u.shape[0] == 1:
            return h @ u[0]
        return torch.einsum("nm,nmd->nd", h, u)

    def forward(self, t: Tensor | float, z: Tensor) -> Tensor:
        """f(t, z): t a scalar or one time per row ((n,) or (n, 1)), z of shape (n, D)."""
        u, _, _, h = self._units(t, z)
        return self._combine(u, h)

    @property
    def has_analytic_divergence(self) -> bool:
        """Always true: :meth:`forward_with_divergence` gives the divergence in closed form."""
        return True

    def forward_with_divergence(self, t: Tensor | float, z: Tensor,
                                frobenius: bool = False) -> tuple[Tensor, ...]:
        r"""f(t, z) with the exact divergence tr(∂f/∂z) per row, in closed form.

        The Jacobian of a row is a sum of M rank-one matrices,
        :math:`J = \sum_m s_m u_m w_m^\top = U^\top \operatorname{diag}(s) W` with
        :math:`s_m = h'(w_m^\top z + b_m)`, so

        .. math:: \operatorname{tr} J = \sum_m s_m\, u_m^\top w_m, \qquad
            \|J\|_F^2 = \sum_{m, l} s_m s_l\, (u_m^\top u_l)(w_m^\top w_l)
            = s^\top G s, \quad G = (U U^\top) \odot (W W^\top),

        :math:`O(MD)` and :math:`O(M^2 D)` a distinct time, plus :math:`O(M)` and
        :math:`O(M^2)` a row; plain operations, no autograd, and differentiable in the
        hypernetwork's parameters.

        Arguments:
            t: a scalar or one time per row.
            z: shape (n, D).
            frobenius: also return ‖∂f/∂z‖²_F per row.

        Returns:
            ``(f, trace)`` of shapes (n, D) and (n,), or ``(f, trace, frobenius)``.
        """
        u, w, p, h = self._units(t, z)
        dz = self._combine(u, h)
        s = ACTIVATION_DERIVATIVES[type(self.activation)](p, h)  # (n, M)
        trace = (s * (u * w).sum(-1)).sum(-1)  # u·w: (1 or n, M)
        if not frobenius:
            return dz, trace
        gram = (u @ u.transpose(1, 2)) * (w @ w.transpose(1, 2))  # (1 or n, M, M)
        if gram.shape[0] == 1:
            frob = ((s @ gram[0]) * s).sum(-1)
        else:
            frob = torch.einsum("nm,nml,nl->n", s, gram, s)
        return dz, trace, frob


class ODEBlock(NFECounts, nn.Module):
    r"""An ODE-Net layer: the map :math:`h \mapsto h(T)` of the solution of an ODE.

    A residual block computes :math:`h_{k+1} = h_k + f(h_k, \theta_k)`, one Euler step of
    :math:`\mathrm{d}h/\mathrm{d}t = f(h, t, \theta)`. An ODE block takes the limit: it
    returns the state at time T of

    .. math:: \frac{\mathrm{d}h}{\mathrm{d}t} = f(t, h(t); \theta), \qquad h(0) = h_{in},
        \qquad \operatorname{ODEBlock}(h_{in}) = h(T)
        = h_{in} + \int_0^T f(t, h(t); \theta)\, \mathrm{d}t,

    with one set of parameters θ for the whole depth, and the number of evaluations of f (the
    "depth") chosen by the adaptive solver to meet rtol/atol. Gradients come from the adjoint
    method (memory constant in the number of steps) or, with ``adjoint=False``, from
    backpropagation through the solver's operations.

    Arguments:
        func: the dynamics, an ``nn.Module`` called as ``func(t, h)`` with t a 0-d tensor of
            h's dtype, returning a tensor of h's shape. Its parameters are the block's.
        T: the end time, a positive finite number.
        solver: a method of :func:`cnflow.odeint` (``"dopri5"`` default, ``"bosh3"``,
            ``"euler"``, ``"midpoint"``, ``"rk4"``).
        rtol, atol: the adaptive solver's tolerances. The default 1e-3 suits a classifier,
            whose features need no more accuracy than its decisions; a density model (whose
            log-determinant is integrated too) needs tighter ones.
        adjoint: gradients by the adjoint method (True) or by backpropagation (False).
        step_size: the largest step of a fixed-step solver (None: one step over [0, T]).
        max_num_steps: the most steps one solve may attempt.
        seminorm: leave the parameter adjoint out of the adjoint's error control (Kidger,
            Chen & Lyons 2021).

    Attributes:
        stats_forward: :class:`~cnflow.SolverStats` of the forward solve of the last call.
        stats_backward: those of the adjoint solve of that call's backward pass (filled by
            ``backward()``; zero with ``adjoint=False``, where backpropagation re-evaluates
            nothing).
        nfe_forward, nfe_backward: their numbers of function evaluations.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from cnflow.nn import ODEBlock
        >>> class Dynamics(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
        ...     def forward(self, t, h):
        ...         return self.net(h)
        >>> block = ODEBlock(Dynamics())
        >>> h = torch.randn(8, 4)
        >>> block(h).shape
        torch.Size([8, 4])
        >>> block(h).sum().backward()
        >>> block.nfe_forward > 0 and block.nfe_backward > 0
        True

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations",
        section 3 (replacing residual networks with ODEs for supervised learning).
    """

    def __init__(self, func: nn.Module, T: float = 1.0, solver: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-3, adjoint: bool = True, *,
                 step_size: float | None = None, max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
                 seminorm: bool = True) -> None:
        super().__init__()
        if not isinstance(func, nn.Module):
            raise ValueError("func must be an nn.Module called as func(t, h) (its parameters "
                             f"are the block's), got {type(func).__name__}")
        if (isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T)
                or T <= 0):
            raise ValueError(f"T must be a positive finite number, got {T!r}")
        resolve_method(solver, step_size)  # unknown solver names, step_size checks
        check_tolerances(rtol, atol)
        if not _is_positive_int(max_num_steps):
            raise ValueError(f"max_num_steps must be a positive integer, got {max_num_steps!r}")
        self.func = func
        self.T = float(T)
        self.solver = solver
        self.rtol, self.atol = float(rtol), float(atol)
        self.adjoint = bool(adjoint)
        self.step_size = step_size
        self.max_num_steps = max_num_steps
        self.seminorm = bool(seminorm)
        self.stats_forward = SolverStats()
        self.stats_backward = SolverStats()

    def extra_repr(self) -> str:
        return (f"T={self.T:g}, solver={self.solver!r}, rtol={self.rtol:g}, "
                f"atol={self.atol:g}, adjoint={self.adjoint}")

    def forward(self, h: Tensor) -> Tensor:
        """h(T) from h(0) = h: a floating tensor of any shape (batch axes included)."""
        if not isinstance(h, Tensor):
            raise ValueError(f"h must be a torch.Tensor, got {type(h).__name__}")
        if not h.is_floating_point():
            raise ValueError(f"h must be a floating tensor, got dtype {h.dtype}")
        if h.numel() == 0:
            raise ValueError(f"h is empty (shape {tuple(h.shape)})")
        if not bool(torch.isfinite(h).all()):
            raise ValueError("h contains NaN or infinite values")
        t = torch.tensor([0.0, self.T], dtype=h.dtype, device=h.device)
        self.stats_forward, self.stats_backward = SolverStats(), SolverStats()
        options = SolveOptions(method=self.solver, rtol=self.rtol, atol=self.atol,
                               step_size=self.step_size, max_num_steps=self.max_num_steps,
                               adjoint=self.adjoint, seminorm=self.seminorm)
        ys = options.solve(self.func, h, t, params=tuple(self.func.parameters()),
                           stats=self.stats_forward, adjoint_stats=self.stats_backward)
        return ys[-1]
