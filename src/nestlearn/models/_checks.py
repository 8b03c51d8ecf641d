"""Field checks shared by the model configs: each raises ``ValueError`` naming the field."""

from __future__ import annotations

from typing import Any


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> None:
    """``value`` is a real number ``> minimum`` (``>= minimum`` when ``strict=False``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (
        value > minimum if strict else value >= minimum)
    if not ok:
        sign = ">" if strict else ">="
        raise ValueError(f"{name} must be a number {sign} {minimum}, got {value!r}")
