"""Test problems with independent references: closed forms and scipy at tight tolerance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.linalg
import torch


@dataclass
class Problem:
    name: str
    f_torch: Callable  # f(t, y) on tensors of shape (..., d)
    f_numpy: Callable  # f(t, y) on a 1-D array, for scipy
    y0: np.ndarray
    t_span: tuple[float, float]

    def reference(self, times: np.ndarray) -> np.ndarray:
        """solve_ivp with DOP853 at rtol = atol = 1e-12, shape (len(times), d)."""
        sol = scipy.integrate.solve_ivp(self.f_numpy, (times[0], times[-1]), self.y0,
                                        method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12)
        assert sol.success
        return sol.y.T


def van_der_pol(mu: float = 1.0) -> Problem:
    def f_torch(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x**2) * v - x], dim=-1)

    def f_numpy(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    return Problem("van_der_pol", f_torch, f_numpy, np.array([2.0, 0.0]), (0.0, 6.0))


def lotka_volterra(a=1.5, b=1.0, c=3.0, d=1.0) -> Problem:
    def f_torch(t, y):
        x, z = y[..., 0], y[..., 1]
        return torch.stack([a * x - b * x * z, -c * z + d * x * z], dim=-1)

    def f_numpy(t, y):
        return [a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]]

    return Problem("lotka_volterra", f_torch, f_numpy, np.array([1.0, 1.0]), (0.0, 5.0))


def forced_oscillator() -> Problem:
    """Non-autonomous: x'' = -x + cos(2t), so f depends on t."""

    def f_torch(t, y):
        return torch.stack([y[..., 1], -y[..., 0] + torch.cos(2 * t)], dim=-1)

    def f_numpy(t, y):
        return [y[1], -y[0] + np.cos(2 * t)]

    return Problem("forced_oscillator", f_torch, f_numpy, np.array([1.0, 0.0]), (0.0, 8.0))


# A linear system y' = A y with decaying rotation, solved in closed form by expm.
LINEAR_A = np.array([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.5], [0.0, -0.5, -0.3]])


def linear_exact(y0: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.stack([scipy.linalg.expm(LINEAR_A * (t - times[0])) @ y0 for t in times])


def linear_problem() -> Problem:
    a = torch.tensor(LINEAR_A, dtype=torch.float64)

    def f_torch(t, y):
        return y @ a.to(y.dtype).T

    return Problem("linear", f_torch, lambda t, y: LINEAR_A @ y, np.array([1.0, 0.5, -1.0]),
                   (0.0, 5.0))


NONLINEAR = [van_der_pol(), lotka_volterra(), forced_oscillator()]
