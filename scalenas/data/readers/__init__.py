"""Readers, one module per kind of source, registered by name (after timm's ``create_reader``).

Each module holds one :class:`~scalenas.data.readers.base.Reader`: how to recognise its path, load it into
memory and (where it can) open it lazily. :func:`find_reader` asks them in registration order: the embedded
datasets by name (``digits``, ``animals``), then CIFAR pickles, ``x.npy`` + ``y.npy`` arrays and ``.npz`` files;
any other directory is an ImageFolder tree. :func:`register` adds a reader (``before`` another to be asked first).
"""
from __future__ import annotations

from pathlib import Path

from scalenas.data.readers import animals, arrays, cifar, digits, imagefolder, npz
from scalenas.data.readers.base import InMemory, OnDisk, Reader, ReadRequest
from scalenas.errors import ScalenasError

__all__ = ["READERS", "InMemory", "OnDisk", "ReadRequest", "Reader", "find_reader", "register"]

READERS: dict[str, Reader] = {}


def register(reader: Reader, before: str | None = None) -> Reader:
    """Add ``reader`` under its name (replacing one of that name), last or just before the reader ``before``."""
    if before is not None and before not in READERS:
        raise KeyError(f"no reader named {before!r} (readers: {', '.join(READERS)})")
    READERS.pop(reader.name, None)
    items = list(READERS.items())
    at = len(items) if before is None else [name for name, _ in items].index(before)
    items.insert(at, (reader.name, reader))
    READERS.clear()
    READERS.update(items)
    return reader


for _module in (digits, animals, cifar, arrays, npz, imagefolder):
    register(_module.READER)


def find_reader(spec: str) -> tuple[Reader, Path | None]:
    """The reader of ``spec`` and its path: an embedded dataset by its name (path None), else the first reader that
    recognises the existing path. Raises :class:`ScalenasError` naming ``spec`` when none does."""
    named = READERS.get(spec)
    if named is not None and named.recognise is None:  # the name wins; write ./digits for a folder of that name
        return named, None
    path = Path(spec).expanduser()
    if not path.exists():
        raise ScalenasError(f"data path {spec}: does not exist")
    if path.is_dir() and not any(True for _ in path.iterdir()):
        raise ScalenasError(f"data path {spec}: directory is empty")
    for reader in READERS.values():
        if reader.recognise is not None and reader.recognise(path):
            return reader, path
    raise ScalenasError(f"data path {spec}: not a directory or a .npz file")
