"""Latency values such as ``8ms``: parsing (``--target-latency``) and formatting. Latencies are milliseconds.

A latency target needs a unit (s, ms or us; ``µs`` is read as us): a bare number is refused, since ``8`` could be
any of them. Zero, negative, non-finite and malformed values are refused with one line naming the value.
"""
from __future__ import annotations

import math
import re

from scalenas.errors import ScalenasError

UNITS_MS = {"s": 1e3, "ms": 1.0, "us": 1e-3}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|[+-]?(?:inf(?:inity)?|nan)"
_LATENCY_RE = re.compile(rf"^\s*({_NUMBER})\s*([a-zµ]*)\s*$", re.IGNORECASE)


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


def latency_stage_targets(spec: str, stages: int, growth: float) -> list[float]:
    """Latency targets (ms) of stages 0..``stages``: one value T (the top stage; stage s gets T x growth^(s - S),
    so the targets double in latency at growth 2) or a comma list T0,...,TS, each with its unit."""
    parts = str(spec).split(",")
    if len(parts) > 1:
        if len(parts) != stages + 1:
            raise ScalenasError(f"{len(parts)} latency targets given ({spec!r}); stages 0..{stages} need {stages + 1}")
        return [parse_latency(p) for p in parts]
    top = parse_latency(parts[0])
    return [top * float(growth) ** (s - stages) for s in range(stages + 1)]


def check_latency_targets(space, targets: list[float], tolerance: float, predict) -> None:
    """One line naming every unreachable stage, as :func:`scalenas.spaces.targets.check_targets` does for FLOPs:
    a stage's band [T(1-tol), T(1+tol)] must meet its feasible range of predicted latency (from the networks of one
    op per stage at the stage's smallest options, one layer each, to those at its largest, all layers)."""
    from scalenas.spaces.arch import Subnet

    bad, lines = [], []
    for s, t in enumerate(targets):
        sc = space.scaling[s]
        ops = range(max(len(st.ops) for st in space.stages))
        op = lambda st, j: st.ops[min(j, len(st.ops) - 1)]  # noqa: E731
        lo = min(predict(Subnet(space.name, tuple((op(st, j),) for st in space.stages), min(sc.depth),
                                min(sc.width), min(sc.resolution))) for j in ops)
        hi = max(predict(Subnet(space.name, tuple((op(st, j),) * st.max_layers for st in space.stages),
                                max(sc.depth), max(sc.width), max(sc.resolution))) for j in ops)
        ok = t * (1 - tolerance) <= hi and t * (1 + tolerance) >= lo
        bad += [] if ok else [s]
        lines.append(f"stage {s}: target {format_latency(t)} (band {format_latency(t * (1 - tolerance))}.."
                     f"{format_latency(t * (1 + tolerance))}) feasible {format_latency(lo)}..{format_latency(hi)}"
                     f"{'' if ok else ' UNREACHABLE'}")
    if bad:
        raise ScalenasError(f"latency targets unreachable in space {space.name!r} at stage(s) "
                            f"{', '.join(map(str, bad))} with tolerance {tolerance:g}: " + "; ".join(lines))
