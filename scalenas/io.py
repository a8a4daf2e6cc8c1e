"""Atomic file writes, folders, run locks and seeding: every file scalenas writes goes through here.

Every write and every folder creation turns an operating-system failure (a read-only folder, a full disk, a
folder given where a file belongs, a file where a folder belongs) into one :class:`ScalenasError` line naming
the path and the reason: ``PATH: cannot write (No space left on device)``.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from scalenas.errors import ScalenasError

LOCK_NAME = ".lock"  # held (flock) by the one process writing a run or search folder; removed when it is done
SEED_RANGE = (-(2**63), 2**63 - 1)  # what python, numpy (mod 2**32) and torch all accept


# ------------------------------------------------------------------------------------------ errors
def _in_the_way(path: Path) -> Path | None:
    """The nearest of ``path``'s parents that exists but is not a folder (a file where a folder belongs)."""
    for parent in path.parents:
        try:
            if parent.exists() or parent.is_symlink():
                return None if parent.is_dir() else parent
        except OSError:
            return None
    return None


def _reason(path: Path, exc: OSError) -> str:
    blocker = _in_the_way(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    if path.is_dir() and not isinstance(exc, PermissionError):
        return "it is a folder"
    return exc.strerror or type(exc).__name__


def write_error(path: str | os.PathLike, exc: OSError) -> ScalenasError:
    """``PATH: cannot write (REASON)``: the one-line error of a failed write."""
    path = Path(path)
    return ScalenasError(f"{path}: cannot write ({_reason(path, exc)})")


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` whose failures are one line: ``PATH: cannot create folder (REASON)``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if path.exists() and not path.is_dir():
            reason = "a file of that name exists"
        else:
            reason = _reason(path, exc)
        raise ScalenasError(f"{path}: cannot create folder ({reason})") from None
    return path


def remove_file(path: str | os.PathLike) -> None:
    """``unlink`` (missing is fine) whose failures are one line: ``PATH: cannot remove (REASON)``."""
    path = Path(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ScalenasError(f"{path}: cannot remove ({exc.strerror or type(exc).__name__})") from None


# ------------------------------------------------------------------------------------------ atomic writes
def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        os_error = _os_error(exc)
        if os_error is not None:
            raise write_error(path, os_error) from None
        raise
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: the exception itself or one it was raised while handling (torch.save
    on a full disk raises a RuntimeError from its zip writer while the OSError is being handled)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


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


def is_temp_file(path: Path) -> bool:
    """A temp file of :func:`_atomic` (``.NAME.RANDOM.tmp``)."""
    name = path.name
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files a killed write left in ``folder`` (not in its subfolders).

    Call it only while holding the folder's lock (:func:`folder_lock`): then no write of another process can
    be in flight there. Returns the files removed; a file that cannot be removed is left alone.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        try:
            if is_temp_file(p) and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


# ------------------------------------------------------------------------------------------ run locks
def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold ``FOLDER/.lock`` (``flock``, with this process's pid in it) for the block: a second scalenas process
    that wants to write the same folder fails at once with one line naming the folder and the holder's pid.

    The folder is created if needed; folders created here are removed again if they are still empty when the
    block ends (a refused run leaves nothing behind). The lock file is removed on exit; the kernel releases the
    lock of a killed process, so a stale file never blocks anyone.
    """
    import fcntl

    folder = Path(folder)
    created = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        created.append(p)
    make_dir(folder)
    path = folder / LOCK_NAME
    for _ in range(100):  # retried only when a finishing holder removed the file between our open and lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            _remove_empty(created)
            raise write_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ScalenasError(f"{folder}: another scalenas process ({_holder(path)}) is writing this {what}; "
                                "wait for it to finish or choose another --out") from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        _remove_empty(created)
        raise ScalenasError(f"{folder}: could not take the lock {path} (it kept being replaced); try again")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is a courtesy for the message of a second process
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # innermost first
        try:
            p.rmdir()
        except OSError:
            return


# ------------------------------------------------------------------------------------------ loading
def safe_torch_load(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load`` that never runs code from the file (``weights_only=True``: tensors, containers, numbers,
    strings only). Anything else -- a torn file, a foreign pickle -- is the user's problem, in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}" + (f": {first}" if "weights_only" in first or "Unsupported" in first else "")
        raise ScalenasError(f"{path}: corrupt, unreadable or unsafe {what} ({detail})") from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ScalenasError(f"seed {seed!r}: must be an integer between -2**63 and 2**63 - 1")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
