"""Counters a solve fills in: function evaluations and steps."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SolverStats", "NFECounts"]


@dataclass
class SolverStats:
    """Work done by one or more solves; pass one to ``odeint(..., stats=...)`` to fill it.

    Counts accumulate, so one object can total several solves (e.g. every interval of a
    backward adjoint pass).

    Attributes:
        nfe: number of evaluations of the dynamics f.
        n_accepted: accepted steps.
        n_rejected: rejected steps (always 0 for fixed-step methods).
        suggested_first_step: after the first solve of an adaptive method that these stats
            count, the step its controller chose after its first accepted step: a starting
            step (``first_step``) for a solve of a similar problem, e.g. the next rows of a
            scoring split into parts (None: no such solve yet).

    Example:
        >>> import torch
        >>> from cnflow import odeint, SolverStats
        >>> stats = SolverStats()
        >>> _ = odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]), stats=stats)
        >>> stats.nfe == 2 + 6 * stats.n_steps   # f(y0), initial-step probe, 6 new stages a step
        True
    """

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    suggested_first_step: float | None = None

    @property
    def n_steps(self) -> int:
        """Every attempted step, accepted or rejected."""
        return self.n_accepted + self.n_rejected

    def reset(self) -> None:
        self.nfe = self.n_accepted = self.n_rejected = 0
        self.suggested_first_step = None


class NFECounts:
    """``nfe_forward`` / ``nfe_backward`` read from ``stats_forward`` / ``stats_backward``, for
    modules that solve ODEs (CNF, ODEBlock, LatentODENet) and keep the last call's stats."""

    stats_forward: SolverStats
    stats_backward: SolverStats

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the forward solve of the last call."""
        return self.stats_forward.nfe

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the adjoint solve of the last call's backward pass."""
        return self.stats_backward.nfe
