"""Argument checks shared by the library: each returns the value as a plain int or float, or
raises a one-line error (InputError unless `error` says otherwise) naming the argument, the rule
and the value given.

A bool is never a number here (True would otherwise pass as 1), and numpy's integers and floats
count as ints and floats.
"""

import importlib.util
import math
from typing import Optional, Type

import numpy as np

from .errors import InputError


def is_int(value) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """An int or float (numpy's too), not a bool; NaN and infinities included."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def int_at_least(name: str, value, minimum: int, error: Type[Exception] = InputError) -> int:
    """An integer >= minimum; the message says "an integer" only when the value is not one."""
    if not is_int(value):
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def positive_int(name: str, value, error: Type[Exception] = InputError) -> int:
    return int_at_least(name, value, 1, error)


def non_negative_int(name: str, value, error: Type[Exception] = InputError) -> int:
    return int_at_least(name, value, 0, error)


def int_in_range(name: str, value, low: int, high: int, high_text: Optional[str] = None,
                 error: Type[Exception] = InputError) -> int:
    """low <= value < high; high_text: how the message writes high - 1 (e.g. "2**64 - 1")."""
    if not is_int(value) or not low <= value < high:
        raise error(f"{name} must be an integer from {low} to {high_text or high - 1}, got {value!r}")
    return int(value)


def finite_number(name: str, value, error: Type[Exception] = InputError) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive_finite(name: str, value, error: Type[Exception] = InputError) -> float:
    if not is_number(value) or not 0 < value < math.inf:
        raise error(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def non_negative_finite(name: str, value, error: Type[Exception] = InputError) -> float:
    if not is_number(value) or not 0 <= value < math.inf:
        raise error(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def fraction(name: str, value, error: Type[Exception] = InputError) -> float:
    """A number in (0, 1]."""
    if not is_number(value) or not 0 < value <= 1:
        raise error(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def require_modules(names, command: str, extra: str) -> None:
    """InputError naming the packages `command` needs that are not installed, and the extra that brings them."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"{command} needs the {extra} extra ({', '.join(missing)} missing): pip install -e '.[{extra}]'")
