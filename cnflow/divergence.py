r"""Divergence of the dynamics, :math:`\operatorname{tr}(\partial f / \partial z)`, per sample.

The instantaneous change of variables (Chen et al. 2018) says that along a solution of
:math:`\dot z = f(z, t)` the log-density changes as

.. math:: \frac{\mathrm{d}}{\mathrm{d}t} \log p(z(t)) = -\operatorname{tr}
    \left( \frac{\partial f}{\partial z}(z(t), t) \right),

so a continuous normalizing flow needs the trace of the Jacobian at every evaluation of the
dynamics. Two estimators are given here, both returning :math:`f(z, t)` with the trace:

* :func:`exact`: the full trace from the D Jacobian rows (vector-Jacobian products, reverse
  mode) or columns (Jacobian-vector products, forward mode), computed together in one
  vectorised pass, or by a Python loop of D backward passes (the default, the fastest
  measured). Its cost grows with D: :math:`O(D)` products, each as dear as an evaluation of f.
* :func:`hutchinson`: the unbiased estimate :math:`\varepsilon^\top (\partial f/\partial z)
  \varepsilon` with :math:`\mathbb{E}[\varepsilon\varepsilon^\top] = I` (Hutchinson 1990),
  one vector-Jacobian product whatever D (FFJORD, Grathwohl et al. 2019). The noise is drawn by
  the caller (:func:`sample_noise`), once per solve, and held fixed along it.

Both can also return the squared Frobenius norm :math:`\|\partial f/\partial z\|_F^2` per
sample, exactly (:func:`exact`) or by the estimate :math:`\|\varepsilon^\top \partial f /
\partial z\|^2` with the same noise (:func:`hutchinson`), the Jacobian regulariser of RNODE
(Finlay et al. 2020).

Conventions: ``z`` is a (batch, D) tensor of independent samples, and ``f(t, z)`` must act row
by row (row b of the output depends on row b of the input only; no batch normalisation), as
the per-sample Jacobians are read off one batched product. The outputs are differentiable
with respect to the parameters of f and to z whenever ``create_graph`` is true, which is the
default when gradient recording is enabled; this is what training needs. The functions enable
gradient recording themselves, so they also work inside :func:`torch.no_grad` (e.g. the
forward solve of the adjoint method) and :func:`torch.inference_mode`, then returning tensors
without history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, overload

import torch
from torch import Tensor

from .interfaces import AnalyticDivergence

__all__ = ["exact", "hutchinson", "sample_noise", "has_analytic_divergence", "EXACT_METHODS",
           "NOISE_TYPES", "TRACE_ESTIMATORS", "Dynamics"]

#: The dynamics f(t, z) -> dz/dt: t a 0-d tensor, z and the output (batch, D).
Dynamics = Callable[[Tensor, Tensor], Tensor]

#: Ways :func:`exact` can compute the trace: ``"auto"`` uses the network's own forward
#: Jacobian propagation when it has one (``f.forward_with_divergence``, e.g.
#: :class:`cnflow.nn.ConcatSquashMLP`), else ``"loop"``; ``"analytic"`` insists on the former;
#: ``"vjp"`` batches the D vector-Jacobian products
#: in one reverse pass, ``"jvp"`` the D Jacobian-vector products in one forward-mode pass
#: (:func:`torch.func.vmap` of :func:`torch.func.jvp`), ``"loop"`` runs D backward passes.
EXACT_METHODS = ("auto", "analytic", "loop", "vjp", "jvp")

#: Distributions of the Hutchinson probe vectors.
NOISE_TYPES = ("rademacher", "gaussian")

#: Names of the trace estimators.
TRACE_ESTIMATORS = ("exact", "hutchinson")


def _check_z(z: Tensor) -> None:
    if not isinstance(z, Tensor):
        raise ValueError(f"z must be a tensor, got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(f"z must have shape (batch, D), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z must be floating point, got dtype {z.dtype}")


def _check_output(fz: Tensor, z: Tensor) -> None:
    if not isinstance(fz, Tensor) or fz.shape != z.shape:
        got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
        raise ValueError(f"f(t, z) must return a tensor of z's shape {tuple(z.shape)}, got {got}")


@contextmanager
def _recording() -> Iterator[None]:
    """Record operations for autograd, even inside :func:`torch.inference_mode` (where
    :func:`torch.enable_grad` alone has no effect and reverse-mode products would vanish)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.enable_grad():
            yield
    else:
        with torch.enable_grad():
            yield


