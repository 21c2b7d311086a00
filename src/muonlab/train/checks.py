"""One range check for every numeric setting: config dataclasses and command-line flags.

``check_number`` refuses NaN, infinities, non-integers where an integer is expected, and
values outside the given bounds, with a message that names the setting, the valid range and
the value. The command line wraps it into argparse types (:mod:`muonlab.cli.common`), the
configs call it in ``__post_init__``, so a value is checked the same way on both paths.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def describe_range(ge=None, gt=None, le=None, lt=None) -> str:
    """``">= 1"``, ``"in [0, 1)"``, ... for the bounds given."""
    low = None if ge is None and gt is None else ("[", ge) if gt is None else ("(", gt)
    high = None if le is None and lt is None else ("]", le) if lt is None else (")", lt)
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return "finite"


def check_number(name: str, value, *, integer: bool = False, ge=None, gt=None, le=None, lt=None):
    """``value`` if it is a finite number (an integer when ``integer``) within the bounds
    ``ge <= value``, ``gt < value``, ``value <= le``, ``value < lt``; else ValueError."""
    wanted = "an integer" if integer else "a number"
    is_number = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
    if not is_number:
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
        or (lt is not None and value >= lt)
    ):
        raise ValueError(f"{name} must be {describe_range(ge, gt, le, lt)}, got {value}")
    return value
