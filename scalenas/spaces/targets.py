"""FLOPs targets of a scaling family: parsing, per-stage targets and an up-front feasibility check.

FLOPs follow the project convention (docs/method.md, :data:`scalenas.spaces.flops.FLOPS_CONVENTION`): one fused
multiply-add is one FLOP. ``2G`` therefore means 2e9 multiply-adds.
"""
from __future__ import annotations

import math
import re

from scalenas.spaces.arch import Base, Subnet
from scalenas.errors import ScalenasError
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_FLOPS_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:e([+-]?\d+))?\s*([kmgt]?)\s*$", re.IGNORECASE)


def parse_flops(text: str | int | float) -> int:
    """A FLOPs count such as ``"2G"``, ``"1.22g"``, ``"306M"``, ``"5e8"`` or ``1500000`` as an int.

    Units K, M, G, T are 1e3..1e12 and case-insensitive. Zero, negative and malformed values raise a
    :class:`ScalenasError` that names the value.
    """
    if isinstance(text, bool):
        raise ScalenasError(f"FLOPs value {text!r} is not a number")
    if isinstance(text, (int, float)):
        text = repr(text)
    m = _FLOPS_RE.match(str(text))
    if m is None:
        raise ScalenasError(f"FLOPs value {text!r} is malformed: give a positive number with an optional unit "
                            "K, M, G or T (e.g. 2G, 306M, 1.22G)")
    mantissa, exponent, unit = m.groups()
    value = float(f"{mantissa}e{exponent or 0}") * _UNITS[unit.lower()]  # float() gives inf, never overflows
    if not math.isfinite(value):
        raise ScalenasError(f"FLOPs value {text!r} is too large")
    flops = round(value)
    if flops <= 0:
        raise ScalenasError(f"FLOPs value {text!r} must be positive (at least 1 FLOP)")
    return int(flops)


def format_flops(flops: float, decimals: int | None = None) -> str:
    """``1220000000`` → ``"1.22G"`` (three significant digits); with ``decimals=3`` → ``"1.220G"`` (and a count
    below 1000 as a whole number). Also for parameter counts."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g}{unit}" if decimals is None else f"{flops / scale:.{decimals}f}{unit}"
    return f"{flops:.3g}" if decimals is None else str(int(flops))


def check_tolerance(tol: float) -> float:
    """The relative FLOPs tolerance, which must lie in (0, 1)."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 < float(tol) < 1.0:
        raise ScalenasError(f"FLOPs tolerance must be in (0, 1), got {tol!r}")
    return float(tol)


def stage_targets(space: SearchSpace, spec: str, stages: int | None = None,
                  growth: float | None = None) -> list[int]:
    """Targets T_0..T_S for scaling stages 0..S.

    ``spec`` is either one value T, the top of the family (stage S), so that stage s gets
    ``T * growth**(s - S)``, or a comma list ``T0,...,TS`` of explicit targets. ``stages`` (default: all the
    space's scaling stages) lets a search use only stages 0..stages; ``growth`` defaults to the space's and
    only applies to a single value.
    """
    n_space = space.num_scaling_stages
    if stages is None:
        stages = n_space
    elif isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= n_space:
        raise ScalenasError(f"stages must be an integer in 1..{n_space} for space {space.name!r}, got {stages!r}")
    parts = [p for p in str(spec).split(",")]
    if len(parts) > 1:
        if growth is not None:
            raise ScalenasError("growth applies to a single target; with explicit per-stage targets leave it out")
        if len(parts) != stages + 1:
            raise ScalenasError(f"{len(parts)} targets given ({spec!r}); stages 0..{stages} need {stages + 1}")
        return [parse_flops(p) for p in parts]
    if growth is None:
        growth = space.growth
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not float(growth) > 1.0 \
            or not math.isfinite(growth):
        raise ScalenasError(f"growth must be a number > 1, got {growth!r}")
    top = parse_flops(parts[0])
    targets = [int(round(top * float(growth) ** (s - stages))) for s in range(stages + 1)]
    if min(targets) < 1:
        raise ScalenasError(f"target {spec!r} with growth {growth} gives stage 0 a target below 1 FLOP")
    return targets


