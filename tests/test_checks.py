"""runtime/checks.py: the library's one set of argument checks (a bool is never a number)."""

import math

import numpy as np
import pytest

from mcdrop.runtime import checks
from mcdrop.runtime.errors import InputError


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(1), 2**70])
def test_positive_int_takes_python_and_numpy_integers_as_int(value):
    result = checks.positive_int("passes", value)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value, message", [
    (0, "passes must be >= 1, got 0"),
    (-3, "passes must be >= 1, got -3"),
    (True, "passes must be an integer >= 1, got True"),
    (np.bool_(True), "passes must be an integer >= 1"),
    (2.0, "passes must be an integer >= 1, got 2.0"),
    ("3", "passes must be an integer >= 1, got '3'"),
    (None, "passes must be an integer >= 1, got None"),
])
def test_positive_int_refusals_are_one_line_input_errors(value, message):
    with pytest.raises(InputError) as caught:
        checks.positive_int("passes", value)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_non_negative_int_and_int_at_least_and_the_error_class():
    assert checks.non_negative_int("threads", 0) == 0
    assert checks.int_at_least("k", 5, 5) == 5
    with pytest.raises(InputError, match="threads must be >= 0, got -1"):
        checks.non_negative_int("threads", -1)
    with pytest.raises(ValueError, match="classes must be >= 1"):  # a caller's own error class
        checks.positive_int("classes", 0, ValueError)


def test_int_in_range_is_half_open_and_says_the_top_as_given():
    assert checks.int_in_range("mask_seed", 2**64 - 1, 0, 2**64, "2**64 - 1") == 2**64 - 1
    for value in (-1, 2**64, False, 1.0):
        with pytest.raises(InputError, match=r"mask_seed must be an integer from 0 to 2\*\*64 - 1"):
            checks.int_in_range("mask_seed", value, 0, 2**64, "2**64 - 1")
    with pytest.raises(InputError, match="x must be an integer from 1 to 9, got 10"):
        checks.int_in_range("x", 10, 1, 10)


def test_number_checks():
    assert checks.finite_number("std", np.float32(0.5)) == 0.5
    assert checks.positive_finite("--max-memory-mb", 3) == 3.0
    assert checks.non_negative_finite("k", 0) == 0.0
    assert checks.fraction("coverage", 1) == 1.0
    for check, value in [(checks.finite_number, math.nan), (checks.finite_number, True),
                         (checks.positive_finite, 0), (checks.positive_finite, math.inf),
                         (checks.non_negative_finite, -0.5), (checks.fraction, 0), (checks.fraction, 1.5),
                         (checks.fraction, "0.5")]:
        with pytest.raises(InputError, match="must be"):
            check("value", value)


def test_predicates():
    assert checks.is_int(np.int32(1)) and not checks.is_int(True) and not checks.is_int(1.0)
    assert checks.is_number(1.5) and checks.is_number(np.float16(1)) and not checks.is_number(False)
