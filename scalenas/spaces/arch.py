"""Architectures: base network + (d, w, r) → subnet → the concrete layers it builds.

Data flows one way: a :class:`Subnet` (what the user and the search handle, docs/method.md JSON) is turned by
:func:`derive_subnet` into a :class:`Derived` architecture (every layer with its channels, stride, op and
supernet position). The supernet, the standalone model and the FLOPs counter all read ``Derived``.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from scalenas.errors import ScalenasError
from scalenas.spaces.space import (SPACE_REF_FIELDS, SearchSpace, resolve_space_ref, snap_multiplier,
                                   space_reference)

Base = tuple[tuple[str, ...], ...]

# An architecture's depth, width and resolution may be at most this many times the largest option of its space's
# scaling stages (extrapolated members included): a larger one would build an absurd network (depth 1e9 layers,
# millions of channels), so it is refused before anything is allocated (docs/method.md, "The architecture JSON").
ARCH_LIMIT = 16


@dataclass(frozen=True)
class Subnet:
    """A base network (op names per layer, per stage) at cumulative multipliers (depth, width, resolution)."""

    space: str
    base: Base
    depth: float = 1.0
    width: float = 1.0
    resolution: int = 0

    # ------------------------------------------------------------------ JSON (docs/method.md)
    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "base": [list(layers) for layers in self.base],
                "depth": float(self.depth), "width": float(self.width), "resolution": int(self.resolution)}

    def to_json(self) -> str:
        """Canonical one-line JSON; equal subnets give equal strings."""
        return json.dumps(self.to_dict())

    def short(self) -> str:
        """Short human-readable form, e.g. ``d1.08 w1.12 r240 | 5 | 5 | 7753 | ...``."""
        stages = " ".join("".join(op.rsplit("k", 1)[-1] for op in layers) for layers in self.base)
        return f"d{self.depth:.2f} w{self.width:.2f} r{self.resolution} [{stages}]"

    def with_scaling(self, depth: float, width: float, resolution: int) -> "Subnet":
        return Subnet(self.space, self.base, depth, width, resolution)


def base_to_json(base: Base) -> list[list[str]]:
    return [list(layers) for layers in base]


def parse_subnet(obj: Any, space: SearchSpace | None = None, *, allow_outside: bool = False,
                 source: str = "architecture", base_dir: str | Path | None = None) -> Subnet:
    """Read a subnet from a dict (parsed JSON), validate it against its space and return it.

    ``allow_outside`` admits multipliers/resolutions outside the space's lists (extrapolated members, which
    only standalone models can build); they must still be >= 1.
    """
    if not isinstance(obj, dict):
        raise ScalenasError(f"{source}: expected a JSON object with space, base, depth, width, resolution")
    name = obj.get("space")
    if space is None:
        space = resolve_space_ref(obj, base_dir, source)
    elif name is not None and name != space.name and not (isinstance(name, str) and _names_file_of(name, space)):
        raise ScalenasError(f"{source}: field 'space' is {name!r} but the space given is {space.name!r}")
    base_raw = obj.get("base")
    if not isinstance(base_raw, list):
        raise ScalenasError(f"{source}: field 'base' must be a list of {space.num_stages} lists of op names")
    if len(base_raw) != space.num_stages:
        raise ScalenasError(f"{source}: field 'base' has {len(base_raw)} stages, space {space.name!r} has "
                            f"{space.num_stages}")
    base = []
    for i, (layers, st) in enumerate(zip(base_raw, space.stages)):
        if not isinstance(layers, list) or not all(isinstance(o, str) for o in layers):
            raise ScalenasError(f"{source}: field 'base[{i}]' must be a list of op names")
        if not 1 <= len(layers) <= st.max_layers:
            raise ScalenasError(f"{source}: field 'base[{i}]' has depth {len(layers)}, allowed 1..{st.max_layers}")
        for j, op in enumerate(layers):
            if op not in st.ops:
                raise ScalenasError(f"{source}: field 'base[{i}][{j}]': unknown op {op!r} "
                                    f"(stage {i} allows {', '.join(st.ops)})")
        base.append(tuple(layers))
    values = {}
    # A missing depth / width / resolution is the base network's (1.0, 1.0, the space's base resolution): the
    # documented default (docs/method.md, "The architecture JSON"), relied on by the Python API examples.
    for key, default in (("depth", 1.0), ("width", 1.0), ("resolution", space.base_resolution)):
        v = obj.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ScalenasError(f"{source}: field '{key}' must be a number, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ScalenasError(f"{source}: field '{key}' must be a finite number, got {v!r}")
        if key == "resolution" and isinstance(v, float):
            raise ScalenasError(f"{source}: field 'resolution' must be an integer, got {v!r}")
        values[key] = v
    _check_buildable(space, values, source)
    d, w, r = float(values["depth"]), float(values["width"]), int(values["resolution"])
    stage = space.stage_of(d, w, r)
    if stage is None:
        if not allow_outside:
            raise ScalenasError(f"{source}: (depth {d}, width {w}, resolution {r}) is not in any scaling stage "
                                f"of space {space.name!r}: {_describe_options(space)}")
        for key, v, low in (("depth", d, 1.0), ("width", w, 1.0), ("resolution", r, 1)):
            if v < low:
                raise ScalenasError(f"{source}: field '{key}' is {v}, must be >= {low}")
    else:
        sc = space.scaling[stage]
        d, w = snap_multiplier(d, sc.depth), snap_multiplier(w, sc.width)
    extra = set(obj) - {"base", "depth", "width", "resolution", *SPACE_REF_FIELDS}
    del extra  # further fields are allowed (docs/method.md) and ignored here
    return Subnet(space.name, tuple(base), d, w, r)


def arch_limits(space: SearchSpace) -> dict[str, float]:
    """The largest depth, width and resolution an architecture of ``space`` may have: :data:`ARCH_LIMIT` times the
    largest option of the space's scaling stages (docs/method.md). Anything larger is refused before it is built."""
    return {"depth": ARCH_LIMIT * space.max_depth_mult, "width": ARCH_LIMIT * space.max_width_mult,
            "resolution": ARCH_LIMIT * max(space.all_resolutions)}