# ------------------------------------------------------------------------------------------ feasibility
def _extreme_base(space: SearchSpace, depth: float, width: float, resolution: int, largest: bool) -> Base:
    """The base of fewest (or most) FLOPs at (depth, width, resolution).

    Channels do not depend on the ops, so every layer adds its own FLOPs independently of the others: picking
    the cheapest (dearest) op position by position, measured on the whole scaled network, is exact. Depth is
    monotone (an extra layer only adds FLOPs), so the smallest base has 1 layer per stage and the largest
    ``max_layers``.
    """
    pick = max if largest else min
    base = [[st.ops[0]] * (st.max_layers if largest else 1) for st in space.stages]
    for i, st in enumerate(space.stages):
        for j in range(len(base[i])):
            def flops_with(op: str) -> int:
                trial = [list(layers) for layers in base]
                trial[i][j] = op
                sub = Subnet(space.name, tuple(tuple(layers) for layers in trial), depth, width, resolution)
                return subnet_flops_params(space, sub)[0]
            base[i][j] = pick(st.ops, key=flops_with)
    return tuple(tuple(layers) for layers in base)


def feasible_ranges(space: SearchSpace) -> list[tuple[int, int]]:
    """(min FLOPs, max FLOPs) over every subnet of each scaling stage 0..S.

    FLOPs grow monotonically with depth, kernel size, width and resolution, so the extremes are the smallest
    base at the stage's smallest multipliers and the largest base at its largest ones.
    """
    out = []
    for sc in space.scaling:
        lo_args = (min(sc.depth), min(sc.width), min(sc.resolution))
        hi_args = (max(sc.depth), max(sc.width), max(sc.resolution))
        lo = Subnet(space.name, _extreme_base(space, *lo_args, largest=False), *lo_args)
        hi = Subnet(space.name, _extreme_base(space, *hi_args, largest=True), *hi_args)
        out.append((subnet_flops_params(space, lo)[0], subnet_flops_params(space, hi)[0]))
    return out


def check_targets(space: SearchSpace, targets: list[int], tol: float) -> None:
    """Raise a :class:`ScalenasError` up front if some stage's band ``[T(1-tol), T(1+tol)]`` misses its range.

    The message lists every stage's target band and feasible range so the user can pick a reachable target.
    """
    tol = check_tolerance(tol)
    n_space = space.num_scaling_stages
    if not 2 <= len(targets) <= n_space + 1:
        raise ScalenasError(f"{len(targets)} targets given; space {space.name!r} needs 2..{n_space + 1} "
                            "(stages 0..S)")
    ranges = feasible_ranges(space)
    bad = []
    lines = []
    for s, t in enumerate(targets):
        lo, hi = ranges[s]
        band = (t * (1 - tol), t * (1 + tol))
        ok = band[0] <= hi and band[1] >= lo
        if not ok:
            bad.append(s)
        lines.append(f"stage {s}: target {format_flops(t)} (band {format_flops(band[0])}..{format_flops(band[1])})"
                     f" feasible {format_flops(lo)}..{format_flops(hi)}{'' if ok else ' UNREACHABLE'}")
    if bad:
        raise ScalenasError(f"FLOPs targets unreachable in space {space.name!r} at stage(s) "
                            f"{', '.join(map(str, bad))} with tolerance {tol:g}: " + "; ".join(lines))


def reachable_target(space, tolerance: float = 0.1) -> int:
    """A top-stage FLOPs target every stage can reach: the top stage's midpoint, else a scan of its range."""
    lo, hi = feasible_ranges(space)[-1]
    candidates = [(lo + hi) / 2, math.sqrt(lo * hi)]
    candidates += [lo * (hi / lo) ** (k / 20) for k in range(1, 20)]
    for t in candidates:
        try:
            check_targets(space, stage_targets(space, str(int(t))), tolerance)
            return int(t)
        except ScalenasError:
            continue
    raise ScalenasError(f"space {space.name!r}: no top-stage target between {lo} and {hi} FLOPs is reachable by "
                        f"every stage at growth {space.growth}")
