"""Command-line flags made from the config dataclasses' fields: defaults, choices and help live there, once."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable

from scalenas.options import check_value, describe, type_name

_TYPES = {"int": int, "float": float, "str": str}


def add_option_flags(parser: argparse.ArgumentParser, cls: type, names: Iterable[str], *,
                     show_defaults: bool = True, help_overrides: dict[str, str] | None = None,
                     flag_names: dict[str, str] | None = None) -> list[str]:
    """Add ``--some-key`` for each field ``some_key`` of ``cls``; returns the field names added.

    Every flag's argparse default is None ("not given"), so a job file's value or the dataclass default stays
    in force unless the flag is given; the help text shows the dataclass default. Booleans get ``--x/--no-x``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    added = []
    for name in names:
        f = fields[name]
        meta = f.metadata
        flag = (flag_names or {}).get(name) or "--" + name.replace("_", "-")
        text = (help_overrides or {}).get(name) or (describe(f) if show_defaults else meta.get("help", ""))
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
        parser.add_argument(flag, **kwargs)
        added.append(name)
    return added


def given(args: argparse.Namespace, names: Iterable[str], cls: type | None = None,
          flag_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The values of the flags in ``names`` that were given on the command line; with ``cls``, each one is
    validated against its field (type, finiteness, choices, range) with the flag named in the message."""
    out = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if cls is not None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in out.items():
            check_value(fields[k], v, "command line", (flag_names or {}).get(k) or "--" + k.replace("_", "-"))
    return out