def _normal(t: Tensor) -> Tensor:
    """A tensor made under inference_mode cannot enter a recorded graph; a clone can."""
    return t.clone() if isinstance(t, Tensor) and t.is_inference() else t


def _leaf(z: Tensor, create_graph: bool) -> Tensor:
    """z itself when its history must be kept, else a detached copy that records grad."""
    if create_graph and z.requires_grad:
        return z
    if z.is_inference():  # made under inference_mode: autograd needs a normal tensor
        return z.clone().requires_grad_(True)
    return z.detach().requires_grad_(True)


def _vjp(fz: Tensor, z: Tensor, v: Tensor, create_graph: bool, batched: bool = False) -> Tensor:
    """vᵀ ∂f/∂z (for each of a leading batch of v when ``batched``); zeros if f ignores z."""
    if not fz.requires_grad:
        return torch.zeros_like(v)
    (g,) = torch.autograd.grad(fz, z, v, create_graph=create_graph, retain_graph=True,
                               allow_unused=True, is_grads_batched=batched)
    return torch.zeros_like(v) if g is None else g


def _finish(out: tuple[Tensor, ...], create_graph: bool, frobenius: bool):
    if not create_graph:
        out = tuple(o.detach() for o in out)
    return out if frobenius else out[:2]


def _basis(z: Tensor) -> Tensor:
    """The D standard basis vectors, each repeated for every row: shape (D, batch, D)."""
    n, d = z.shape
    return torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand(d, n, d)


def _jacobian_rows(f: Dynamics, t: Tensor, z: Tensor,
                   create_graph: bool) -> tuple[Tensor, Tensor]:
    """f(t, z) and the rows e_iᵀJ of every sample's Jacobian, by one batched backward pass."""
    with _recording():
        zz = _leaf(z, create_graph)
        fz = f(_normal(t), zz)
        _check_output(fz, z)
        return fz, _vjp(fz, zz, _basis(z), create_graph, batched=True)


