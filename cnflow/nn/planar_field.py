r"""The planar CNF's velocity field (Chen et al. 2018), with a closed-form divergence."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_positive_int
from .activations import ACTIVATION_TABLE, ACTIVATIONS, activation_of
from .concat_squash import _time_column

__all__ = ["PlanarCNFField"]


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
        dim = check_positive_int(dim, "dim")
        n_units = check_positive_int(n_units, "n_units")
        hyper_hidden = check_positive_int(hyper_hidden, "hyper_hidden")
        if not isinstance(activation, str) or activation not in ACTIVATION_TABLE:
            raise ValueError(f"unknown activation {activation!r}; valid: "
                             f"{', '.join(ACTIVATION_TABLE)}")
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
        s = activation_of(self.activation).derivative(p, h)  # (n, M)
        trace = (s * (u * w).sum(-1)).sum(-1)  # u·w: (1 or n, M)
        if not frobenius:
            return dz, trace
        gram = (u @ u.transpose(1, 2)) * (w @ w.transpose(1, 2))  # (1 or n, M, M)
        if gram.shape[0] == 1:
            frob = ((s @ gram[0]) * s).sum(-1)
        else:
            frob = torch.einsum("nm,nml,nl->n", s, gram, s)
        return dz, trace, frob
