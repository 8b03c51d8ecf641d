"""Argument checks shared by the optimizer classes: bad user input raises ``ValueError`` naming
the argument and what is allowed."""

from __future__ import annotations

import math


def choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def number(name: str, value, *, lo: float, hi: float = math.inf, lo_open: bool = False,
           hi_open: bool = False) -> None:
    """``value`` must be a real number in the interval given by ``lo``/``hi``.

    The interval is closed unless open.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open or hi == math.inf else "]"
        raise ValueError(
            f"{name} must be a finite number in {left}{lo}, {hi}{right}, got {value!r}")


def integer(name: str, value, *, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        # House rule: every bad hyperparameter is a ValueError, type errors included.
        raise ValueError(f"{name} must be True or False, got {value!r}")  # noqa: TRY004
