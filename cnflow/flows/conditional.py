r"""A conditional continuous normalizing flow: the density p(y | c) of y given a context c.

The velocity field takes the context, :math:`\dot z = f(z, t; c)` from :math:`z(0) = y`, and
the change of variables holds for each fixed c:

.. math:: \log p(y \mid c) = \log \mathcal{N}(z(T); 0, I)
    + \int_0^T \operatorname{tr}\Big(\frac{\partial f}{\partial z}(z(t), t; c)\Big)\,
    \mathrm{d}t .

Every row carries its own context through the solve; the divergence is with respect to z
only (the context is data, not state).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..nn import ConditionalConcatSquashMLP, WithContext
from .cnf import CNF

__all__ = ["ConditionalCNF"]


class ConditionalCNF(CNF):
    r"""A CNF whose velocity field also reads a context: p(y | c) for (n, dim) rows y and
    (n, context_features) rows c.

    Arguments:
        dim: the dimension of y.
        context_features: the dimension of c.
        hidden: widths of the hidden layers of the
            :class:`~cnflow.nn.ConditionalConcatSquashMLP`.
        conditioning: where c enters the network: ``"gates"`` (every layer's gate and shift,
            default) or ``"concat"`` (the first layer's input).
        activation: the network's activation.
        **kwargs: as :class:`cnflow.CNF` (T, trace, method, rtol, atol, adjoint,
            solve_options, ...; not ``net`` or ``base``).

    Example:
        >>> import torch
        >>> from cnflow.flows import ConditionalCNF
        >>> flow = ConditionalCNF(1, context_features=2, hidden=(16, 16))
        >>> y, c = torch.randn(8, 1), torch.randn(8, 2)
        >>> flow.log_prob(y, c).shape, flow.sample(c).shape
        (torch.Size([8]), torch.Size([8, 1]))
    """

    def __init__(self, dim: int, context_features: int, hidden: Sequence[int] = (64, 64, 64),
                 *, conditioning: str = "gates", activation: str = "tanh", **kwargs) -> None:
        for name in ("net", "base"):
            if name in kwargs:
                raise ValueError(f"ConditionalCNF builds its own network; {name} is not taken")
        net = ConditionalConcatSquashMLP(dim, context_features, hidden, activation=activation,
                                         conditioning=conditioning)
        super().__init__(dim, net=net, **kwargs)
        self.context_features = context_features
        self._context: Tensor | None = None

    def _field(self) -> Callable[[Tensor, Tensor], Tensor]:
        if self._context is None:
            raise RuntimeError("a ConditionalCNF is evaluated with a context: call log_prob(y, "
                               "context), sample(context), ...")
        return WithContext(self.net, self._context)

    @contextlib.contextmanager
    def _given(self, context: Tensor, rows: int | None) -> Iterator[None]:
        """The context bound for one call, after checking it (shape, dtype, finiteness)."""
        context = self._check_context(context, rows)
        self._context = context
        try:
            yield
        finally:
            self._context = None

    def _check_context(self, context: Tensor, rows: int | None) -> Tensor:
        if not isinstance(context, Tensor):
            raise ValueError(f"context must be a tensor, got {type(context).__name__}")
        ref = self._reference()
        if context.ndim != 2 or context.shape[1] != self.context_features:
            raise ValueError(f"context must have shape (n, {self.context_features}), got "
                             f"{tuple(context.shape)}")
        if rows is not None and context.shape[0] != rows:
            raise ValueError(f"context has {context.shape[0]} rows for {rows} rows of y")
        if context.dtype != ref.dtype or context.device != ref.device:
            raise ValueError(f"context must be {ref.dtype} on {ref.device} like the flow, got "
                             f"{context.dtype} on {context.device}")
        if not torch.isfinite(context).all():
            raise ValueError("context contains NaN or infinite values")
        return context

    def log_prob(self, y: Tensor, context: Tensor, return_regularisers: bool = False, **kwargs):
        """log p(y | c) of each row (see :meth:`cnflow.CNF.log_prob`; the same keyword
        arguments)."""
        with self._given(context, y.shape[0] if isinstance(y, Tensor) else None):
            return super().log_prob(y, return_regularisers, **kwargs)

    def sample(self, context: Tensor) -> Tensor:  # type: ignore[override]
        """One draw of y for each row of the context, shape (n, dim)."""
        with self._given(context, None):
            return super().sample(context.shape[0])

    def sample_with_log_prob(self, context: Tensor,  # type: ignore[override]
                             **kwargs) -> tuple[Tensor, Tensor]:
        """One draw per context row and its log p(y | c), from one reverse solve with the
        trace (see :meth:`cnflow.CNF.sample_with_log_prob`; the same keyword arguments)."""
        with self._given(context, None):
            return super().sample_with_log_prob(context.shape[0], **kwargs)

    def transform(self, y: Tensor, context: Tensor,  # type: ignore[override]
                  reverse: bool = False, **kwargs) -> tuple[Tensor, Tensor]:
        """The map y ↦ z(T) given c (or back, with ``reverse``) and its log-determinant
        (keyword arguments as :meth:`cnflow.CNF.transform`)."""
        with self._given(context, y.shape[0] if isinstance(y, Tensor) else None):
            return super().transform(y, reverse=reverse, **kwargs)

    def flow_matching_loss(self, y: Tensor, context: Tensor,  # type: ignore[override]
                           **kwargs) -> Tensor:
        """The conditional flow-matching loss E‖f(y_t, t; c) − (z − y)/T‖² (see
        :meth:`cnflow.CNF.flow_matching_loss`): every pair (y, c) keeps its context along
        its path."""
        with self._given(context, y.shape[0] if isinstance(y, Tensor) else None):
            return super().flow_matching_loss(y, **kwargs)

    def trajectory(self, z: Tensor, context: Tensor,  # type: ignore[override]
                   n_times: int = 9) -> tuple[Tensor, Tensor]:
        """The paths of base points z given c from t = T back to 0 (see
        :meth:`cnflow.CNF.trajectory`)."""
        with self._given(context, z.shape[0] if isinstance(z, Tensor) else None):
            return super().trajectory(z, n_times)
