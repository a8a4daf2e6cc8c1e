"""Grow a searched family beyond its last scaling stage (docs/method.md).

The best chain's steps (base → stage 1 → ... → stage S) are increments in (log d, log w, log r). Their weighted
mean, with weights rising toward the last steps (later steps say more about how large models should grow),
is the stationary step direction u (normalised). Each new member moves from the previous one along u by the
step length t that multiplies FLOPs by ``growth``, measured under the real rounding rules: layers by ceil
(:meth:`SearchSpace.scale_depth`), channels by the space's one rule (:meth:`SearchSpace.scale_channels`,
applied by ``derive_subnet``), resolution to a multiple of ``resolution_step``.

A space that declares ``max_resolution`` (the data's native size) caps the resolution there: once a member
reaches it, the next ones grow along the depth and width components of u only (their ratio kept), since
upsampling adds FLOPs and no information.

Several (d, w) build the same network (layers round up, channels to the space's multiple): a chain whose stage
2 says depth 1.2 and one that says 1.36 may be one and the same family. Before anything is computed, each
stage's depth and width are therefore replaced by the largest value among the space's options (every stage's)
that builds the same network (:func:`canonical_chain`), so the members depend on the built networks only, never
on which of their equivalent names the search happened to write. The largest is the one nearest the built
network's real size (ceil rounding builds at least n x d layers: 1-2-2-1 blocks at depth 1.04 are 2-3-3-2, the
same as at 1.4), and it is never below the written value, so members still grow monotonically from it.

Rounding makes FLOPs a step function of t: brentq finds where it crosses the target, then the neighbouring
rounded candidates (nearby t, resolution one step either way) are scored and the one closest to the target in
log FLOPs is kept; each member says whether it landed within the tolerance. Members lie outside the supernet's
option lists: they are reported as not evaluated and must be trained standalone or grown (docs/method.md).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import brentq

from scalenas.spaces.arch import ARCH_LIMIT, Base, Subnet, arch_limits, derive_subnet
from scalenas.errors import ScalenasError
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.spaces.targets import check_tolerance

DECIMALS = 4  # multipliers of extrapolated members are written with 4 decimals (readable JSON)
MAX_STEPS = 20  # members per extrapolation: 20 doublings are a million times the last member's FLOPs
MAX_GROWTH = 100.0  # FLOPs ratio between two members
_WINDOW = np.linspace(0.8, 1.2, 81)  # neighbouring step lengths searched around brentq's root, relative
# In a space with max_resolution, the one-step resolution shift cannot fine-tune FLOPs between two layer counts
# once the cap is reached: width nudges of up to +-10 % take its place (tried for every member of such a space).
_WIDTH_NUDGE = np.exp(np.linspace(-0.1, 0.1, 11))


def canonical_chain(space: SearchSpace, base: Base, chain: Sequence[tuple[float, float, int]]
                    ) -> list[tuple[float, float, int]]:
    """``chain`` with each stage's depth and width replaced by the largest equivalent option value.

    The candidates are every scaling stage's depth (width) options above the stage's own value, largest first;
    the first that derives the same network (:meth:`Derived.key`) wins, else the value stays (rounding makes the
    values that build one network an interval, so no smaller candidate can be missed). Depth only sets layer
    counts and width only channels, so the two are canonicalised one after the other.
    """
    depths = sorted({float(v) for sc in space.scaling for v in sc.depth}, reverse=True)
    widths = sorted({float(v) for sc in space.scaling for v in sc.width}, reverse=True)

    def key(d: float, w: float, r: int) -> str:
        return derive_subnet(space, Subnet(space.name, base, d, w, r)).key()

    out = []
    for d, w, r in chain:
        d, w, r = float(d), float(w), int(r)
        own = key(d, w, r)
        d = next((x for x in depths if x > d and key(x, w, r) == own), d)
        w = next((x for x in widths if x > w and key(d, x, r) == own), w)
        out.append((d, w, r))
    return out


def step_direction(space: SearchSpace, chain: Sequence[tuple[float, float, int]],
                   weights: Sequence[float] | None = None) -> np.ndarray:
    """The unit stationary step direction u in (log d, log w, log r) of a chain of (d, w, r) per stage 1..S.

    ``weights`` (one per step, default 1..S: rising toward the last steps) weight the increments. Negative
    components are clipped to 0: a step never shrinks a dimension, so members grow monotonically.
    """
    if len(chain) < 1:
        raise ScalenasError("extrapolation needs a chain of at least one scaling stage")
    points = np.array([[0.0, 0.0, 0.0]] + [[math.log(d), math.log(w), math.log(r / space.base_resolution)]
                                            for d, w, r in chain])
    increments = np.diff(points, axis=0)
    w = np.arange(1.0, len(chain) + 1.0) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(chain),) or (w < 0).any() or not w.sum() > 0:
        raise ScalenasError(f"extrapolation weights must be {len(chain)} non-negative numbers with a positive sum, "
                            f"got {list(weights) if weights is not None else None}")
    u = np.clip(w @ increments / w.sum(), 0.0, None)
    norm = float(np.linalg.norm(u))
    if norm == 0.0:
        raise ScalenasError("the chain never grows depth, width or resolution: no direction to extrapolate along")
    return u / norm


def extrapolate(space: SearchSpace | str, base: Base | Sequence[Sequence[str]],
                chain: Sequence[tuple[float, float, int]], steps: int, growth: float | None = None,
                tolerance: float = 0.1, weights: Sequence[float] | None = None,
                latency: Callable[[Subnet], float] | None = None) -> list[dict[str, Any]]:
    """``steps`` new members after the chain's last stage, each ≈ ``growth`` × the previous member's FLOPs.

    ``latency`` (a predictor of a member's latency in ms, e.g. :meth:`scalenas.latency.table.LatencyTable.predict`):
    members grow by ``growth`` x the previous member's predicted latency instead (a family searched by latency
    continues by latency); they then also carry ``target_latency_ms`` and ``latency_ms``.

    ``chain`` holds (depth, width, resolution) of stages 1..S of the best family. Each member dict has the
    family.csv fields (stage, kind="extrapolated", target_flops, flops, params, resolution, depth_mult,
    width_mult, top1=None, feasible = within tolerance, arch = subnet JSON) plus step, flops_ratio,
    within_tolerance, step_length, direction (u) and evaluated=False.
    """
    space = load_space(space)
    base = tuple(tuple(layers) for layers in base)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ScalenasError(f"extrapolation steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    growth = space.growth if growth is None else growth
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not 1.0 < float(growth) <= MAX_GROWTH:
        raise ScalenasError(f"growth must be a number > 1 and <= {MAX_GROWTH:g}, got {growth!r}")
    tolerance = check_tolerance(tolerance)
    chain = canonical_chain(space, base, chain)
    u = step_direction(space, chain, weights)
    step, r0 = space.resolution_step, space.base_resolution
    limits = arch_limits(space)
    r_cap = space.max_resolution

    def buildable(sub: Subnet) -> bool:
        """Within the architecture bounds (:data:`~scalenas.spaces.arch.ARCH_LIMIT` x the space's largest options),
        so every member written can be read back, built and trained."""
        return sub.depth <= limits["depth"] and sub.width <= limits["width"] and sub.resolution <= limits["resolution"]

    def too_large(m: int) -> ScalenasError:
        return ScalenasError(
            f"extrapolation step {m}: the member would exceed the architecture bounds ({ARCH_LIMIT}x the largest "
            f"options of space {space.name!r}: depth <= {limits['depth']:g}, width <= {limits['width']:g}, "
            f"resolution <= {limits['resolution']:g}); extrapolate fewer steps or with a smaller growth")

    def size(sub: Subnet) -> float:  # what the members grow by
        return float(latency(sub)) if latency is not None else float(subnet_flops_params(space, sub)[0])

    d, w, r = chain[-1]
    prev = Subnet(space.name, base, float(d), float(w), int(r))
    prev_flops = subnet_flops_params(space, prev)[0]
    prev_size = size(prev)
    members: list[dict[str, Any]] = []
    for m in range(1, steps + 1):
        target = growth * prev_size
        origin = np.array([math.log(prev.depth), math.log(prev.width), math.log(prev.resolution / r0)])
        r_min = step * math.ceil(prev.resolution / step)  # never below the previous member, on the step grid

        if r_cap is not None and r_min >= r_cap and not (u[0] > 0 or u[1] > 0):
            raise ScalenasError(f"extrapolation step {m}: the chain grows resolution only and the space caps it at "
                                f"{r_cap} px (max_resolution): no direction left to grow along")

        r_max = None if r_cap is None else max(r_cap, prev.resolution)  # never below the previous member either

        def at(t: float, r_shift: int = 0, w_nudge: float = 1.0, origin: np.ndarray = origin, r_min: int = r_min,
               r_max: int | None = r_max, w_min: float = prev.width) -> Subnet:
            ld, lw, lr = origin + t * u
            res = max(r_min, step * round(r0 * math.exp(lr) / step) + r_shift * step)
            if r_max is not None:
                res = min(res, r_max)
            width = max(w_min, round(math.exp(lw) * w_nudge, DECIMALS))
            return Subnet(space.name, base, round(math.exp(ld), DECIMALS), width, int(res))

        def log_gap(t: float, at=at, target: float = target) -> float:
            return math.log(size(at(t)) / target)

        t_hi = 0.05
        for _ in range(60):  # bounded bracket search: FLOPs grow without bound along u (u >= 0, |u| = 1)
            if not buildable(at(t_hi)):  # never derive (or count) a network beyond the bounds
                raise too_large(m)
            if log_gap(t_hi) > 0:
                break
            t_hi *= 2.0
        else:
            raise ScalenasError(f"extrapolation step {m}: no step length reaches {target:.3g} "
                                f"{'ms' if latency else 'FLOPs'}")
        t_star = brentq(log_gap, 0.0, t_hi, xtol=1e-9) if log_gap(0.0) < 0 else 0.0

        # FLOPs are a step function of t: score the rounded neighbours, keep the one closest in log (gaps equal
        # to 0.1 % tie, won by the smaller width nudge, then the step length nearest brentq's root).
        best: tuple[float, float, float, Subnet, float] | None = None
        seen: set[str] = set()
        nudges = (1.0,) if r_max is None else tuple(float(x) for x in _WIDTH_NUDGE)
        for t in sorted({t_star, *(t_star * _WINDOW).tolist()}):
            for shift in (0, -1, 1):
                for nudge in nudges:
                    cand = at(t, shift, nudge)
                    if not buildable(cand):
                        continue
                    key = derive_subnet(space, cand).key()
                    if key in seen or cand == prev:
                        continue
                    seen.add(key)
                    score = (round(abs(math.log(size(cand) / target)), 3), abs(math.log(nudge)), abs(t - t_star))
                    if best is None or score < best[:3]:
                        best = (*score, cand, t)
        if best is None:
            raise too_large(m)
        member, t_used = best[3], best[4]
        flops, params = subnet_flops_params(space, member)
        grown = size(member)
        within = abs(grown / target - 1.0) <= tolerance
        by_latency = {} if latency is None else {"target_latency_ms": target, "latency_ms": grown}
        members.append({
            "stage": len(chain) + m, "kind": "extrapolated",
            "target_flops": None if latency else int(round(target)), "flops": flops, **by_latency,
            "params": params, "resolution": member.resolution, "depth_mult": member.depth,
            "width_mult": member.width, "top1": None, "feasible": within, "arch": member.to_json(),
            "step": m, "flops_ratio": flops / prev_flops, "within_tolerance": within, "step_length": float(t_used),
            "direction": {"depth": float(u[0]), "width": float(u[1]), "resolution": float(u[2])},
            "evaluated": False,
        })
        # the next member starts from this one's canonical name (the same network), as a new call would
        (d, w, r), = canonical_chain(space, base, [(member.depth, member.width, member.resolution)])
        prev, prev_flops, prev_size = Subnet(space.name, base, d, w, r), flops, grown
    return members


def log_gap_of(space: SearchSpace, subnet: Subnet, target: float) -> float:
    """log(FLOPs(subnet) / target)."""
    return math.log(subnet_flops_params(space, subnet)[0] / target)