def _check_buildable(space: SearchSpace, values: dict[str, Any], source: str) -> None:
    limits = arch_limits(space)
    largest = {"depth": space.max_depth_mult, "width": space.max_width_mult,
               "resolution": max(space.all_resolutions)}
    for key, limit in limits.items():
        if values[key] > limit:
            raise ScalenasError(f"{source}: field '{key}' is {_short_number(values[key])}, more than {ARCH_LIMIT}x "
                                f"the largest {key} option of space {space.name!r} ({largest[key]:g}): at most "
                                f"{limit:g}")


def _short_number(v: float) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 24 else f"{text[:8]}... ({len(text)} digits)"


def _describe_options(space: SearchSpace) -> str:
    parts = []
    for s, sc in enumerate(space.scaling):
        parts.append(f"stage {s}: depth {list(sc.depth)} width {list(sc.width)} resolution {list(sc.resolution)}")
    return "; ".join(parts)


def _names_file_of(name: str, space: SearchSpace) -> bool:
    """Whether ``name`` (an architecture's 'space' field) is a path to a YAML of the space's name."""
    return name.endswith((".yaml", ".yml")) and Path(name).stem == space.name


def arch_record(subnet: Subnet, space: SearchSpace, relative_to: str | Path | None = None, *,
                space_file: str | Path | None = None, embed: bool = False) -> dict[str, Any]:
    """The architecture JSON of ``subnet`` with what rebuilds its space anywhere (:func:`space_reference`)."""
    return {**subnet.to_dict(), **space_reference(space, relative_to, file=space_file, embed=embed)}


def read_arch(text_or_path: str, space: SearchSpace | None = None, *, allow_outside: bool = False) -> Subnet:
    """An architecture given as a JSON file path or an inline JSON string."""
    return load_arch(text_or_path, space, allow_outside=allow_outside)[0]


def load_arch(text_or_path: str, space: SearchSpace | str | None = None, *,
              allow_outside: bool = False) -> tuple[Subnet, SearchSpace]:
    """(subnet, its space) from a JSON file path or an inline JSON string.

    The space is ``space`` when given (a command's ``--space``), else the one the JSON names
    (:func:`~scalenas.spaces.space.resolve_space_ref`: relative references are resolved next to the file).
    """
    text = text_or_path.strip()
    source = "architecture"
    base_dir = None
    if not text.startswith("{"):
        p = Path(text_or_path)
        if not p.is_file():
            raise ScalenasError(f"architecture file not found: {text_or_path} (give a file or inline JSON)")
        source = str(p)
        base_dir = p.parent
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ScalenasError(f"{source}: unreadable architecture file ({type(exc).__name__})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScalenasError(f"{source}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") \
            from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise ScalenasError(f"{source}: malformed JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict):
        raise ScalenasError(f"{source}: expected a JSON object with space, base, depth, width, resolution")
    resolved = resolve_space_ref(obj, base_dir, source, override=space)
    return parse_subnet(obj, resolved, allow_outside=allow_outside, source=source), resolved


# ---------------------------------------------------------------------- derivation (docs/method.md)
@dataclass(frozen=True)
class LayerSpec:
    stage: int
    position: int  # position inside the stage; the supernet keeps weights per (stage, position, op)
    op: str
    kernel: int
    expand: int
    se: bool
    in_ch: int
    out_ch: int
    hidden: int
    se_ch: int
    stride: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


