"""Atomic file writes and seeding: every file scalenas writes goes through here."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` via a temp file in the same folder and ``os.replace``."""
    return _atomic(path, lambda fh: fh.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` without ever leaving a half-written checkpoint behind."""
    return _atomic(path, lambda fh: torch.save(obj, fh), "wb")


def atomic_write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return _atomic(path, lambda fh: frame.to_csv(fh, index=False), "w")


def safe_torch_load(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load`` that never runs code from the file (``weights_only=True``: tensors, containers, numbers,
    strings only). Anything else -- a torn file, a foreign pickle -- is the user's problem, in one line."""
    from scalenas.errors import ScalenasError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}" + (f": {first}" if "weights_only" in first or "Unsupported" in first else "")
        raise ScalenasError(f"{path}: corrupt, unreadable or unsafe {what} ({detail})") from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
