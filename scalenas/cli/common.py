"""Command-line flags made from the config dataclasses' fields: defaults, choices and help live there, once."""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Iterable

from scalenas.errors import ScalenasError
from scalenas.options import check_value, describe, flat_fields, range_text, type_name

_TYPES = {"int": int, "float": float, "str": str}


def _flags(name: str, flag_names: dict[str, str | tuple[str, ...]] | None) -> tuple[str, ...]:
    """The flag(s) of field ``name``: ``flag_names[name]`` (one flag, or a tuple: the first is its name in messages,
    the rest aliases), else ``--some-key``."""
    flag = (flag_names or {}).get(name) or "--" + name.replace("_", "-")
    return (flag,) if isinstance(flag, str) else tuple(flag)


def add_option_flags(parser: argparse.ArgumentParser, cls: type, names: Iterable[str], *,
                     show_defaults: bool = True, help_overrides: dict[str, str] | None = None,
                     flag_names: dict[str, str | tuple[str, ...]] | None = None, defaults: Any = None,
                     defaults_name: str = "") -> list[str]:
    """Add ``--some-key`` for each field ``some_key`` of ``cls``; returns the field names added.

    Every flag's argparse default is None ("not given"), so a job file's value or the dataclass default stays
    in force unless the flag is given; the help text shows the effective default: ``defaults`` (e.g. the default
    job's config, named ``defaults_name``) where it differs, else the dataclass default. Booleans get ``--x/--no-x``.
    """
    fields = {f.name: f for f in flat_fields(cls)}
    added = []
    for name in names:
        f = fields[name]
        meta = f.metadata
        flags = _flags(name, flag_names)
        text = (help_overrides or {}).get(name) or (describe(f, defaults, defaults_name) if show_defaults
                                                     else meta.get("help", ""))
        kind = type_name(f)
        kwargs: dict[str, Any] = {"default": None, "help": text.replace("%", "%%"), "dest": name}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _TYPES.get(kind, str)
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = name.upper() if not meta.get("choices") else None
            if kwargs["metavar"] is None:
                del kwargs["metavar"]
        parser.add_argument(*flags, **kwargs)
        added.append(name)
    return added


def given(args: argparse.Namespace, names: Iterable[str], cls: type | None = None,
          flag_names: dict[str, str | tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The values of the flags in ``names`` that were given on the command line; with ``cls``, each one is
    validated against its field (type, finiteness, choices, range) with the flag named in the message."""
    out = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if cls is not None:
        fields = {f.name: f for f in flat_fields(cls)}
        for k, v in out.items():
            check_value(fields[k], v, "command line", _flags(k, flag_names)[0])
    return out


def number(flag: str, kind: type = int, *, min: float | None = None, max: float | None = None,  # noqa: A002
           min_open: bool = False, max_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` for a numeric flag that is not a config field: the value must parse as ``kind``, be
    finite and lie in the range, else one line naming the flag (``--steps: must be >= 1, got 0``).

    A value out of range raises :class:`ScalenasError` (which argparse passes through), so the command line
    reports it as every other bad input: one line on stderr, exit code 2. A value that is no number at all gets
    argparse's own one-line error (``argument --n: invalid int value: 'two'``), also exit code 2.
    """
    def parse(text: str) -> Any:
        value = kind(text)  # not a number at all: argparse's own one-line "invalid int value: 'two'"
        if isinstance(value, float) and not math.isfinite(value):
            raise ScalenasError(f"{flag}: must be a finite number, got {text!r}")
        low = min is not None and (value <= min if min_open else value < min)
        high = max is not None and (value >= max if max_open else value > max)
        if low or high:
            raise ScalenasError(f"{flag}: must be {range_text(min, max, min_open, max_open)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse
