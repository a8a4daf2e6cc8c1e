"""Supernet checkpoints: written atomically, validated on load (format, space, weights)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scalenas.errors import ScalenasError
from scalenas.io import atomic_torch_save, safe_torch_load
from scalenas.runs import SUPERNET_CKPT
from scalenas.spaces.space import SearchSpace, load_space, space_differences, space_from_dict

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
    if not isinstance(payload["model"], dict) or not isinstance(payload["space_yaml"], dict):
        raise ScalenasError(f"{p}: damaged checkpoint: 'model' and 'space_yaml' must be mappings")
    return payload


def checkpoint_space(payload: dict[str, Any], path: str = "checkpoint") -> SearchSpace:
    """The space the checkpoint was trained on, rebuilt from the YAML stored inside it.

    The stored YAML is the truth: the file it came from may have moved, changed or gone, and ``num_classes`` may
    have been fitted to the data. The file (or the shipped space of that name) is returned instead only when its
    content is the same (:attr:`SearchSpace.content_key`), so messages name the file.
    """
    space = space_from_dict(payload["space_yaml"], f"{path}[space_yaml]")
    for ref in dict.fromkeys(r for r in (payload.get("space_path"), payload.get("space")) if isinstance(r, str) and r):
        try:
            other = load_space(ref)
        except ScalenasError:
            continue
        if other.content_key == space.content_key:
            return other
    return space


def check_same_space(given: SearchSpace, trained: SearchSpace, where: str) -> None:
    """Raise (one line) unless ``given`` has the content of the space ``trained`` came from."""
    if given.content_key == trained.content_key:
        return
    if given.name != trained.name:
        raise ScalenasError(f"{where}: checkpoint of space {trained.name!r}, but space {given.name!r} was given")
    raise ScalenasError(f"{where}: the checkpoint's space {trained.name!r} differs from the given {given.path}: "
                        f"{space_differences(trained, given) or 'content'} (checkpoint vs given)")


def load_supernet(path: str | os.PathLike, expect_space: SearchSpace | None = None, payload=None):
    """A :class:`~scalenas.models.supernet.SuperNet` with the checkpoint's weights (CPU, eval mode).

    ``expect_space``: the space the caller means; it must have the checkpoint's content (not only its name).
    """
    from scalenas.models.supernet import SuperNet

    p = resolve_checkpoint(path)
    payload = payload if payload is not None else read_checkpoint(p)
    space = checkpoint_space(payload, str(p))
    if expect_space is not None:
        check_same_space(expect_space, space, str(p))
    net = SuperNet(space)
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ScalenasError(f"{p}: weights do not fit space {space.name!r}: {first}") from None
    net.eval()
    return net
