r"""Step-size control as small pure functions.

The error of a trial step is measured relative to a mixed absolute/relative scale,

.. math:: \text{ratio} = \left\| \frac{e}{\text{atol} + \text{rtol}\cdot\max(|y_0|, |y_1|)}
    \right\|,

with ‖·‖ the root mean square over each part of the state and the maximum over parts (so a
small part, such as a log-density next to a large state, is controlled on its own). A step is
accepted when ratio ≤ 1, and the next step is h · min(ifactor, max(dfactor, safety · ratio^(−1/p)))
for a method of order p (Hairer, Nørsett & Wanner 1993, II.4). After an accepted step the
step is never shrunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["error_ratio", "initial_step_size", "next_step_size", "SAFETY", "IFACTOR", "DFACTOR"]

#: The safety factor on the optimal next step size.
SAFETY = 0.9
#: The largest factor by which one step may grow the step size.
IFACTOR = 10.0
#: The smallest factor by which one rejected step may shrink the step size.
DFACTOR = 0.2


def _segment_norm(x: torch.Tensor, segments: Sequence[int]) -> torch.Tensor:
    """Max over consecutive segments of the RMS of ``x`` (a flat tensor)."""
    if len(segments) == 1:
        return x.square().mean().sqrt()
    parts = torch.split(x, list(segments))
    return torch.stack([p.square().mean() for p in parts if p.numel() > 0]).max().sqrt()


def _scaled(x: torch.Tensor, scale: torch.Tensor, atol: float) -> torch.Tensor:
    """x / scale, with 0/0 read as 0 and x/0 as inf (only possible when atol = 0: a component
    at exactly zero under a pure relative tolerance)."""
    out = x / scale
    if atol == 0:
        out = torch.where(scale > 0, out, torch.where(x == 0, 0.0, torch.inf))
    return out


def error_ratio(
    error: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    rtol: float,
    atol: float,
    segments: Sequence[int],
) -> torch.Tensor:
    """The error norm of a step relative to the tolerance; ≤ 1 means accept.

    Arguments:
        error: local error estimate, flat, covering the first ``sum(segments)`` entries of the
            state (entries past them, e.g. a parameter adjoint under a seminorm, are ignored).
        y0, y1: the state before and after the step, flat.
        segments: sizes of the parts of the state that are each measured by their own RMS.

    Returns:
        A 0-d tensor.
    """
    n = sum(segments)
    if n != y0.numel():
        y0, y1 = y0[:n], y1[:n]
    with torch.no_grad():
        scale = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
        return _segment_norm(_scaled(error, scale, atol), segments)


@torch.no_grad()
def initial_step_size(
    fn: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    order: int,
    rtol: float,
    atol: float,
    segments: Sequence[int],
) -> float:
    """Hairer's starting step (Hairer, Nørsett & Wanner 1993, II.4): one extra evaluation of f.

    With d0 = ‖y0‖, d1 = ‖f0‖ (scaled), a first guess h0 = 0.01 d0/d1 is refined with the
    estimated second derivative d2 from one Euler step: h1 = (0.01 / max(d1, d2))^(1/order).
    """
    n = sum(segments)
    scale = y0[:n].abs().mul(rtol).add_(atol)
    d0 = float(_segment_norm(_scaled(y0[:n], scale, atol), segments))
    d1 = float(_segment_norm(_scaled(f0[:n], scale, atol), segments))
    finite = math.isfinite(d0) and math.isfinite(d1)
    h0 = 1e-6 if not finite or d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = torch.add(y0, f0, alpha=direction * h0)
    f1 = fn(t0 + direction * h0, y1)
    d2 = float(_segment_norm(_scaled(f1[:n] - f0[:n], scale, atol), segments)) / h0
    if not (finite and math.isfinite(d2)):
        return h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1)


def next_step_size(h: float, ratio: float, order: int) -> float:
    """The step to try next after a step of size ``h`` whose error ratio was ``ratio``."""
    if ratio == 0.0:
        return h * IFACTOR
    dfactor = 1.0 if ratio <= 1.0 else DFACTOR  # after an accepted step, never a smaller one
    factor = min(IFACTOR, max(SAFETY / ratio ** (1.0 / order), dfactor))
    return h * factor

