"""Config dataclasses declare each option once: default, help, choices and range, validated by one function.

A field made with :func:`option` carries its help text, its choices and its numeric range in the field's
metadata. :func:`check_options` validates a whole dataclass instance (type, finiteness, choices, range) with
a message naming the key; :func:`coerce_option` turns a YAML or command-line value into the field's type. The
command line builds its flags from the same fields (``scalenas.cli.common``), so nothing is restated there.

A config may nest a *group* of options (another such dataclass, declared with :func:`group`, as pycls keeps
option subtrees): :func:`check_options` validates it with the rest, and :func:`flat_fields`, :func:`flat_dict`,
:func:`from_flat` and :func:`flat_keys` keep its keys flat in job files, flags and records, so nesting changes
no file and no flag.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from scalenas.errors import ScalenasError

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, choices: tuple | None = None,  # noqa: A002 - help
           min: float | None = None, max: float | None = None, min_open: bool = False,  # noqa: A002
           max_open: bool = False, default_factory: Any = _MISSING, flag: bool = True) -> Any:
    """A dataclass field with its documentation and bounds (``min_open``: the bound itself is excluded)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_open": min_open, "max_open": max_open,
            "flag": flag}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """A dataclass field holding a group of options: an instance of the dataclass ``cls`` (its own defaults)."""
    return dataclasses.field(default_factory=cls, metadata={"group": cls})


def flat_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields of a config dataclass (or instance) with each group's fields in its place: the flat keys."""
    out: list[dataclasses.Field] = []
    for f in dataclasses.fields(cls):
        out += flat_fields(f.metadata["group"]) if "group" in f.metadata else [f]
    return out


def flat_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` with each group's keys in its place (the order of :func:`flat_fields`)."""
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(obj).items():
        if "group" in obj.__dataclass_fields__[k].metadata:
            out.update(v)
        else:
            out[k] = v
    return out


def from_flat(cls: type, values: dict[str, Any]) -> Any:
    """An instance of the config dataclass ``cls`` from flat keys (any subset); an unknown key raises
    :class:`TypeError` as the constructor does."""
    values = dict(values)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            sub = f.metadata["group"]
            names = {g.name for g in flat_fields(sub)}
            kwargs[f.name] = from_flat(sub, {k: values.pop(k) for k in list(values) if k in names})
    return cls(**kwargs, **values)


def flat_keys(cls: type) -> type:
    """Class decorator (above ``@dataclass``): each key of a group reads and writes as an attribute of the config
    itself (``cfg.holdout_frac`` is ``cfg.data_options.holdout_frac``), as job files and flags name it."""
    for f in dataclasses.fields(cls):
        if "group" not in f.metadata:
            continue
        for g in flat_fields(f.metadata["group"]):
            def get(self: Any, _group: str = f.name, _key: str = g.name) -> Any:
                return getattr(getattr(self, _group), _key)

            def put(self: Any, value: Any, _group: str = f.name, _key: str = g.name) -> None:
                setattr(getattr(self, _group), _key, value)

            setattr(cls, g.name, property(get, put, doc=g.metadata.get("help")))
    return cls


def type_name(f: dataclasses.Field) -> str:
    """``int``, ``float``, ``str``, ``bool`` or ``list`` (the field's base type, ``| None`` stripped)."""
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name in ("bool", "int", "float", "str", "list"):
        if typ.startswith(name):
            return name
    return typ


def optional(f: dataclasses.Field) -> bool:
    typ = f.type if isinstance(f.type, str) else str(f.type)
    return "None" in typ


def coerce_option(f: dataclasses.Field, value: Any, where: str, label: str | None = None) -> Any:
    """``value`` as the type of field ``f`` (ints stay ints; an int is a valid float); else a clear error."""
    name = label or f"{where}: {f.name}"
    if value is None:
        if optional(f):
            return None
        raise ScalenasError(f"{name}: must not be empty")
    kind = type_name(f)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ScalenasError(f"{name}: expected true/false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScalenasError(f"{name}: expected an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScalenasError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ScalenasError(f"{name}: expected a string, got {value!r}")
        return str(value)
    return value


def range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """``>= 1 and <= 20``, ``> 1``, ...: a range as the messages and the help texts write it."""
    left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
    return " and ".join(x for x in (left, right) if x)


def _range_text(meta: dict[str, Any]) -> str:
    return range_text(meta.get("min"), meta.get("max"), bool(meta.get("min_open")), bool(meta.get("max_open")))


def check_value(f: dataclasses.Field, value: Any, where: str, label: str | None = None) -> None:
    """Type, finiteness, choices and range of one field's value (None passes for optional fields).

    Messages read ``WHERE: KEY: problem``, or ``LABEL: problem`` when a ``label`` (e.g. ``--lr``) is given.
    """
    name = label or f"{where}: {f.name}"
    if value is None:
        if not optional(f):
            raise ScalenasError(f"{name}: must not be empty")
        return
    coerce_option(f, value, where, label)
    meta = f.metadata
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ScalenasError(f"{name}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ScalenasError(f"{name}: must be a finite number, got {value!r}")
        lo, hi = meta.get("min"), meta.get("max")
        bad = (lo is not None and (value <= lo if meta.get("min_open") else value < lo)) or \
              (hi is not None and (value >= hi if meta.get("max_open") else value > hi))
        if bad:
            raise ScalenasError(f"{name}: must be {_range_text(meta)}, got {value!r}")


def check_options(obj: Any, where: str) -> Any:
    """Validate every field of the dataclass instance ``obj`` that was declared with :func:`option`, those of its
    groups too (messages name the flat key)."""
    for f in dataclasses.fields(obj):
        if "group" in f.metadata:
            check_options(getattr(obj, f.name), where)
        elif "help" in f.metadata:
            check_value(f, getattr(obj, f.name), where)
    return obj


def describe(f: dataclasses.Field, defaults: Any = None, defaults_name: str = "") -> str:
    """The help text of a field with its default, choices and range (for ``--help`` and the docs).

    ``defaults``: an instance whose value is the *effective* default (e.g. the default job's config), named
    ``defaults_name`` in the text when it differs from the field's own default.
    """
    meta = f.metadata
    parts = [meta.get("help", "")]
    if meta.get("choices"):
        parts.append(f"one of {', '.join(map(str, meta['choices']))}")
    rng = _range_text(meta)
    if rng:
        parts.append(rng)
    default = f.default if f.default is not _MISSING else None
    if defaults is not None and getattr(defaults, f.name, default) != default:
        parts.append(f"default {getattr(defaults, f.name)}{f' ({defaults_name})' if defaults_name else ''}")
    else:
        parts.append(f"default {default}")
    return "; ".join(p for p in parts if p)
