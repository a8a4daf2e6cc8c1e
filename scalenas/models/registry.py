"""Model files that load without the supernet: ``{"format", "kind", "config", "state_dict", ...}``.

Every standalone model class registers itself under a *kind* with :func:`register_model`; it must offer
``to_config() -> dict`` (JSON-able) and ``from_config(cfg) -> model``. ``torch.save`` keeps tensor storage
sharing inside one file, so a grown model whose blocks share tensors stays shared after loading as long as
``from_config`` rebuilds the sharing (the grow module does).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from scalenas.errors import ScalenasError
from scalenas.io import atomic_torch_save, safe_torch_load

MODEL_FORMAT = "scalenas-model/1"
_KINDS: dict[str, type] = {}


def register_model(kind: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        _KINDS[kind] = cls
        cls.model_kind = kind
        return cls

    return deco


def model_kinds() -> list[str]:
    """The registered model kinds (``cnn``, ``grown``, ``vit``, ...)."""
    _import_builtin_kinds()
    return sorted(_KINDS)


def list_kinds() -> list[str]:
    """Alias of :func:`model_kinds` (the registry's public lookup)."""
    return model_kinds()


def model_class(kind: str, where: str = "model") -> type:
    """The class registered under ``kind``; a clear error naming ``where`` for an unknown kind."""
    _import_builtin_kinds()
    if kind not in _KINDS:
        raise ScalenasError(f"{where}: unknown model kind {kind!r} (known: {', '.join(sorted(_KINDS))})")
    return _KINDS[kind]


def _import_builtin_kinds() -> None:
    # Importing the modules registers their kinds; done lazily to keep import order one-way.
    import importlib

    for mod in ("scalenas.models.standalone", "scalenas.models.vit", "scalenas.models.grow"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name != mod:
                raise


def save_model(path: str | os.PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (a registered kind) with its config so it rebuilds without the supernet."""
    kind = getattr(model, "model_kind", None)
    if kind is None:
        raise ScalenasError(f"cannot save {type(model).__name__}: not a registered scalenas model kind")
    payload = {"format": MODEL_FORMAT, "kind": kind, "config": model.to_config(),
               "state_dict": model.state_dict(keep_vars=False)}
    if extra:
        payload.update(extra)
    return atomic_torch_save(path, payload)


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ScalenasError(f"model file not found: {path}")
    payload = safe_torch_load(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ScalenasError(f"{path}: not a scalenas model file (no format {MODEL_FORMAT!r})")
    for key, kind in (("kind", str), ("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise ScalenasError(f"{path}: damaged model file: {key!r} missing or not a {kind.__name__}")
    return payload


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights."""
    payload = load_model_file(path)
    try:
        model = model_class(payload["kind"], str(path)).from_config(payload["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ScalenasError(f"{path}: damaged model config ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ScalenasError(f"{path}: weights do not fit the model config: {first}") from None
    return model
