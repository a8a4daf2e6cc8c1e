"""Latency values such as ``8ms``: parsing (``--target-latency``) and formatting. Latencies are milliseconds.

A latency target needs a unit (s, ms or us; ``µs`` is read as us): a bare number is refused, since ``8`` could be
any of them. Zero, negative, non-finite and malformed values are refused with one line naming the value.
"""
from __future__ import annotations

import math
import re

from scalenas.errors import ScalenasError

UNITS_MS = {"s": 1e3, "ms": 1.0, "us": 1e-3}
_LATENCY_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|[+-]?(?:inf(?:inity)?|nan))\s*([a-zµ]*)\s*$",
                         re.IGNORECASE)


def parse_latency(text: str) -> float:
    """A latency such as ``"8ms"``, ``"0.5 s"``, ``"250us"`` or ``"1.5e3us"`` in milliseconds (a float > 0)."""
    if not isinstance(text, str):
        raise ScalenasError(f"latency {text!r}: give a number with a unit, s, ms or us (e.g. 8ms)")
    m = _LATENCY_RE.match(text)
    if m is None:
        raise ScalenasError(f"latency {text!r} is malformed: give a positive number with a unit s, ms or us "
                            "(e.g. 8ms, 0.5s, 250us)")
    number, unit = m.group(1), m.group(2).lower().replace("µ", "u")
    if not unit:
        raise ScalenasError(f"latency {text!r} has no unit: add s, ms or us (e.g. {number}ms)")
    if unit not in UNITS_MS:
        raise ScalenasError(f"latency {text!r}: unknown unit {m.group(2)!r} (known: s, ms, us)")
    value = float(number) * UNITS_MS[unit]
    if not math.isfinite(value):
        raise ScalenasError(f"latency {text!r} must be a finite number")
    if value <= 0:
        raise ScalenasError(f"latency {text!r} must be positive")
    return value


def format_latency(ms: float) -> str:
    """``8.0`` → ``"8 ms"``, ``0.0123`` → ``"12.3 us"``, ``1500`` → ``"1.5 s"`` (three significant digits)."""
    if abs(ms) >= 1e3:
        return f"{ms / 1e3:.3g} s"
    if abs(ms) >= 1.0 or ms == 0:
        return f"{ms:.3g} ms"
    return f"{ms * 1e3:.3g} us"
