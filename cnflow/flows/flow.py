r"""What every flow shares: the base density, the input checks and the sampling contract.

A flow is a density :math:`q(x) = p_Z(g(x))\,|\det \partial g/\partial x|` with g invertible
and :math:`p_Z` the base, :math:`\mathcal{N}(0, I)` unless a base module is given (e.g.
:class:`cnflow.flows.base_density.GaussianMixtureBase`). A subclass implements
:meth:`Flow.log_prob`, :meth:`Flow.sample` and :meth:`Flow.sample_with_log_prob` and says
which tensor carries its dtype and device (:meth:`Flow._reference`); the checks of data and
counts, the base's log-density and its draws are here, once.

Example:
    >>> import torch
    >>> from cnflow.flows import CNF, PlanarFlow
    >>> from cnflow.flows.flow import Flow
    >>> all(isinstance(f, Flow) for f in (CNF(2, hidden=(8,)), PlanarFlow(2)))
    True
    >>> round(float(PlanarFlow(2).base_log_prob(torch.zeros(1, 2))), 4)  # -log(2π)
    -1.8379
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..checks import check_finite_array

__all__ = ["Flow", "sample_options"]


def sample_options(module: object, options: Mapping[str, object]) -> dict[str, object]:
    """The entries of ``options`` that ``module.sample`` takes by name (every entry where it
    takes ``**kwargs``), leaving out those set to None: what a wrapper passes on to a
    member so that a CNF gets ``steps=K`` and a density that samples exactly (a Gaussian
    mixture, a planar flow) is called as before.

    Example:
        >>> from cnflow.flows import CNF, GaussianMixtureBase
        >>> sample_options(CNF(2, hidden=(8,)), {"steps": 4, "method": None})
        {'steps': 4}
        >>> sample_options(GaussianMixtureBase.empty(2, 2), {"steps": 4})
        {}
    """
    try:
        parameters = inspect.signature(module.sample).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return {name: value for name, value in options.items()
            if value is not None and (takes_any or name in parameters)}


class Flow(nn.Module):
    """Base class of the flows: ``dim``, an optional ``base`` module, the checks and the base
    density. Subclasses set ``self.dim`` (and ``self.base``, None for N(0, I))."""

    dim: int
    base: nn.Module | None  # set by every subclass (a class default would hide the submodule)

    # ------------------------------------------------------------ the contract
    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) of each row, shape (n,)."""
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:
        """n draws, shape (n, dim)."""
        raise NotImplementedError

    def sample_with_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws and their log-densities, both differentiable in the parameters."""
        raise NotImplementedError

    def _reference(self) -> Tensor:
        """A tensor of the flow's dtype and device."""
        return next(self.parameters())

    # ------------------------------------------------------------ shared
    def base_log_prob(self, z: Tensor) -> Tensor:
        r"""The base log-density of each row, shape (n,): :math:`\log \mathcal{N}(z; 0, I)`,
        or the ``base`` module's."""
        if self.base is not None:
            return self.base.log_prob(z)
        return -0.5 * z.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def _base_draws(self, n: int) -> Tensor:
        """n draws from the base, of the flow's dtype and device."""
        ref = self._reference()
        if self.base is not None:
            return self.base.sample(n).to(ref.dtype)
        return torch.randn(n, self.dim, dtype=ref.dtype, device=ref.device)

    def _check_data(self, x: Tensor, name: str) -> Tensor:
        """x if it is a non-empty, finite, floating (n, dim) tensor of the flow's dtype and
        device; else a ValueError that says what is wrong."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (n, {self.dim}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (no rows)")
        ref = self._reference()
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
        if x.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but the flow is {ref.dtype}; convert "
                             f"one of them (e.g. flow.to({x.dtype}) or x.to({ref.dtype}))")
        if x.device != ref.device:
            raise ValueError(f"{name} is on {x.device} but the flow is on {ref.device}")
        return check_finite_array(x, name)
