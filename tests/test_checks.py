"""The shared argument checks: one meaning of integer and number, one message form, and the
returned values are plain Python ints and floats."""

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from cnflow.checks import (
    check_finite_array,
    check_int,
    check_nonnegative_int,
    check_nonnegative_real,
    check_positive_int,
    check_positive_int_sequence,
    check_positive_real,
    check_real,
    integer_description,
    real_description,
)

NOT_INTEGERS = [True, False, np.bool_(True), 1.0, 2.5, "3", None, [1], torch.tensor(2)]
NOT_NUMBERS = [True, np.bool_(False), "1.0", None, float("nan"), float("inf"), -math.inf,
               complex(1, 0), [1.0]]


@pytest.mark.parametrize("value", [1, 7, 10**30, np.int64(3), np.int8(1), np.uint16(5)])
def test_positive_integers_of_any_integral_type_come_back_as_python_ints(value):
    out = check_positive_int(value, "n")
    assert type(out) is int and out == int(value)


@pytest.mark.parametrize("value", NOT_INTEGERS + [0, -1, np.int64(0), np.int32(-4)])
def test_everything_but_a_positive_integer_is_refused_with_the_common_message(value):
    expected = f"n_samples must be a positive integer, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check_positive_int(value, "n_samples")


def test_non_negative_integers_take_zero_and_refuse_negatives_and_bools():
    assert check_nonnegative_int(np.int64(0), "k") == 0
    assert type(check_nonnegative_int(np.int64(0), "k")) is int
    for bad in (-1, False, 0.0):
        with pytest.raises(ValueError, match="k must be a non-negative integer, got"):
            check_nonnegative_int(bad, "k")


@pytest.mark.parametrize("low, high, inside, outside", [
    (2, None, [2, 3, 10**6], [1, 0, -5]),
    (None, 3, [-10, 3], [4]),
    (0, 9, [0, 4, 9], [-1, 10]),
    (None, None, [-(10**9), 0, 10**9], []),
])
def test_integers_in_a_range_are_exactly_those_between_the_ends(low, high, inside, outside):
    for value in inside:
        assert check_int(np.int64(value), "m", low, high) == value
    for value in outside + NOT_INTEGERS[:4]:
        message = f"m must be {integer_description(low, high)}, got {value!r}"
        with pytest.raises(ValueError, match=re.escape(message)):
            check_int(value, "m", low, high)


def test_integer_descriptions_name_the_range():
    assert integer_description(1) == "a positive integer"
    assert integer_description(0) == "a non-negative integer"
    assert integer_description(2) == "an integer of at least 2"
    assert integer_description(None, 5) == "an integer of at most 5"
    assert integer_description(0, 9) == "an integer in [0, 9]"


@pytest.mark.parametrize("value", [1, 0.5, 1e-300, np.float32(2.5), np.int64(4),
                                   Fraction(1, 3)])
def test_positive_numbers_of_any_real_type_come_back_as_python_floats(value):
    out = check_positive_real(value, "lr")
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value", NOT_NUMBERS + [0, 0.0, -1e-12, np.float64(-3)])
def test_everything_but_a_positive_finite_number_is_refused(value):
    expected = f"lr must be a positive number, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check_positive_real(value, "lr")


def test_non_negative_numbers_take_zero_but_not_nan_or_infinity():
    assert check_nonnegative_real(0, "rtol") == 0.0 and type(check_nonnegative_real(0, "r")) \
        is float
    for bad in (-1e-9, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="rtol must be a non-negative number, got"):
            check_nonnegative_real(bad, "rtol")


@pytest.mark.parametrize("closed, left_in, right_in", [
    ("neither", False, False), ("left", True, False), ("right", False, True),
    ("both", True, True)])
def test_the_ends_of_an_interval_belong_to_it_as_closed_says(closed, left_in, right_in):
    def accepted(x):
        try:
            check_real(x, "a", 0, 0.5, closed=closed)
        except ValueError as err:
            assert str(err) == f"a must be {real_description(0, 0.5, closed)}, got {x!r}"
            return False
        return True

    assert accepted(0.0) is left_in and accepted(0.5) is right_in
    assert accepted(0.25) and not accepted(-0.1) and not accepted(0.6)
    brackets = ("[" if left_in else "(") + "0, 0.5" + ("]" if right_in else ")")
    assert real_description(0, 0.5, closed) == f"a number in {brackets}"


def test_one_sided_and_unbounded_intervals():
    assert check_real(-1e300, "x") == -1e300
    assert real_description() == "a finite number"
    assert real_description(None, 1, "right") == "a number in (-inf, 1]"
    assert real_description(1, None, "left") == "a number in [1, inf)"
    with pytest.raises(ValueError, match=r"x must be a number in \[1, inf\), got 0.5"):
        check_real(0.5, "x", 1, None, closed="left")
    with pytest.raises(ValueError, match="closed must be one of"):
        check_real(0.5, "x", 0, 1, closed="open")


def test_sequences_of_positive_integers_become_tuples_of_python_ints():
    out = check_positive_int_sequence(np.array([64, 32]), "hidden")
    assert out == (64, 32) and all(type(h) is int for h in out)
    assert check_positive_int_sequence([], "hidden") == ()
    assert check_positive_int_sequence((h for h in (3, 4)), "hidden") == (3, 4)
    for bad in ("64", 64, (0,), (2.0,), (True, 3), [8, -1], None):
        with pytest.raises(ValueError, match="hidden must be a sequence of positive integers"):
            check_positive_int_sequence(bad, "hidden")


@pytest.mark.parametrize("make", [np.asarray, torch.tensor, list])
def test_finite_arrays_pass_unchanged_and_nan_or_infinity_is_refused(make):
    values = make([[0.0, 1.5], [-2.0, 3.0]])
    assert check_finite_array(values, "x") is values
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="^y0 contains NaN or infinite values$"):
            check_finite_array(make([[0.0, bad], [1.0, 2.0]]), "y0")


def test_the_callers_share_the_checks():
    """A few callers across the layers, each refusing a bool and accepting a numpy integer."""
    from cnflow import CNF
    from cnflow.datasets import make_toy
    from cnflow.ode import SolveOptions

    assert make_toy("moons", np.int64(3), random_state=0).shape == (3, 2)
    assert type(SolveOptions(max_num_steps=np.int32(50)).max_num_steps) is int
    assert CNF(np.int64(2), hidden=(np.int64(4),)).dim == 2
    for call, name in ((lambda: make_toy("moons", True), "n_samples"),
                       (lambda: SolveOptions(max_num_steps=True), "max_num_steps"),
                       (lambda: CNF(True, hidden=(4,)), "dim"),
                       (lambda: CNF(2, hidden=(True,)), "hidden")):
        with pytest.raises(ValueError, match=f"{name} must be a "):
            call()
