"""Supernet checkpoints: written atomically, validated on load (format, space, weights)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from scalenas.errors import ScalenasError
from scalenas.io import atomic_torch_save, safe_torch_load
from scalenas.runs import SUPERNET_CKPT
from scalenas.spaces.space import SearchSpace, load_space, space_from_dict

CKPT_FORMAT = "scalenas-supernet/1"
CKPT_NAME = SUPERNET_CKPT


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    payload = dict(payload)
    payload["format"] = CKPT_FORMAT
    return atomic_torch_save(path, payload)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_NAME
    if not p.is_file():
        raise ScalenasError(f"supernet checkpoint not found: {p}")
    return p


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict, refusing files that are not scalenas supernet checkpoints."""
    p = resolve_checkpoint(path)
    payload = safe_torch_load(p, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise ScalenasError(f"{p}: not a scalenas supernet checkpoint (format {CKPT_FORMAT!r} expected)")
    for key in ("space", "space_yaml", "model"):
        if key not in payload:
            raise ScalenasError(f"{p}: checkpoint lacks field {key!r}")
    return payload


def checkpoint_space(payload: dict[str, Any], path: str = "checkpoint") -> SearchSpace:
    """The space the checkpoint was trained on, rebuilt from the YAML stored inside it."""
    space = space_from_dict(payload["space_yaml"], f"{path}[space_yaml]")
    try:  # prefer the shipped/loaded object so caches and paths line up when the file still exists
        shipped = load_space(payload.get("space_path") or payload["space"])
        if shipped.raw == space.raw:
            return shipped
    except ScalenasError:
        pass
    return space


def load_supernet(path: str | os.PathLike, expect_space: SearchSpace | None = None, payload=None):
    """A :class:`~scalenas.models.supernet.SuperNet` with the checkpoint's weights (CPU, eval mode)."""
    from scalenas.models.supernet import SuperNet

    p = resolve_checkpoint(path)
    payload = payload if payload is not None else read_checkpoint(p)
    space = checkpoint_space(payload, str(p))
    if expect_space is not None and expect_space.name != space.name:
        raise ScalenasError(f"{p}: checkpoint of space {space.name!r}, but space {expect_space.name!r} was given")
    net = SuperNet(space)
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ScalenasError(f"{p}: weights do not fit space {space.name!r}: {first}") from None
    net.eval()
    return net
