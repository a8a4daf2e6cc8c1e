"""Search spaces: YAML files validated once at load time.

A space declares the stem, the searchable stages with their candidate ops, the head, the base resolution
and the scaling stages (cumulative depth / width / resolution multipliers per stage). The ONE channel
rounding rule of a space lives here (:meth:`SearchSpace.scale_channels`); the subnet derivation, the
supernet capacity, the exported model and the FLOPs counter all go through it.

A space is identified by its CONTENT (:attr:`SearchSpace.content_key`), never by its file: a space rebuilt from
the YAML stored in a checkpoint (its file moved, edited or deleted, or ``num_classes`` set to fit the data) is
the same space wherever its content is the same. Spaces compare and hash by that key, and every cache of
space-derived values (FLOPs, built-network keys) is keyed on it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalenas.errors import ScalenasError
from scalenas.resources import SPACES, shipped_dir
from scalenas.runs import SearchFolder

SPACES_DIR = shipped_dir(SPACES)  # the shipped spaces (package data)
_EPS = 1e-9  # multipliers like 1.2 are not exact in binary: 5 * 1.2 must ceil to 6, not 7


@dataclass(frozen=True)
class OpSpec:
    """A candidate op: an inverted-residual block with a given depthwise kernel, optional SE."""

    name: str
    kernel: int
    se: bool = True


@dataclass(frozen=True)
class StageSpec:
    """A searchable stage. The first layer carries the stride and the channel change."""

    channels: int
    max_layers: int
    stride: int
    expand: int
    ops: tuple[str, ...]


@dataclass(frozen=True)
class ScalingStage:
    """Option lists of cumulative multipliers for one scaling stage (stage 0 is the base)."""

    depth: tuple[float, ...]
    width: tuple[float, ...]
    resolution: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.depth) * len(self.width) * len(self.resolution)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: str
    in_channels: int
    num_classes: int
    base_resolution: int
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stages: tuple[StageSpec, ...]
    ops: dict[str, OpSpec]
    head_channels: int
    dropout: float
    se_reduction: int
    coupling: int  # n = 2: bilateral (left/right) channel slices; n = 1: ordered (left) slices
    width_rounding: str  # "ceil" or "multiple"
    width_multiple: int
    resolution_step: int
    growth: float
    scaling: tuple[ScalingStage, ...]
    stage_weights: tuple[float, ...]  # hierarchical sampling: P(scaling stage s)
    max_resolution: int | None = None  # the data's native size: extrapolation never upsamples beyond it
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    # ---------------------------------------------------------------- identity: the content
    @functools.cached_property
    def content_key(self) -> str:
        """sha256 of the canonical JSON of the space's validated content (every field but ``path`` and ``raw``).

        Equal for equal content wherever the space came from (a YAML file, a checkpoint's stored YAML, a dict);
        different when any field that shapes a network differs. YAML spelling (``1`` vs ``1.0``, defaults
        written out or left implicit, comments, ``description``) does not change it.
        """
        return hashlib.sha256(_canonical_json(self.content()).encode()).hexdigest()

    def content(self) -> dict[str, Any]:
        """The validated fields that define the space (what :attr:`content_key` hashes)."""
        # max_resolution is left out while unset, so spaces that do not declare it keep their key
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("path", "raw") and not (f.name == "max_resolution" and self.max_resolution is None)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self is other or self.content_key == other.content_key

    def __hash__(self) -> int:
        return hash(self.content_key)

    # ---------------------------------------------------------------- the one rounding rule
    def scale_channels(self, channels: int, width: float) -> int:
        """Channels of a layer with base width ``channels`` at width multiplier ``width``."""
        if self.width_rounding == "ceil":
            return max(1, math.ceil(channels * width - _EPS))
        m = self.width_multiple
        value = channels * width
        rounded = max(m, int(value + m / 2) // m * m)
        if rounded < 0.9 * value:  # never round down by more than 10 % (the MobileNet rule)
            rounded += m
        return rounded

    @staticmethod
    def scale_depth(layers: int, depth: float) -> int:
        """Layers of a stage with ``layers`` base layers at depth multiplier ``depth`` (ceil)."""
        return max(1, math.ceil(layers * depth - _EPS))

    # ---------------------------------------------------------------- derived quantities
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_scaling_stages(self) -> int:
        """S: the number of scaling stages above the base (stage indices 0..S)."""
        return len(self.scaling) - 1

    @property
    def max_depth_mult(self) -> float:
        return max(max(s.depth) for s in self.scaling)

    @property
    def max_width_mult(self) -> float:
        return max(max(s.width) for s in self.scaling)

    def positions(self, stage: int) -> int:
        """Layer positions the supernet holds for searchable stage ``stage``."""
        return self.scale_depth(self.stages[stage].max_layers, self.max_depth_mult)

    def capacity(self, channels_at: Any) -> int:
        """Channel capacity of a feature whose width is ``channels_at(w)``.

        With bilateral coupling the capacity is ``c(w_max) + c(1)`` so the left and right slices of the base
        width never overlap; with ordered slicing it is ``c(w_max)``.
        """
        cap = channels_at(self.max_width_mult)
        if self.coupling == 2:
            cap += channels_at(1.0)
        return cap

    def num_base_networks(self) -> int:
        total = 1
        for st in self.stages:
            n_ops = len(st.ops)
            total *= sum(n_ops**k for k in range(1, st.max_layers + 1))
        return total

    def stage_of(self, depth: float, width: float, resolution: int) -> int | None:
        """The scaling stage whose option lists contain (depth, width, resolution), else None."""
        for s, sc in enumerate(self.scaling):
            if _member(depth, sc.depth) is not None and _member(width, sc.width) is not None \
                    and resolution in sc.resolution:
                return s
        return None

    @property
    def all_resolutions(self) -> list[int]:
        return sorted({r for sc in self.scaling for r in sc.resolution})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path}


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts as plain JSON-able values (dict keys as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)


def space_differences(a: SearchSpace, b: SearchSpace) -> str:
    """The fields in which two spaces differ, one short line (``num_classes 10 vs 3; stages``); '' if none."""
    ca, cb = a.content(), b.content()
    out = []
    for k in ca:
        if ca[k] != cb.get(k):
            va, vb = ca[k], cb.get(k)
            simple = all(isinstance(v, (int, float, str, bool)) for v in (va, vb))
            out.append(f"{k} {va!r} vs {vb!r}" if simple else k)
    return "; ".join(out)


def _member(value: float, options: tuple[float, ...]) -> float | None:
    for o in options:
        if abs(o - value) <= 1e-9:
            return o
    return None


def snap_multiplier(value: float, options: tuple[float, ...]) -> float | None:
    """The option equal to ``value`` (within 1e-9), so JSON round-trips keep the space's exact floats."""
    return _member(value, options)


# -------------------------------------------------------------------- loading and validation
class _Checker:
    """Reads keys from the YAML mapping and raises errors that name the file and the key."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, msg: str) -> ScalenasError:
        return ScalenasError(f"{self.path}: {key}: {msg}")

    def get(self, d: Any, key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        full = f"{where}.{key}" if where else key
        if not isinstance(d, dict):
            raise self.fail(where or "<top>", "expected a mapping")
        if key not in d:
            if default is ...:
                raise self.fail(full, "missing")
            return default
        value = d[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(full, f"expected {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(full, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def positive_int(self, d: Any, key: str, where: str, default: Any = ...) -> int:
        v = self.get(d, key, where, int, default)
        if v < 1:
            raise self.fail(f"{where}.{key}" if where else key, f"must be >= 1, got {v}")
        return v

    def number_list(self, d: Any, key: str, where: str, kind: type) -> tuple:
        full = f"{where}.{key}"
        v = self.get(d, key, where, list)
        if not v:
            raise self.fail(full, "must be a non-empty list")
        out = []
        for i, x in enumerate(v):
            if kind is float and isinstance(x, int) and not isinstance(x, bool):
                x = float(x)
            if isinstance(x, bool) or not isinstance(x, kind) or x <= 0:
                raise self.fail(f"{full}[{i}]", f"expected a positive {_kind_name(kind)}, got {x!r}")
            out.append(x)
        if len(set(out)) != len(out):
            raise self.fail(full, "contains duplicates")
        return tuple(out)


def _kind_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return {"float": "a number", "int": "an integer", "str": "a string", "list": "a list",
            "dict": "a mapping", "bool": "true/false"}.get(kind.__name__, kind.__name__)


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ScalenasError(f"search space file not found: {p}")
        return p
    shipped = SPACES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ScalenasError(f"unknown search space {name_or_path!r} (shipped: {', '.join(shipped_spaces())};"
                        " or give a path to a .yaml file)")


_CACHE: dict[str, tuple[str, SearchSpace]] = {}  # resolved path -> (the file's text, the space parsed from it)


def load_space(name_or_path: str | SearchSpace) -> SearchSpace:
    """Load and validate a space by shipped name (``digits-tiny``) or YAML path; a space passes through.

    Cached per file and re-parsed when the file's text changes, so an edited YAML is never served stale.
    """
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    path = resolve_space_path(str(name_or_path))
    key = str(path.resolve())
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScalenasError(f"cannot read search space {path}: {exc.strerror}") from None
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == text:
        return hit[1]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ScalenasError(f"{path}: malformed YAML{where}") from None
    space = space_from_dict(data, str(path))
    _CACHE[key] = (text, space)
    return space


# ------------------------------------------------------------------------------------------ references
# An architecture JSON names its space by these fields (docs/method.md, "The architecture JSON"):
#   space       the space's name (a shipped space), or a path to its YAML (relative to the JSON, else to the cwd)
#   space_key   the space's content_key: the space found must have this content
#   space_file  a YAML file holding the space, relative to the JSON (a search folder's space.yaml) or absolute
#   space_yaml  the space itself, embedded (when no file holds its content, e.g. num_classes fitted to the data)
SPACE_REF_FIELDS = ("space", "space_key", "space_file", "space_yaml")


def _same_content_file(space: SearchSpace) -> Path | None:
    """A YAML file (the space's own, or the shipped one of its name) holding exactly the space's content."""
    for ref in dict.fromkeys(r for r in (space.path, space.name) if isinstance(r, str) and r and r != "<dict>"):
        try:
            if load_space(ref).content_key == space.content_key:
                return resolve_space_path(ref)
        except ScalenasError:
            continue
    return None


def is_shipped_file(path: str | Path) -> bool:
    try:
        return Path(path).resolve().parent == SPACES_DIR.resolve()
    except OSError:
        return False


def space_reference(space: SearchSpace, relative_to: str | Path | None = None, *,
                    file: str | Path | None = None, embed: bool = False) -> dict[str, Any]:
    """The fields an architecture JSON carries so that it rebuilds in ``space`` on any machine.

    ``file``: a YAML file holding the space (e.g. the search folder's ``space.yaml``), referenced relative to
    ``relative_to`` (the JSON's folder) when given; otherwise the space's own file if it still holds the same
    content (a shipped space is named only), else the space is embedded (``space_yaml``). ``embed``: embed every
    space but a shipped one (model files, which must rebuild on any machine).
    """
    ref: dict[str, Any] = {"space": space.name, "space_key": space.content_key}
    target = Path(file) if file is not None else _same_content_file(space)
    if target is None or (embed and file is None and not is_shipped_file(target)):
        ref["space_yaml"] = dict(space.raw)
    elif file is not None or not is_shipped_file(target):
        if relative_to is not None:
            try:
                ref["space_file"] = Path(os.path.relpath(Path(target).resolve(), Path(relative_to).resolve())) \
                    .as_posix()
            except ValueError:  # another drive (Windows)
                ref["space_file"] = str(Path(target).resolve())
        else:
            ref["space_file"] = str(Path(target).resolve())
    return ref


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or os.sep in name


def resolve_space_ref(obj: dict[str, Any], base_dir: str | Path | None = None, source: str = "architecture",
                      override: SearchSpace | str | None = None) -> SearchSpace:
    """The space an architecture JSON ``obj`` belongs to (see :data:`SPACE_REF_FIELDS`).

    ``base_dir``: the folder of the JSON file (relative references are resolved there first). ``override`` (a
    command's ``--space``) wins; a space found by name or path must have the JSON's ``space_key`` when it gives
    one. One clear line when the space cannot be found or does not match.
    """
    key = obj.get("space_key")
    if key is not None and not isinstance(key, str):
        raise ScalenasError(f"{source}: field 'space_key' must be a string")
    if override is not None:
        space = load_space(override)
        if key and space.content_key != key:
            import warnings

            warnings.warn(f"{source}: using --space {space.path or space.name} although the architecture was made "
                          f"in a space of other content (space_key {key[:12]}... vs {space.content_key[:12]}...)",
                          stacklevel=2)
        return space
    base = Path(base_dir) if base_dir is not None else None
    embedded = obj.get("space_yaml")
    if embedded is not None:
        space = space_from_dict(embedded, f"{source}[space_yaml]")
        if key and space.content_key != key:
            raise ScalenasError(f"{source}: the embedded space_yaml does not have the content of space_key {key}")
        return space
    file = obj.get("space_file")
    if file is not None:
        if not isinstance(file, str) or not file:
            raise ScalenasError(f"{source}: field 'space_file' must be a path")
        p = Path(file)
        if not p.is_absolute() and base is not None:
            p = base / p
        if not p.is_file():
            raise ScalenasError(f"{source}: its space file {p} is missing and the space is not embedded "
                                "(give --space NAME|FILE)")
        space = load_space(str(p))
        if key and space.content_key != key:
            raise ScalenasError(f"{source}: space file {p} does not hold the architecture's space (space_key "
                                f"{key[:12]}... vs {space.content_key[:12]}... of the file: it was edited)")
        return space
    name = obj.get("space")
    if not isinstance(name, str) or not name:
        raise ScalenasError(f"{source}: field 'space' missing; give --space or name the space in the JSON")
    candidates: list[str] = []
    sibling = base / SearchFolder.SPACE if base is not None else None
    if _looks_like_path(name):
        if base is not None and not Path(name).is_absolute():
            candidates.append(str(base / name))
        candidates.append(name)
    else:
        if sibling is not None and sibling.is_file():
            candidates.append(str(sibling))  # a search folder's own space (num_classes fitted to its data)
        candidates.append(name)
    errors = []
    for ref in candidates:
        try:
            space = load_space(ref)
        except ScalenasError as exc:
            errors.append(str(exc))
            continue
        if ref == str(sibling) and space.name != name:
            continue
        if key and space.content_key != key:
            errors.append(f"{ref} holds other content than the architecture's space_key")
            continue
        return space
    if key:
        raise ScalenasError(f"{source}: no space of name {name!r} with the architecture's content (space_key "
                            f"{key[:12]}...) was found; give --space FILE")
    raise ScalenasError(errors[-1] if errors else f"{source}: unknown search space {name!r}")


def space_from_dict(data: Any, path: str = "<dict>") -> SearchSpace:
    c = _Checker(path)
    if not isinstance(data, dict):
        raise ScalenasError(f"{path}: expected a YAML mapping at the top level")
    known = {"name", "in_channels", "num_classes", "base_resolution", "stem", "ops", "stages", "head",
             "se_reduction", "coupling", "width_rounding", "resolution_step", "growth", "scaling",
             "stage_weights", "max_resolution", "description"}
    for k in data:
        if k not in known:
            raise c.fail(str(k), f"unknown key (known: {', '.join(sorted(known))})")
    name = c.get(data, "name", "", str)
    in_channels = c.positive_int(data, "in_channels", "", 3)
    num_classes = c.positive_int(data, "num_classes", "")
    base_res = c.positive_int(data, "base_resolution", "")
    stem = c.get(data, "stem", "", dict)
    stem_ch = c.positive_int(stem, "channels", "stem")
    stem_k = c.positive_int(stem, "kernel", "stem", 3)
    stem_s = c.positive_int(stem, "stride", "stem", 2)

    ops_raw = c.get(data, "ops", "", dict)
    if not ops_raw:
        raise c.fail("ops", "must declare at least one op")
    ops: dict[str, OpSpec] = {}
    for op_name, spec in ops_raw.items():
        where = f"ops.{op_name}"
        k = c.positive_int(spec, "kernel", where)
        if k % 2 == 0:
            raise c.fail(f"{where}.kernel", f"must be odd, got {k}")
        ops[str(op_name)] = OpSpec(str(op_name), k, c.get(spec, "se", where, bool, True))

    stages_raw = c.get(data, "stages", "", list)
    if not stages_raw:
        raise c.fail("stages", "must list at least one searchable stage")
    stages = []
    for i, st in enumerate(stages_raw):
        where = f"stages[{i}]"
        st_ops = c.get(st, "ops", where, list)
        if not st_ops:
            raise c.fail(f"{where}.ops", "must list at least one op")
        for o in st_ops:
            if o not in ops:
                raise c.fail(f"{where}.ops", f"unknown op {o!r} (declared: {', '.join(ops)})")
        stride = c.positive_int(st, "stride", where)
        if stride not in (1, 2):
            raise c.fail(f"{where}.stride", f"must be 1 or 2, got {stride}")
        stages.append(StageSpec(c.positive_int(st, "channels", where), c.positive_int(st, "max_layers", where),
                                stride, c.positive_int(st, "expand", where), tuple(st_ops)))

    head = c.get(data, "head", "", dict)
    head_ch = c.positive_int(head, "channels", "head")
    dropout = c.get(head, "dropout", "head", float, 0.0)
    if not 0.0 <= dropout < 1.0:
        raise c.fail("head.dropout", f"must be in [0, 1), got {dropout}")

    coupling = c.get(data, "coupling", "", int, 2)
    if coupling not in (1, 2):
        raise c.fail("coupling", f"must be 1 (ordered slices) or 2 (bilateral), got {coupling}")
    wr = data.get("width_rounding", "ceil")
    if wr == "ceil":
        rounding, multiple = "ceil", 1
    elif isinstance(wr, dict) and set(wr) == {"multiple"} and isinstance(wr["multiple"], int) \
            and wr["multiple"] >= 1:
        rounding, multiple = "multiple", wr["multiple"]
    else:
        raise c.fail("width_rounding", f"must be 'ceil' or {{multiple: N}}, got {wr!r}")

    scaling_raw = c.get(data, "scaling", "", list)
    if len(scaling_raw) < 2:
        raise c.fail("scaling", "needs stage 0 (the base) and at least one scaling stage")
    scaling = []
    for s, sc in enumerate(scaling_raw):
        where = f"scaling[{s}]"
        scaling.append(ScalingStage(c.number_list(sc, "depth", where, float), c.number_list(sc, "width", where, float),
                                    c.number_list(sc, "resolution", where, int)))
    base = scaling[0]
    if base.depth != (1.0,) or base.width != (1.0,) or base.resolution != (base_res,):
        raise c.fail("scaling[0]", f"stage 0 is the base: depth [1.0], width [1.0], resolution [{base_res}]")
    for s, sc in enumerate(scaling):
        if min(sc.depth) < 1.0 or min(sc.width) < 1.0:
            raise c.fail(f"scaling[{s}]", "depth and width multipliers must be >= 1.0")

    weights_raw = data.get("stage_weights")
    if weights_raw is None:
        # The paper: P(stage) proportional to its number of width options ([1, 4, 5, 7] / 17).
        weights = tuple(float(len(sc.width)) for sc in scaling)
    else:
        weights = c.number_list(data, "stage_weights", "", float) if isinstance(weights_raw, list) else None
        if weights is None or len(weights) != len(scaling):
            raise c.fail("stage_weights", f"must be a list of {len(scaling)} positive numbers")
    total = sum(weights)
    weights = tuple(w / total for w in weights)

    growth = c.get(data, "growth", "", float, 2.0)
    if growth <= 1.0:
        raise c.fail("growth", f"must be > 1, got {growth}")
    max_res = None
    if data.get("max_resolution") is not None:
        max_res = c.positive_int(data, "max_resolution", "")
        largest = max(r for sc in scaling for r in sc.resolution)
        if max_res < largest:
            raise c.fail("max_resolution", f"must be >= the largest listed resolution ({largest}), got {max_res}")
    return SearchSpace(
        name=name, path=path, in_channels=in_channels, num_classes=num_classes, base_resolution=base_res,
        stem_channels=stem_ch, stem_kernel=stem_k, stem_stride=stem_s, stages=tuple(stages), ops=ops,
        head_channels=head_ch, dropout=dropout, se_reduction=c.positive_int(data, "se_reduction", "", 4),
        coupling=coupling, width_rounding=rounding, width_multiple=multiple,
        resolution_step=c.positive_int(data, "resolution_step", "", 8), growth=growth,
        scaling=tuple(scaling), stage_weights=weights, max_resolution=max_res, raw=data)
