"""A directory with ``x.npy`` + ``y.npy`` (and optionally ``classes.txt``, one name a line), memory-mapped and
streamed by default (``source: memory`` decodes it whole). :func:`open_arrays` also opens an uncompressed
``.npz`` lazily (:mod:`scalenas.data.readers.npz` with ``source: stream``)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from scalenas.data.readers.base import InMemory, OnDisk, Reader, ReadRequest
from scalenas.data.sources import (
    ArrayImages,
    check_image_array,
    one_line,
    open_npy,
    open_npz_member,
)
from scalenas.errors import ScalenasError


def is_array_dir(path: Path) -> bool:
    return (path / "x.npy").is_file() and (path / "y.npy").is_file()


def open_arrays(path: Path, request: ReadRequest) -> OnDisk:
    """``DIR/x.npy`` + ``DIR/y.npy`` (or an uncompressed ``.npz``) opened memory-mapped."""
    if path.is_dir():
        x, y = open_npy(path / "x.npy", "data file"), open_npy(path / "y.npy", "data file")
        classes_file = path / "classes.txt"
        names = classes_file.read_text().split("\n") if classes_file.is_file() else None
    else:
        try:
            x, y = open_npz_member(path, "x"), np.asarray(open_npz_member(path, "y"))
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ScalenasError(f"data file {path}: cannot memory-map arrays x and y ({one_line(exc)}); save it "
                                "with np.savez (not savez_compressed) or as DIR/x.npy + DIR/y.npy") from None
        names = None
    layout = check_image_array(x, y, str(path))
    y = np.asarray(y, dtype=np.int64)
    classes = [n for n in names if n] if names else [str(i) for i in range(int(y.max()) + 1)]
    if y.min() < 0 or y.max() >= len(classes):
        raise ScalenasError(f"data {path}: labels out of range [0, {len(classes)}) (found {y.min()}..{y.max()})")
    ds = ArrayImages(x, y, layout, request.in_channels)
    st = path.stat()
    return OnDisk(ds, classes, {"kind": "arrays", "path": str(path), "shape": list(x.shape), "dtype": str(x.dtype),
                                "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns})


def load_arrays(path: Path, request: ReadRequest) -> InMemory:
    return open_arrays(path, request).into_memory()


def always(path: Path, request: ReadRequest) -> bool:
    return True


READER = Reader("arrays", recognise=is_array_dir, load=load_arrays, open=open_arrays, stream_by_default=always)
