r"""The continuous normalizing flow: state and log-density integrated jointly.

A CNF transforms data x into a base sample z by the flow of an ODE,
:math:`\dot z = f(z, t)` from :math:`z(0) = x` to :math:`z(T)`, with base
:math:`\mathcal{N}(0, I)` (or any base density module, e.g. a Gaussian mixture, see
:mod:`cnflow.flows.base_density`). By the instantaneous change of variables (Chen et al. 2018) the
log-determinant of the map :math:`x \mapsto z(T)` is the integral of the divergence along the
path, so one solve of the augmented system

.. math:: \frac{\mathrm{d}}{\mathrm{d}t} \begin{bmatrix} z \\ \Delta \end{bmatrix}
    = \begin{bmatrix} f(z, t) \\ \operatorname{tr}(\partial f / \partial z) \end{bmatrix},
    \qquad z(0) = x,\ \Delta(0) = 0,

gives :math:`\log p(x) = \log \mathcal{N}(z(T); 0, I) + \Delta(T)`. Solving the same system
backwards, from :math:`z(T)` at :math:`t = T` to :math:`t = 0`, inverts the map, with
:math:`\Delta(0) = -\int_0^T \operatorname{tr}(\partial f/\partial z)\,\mathrm{d}t`, the
log-determinant of the inverse. The trace is exact or Hutchinson's estimate (FFJORD,
Grathwohl et al. 2019), see :mod:`cnflow.divergence`.

A conditional CNF (``context_features`` > 0) models p(x | c): the field reads a context,
:math:`\dot z = f(z, t; c)`, each row with its own c held fixed along its path, and the change
of variables holds for each fixed c,

.. math:: \log p(x \mid c) = \log \mathcal{N}(z(T); 0, I)
    + \int_0^T \operatorname{tr}\Big(\frac{\partial f}{\partial z}(z(t), t; c)\Big)\,
    \mathrm{d}t ,

the divergence taken with respect to z only (the context is data, not state). Every method
takes the context as an argument of the call and binds it to the field for that solve alone
(:class:`cnflow.nn.WithContext`); the module stores none.

Regularisers (RNODE, Finlay et al. 2020) are integrated as further states of the same solve:
the kinetic energy :math:`\int_0^T \|f\|^2 \mathrm{d}t` and the Jacobian Frobenius norm
:math:`\int_0^T \|\partial f/\partial z\|_F^2 \mathrm{d}t` (exactly with the exact trace, by the
estimate :math:`\|\varepsilon^\top \partial f/\partial z\|^2` with the trace's probe
:math:`\varepsilon` with Hutchinson's).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import divergence
from ..checks import (
    check_finite_array,
    check_int,
    check_nonnegative_int,
    check_positive_int,
    check_positive_real,
)
from ..interfaces import BaseDensity, DivergencePullback
from ..nn import CONDITIONINGS, FIELDS, WithContext
from ..ode import NFECounts, SolveOptions, SolverStats
from ..ode.inputs import check_end_time
from ..ode.options import SolvesODEs, deprecated_solver, options_from
from ..ode.solve import DEFAULT_MAX_NUM_STEPS
from .flow import Flow
from .pairing import PAIRINGS, paired

__all__ = ["CNF", "CNFRegularizers"]


class CNFRegularizers(NamedTuple):
    r"""Per-sample regularisers of a CNF's path (Finlay et al. 2020), each shape (n,).

    Attributes:
        kinetic: :math:`\int_0^T \|f(z(t), t)\|^2 \mathrm{d}t`.
        jacobian: :math:`\int_0^T \|\partial f/\partial z\|_F^2 \mathrm{d}t` (exact with
            ``trace="exact"``; an unbiased estimate with ``trace="hutchinson"``).
    """

    kinetic: Tensor
    jacobian: Tensor


def _softplus_inverse(y: float) -> float:
    """x with softplus(x) = log(1 + e^x) = y > 0, computed stably."""
    return y + math.log(-math.expm1(-y))


def _check_field_signature(net: Callable, context_features: int) -> None:
    """ValueError where ``net`` plainly cannot be called as the flow will call it: ``net(t, z,
    context)`` with ``context_features``, else ``net(t, z)`` (a network that says how many
    context features it reads must agree; a signature that cannot be read passes)."""
    reads = getattr(net, "context_features", None)
    if isinstance(reads, int) and not isinstance(reads, bool) and reads != context_features:
        raise ValueError(f"net reads a context of {reads} features but the CNF has "
                         f"context_features={context_features}")
    try:
        signature = inspect.signature(net.forward if isinstance(net, nn.Module) else net)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*(None,) * (3 if context_features else 2))
    except TypeError:
        call = "net(t, z, context)" if context_features else "net(t, z)"
        hint = ("" if context_features else
                "; a field that reads a context needs CNF(..., context_features=k)")
        raise ValueError(f"the CNF calls {call}, but net's signature is {signature}"
                         f"{hint}") from None


def _checked_trace(trace: object) -> str:
    if trace not in divergence.TRACE_ESTIMATORS:
        raise ValueError(f"unknown trace {trace!r}; valid: "
                         f"{', '.join(divergence.TRACE_ESTIMATORS)}")
    return trace  # type: ignore[return-value]


class _DensityDynamics:
    r"""The system a CNF integrates for densities: on the state (z, Δ) (with the regularisers,
    (z, Δ, K, J)),

    .. math:: \frac{d}{dt}(z, \Delta, K, J) = \left(f, \operatorname{tr}\frac{\partial f}
        {\partial z}, \|f\|^2, \left\|\frac{\partial f}{\partial z}\right\|_F^2\right),

    with the exact trace (``eps`` None) or Hutchinson's estimate with the probes ``eps``.
    Where the network has a hand-written pullback (:meth:`ConcatSquashMLP.divergence_vjp
    <cnflow.nn.ConcatSquashMLP.divergence_vjp>`) and the trace is exact, :meth:`vjp` gives the
    adjoint method its vector-Jacobian products without autograd: with cotangents
    :math:`(\bar z, \bar\Delta, \bar K, \bar J)` the network's output gets
    :math:`\bar z + 2 \bar K f` and its trace and Frobenius norm :math:`\bar\Delta` and
    :math:`\bar J`; Δ, K and J do not enter f, so their own products are zero.
    """

    def __init__(self, net: Callable, method: str, eps: Tensor | None, regularise: bool):
        self.net, self.method, self.eps, self.regularise = net, method, eps, regularise

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        z = state[0]
        if self.eps is None:
            out = divergence.exact(self.net, t, z, method=self.method,
                                   frobenius=self.regularise)
        else:
            out = divergence.hutchinson(self.net, t, z, self.eps, frobenius=self.regularise)
        dz, div = out[0], out[1]
        if not self.regularise:
            return dz, div
        return dz, div, dz.square().sum(-1), out[2]

    def vjp(self, t: Tensor, state: tuple[Tensor, ...], v: tuple[Tensor, ...],
            params: Sequence[Tensor]):
        """(f, vᵀ∂f/∂state, [vᵀ∂f/∂p]) for :func:`cnflow.odeint_adjoint`, or None (autograd)."""
        if self.eps is not None or self.method not in ("auto", "analytic") or \
                not isinstance(self.net, DivergencePullback):
            return None
        got = self.net.divergence_vjp(t, state[0], frobenius=self.regularise)
        if got is None:
            return None
        outputs, pullback = got
        dz, div = outputs[0], outputs[1]
        if self.regularise:
            z_bar, grads = pullback(torch.addcmul(v[0], v[2].unsqueeze(-1), dz, value=2),
                                    v[1], v[3])
            value = (dz, div, dz.square().sum(-1), outputs[2])
        else:
            z_bar, grads = pullback(v[0], v[1], None)
            value = (dz, div)
        return value, (z_bar, *(None,) * (len(state) - 1)), [grads.get(p) for p in params]


class CNF(SolvesODEs, NFECounts, Flow):
    r"""A continuous normalizing flow with base :math:`\mathcal{N}(0, I)` (FFJORD), optionally
    conditional: p(x | c) given a context c.

    Data at :math:`t = 0` are carried by the velocity field ``net(t, z)`` to the base at
    :math:`t = T`; :meth:`log_prob` integrates the state and the log-density together,
    :meth:`sample` integrates base draws backwards, :meth:`transform` maps either way with the
    log-determinant.

    With ``context_features=k`` the flow is conditional: the field is ``net(t, z, context)``
    and every method takes the context, shape (n, k), row i the context of row i, as its
    second argument (``log_prob(x, context)``, ``transform(x, context)``,
    ``flow_matching_loss(x, context)``, ``trajectory(z, context)``); :meth:`sample` and
    :meth:`sample_with_log_prob` draw one x per context row (``sample(context=c)``; an n, if
    given, must equal the number of rows). The context is bound to the field for that call
    only. A conditional flow refuses a call without a context, an unconditional one a call
    with one.

    Arguments:
        dim: the dimension D of the data.
        hidden: widths of the hidden layers of the built-in network (ignored when ``net``
            is given).
        net: the velocity field replacing the built-in network: ``net(t, z) -> dz/dt``
            without ``context_features``, ``net(t, z, context) -> dz/dt`` with them (z of
            shape (n, D), context (n, k), t a 0-d tensor in the solves and an (n, 1) column
            in :meth:`flow_matching_loss`); it must act row by row. An ``nn.Module`` is
            registered (its state_dict is the flow's), and its parameters are trained and get
            adjoint gradients; a plain function has none. A signature that cannot take those
            arguments is refused.
        T: the end time, > 0.
        trace: ``"exact"`` (default) or ``"hutchinson"``, see :mod:`cnflow.divergence`.
        noise: the Hutchinson probes, ``"rademacher"`` (default) or ``"gaussian"``; drawn once
            per solve and held fixed along it.
        method: an ODE method of :func:`cnflow.odeint`: ``"dopri5"`` (default), ``"bosh3"``,
            ``"euler"``, ``"midpoint"``, ``"rk4"`` (``solver``, its old name, is deprecated).
        rtol, atol: the solver's tolerances.
        adjoint: gradients by the adjoint method (constant memory) instead of backpropagation
            through the solver.
        train_T: make T a learnable parameter, kept positive as
            :math:`T = \operatorname{softplus}(\tau)` (FFJORD learns T too).
        activation: the built-in network's activation (see :class:`~cnflow.nn.ConcatSquashMLP`).
        context_features: k, the size of the context c (0, the default: an unconditional flow).
        conditioning: where the built-in network reads c, ``"gates"`` (every layer's gate and
            shift, default) or ``"concat"`` (the first layer's input), see
            :class:`~cnflow.nn.ConcatSquashMLP`.
        exact_method: how the exact trace is computed, one of
            :data:`cnflow.divergence.EXACT_METHODS`: ``"auto"`` (default) propagates the
            Jacobian forward through the built-in network, or runs a loop of D vector-Jacobian
            products for any other ``net`` (the fastest measured; ``benchmarks/bench_trace.py``).
        step_size: the step of a fixed-step solver (None: one step over [0, T]).
        max_num_steps: the most steps one solve may take.
        seminorm: leave the parameter adjoint out of the adjoint's error control (Kidger et al.
            2021).
        base: the base density at t = T, a module with ``log_prob(z)``, ``sample(n,
            generator)`` and ``draw_coupled(x, generator)`` (e.g.
            :class:`cnflow.flows.base_density.GaussianMixtureBase`); None (default) is
            :math:`\mathcal{N}(0, I)`.
        solve_options: all of method, rtol, atol, adjoint, step_size, max_num_steps and
            seminorm at once, as a :class:`cnflow.SolveOptions` (then leave those at their
            defaults).
        field: the built-in network, a key of :data:`cnflow.nn.FIELDS`: ``"dense"``
            (default), a :class:`~cnflow.nn.ConcatSquashMLP`, whose exact trace costs about
            D + 1 forward passes; ``"hollow"``, a :class:`~cnflow.nn.HollowMLP` (Chen &
            Duvenaud 2019), whose exact trace comes in closed form with its forward pass
            (its context enters by ``"gates"`` only). Ignored when ``net`` is given.

    Attributes:
        solve_options: the :class:`~cnflow.SolveOptions` of the flow's solves; ``method``,
            ``rtol``, ``atol``, ``adjoint``, ``step_size``, ``max_num_steps`` and ``seminorm``
            read it (and setting one replaces it with a checked copy).
        stats_forward: :class:`~cnflow.SolverStats` of the forward solve of the last call of
            :meth:`log_prob`, :meth:`sample` or :meth:`transform`.
        stats_backward: those of the adjoint solve made when gradients are taken through that
            call (filled by ``backward()``; left at zero by backpropagation, which evaluates
            nothing anew).
        nfe_forward, nfe_backward: their numbers of function evaluations.

    Example:
        >>> import torch
        >>> from cnflow import CNF
        >>> flow = CNF(2, hidden=(32, 32))
        >>> x = torch.randn(64, 2)
        >>> loss = -flow.log_prob(x).mean()
        >>> loss.backward()
        >>> flow.nfe_forward > 0 and flow.nfe_backward > 0
        True
        >>> flow.sample(5).shape
        torch.Size([5, 2])

        Training with the RNODE regularisers:

        >>> logp, reg = flow.log_prob(x, return_regularizers=True)
        >>> loss = -logp.mean() + 0.01 * reg.kinetic.mean() + 0.01 * reg.jacobian.mean()

        A conditional flow p(y | c):

        >>> cond = CNF(1, hidden=(16, 16), context_features=2)
        >>> y, c = torch.randn(8, 1), torch.randn(8, 2)
        >>> cond.log_prob(y, c).shape, cond.sample(context=c).shape
        (torch.Size([8]), torch.Size([8, 1]))

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations".
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), "FFJORD: Free-form continuous
        dynamics for scalable reversible generative models".
        Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE: the world
        of Jacobian and kinetic regularization".
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        net: Callable[..., Tensor] | None = None,
        T: float = 1.0,
        trace: str = "exact",
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        adjoint: bool = True,
        *,
        train_T: bool = False,
        activation: str | nn.Module = "tanh",
        context_features: int = 0,
        conditioning: str = "gates",
        exact_method: str = "auto",
        step_size: float | None = None,
        max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
        seminorm: bool = True,
        base: nn.Module | None = None,
        solve_options: SolveOptions | None = None,
        solver: str | None = None,
        field: str = "dense",
    ) -> None:
        super().__init__()
        method = deprecated_solver(solver, method, "CNF")
        self.solve_options = options_from(
            solve_options, SolveOptions(), method=method, rtol=rtol, atol=atol, adjoint=adjoint,
            step_size=step_size, max_num_steps=max_num_steps, seminorm=seminorm)
        dim = check_positive_int(dim, "dim")
        _checked_trace(trace)
        if noise not in divergence.NOISE_TYPES:
            raise ValueError(f"unknown noise {noise!r}; valid: {', '.join(divergence.NOISE_TYPES)}")
        if exact_method not in divergence.EXACT_METHODS:
            raise ValueError(f"unknown exact_method {exact_method!r}; valid: "
                             f"{', '.join(divergence.EXACT_METHODS)}")
        check_end_time(T)
        context_features = check_nonnegative_int(context_features, "context_features")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: "
                             f"{', '.join(CONDITIONINGS)}")
        if field not in FIELDS:
            raise ValueError(f"unknown field {field!r}; valid: {', '.join(FIELDS)}")
        self.field = field if net is None else "custom"
        if net is None:
            net = FIELDS[field](dim, hidden, activation=activation,
                                context_features=context_features, conditioning=conditioning)
        elif not callable(net):
            raise ValueError(f"net must be callable as net(t, z), got {type(net).__name__}")
        else:
            _check_field_signature(net, context_features)
        if base is not None:
            if not (isinstance(base, nn.Module) and isinstance(base, BaseDensity)):
                missing = [m for m in ("log_prob", "sample", "draw_coupled")
                           if not callable(getattr(base, m, None))]
                raise ValueError("base must be an nn.Module with log_prob, sample and "
                                 f"draw_coupled; missing: {', '.join(missing) or 'nn.Module'}")
            if getattr(base, "dim", dim) != dim:
                raise ValueError(f"base has dimension {base.dim}, the flow {dim}")
        self.base = base  # a submodule (its buffers follow .to() and state_dict) or None
        self.net = net  # registered as a submodule when it is an nn.Module
        self.dim = dim
        self.context_features = context_features
        self.trace = trace
        self.noise = noise
        self.train_T = bool(train_T)
        self.exact_method = exact_method
        # T (and with it the flow's dtype and device) follows the network's parameters.
        like = next(iter(net.parameters()), None) if isinstance(net, nn.Module) else None
        factory = {} if like is None else {"dtype": like.dtype, "device": like.device}
        if self.train_T:
            self.T_raw = nn.Parameter(torch.tensor(_softplus_inverse(float(T)), **factory))
        else:
            self.register_buffer("T_fixed", torch.tensor(float(T), **factory))
        self.stats_forward = SolverStats()
        self.stats_backward = SolverStats()

    # ------------------------------------------------------------------ properties

    @property
    def T(self) -> Tensor:
        """The end time, a 0-d tensor (differentiable when ``train_T``)."""
        return F.softplus(self.T_raw) if self.train_T else self.T_fixed

    def extra_repr(self) -> str:
        learnable = " (learnable)" if self.train_T else ""
        context = f", context_features={self.context_features}" if self.context_features else ""
        return (f"dim={self.dim}{context}, T={float(self.T.detach()):.4g}{learnable}, "
                f"trace={self.trace!r}, method={self.method!r}, rtol={self.rtol:g}, "
                f"atol={self.atol:g}, adjoint={self.adjoint}")

    # ------------------------------------------------------------------ public methods

    @overload
    def log_prob(self, x: Tensor, context: Tensor | None = ...,
                 return_regularizers: Literal[False] = ..., *,
                 trace: str | None = ..., solve_options: SolveOptions | None = ...,
                 return_regularisers: bool | None = ...) -> Tensor: ...

    @overload
    def log_prob(self, x: Tensor, context: Tensor | None = ..., *,
                 return_regularizers: Literal[True],
                 trace: str | None = ..., solve_options: SolveOptions | None = ...,
                 return_regularisers: bool | None = ...) -> tuple[Tensor, CNFRegularizers]: ...

    def log_prob(self, x: Tensor, context: Tensor | None = None,
                 return_regularizers: bool = False, *,
                 trace: str | None = None, solve_options: SolveOptions | None = None,
                 return_regularisers: bool | None = None):
        r"""The log-density of each row of x (given its context, for a conditional flow).

        .. math:: \log p(x) = \log \mathcal{N}(z(T); 0, I)
            + \int_0^T \operatorname{tr}\left(\frac{\partial f}{\partial z}(z(t), t)\right)
            \mathrm{d}t, \qquad z(0) = x,

        from one solve of the augmented system (with Hutchinson's trace, an unbiased estimate
        of the log-determinant, so of log p(x) up to the estimator's noise). For a conditional
        flow, log p(x | c) with f(z, t; c).

        Arguments:
            x: data, shape (n, dim), of the flow's dtype.
            context: the rows' contexts, shape (n, context_features), of the flow's dtype and
                device; exactly when the flow has ``context_features``.
            return_regularizers: also integrate and return the RNODE regularisers along the
                same path, for a training loss such as
                ``-logp.mean() + λ_K * reg.kinetic.mean() + λ_J * reg.jacobian.mean()``.
            trace: this call's trace estimator (None: the flow's ``trace``), e.g. ``"exact"``
                to score a flow trained with Hutchinson's.
            solve_options: this call's :class:`~cnflow.SolveOptions` (None: the flow's), e.g.
                ``flow.solve_options.replace(rtol=1e-7, atol=1e-7)`` for a tighter score.
            return_regularisers: the earlier spelling of ``return_regularizers``
                (deprecated).

        Returns:
            log p(x), shape (n,); with ``return_regularizers``, the pair ``(log_prob,
            CNFRegularizers(kinetic, jacobian))``, each of shape (n,).
        """
        if return_regularisers is not None:
            warnings.warn("log_prob(return_regularisers=...) is deprecated; use "
                          "return_regularizers=...", DeprecationWarning, stacklevel=2)
            return_regularizers = bool(return_regularisers)
        x = self._check_data(x, "x")
        context = self._given(context, x.shape[0])
        z, logdet, regs = self._flow(x, context, reverse=False, regularise=return_regularizers,
                                     trace=trace, options=solve_options)
        logp = self.base_log_prob(z) + logdet
        if return_regularizers:
            return logp, regs
        return logp

    def sample(self, n: int | None = None, context: Tensor | None = None, *,
               steps: int | None = None, method: str | None = None) -> Tensor:
        r"""n draws from the flow: base draws z integrated from t = T back to 0.

        Only the state is integrated (no trace). Gradients reach the parameters (adjoint or
        backprop, as the flow is set). A conditional flow draws one x per context row:
        ``sample(context=c)``, x[i] ~ p(x | c[i]) (to draw m per context, repeat its rows).

        By default the solve is the flow's own (``solve_options``: dopri5 at rtol = atol =
        1e-5 unless set otherwise). ``steps=K`` asks for a cheap draw instead: K equal steps
        of a fixed-step Runge–Kutta method Φ (``method``, default
        :data:`~cnflow.ode.FEW_STEP_METHOD`, the midpoint rule) from T back to 0,

        .. math:: h = T/K, \qquad t_k = T - k h, \qquad z_{k+1} = \Phi_{-h}(t_k, z_k),
            \quad k = 0, \dots, K - 1, \qquad x = z_K,

        e.g. for the midpoint rule :math:`z_{k+1} = z_k - h\, f\big(z_k - \tfrac h2
        f(z_k, t_k),\ t_k - \tfrac h2\big)`. Its global error is :math:`O(h^p)`, p = 1, 2
        and 4 for ``"euler"``, ``"midpoint"`` and ``"rk4"``, so the draws approach the
        adaptive solve's as K grows; how close a few steps land depends on how straight the
        learned paths are. A draw costs exactly K × s evaluations of the field (s = 1, 2, 4
        stages), whatever the field; ``nfe_forward`` and ``stats_forward`` report them (with
        gradients through a learnable T, the evaluations its time gradient needs are
        added).

        Arguments:
            n: the number of draws; with a context, None or the number of its rows.
            context: shape (m, context_features), exactly when the flow has
                ``context_features``.
            steps: None (default): the flow's solve; K, a positive integer: K fixed steps.
            method: with ``steps``, the fixed-step method, one of
                :data:`cnflow.ode.FIXED_METHODS` (None: ``"midpoint"``).

        Returns:
            Shape (n, dim), of the flow's dtype and device.

        Raises:
            ValueError: ``steps`` not a positive integer (bools, floats and strings are
                refused), ``method`` not a fixed-step method, or ``method`` without
                ``steps``; nothing is drawn then.

        Example:
            >>> import torch
            >>> from cnflow import CNF
            >>> flow = CNF(2, hidden=(16,))
            >>> x = flow.sample(100, steps=4)             # 4 midpoint steps
            >>> x.shape, flow.nfe_forward                 # 4 steps × 2 stages
            (torch.Size([100, 2]), 8)
            >>> _ = flow.sample(100, steps=2, method="rk4")
            >>> flow.nfe_forward
            8
        """
        options = self._sampling_options(steps, method)
        context, n = self._given_draws(n, context)
        return self._carry(self._base_draws(n), context, reverse=True, options=options)

    def encode(self, x: Tensor, context: Tensor | None = None, *,
               solve_options: SolveOptions | None = None) -> Tensor:
        r"""Data rows carried to base points: z(T) of :math:`\dot z = f(z, t)` from z(0) = x.

        Only the state is integrated (no trace), with the flow's solve unless
        ``solve_options`` gives another. The pairs (x, encode(x)) are what reflow trains on
        (:meth:`flow_matching_loss` with ``z``): the flow's own coupling of the data with
        its base, whose straight lines the retrained field follows more closely than the
        crossing lines of independent pairs (Liu, Gong & Liu 2023).

        Arguments:
            x: data, shape (n, dim).
            context: shape (n, context_features), exactly when the flow has
                ``context_features``.
            solve_options: this call's solve (None: the flow's).

        Returns:
            z, shape (n, dim).

        Example:
            >>> import torch
            >>> from cnflow import CNF
            >>> flow = CNF(2, hidden=(8,))
            >>> x = torch.randn(5, 2)
            >>> z = flow.encode(x)
            >>> torch.allclose(z, flow.transform(x)[0], atol=1e-5)
            True
        """
        x = self._check_data(x, "x")
        context = self._given(context, x.shape[0])
        return self._carry(x, context, reverse=False, options=solve_options)

    def decode(self, z: Tensor, context: Tensor | None = None, *,
               solve_options: SolveOptions | None = None) -> Tensor:
        r"""Base points carried to data: z(0) of :math:`\dot z = f(z, t)` from z(T) = z, the
        inverse of :meth:`encode` (what :meth:`sample` does with draws from the base).

        Arguments: z, base points of shape (n, dim); ``context`` and ``solve_options`` as
        in :meth:`encode`. Returns x, shape (n, dim).

        Example:
            >>> import torch
            >>> from cnflow import CNF
            >>> flow = CNF(2, hidden=(8,))
            >>> z = torch.randn(5, 2)
            >>> torch.allclose(flow.encode(flow.decode(z)), z, atol=1e-4)
            True
        """
        z = self._check_data(z, "z")
        context = self._given(context, z.shape[0])
        return self._carry(z, context, reverse=True, options=solve_options)

    def fixed_step_options(self, steps: int, method: str | None = None) -> SolveOptions:
        """The flow's :class:`~cnflow.SolveOptions` changed to solve [0, T] (either way) in
        exactly ``steps`` equal steps of the fixed-step ``method`` (None:
        :data:`~cnflow.ode.FEW_STEP_METHOD`), as :meth:`sample` with ``steps`` uses them;
        give them to :meth:`transform` or :meth:`log_prob` as ``solve_options`` for the same
        fixed-step map elsewhere (e.g. every block of a multiscale image flow).

        The step is T/K with T as the solver reads it (the flow's dtype), so the solve takes
        K steps, not K ± 1 from rounding (see :meth:`cnflow.SolveOptions.with_steps`).

        Example:
            >>> from cnflow import CNF
            >>> options = CNF(2, hidden=(8,), T=0.5).fixed_step_options(5, "rk4")
            >>> options.method, options.step_size
            ('rk4', 0.1)
        """
        return self.solve_options.with_steps(steps, float(self.T.detach()), method)

    def _sampling_options(self, steps: object, method: object) -> SolveOptions | None:
        """The options of a :meth:`sample` call (None: the flow's own), checked before
        anything is drawn."""
        if steps is None:
            if method is not None:
                raise ValueError(f"method={method!r} chooses the fixed-step method of "
                                 "sample(steps=K); give steps too (without steps the flow's "
                                 "own solve is used)")
            return None
        return self.fixed_step_options(steps, method)  # type: ignore[arg-type]

    def trajectory(self, z: Tensor, context: Tensor | None = None,
                   n_times: int = 9) -> tuple[Tensor, Tensor]:
        r"""The paths of base points z from t = T back to t = 0 (the sampling direction).

        .. math:: \dot z = f(z, t), \qquad z(T) = z, \qquad
            t_i = T\,\Big(1 - \frac{i}{n_\text{times} - 1}\Big),\ i = 0, \dots,
            n_\text{times} - 1,

        returning :math:`z(t_i)` for every i, so the last state is what :meth:`sample` makes
        of the same base draws. Only the state is integrated (no trace), with the flow's
        solver, tolerances, step size and step limit, in one solve: an adaptive solver picks
        its own steps and the states are read off at the requested times. ``stats_forward``
        counts the solve. Gradients, if the caller keeps them on, go by backpropagation
        through the solver (never the adjoint); wrap the call in ``torch.no_grad()`` to plot.

        Arguments:
            z: base points, shape (n, dim), of the flow's dtype and device.
            context: their contexts, shape (n, context_features), exactly when the flow has
                ``context_features``.
            n_times: how many evenly spaced times from T to 0, both included (at least 2).

        Returns:
            ``(times, states)``: times of shape (n_times,), decreasing from T to 0, and
            states of shape (n_times, n, dim) with ``states[0] = z`` and ``states[-1]`` the
            samples z maps to.

        Example:
            >>> import torch
            >>> from cnflow import CNF
            >>> times, states = CNF(2, hidden=(8,)).trajectory(torch.randn(5, 2), n_times=4)
            >>> times.shape, states.shape
            (torch.Size([4]), torch.Size([4, 5, 2]))
        """
        z = self._check_data(z, "z")
        context = self._given(context, z.shape[0])
        n_times = check_int(n_times, "n_times", 2)
        T = float(self.T)
        times = torch.linspace(T, 0.0, n_times, dtype=z.dtype, device=z.device)
        field = self._field(context)

        def f(t: Tensor, state: Tensor) -> Tensor:
            return field(t, state)

        self.stats_forward, self.stats_backward = SolverStats(), SolverStats()
        options = self.solve_options.replace(adjoint=False)  # backpropagation, as documented
        return times, options.solve(f, z, times, stats=self.stats_forward)

    def sample_with_log_prob(self, n: int | None = None, context: Tensor | None = None, *,
                             trace: str | None = None, solve_options: SolveOptions | None = None
                             ) -> tuple[Tensor, Tensor]:
        r"""n draws x and their log-densities, from one reverse solve with the trace (one
        draw per context row and its log p(x | c) for a conditional flow, as :meth:`sample`).

        Base draws z ~ N(0, I) at t = T are integrated back to x at t = 0 together with
        :math:`\Delta = \log|\det \partial x/\partial z| = -\int_0^T \operatorname{tr}
        (\partial f/\partial z)\,\mathrm{d}t`, so :math:`\log q(x) = \log \mathcal{N}(z)
        - \Delta`. Both are differentiable in the parameters (reparametrised): the pair that
        density matching, :math:`\mathbb{E}_q[\log q - \log \tilde p]`, needs.

        Arguments:
            n: the number of draws; with a context, None or the number of its rows.
            context: shape (m, context_features), exactly when the flow has
                ``context_features``.
            trace, solve_options: this call's trace estimator and solve (None: the flow's),
                as in :meth:`log_prob`; ``trace="exact"`` gives the log-densities that
                ``log_prob`` with the exact trace gives for the same points, to the solver's
                tolerance.

        Returns:
            ``(x, log_q)`` of shapes (n, dim) and (n,).
        """
        context, n = self._given_draws(n, context)
        z = self._base_draws(n)
        x, logdet, _ = self._flow(z, context, reverse=True, regularise=False, trace=trace,
                                  options=solve_options)
        return x, self.base_log_prob(z) - logdet

    def transform(self, x: Tensor, context: Tensor | None = None, reverse: bool = False, *,
                  trace: str | None = None, solve_options: SolveOptions | None = None
                  ) -> tuple[Tensor, Tensor]:
        r"""The flow's map and its log-determinant, either way.

        Forward: data x at t = 0 to z = z(T), with :math:`\log|\det \partial z/\partial x| =
        \int_0^T \operatorname{tr}(\partial f/\partial z)\,\mathrm{d}t`. Reverse: base points at
        t = T back to data at t = 0, with the log-determinant of that (inverse) map, the
        negated integral along the reverse path.

        Arguments:
            x: points, shape (n, dim): data (forward) or base points (reverse).
            context: their contexts, shape (n, context_features), exactly when the flow has
                ``context_features``.
            reverse: map base points to data.
            trace, solve_options: this call's trace estimator and solve (None: the flow's),
                as in :meth:`log_prob`.

        Returns:
            ``(y, logdet)``: the image, shape (n, dim), and the log-determinant of the map at
            each point, shape (n,) (an unbiased estimate with Hutchinson's trace).
        """
        x = self._check_data(x, "x")
        context = self._given(context, x.shape[0])
        y, logdet, _ = self._flow(x, context, reverse=reverse, regularise=False, trace=trace,
                                  options=solve_options)
        return y, logdet

    def flow_matching_loss(self, x: Tensor, context: Tensor | None = None, *,
                           generator: torch.Generator | None = None,
                           time_exponent: float = 1.0,
                           pairing: str = "independent", z: Tensor | None = None) -> Tensor:
        r"""The conditional flow-matching loss of a minibatch: training without any ODE solve.

        Each row x is paired with a base draw :math:`z \sim \mathcal{N}(0, I)` (with a
        ``base`` module, a draw from ``base.draw_coupled(x)``, whose law is the base's) and a
        time
        :math:`t = T u^{\gamma}`, :math:`u \sim U(0, 1)` (γ = ``time_exponent``; γ = 1 is
        t ~ U(0, T)); on the straight path :math:`x_t = (1 - t/T)\,x + (t/T)\,z`
        from the data (t = 0) to the base (t = T), the velocity is :math:`(z - x)/T`, and the
        network is regressed on it:

        .. math:: \mathcal{L}(\theta) = \mathbb{E}_{x, z, t}\,
            \big\| f_\theta(x_t, t) - (z - x)/T \big\|^2 .

        At every t the minimiser is the marginal velocity field whose flow carries the data
        distribution to :math:`\mathcal{N}(0, I)` (the conditional optimal-transport path with
        :math:`\sigma_{\min} = 0` of Lipman et al. 2023, with independent pairs as in Tong et
        al. 2023's I-CFM, also known as rectified flow), so :meth:`log_prob` and :meth:`sample`
        of the trained flow are the usual ODE solves, with exact likelihoods. One evaluation
        of the network a step, against the tens a maximum-likelihood step solves through.

        The law of t only weighs the times against each other, so any γ > 0 has the same
        minimiser; γ > 1 spends more of the steps near the data (t = 0), where the field is
        sharpest: it carries the data's fine structure (thin arms, edges). (Esser et al. 2024
        compare such non-uniform laws of t for rectified flows on images.)

        For a conditional flow every pair keeps its row's context along its path,
        :math:`\mathbb{E}\,\| f_\theta(x_t, t; c) - (z - x)/T \|^2`, whose minimiser is the
        marginal field of each p(x | c).

        Arguments:
            x: data, shape (n, dim), of the flow's dtype.
            context: the rows' contexts, shape (n, context_features), exactly when the flow
                has ``context_features``.
            generator: the source of z and t (default: torch's global generator).
            time_exponent: γ > 0, the exponent of the time draws (see above).
            pairing: how the base draws are paired with the rows: ``"independent"`` (as
                drawn) or ``"ot"``, re-assigned by minibatch optimal transport, which
                straightens the learned paths (:mod:`cnflow.flows.pairing`; with a context,
                within equal contexts only).
            z: the base points paired with the rows, shape (n, dim), instead of fresh draws:
                reflow's pairs (Liu et al. 2023), e.g. ``flow.encode(x)`` of a trained flow,
                whose straight-line targets the flow already follows, so that training on
                them straightens its paths; with ``z``, ``pairing`` must be
                ``"independent"`` (the pairs are given).

        Returns:
            The mean squared velocity error, a 0-d tensor (differentiable in the network's
            parameters; T is held fixed, since this loss carries no information about it).

        Note:
            ``net`` is called with one time per row, a tensor of shape (n, 1) (and the
            context); the built-in network accepts it. ``stats_forward`` is set to one
            evaluation, ``stats_backward`` to none.

        References:
            Lipman, Chen, Ben-Hamu, Nickel & Le (2023), "Flow matching for generative
            modeling". Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf & Bengio
            (2024), "Improving and generalizing flow-based generative models with minibatch
            optimal transport". Esser et al. (2024), "Scaling rectified flow transformers for
            high-resolution image synthesis".
        """
        check_positive_real(time_exponent, "time_exponent")
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; valid: {', '.join(PAIRINGS)}")
        x = self._check_data(x, "x")
        context = self._given(context, x.shape[0])
        n = x.shape[0]
        T = self.T.detach().to(x.dtype)
        if z is not None:
            if pairing != "independent":
                raise ValueError(f"z gives the pairs; pairing={pairing!r} would re-pair them "
                                 "(leave it 'independent')")
            z = self._check_data(z, "z")
            if z.shape[0] != n:
                raise ValueError(f"z must have one row per row of x ({n}), got {z.shape[0]}")
        elif self.base is None:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        else:
            z = self.base.draw_coupled(x, generator=generator)
        z = paired(x, z, pairing, context)
        s = torch.rand((n, 1), generator=generator, dtype=x.dtype, device=x.device)
        if time_exponent != 1:
            s = s.pow(time_exponent)
        x_s = x + s * (z - x)
        velocity = self._field(context)(s * T, x_s)
        self.stats_forward, self.stats_backward = SolverStats(nfe=1), SolverStats()
        return (velocity - (z - x) / T).square().sum(-1).mean()

    # ------------------------------------------------------------------ internals

    def _field(self, context: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """The velocity field f(t, z) of one call: ``net`` itself, or ``net`` with this call's
        context bound (:class:`~cnflow.nn.WithContext`, built per call, held by nothing)."""
        return self.net if context is None else WithContext(self.net, context)

    def _given(self, context: object, rows: int) -> Tensor | None:
        """The call's context after its checks (None for an unconditional flow): a finite
        (rows, context_features) tensor of the flow's dtype and device, given exactly when
        the flow has ``context_features``; else a ValueError that says what is wrong."""
        k = self.context_features
        if context is None:
            if k:
                raise ValueError(f"this CNF is conditional (context_features={k}): give a "
                                 f"context of shape (n, {k}) with the call")
            return None
        if not k:
            raise ValueError("this CNF was built without context_features, so it takes no "
                             f"context (got a {type(context).__name__}); build it with "
                             "CNF(dim, context_features=k) for p(x | c)")
        if not isinstance(context, Tensor):
            raise ValueError(f"context must be a tensor, got {type(context).__name__}")
        if context.ndim != 2 or context.shape[1] != k:
            raise ValueError(f"context must have shape (n, {k}), got {tuple(context.shape)}")
        if context.shape[0] != rows:
            raise ValueError(f"context has {context.shape[0]} rows for {rows} rows of data")
        ref = self._reference()
        if context.dtype != ref.dtype or context.device != ref.device:
            raise ValueError(f"context must be {ref.dtype} on {ref.device} like the flow, got "
                             f"{context.dtype} on {context.device}")
        return check_finite_array(context, "context")

    def _given_draws(self, n: object, context: object) -> tuple[Tensor | None, int]:
        """The checked context and the number of draws of :meth:`sample`: n without a
        context; with one, its number of rows, which n (if given) must equal."""
        if isinstance(n, Tensor):
            raise ValueError("n must be a number of draws, got a tensor; give a context by "
                             "name: sample(context=c)")
        if context is None:
            self._given(None, 0)  # a conditional flow says that it needs a context
            return None, check_positive_int(n, "n")
        rows = context.shape[0] if isinstance(context, Tensor) and context.ndim == 2 else 0
        context = self._given(context, rows)
        if rows == 0:
            raise ValueError("context is empty (no rows)")
        if n is not None and check_positive_int(n, "n") != rows:
            raise ValueError(f"n={n} draws asked for a context of {rows} rows: a conditional "
                             f"CNF draws one x per context row (leave n out, or repeat rows)")
        return context, rows

    def _reference(self) -> Tensor:
        """A tensor of the flow's dtype and device (the T parameter or buffer)."""
        return self.T_raw if self.train_T else self.T_fixed

    def _times(self, reverse: bool, like: Tensor) -> Tensor:
        end = self.T.to(like.dtype).reshape(1)
        start = torch.zeros(1, dtype=like.dtype, device=like.device)
        return torch.cat([end, start]) if reverse else torch.cat([start, end])

    def _solve(self, f: Callable, y0, t: Tensor, options: SolveOptions | None = None,
               context: Tensor | None = None):
        """Integrate f from y0 over t with ``options`` (None: the flow's); the state at
        t[-1]. A context that requires grad (e.g. an embedding's output) is among the
        adjoint's parameters, so that its gradient flows with the adjoint method too."""
        self.stats_forward, self.stats_backward = SolverStats(), SolverStats()
        params = tuple(self.net.parameters()) if isinstance(self.net, nn.Module) else ()
        if context is not None and context.requires_grad:
            params = (*params, context)
        options = self.solve_options if options is None else options
        ys = options.solve(f, y0, t, params=params, stats=self.stats_forward,
                           adjoint_stats=self.stats_backward)
        if isinstance(ys, tuple):
            return tuple(y[-1] for y in ys)
        return ys[-1]

    def _carry(self, y: Tensor, context: Tensor | None, reverse: bool,
               options: SolveOptions | None) -> Tensor:
        """The state alone (no trace) solved over [0, T] from y (or [T, 0] when reverse)."""
        field = self._field(context)

        def f(t: Tensor, state: Tensor) -> Tensor:
            return field(t, state)

        return self._solve(f, y, self._times(reverse, like=y), options, context=context)

    def _flow(self, x: Tensor, context: Tensor | None, reverse: bool, regularise: bool,
              trace: str | None = None, options: SolveOptions | None = None
              ) -> tuple[Tensor, Tensor, CNFRegularizers | None]:
        """Solve [z, Δ(, kinetic, jacobian)] from x (given the checked context) over [0, T]
        (or [T, 0] when reverse), with the flow's trace and options unless this call gives
        its own."""
        trace = self.trace if trace is None else _checked_trace(trace)
        if options is not None and not isinstance(options, SolveOptions):
            raise ValueError(f"solve_options must be a SolveOptions, got "
                             f"{type(options).__name__}")
        eps = divergence.sample_noise(x, self.noise) if trace == "hutchinson" else None
        f = _DensityDynamics(self._field(context), self.exact_method, eps, regularise)
        n = x.shape[0]
        zero = x.new_zeros(n)
        y0 = (x, zero, zero, zero) if regularise else (x, zero)
        yT = self._solve(f, y0, self._times(reverse, x), options, context)
        regs = None
        if regularise:
            # Integrated backwards the quadratures come out negated: report the positive integrals.
            sign = -1.0 if reverse else 1.0
            regs = CNFRegularizers(kinetic=sign * yT[2], jacobian=sign * yT[3])
        return yT[0], yT[1], regs


#: Earlier spellings of public names, and the names they stand for now.
DEPRECATED_NAMES = {"CNFRegularisers": "CNFRegularizers"}


def deprecated_names(module: str) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) for ``module`` that answers each name of
    :data:`DEPRECATED_NAMES` with the object now so named, with a DeprecationWarning (the
    public names and option values are spelt "-ize"), and raises AttributeError otherwise."""
    def __getattr__(name: str) -> object:
        if name in DEPRECATED_NAMES:
            warnings.warn(f"{name} is deprecated; use {DEPRECATED_NAMES[name]}",
                          DeprecationWarning, stacklevel=2)
            return globals()[DEPRECATED_NAMES[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__


__getattr__ = deprecated_names(__name__)