def _jacobian_columns(f: Dynamics, t: Tensor, z: Tensor,
                      create_graph: bool) -> tuple[Tensor, Tensor]:
    """f(t, z) and the columns J e_i of every sample's Jacobian, by vectorised forward mode.

    Forward mode records no graph of its own; the graph is kept only when the result itself is
    to be differentiated (create_graph)."""
    zz = z if create_graph else z.detach()

    def column(v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(lambda x: f(t, x), (zz,), (v,))

    with torch.enable_grad() if create_graph else torch.no_grad():
        fz, cols = torch.func.vmap(column, out_dims=(None, 0))(_basis(z))
    _check_output(fz, z)
    return fz, cols


def _exact_loop(f: Dynamics, t: Tensor, z: Tensor, create_graph: bool,
                frobenius: bool) -> tuple[Tensor, Tensor, Tensor]:
    """f(t, z), the trace and ‖J‖_F² from D separate backward passes (the reference)."""
    n, d = z.shape
    trace = torch.zeros(n, dtype=z.dtype, device=z.device)
    frob = torch.zeros_like(trace)
    with _recording():
        zz = _leaf(z, create_graph)
        fz = f(_normal(t), zz)
        _check_output(fz, z)
        for i in range(d):
            e = torch.zeros_like(zz)
            e[:, i] = 1.0
            row = _vjp(fz, zz, e, create_graph)  # e_iᵀ J
            trace = trace + row[:, i]
            if frobenius:
                frob = frob + row.square().sum(-1)
    return fz, trace, frob


@overload
def exact(f: Dynamics, t: Tensor, z: Tensor, *, method: str = ...,
          create_graph: bool | None = ...,
          frobenius: Literal[False] = ...) -> tuple[Tensor, Tensor]: ...


@overload
def exact(f: Dynamics, t: Tensor, z: Tensor, *, method: str = ...,
          create_graph: bool | None = ...,
          frobenius: Literal[True]) -> tuple[Tensor, Tensor, Tensor]: ...


def has_analytic_divergence(f: object) -> bool:
    """Whether f computes its own exact divergence (:class:`cnflow.interfaces.
    AnalyticDivergence`, and it applies to this f)."""
    return isinstance(f, AnalyticDivergence) and bool(f.has_analytic_divergence)


def _exact_analytic(f, t: Tensor, z: Tensor, create_graph: bool, frobenius: bool):
    with _recording() if create_graph else torch.no_grad():
        out = f.forward_with_divergence(_normal(t) if create_graph else t, z,
                                        frobenius=frobenius)
    _check_output(out[0], z)
    return (out[0], out[1], out[2] if frobenius else out[1])


def exact(f: Dynamics, t: Tensor, z: Tensor, *, method: str = "auto",
          create_graph: bool | None = None, frobenius: bool = False):
    r"""f(t, z) and the exact divergence :math:`\operatorname{tr}(\partial f/\partial z)` per row.

    With :math:`e_i` the standard basis, the trace is :math:`\sum_i e_i^\top J e_i`, read off the
    D rows :math:`e_i^\top J` (vector-Jacobian products) or columns :math:`J e_i`
    (Jacobian-vector products) of each sample's Jacobian :math:`J = \partial f/\partial z`.
    All D products are needed, so the cost is about D evaluations of f whatever the method;
    the methods differ in how much of it is vectorised.

    Arguments:
        f: the dynamics ``f(t, z)``, acting row by row on z.
        t: the time, passed to f as is.
        z: the states, shape (batch, D).
        method: ``"auto"`` (default): ``"analytic"`` when f has ``forward_with_divergence``
            (a network that propagates its Jacobian forward with its activations, as
            :class:`cnflow.nn.ConcatSquashMLP` does: about D + 1 forward passes of plain
            operations, no double backward), else ``"loop"``: D backward passes through one
            evaluation of f;
            ``"vjp"``: the D vector-Jacobian products as one batched backward pass
            (``torch.autograd.grad(..., is_grads_batched=True)``); ``"jvp"``: the D
            Jacobian-vector products as one vectorised forward-mode pass (``torch.func.vmap``
            of ``torch.func.jvp``; f must then be composable with ``torch.func``).
            ``benchmarks/bench_trace.py`` measures them (``docs/benchmarks.md``, "The cost
            of the trace"): on a CPU the loop is the fastest when the graph is kept for
            training.
        create_graph: keep the graph of the trace so that it can be differentiated (with
            respect to the parameters of f, or z). Default: whether gradient recording is
            enabled.
        frobenius: also return :math:`\|J\|_F^2` per row, from the same products.

    Returns:
        ``(f(t, z), trace)`` with shapes (batch, D) and (batch,), or ``(f(t, z), trace,
        frobenius)`` when ``frobenius`` is true.

    Example:
        >>> import torch
        >>> from cnflow import divergence
        >>> A = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> fz, div = divergence.exact(lambda t, z: z @ A.T, torch.tensor(0.0), torch.ones(3, 2))
        >>> div.tolist()   # tr(A) for every row
        [5.0, 5.0, 5.0]

    References:
        Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural ordinary differential equations".
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), "FFJORD: Free-form continuous
        dynamics for scalable reversible generative models".
    """
    _check_z(z)
    if method not in EXACT_METHODS:
        raise ValueError(
            f"unknown exact trace method {method!r}; valid: {', '.join(EXACT_METHODS)}")
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    if method == "auto":
        method = "analytic" if has_analytic_divergence(f) else "loop"
    if method == "analytic":
        if not has_analytic_divergence(f):
            raise ValueError("method='analytic' needs f with forward_with_divergence (e.g. a "
                             "ConcatSquashMLP with a built-in activation)")
        fz, trace, frob = _exact_analytic(f, t, z, create_graph, frobenius)
    elif method == "loop":
        fz, trace, frob = _exact_loop(f, t, z, create_graph, frobenius)
    else:
        products = _jacobian_rows if method == "vjp" else _jacobian_columns
        fz, jac = products(f, t, z, create_graph)  # (D, batch, D)
        with torch.set_grad_enabled(create_graph):
            trace = torch.diagonal(jac, dim1=0, dim2=2).sum(-1)
            frob = jac.square().sum((0, 2)) if frobenius else trace
    return _finish((fz, trace, frob), create_graph, frobenius)


@overload
def hutchinson(f: Dynamics, t: Tensor, z: Tensor, noise: Tensor, *,
               create_graph: bool | None = ...,
               frobenius: Literal[False] = ...) -> tuple[Tensor, Tensor]: ...


@overload
def hutchinson(f: Dynamics, t: Tensor, z: Tensor, noise: Tensor, *,
               create_graph: bool | None = ...,
               frobenius: Literal[True]) -> tuple[Tensor, Tensor, Tensor]: ...


def hutchinson(f: Dynamics, t: Tensor, z: Tensor, noise: Tensor, *,
               create_graph: bool | None = None, frobenius: bool = False):
    r"""f(t, z) and Hutchinson's estimate of the divergence, one vector-Jacobian product.

    For a probe :math:`\varepsilon` with :math:`\mathbb{E}[\varepsilon] = 0` and
    :math:`\mathbb{E}[\varepsilon\varepsilon^\top] = I`,

    .. math:: \mathbb{E}\left[\varepsilon^\top J \varepsilon\right] = \operatorname{tr}(J),
        \qquad \mathbb{E}\left[\|\varepsilon^\top J\|^2\right] = \|J\|_F^2,

    and :math:`\varepsilon^\top J` costs one reverse pass whatever D. The variance of the trace
    estimate is :math:`2(\|S\|_F^2 - \sum_i S_{ii}^2)` for Rademacher probes and
    :math:`2\|S\|_F^2` for Gaussian ones, with :math:`S = (J + J^\top)/2`.

    Arguments:
        f: the dynamics ``f(t, z)``, acting row by row on z.
        t: the time, passed to f as is.
        z: the states, shape (batch, D).
        noise: the probes :math:`\varepsilon`, z's shape, one per row (see
            :func:`sample_noise`); in a CNF, drawn once per solve and held fixed along it.
        create_graph: keep the graph of the estimate so that it can be differentiated.
            Default: whether gradient recording is enabled.
        frobenius: also return :math:`\|\varepsilon^\top J\|^2` per row, the unbiased estimate
            of :math:`\|J\|_F^2` from the same product.

    Returns:
        ``(f(t, z), estimate)`` with shapes (batch, D) and (batch,), or ``(f(t, z), estimate,
        frobenius)`` when ``frobenius`` is true.

    Example:
        >>> import torch
        >>> from cnflow import divergence
        >>> z = torch.randn(4, 3)
        >>> eps = divergence.sample_noise(z)
        >>> fz, div = divergence.hutchinson(lambda t, z: 2 * z, torch.tensor(0.0), z, eps)
        >>> div.tolist()   # εᵀ(2I)ε = 2‖ε‖² = 6 for Rademacher ε in 3-D
        [6.0, 6.0, 6.0, 6.0]

    References:
        Hutchinson (1990), "A stochastic estimator of the trace of the influence matrix for
        Laplacian smoothing splines".
        Grathwohl et al. (2019), "FFJORD".
        Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE: the world
        of Jacobian and kinetic regularization".
    """
    _check_z(z)
    if not isinstance(noise, Tensor) or noise.shape != z.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise must have z's shape {tuple(z.shape)}, got {got}")
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    noise = noise.to(z.dtype)
    with _recording():
        zz = _leaf(z, create_graph)
        fz = f(_normal(t), zz)
        _check_output(fz, z)
        row = _vjp(fz, zz, noise, create_graph)  # εᵀ J
        trace = (row * noise).sum(-1)
        frob = row.square().sum(-1) if frobenius else trace
    return _finish((fz, trace, frob), create_graph, frobenius)


def sample_noise(like: Tensor, kind: str = "rademacher",
                 generator: torch.Generator | None = None) -> Tensor:
    r"""Probe vectors for :func:`hutchinson`: like's shape, dtype and device.

    ``"rademacher"``: independent :math:`\pm 1` with probability 1/2 each (the estimator of
    least variance among i.i.d. probes; Hutchinson 1990). ``"gaussian"``: standard normal.
    Both have :math:`\mathbb{E}[\varepsilon\varepsilon^\top] = I`.

    Arguments:
        like: a tensor whose shape, dtype and device the noise takes.
        kind: ``"rademacher"`` (default) or ``"gaussian"``.
        generator: an optional random generator.

    Returns:
        A tensor of like's shape.

    Example:
        >>> import torch
        >>> from cnflow import divergence
        >>> eps = divergence.sample_noise(torch.zeros(1000, 2))
        >>> bool((eps.abs() == 1).all())
        True
    """
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    raise ValueError(f"unknown noise {kind!r}; valid: {', '.join(NOISE_TYPES)}")