@dataclass(frozen=True)
class Derived:
    """The concrete network a subnet builds."""

    subnet: Subnet
    in_channels: int
    stem_ch: int
    stem_kernel: int
    stem_stride: int
    layers: tuple[LayerSpec, ...]
    head_in: int
    head_ch: int
    num_classes: int
    resolution: int

    def key(self) -> str:
        """Dedupe key of the *built* network (two (d, w, r) that build the same network share it)."""
        layers = ";".join(f"{l.stage}.{l.position}:{l.op}:{l.in_ch}>{l.hidden}>{l.out_ch}/{l.stride}"
                          for l in self.layers)
        return f"r{self.resolution}|s{self.stem_ch}|{layers}|h{self.head_in}"

    def stage_layers(self, stage: int) -> list[LayerSpec]:
        return [l for l in self.layers if l.stage == stage]


def se_channels(space: SearchSpace, hidden: int) -> int:
    return max(1, hidden // space.se_reduction)


def derive_subnet(space: SearchSpace, subnet: Subnet) -> Derived:
    """Base + (d, w, r) → every layer of the built network, with the space's one rounding rule."""
    d, w = subnet.depth, subnet.width
    stem_ch = space.scale_channels(space.stem_channels, w)
    layers = []
    c_in = stem_ch
    for i, (st, ops) in enumerate(zip(space.stages, subnet.base)):
        c_out = space.scale_channels(st.channels, w)
        n = space.scale_depth(len(ops), d)
        for j in range(n):
            op = ops[j] if j < len(ops) else ops[-1]  # added layers repeat the stage's last base op
            spec = space.ops[op]
            hidden = c_in * st.expand
            layers.append(LayerSpec(stage=i, position=j, op=op, kernel=spec.kernel, expand=st.expand, se=spec.se,
                                    in_ch=c_in, out_ch=c_out, hidden=hidden, se_ch=se_channels(space, hidden),
                                    stride=st.stride if j == 0 else 1))
            c_in = c_out
    return Derived(subnet=subnet, in_channels=space.in_channels, stem_ch=stem_ch, stem_kernel=space.stem_kernel,
                   stem_stride=space.stem_stride, layers=tuple(layers), head_in=c_in, head_ch=space.head_channels,
                   num_classes=space.num_classes, resolution=subnet.resolution)


# ---------------------------------------------------------------------- sampling
def sample_base(space: SearchSpace, rng: random.Random) -> Base:
    """A base network drawn uniformly: depth per stage, then op per layer."""
    base = []
    for st in space.stages:
        n = rng.randint(1, st.max_layers)
        base.append(tuple(rng.choice(st.ops) for _ in range(n)))
    return tuple(base)


def sample_scaling(space: SearchSpace, stage: int, rng: random.Random) -> tuple[float, float, int]:
    sc = space.scaling[stage]
    return rng.choice(sc.depth), rng.choice(sc.width), rng.choice(sc.resolution)


def sample_subnet(space: SearchSpace, rng: random.Random, stage: int | None = None,
                  hierarchical: bool = True) -> tuple[int, Subnet]:
    """Hierarchical sampling (docs/method.md): scaling stage by the space's weights, then d, w, r, then a base.

    With ``hierarchical=False`` the (d, w, r) triple is drawn uniformly from the flat union of all stages'
    triples (the ablation). ``stage`` forces a scaling stage. Returns (stage, subnet).
    """
    if stage is None:
        if hierarchical:
            stage = rng.choices(range(len(space.scaling)), weights=space.stage_weights)[0]
        else:
            sizes = [sc.size for sc in space.scaling]
            stage = rng.choices(range(len(space.scaling)), weights=sizes)[0]
    elif not 0 <= stage < len(space.scaling):
        raise ScalenasError(f"--stage {stage} is outside 0..{space.num_scaling_stages} of space {space.name!r}")
    d, w, r = sample_scaling(space, stage, rng)
    base = sample_base(space, rng)
    return stage, Subnet(space.name, base, d, w, r)


def extreme_subnets(space: SearchSpace, stage: int) -> tuple[Subnet, Subnet]:
    """The smallest and the largest subnet of a scaling stage."""
    sc = space.scaling[stage]
    small = tuple((st.ops[0],) for st in space.stages)
    big_op = [max(st.ops, key=lambda o: space.ops[o].kernel) for st in space.stages]
    large = tuple((op,) * st.max_layers for op, st in zip(big_op, space.stages))
    return (Subnet(space.name, small, min(sc.depth), min(sc.width), min(sc.resolution)),
            Subnet(space.name, large, max(sc.depth), max(sc.width), max(sc.resolution)))


def unique_by_built(space: SearchSpace, subnets: Iterable[Subnet]) -> list[Subnet]:
    seen: set[str] = set()
    out = []
    for s in subnets:
        k = derive_subnet(space, s).key()
        if k not in seen:
            seen.add(k)
            out.append(s)
    return out
