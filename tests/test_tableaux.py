"""Each tableau satisfies the Runge–Kutta order conditions of its stated order."""

import itertools

import numpy as np
import pytest

from cnflow.ode.tableaux import TABLEAUX


def order_conditions(a, b, c, order):
    """Residuals of the order conditions up to order 4 (Butcher trees, Hairer et al. II.2)."""
    res = [b.sum() - 1]
    if order >= 2:
        res.append(b @ c - 1 / 2)
    if order >= 3:
        res += [b @ c**2 - 1 / 3, b @ a @ c - 1 / 6]
    if order >= 4:
        res += [b @ c**3 - 1 / 4, (b * c) @ a @ c - 1 / 8, b @ a @ c**2 - 1 / 12,
                b @ a @ a @ c - 1 / 24]
    return np.array(res)


def matrices(tab):
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = row
    return a, np.array(tab.b), np.array(tab.c)


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_order_conditions(name):
    tab = TABLEAUX[name]
    a, b, c = matrices(tab)
    np.testing.assert_allclose(order_conditions(a, b, c, min(tab.order, 4)), 0, atol=1e-14)


def test_dopri5_fifth_order_quadrature_and_embedded_fourth_order():
    tab = TABLEAUX["dopri5"]
    a, b, c = matrices(tab)
    assert b @ c**4 == pytest.approx(1 / 5, abs=1e-14)
    b_hat = b - np.array(tab.b_error)
    np.testing.assert_allclose(order_conditions(a, b_hat, c, 4), 0, atol=1e-14)
    # The embedded solution is not fifth order, else the error estimate would vanish.
    assert abs(b_hat @ c**4 - 1 / 5) > 1e-6


def test_bosh3_embedded_second_order():
    tab = TABLEAUX["bosh3"]
    a, b, c = matrices(tab)
    b_hat = b - np.array(tab.b_error)
    np.testing.assert_allclose(order_conditions(a, b_hat, c, 2), 0, atol=1e-14)
    assert abs(b_hat @ c**2 - 1 / 3) > 1e-6


@pytest.mark.parametrize("name,order", [("dopri5", 4), ("bosh3", 3)])
def test_dense_output_is_exact_quadrature(name, order):
    """For y' = t^q the dense output reproduces ∫ t^q dt exactly while q < order."""
    tab = TABLEAUX[name]
    c = np.array(tab.c)
    for q, theta in itertools.product(range(order), np.linspace(0, 1, 7)):
        w = np.array(tab.dense_weights(theta))
        assert w @ c**q == pytest.approx(theta ** (q + 1) / (q + 1), abs=1e-13)
    np.testing.assert_allclose(tab.dense_weights(1.0), tab.b, atol=1e-13)
    np.testing.assert_allclose(tab.dense_weights(0.0), 0, atol=1e-15)


def test_malformed_tableau_rejected():
    from cnflow.ode.tableaux import ButcherTableau

    with pytest.raises(ValueError, match="sum to c"):
        ButcherTableau("bad", c=(0.0, 0.5), a=((), (0.4,)), b=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="sum to 1"):
        ButcherTableau("bad", c=(0.0, 0.5), a=((), (0.5,)), b=(0.5, 0.6), order=2)
