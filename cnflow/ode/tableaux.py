"""Butcher tableaux as plain data.

An explicit Runge–Kutta method with s stages advances y' = f(t, y) by one step h:

    k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j),     y_1 = y_0 + h Σ_i b_i k_i.

An embedded pair adds a second weight vector b̂ of lower order; the local error estimate is
h Σ_i (b_i − b̂_i) k_i. A dense output writes the solution inside the step as
y(t_0 + θh) = y_0 + h Σ_i b_i(θ) k_i with polynomial weights b_i(θ), b_i(1) = b_i.

Every method here is data: the stepping loop in :mod:`cnflow.ode.solve` serves all of them.

Example:
    >>> from cnflow.ode.tableaux import TABLEAUX
    >>> TABLEAUX["dopri5"].order, TABLEAUX["dopri5"].adaptive
    (5, True)

References:
    Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae".
    Shampine (1986), "Some practical Runge-Kutta formulas" (dopri5 dense output).
    Bogacki & Shampine (1989), "A 3(2) pair of Runge-Kutta formulas".
    Hairer, Nørsett & Wanner (1993), "Solving Ordinary Differential Equations I", II.4–II.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F

import numpy as np

__all__ = ["ButcherTableau", "TABLEAUX", "ADAPTIVE_METHODS", "FIXED_METHODS"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Arguments:
        name: the registry name.
        c: nodes, shape (s,).
        a: strictly lower-triangular coefficients, one row per stage (row i has i entries).
        b: weights of the propagated solution, shape (s,).
        order: order of the propagated solution.
        b_error: b − b̂ for an embedded pair (None for a fixed-step method).
        dense: coefficients P of the dense-output weights, shape (s, m), meaning
            b_i(θ) = Σ_k P[i, k] θ^(k+1). None: cubic Hermite (needs ``fsal``) or no dense output.
        fsal: the last stage is f(t + h, y_1) ("first same as last"), reusable as the next k_1.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    fsal: bool = False

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.b) != s or len(self.a) != s:
            raise ValueError(f"tableau {self.name!r}: c, a and b must all have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name!r}: row {i} of a needs {i} entries")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"tableau {self.name!r}: row {i} of a must sum to c[{i}]")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"tableau {self.name!r}: the weights b must sum to 1")
        if self.b_error is not None and len(self.b_error) != s:
            raise ValueError(f"tableau {self.name!r}: b_error needs {s} entries")
        if self.fsal and (self.c[-1] != 1.0 or tuple(self.a[-1]) != tuple(self.b[:-1])):
            raise ValueError(f"tableau {self.name!r}: fsal needs a last row equal to b")
        if self.dense is not None and len(self.dense) != s:
            raise ValueError(f"tableau {self.name!r}: dense needs one row per stage")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def has_dense_output(self) -> bool:
        return self.dense is not None or self.fsal

    def dense_weights(self, theta: float) -> list[float]:
        """The weights b_i(θ) of the dense output at θ ∈ [0, 1].

        With no explicit coefficients, an FSAL method uses cubic Hermite interpolation through
        (y_0, f_0) and (y_1, f_1 = k_s), which written in the stages is
        b(θ) = (θ − 2θ² + θ³) e_1 + (3θ² − 2θ³) b + (θ³ − θ²) e_s.
        """
        if self.dense is not None:
            powers = [theta ** (k + 1) for k in range(len(self.dense[0]))]
            return [sum(p * w for p, w in zip(row, powers, strict=True)) for row in self.dense]
        if not self.fsal:
            raise ValueError(f"method {self.name!r} has no dense output")
        h10 = theta - 2 * theta**2 + theta**3
        h01 = 3 * theta**2 - 2 * theta**3
        h11 = theta**3 - theta**2
        weights = [h01 * bi for bi in self.b]
        weights[0] += h10
        weights[-1] += h11
        return weights


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _tableau(name, c, a, b, order, b_hat=None, dense=None, fsal=False) -> ButcherTableau:
    """Build a tableau from exact fractions (so that b − b̂ is formed exactly)."""
    b_error = None if b_hat is None else _floats(bi - bh for bi, bh in zip(b, b_hat, strict=True))
    return ButcherTableau(
        name=name,
        c=_floats(c),
        a=tuple(_floats(row) for row in a),
        b=_floats(b),
        order=order,
        b_error=b_error,
        dense=dense,
        fsal=fsal,
    )


def _dopri5_dense(b: list[F]) -> tuple[tuple[float, ...], ...]:
    """Shampine's (1986) fourth-order continuous extension of dopri5, as polynomial weights.

    Hairer's form y(θ) = y_0 + θ(r_2 + (1−θ)(r_3 + θ(r_4 + (1−θ) r_5))) with
    r_2 = y_1 − y_0 = hΣ b_i k_i, r_3 = h k_1 − r_2, r_4 = r_2 − h k_7 − r_3, r_5 = hΣ d_i k_i
    expands to b_i(θ) = θ b_i + θ(1−θ)(e1_i − b_i) + θ²(1−θ)(2b_i − e1_i − e7_i) + θ²(1−θ)² d_i.
    """
    d = [F(-12715105075, 11282082432), F(0), F(87487479700, 32700410799),
         F(-10690763975, 1880347072), F(701980252875, 199316789632),
         F(-1453857185, 822651844), F(69997945, 29380423)]
    rows = []
    for i in range(7):
        e1, e7 = F(int(i == 0)), F(int(i == 6))
        # Coefficients of θ, θ², θ³, θ⁴ (polynomials multiplied out by numpy, exactly enough).
        poly = (
            np.polynomial.Polynomial([0, float(b[i])])
            + np.polynomial.Polynomial([0, 1, -1]) * float(e1 - b[i])
            + np.polynomial.Polynomial([0, 0, 1, -1]) * float(2 * b[i] - e1 - e7)
            + np.polynomial.Polynomial([0, 0, 1, -2, 1]) * float(d[i])
        )
        coef = list(poly.coef) + [0.0] * (5 - len(poly.coef))
        rows.append(_floats(coef[1:5]))
    return tuple(rows)


_DOPRI5_B = [F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), F(0)]

_DOPRI5 = _tableau(
    "dopri5",
    c=[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1],
    a=[
        [],
        [F(1, 5)],
        [F(3, 40), F(9, 40)],
        [F(44, 45), F(-56, 15), F(32, 9)],
        [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
        [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
        _DOPRI5_B[:6],
    ],
    b=_DOPRI5_B,
    b_hat=[F(5179, 57600), F(0), F(7571, 16695), F(393, 640), F(-92097, 339200),
           F(187, 2100), F(1, 40)],
    order=5,
    dense=_dopri5_dense(_DOPRI5_B),
    fsal=True,
)

_BOSH3 = _tableau(
    "bosh3",
    c=[0, F(1, 2), F(3, 4), 1],
    a=[[], [F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]],
    b=[F(2, 9), F(1, 3), F(4, 9), 0],
    b_hat=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)],
    order=3,
    fsal=True,
)

_EULER = _tableau("euler", c=[0], a=[[]], b=[1], order=1)

_MIDPOINT = _tableau("midpoint", c=[0, F(1, 2)], a=[[], [F(1, 2)]], b=[0, 1], order=2)

_RK4 = _tableau(
    "rk4",
    c=[0, F(1, 2), F(1, 2), 1],
    a=[[], [F(1, 2)], [0, F(1, 2)], [0, 0, 1]],
    b=[F(1, 6), F(1, 3), F(1, 3), F(1, 6)],
    order=4,
)

#: Every method by name. Adding a method is adding a tableau here.
TABLEAUX: dict[str, ButcherTableau] = {
    tab.name: tab for tab in (_DOPRI5, _BOSH3, _EULER, _MIDPOINT, _RK4)
}
#: The names of the methods with error control (rtol/atol).
ADAPTIVE_METHODS = tuple(name for name, tab in TABLEAUX.items() if tab.adaptive)
#: The names of the fixed-step methods (``step_size``).
FIXED_METHODS = tuple(name for name, tab in TABLEAUX.items() if not tab.adaptive)
