"""Any other directory: the ImageFolder layout ``root/<class>/<image>`` (also ImageNet's ``train/`` + ``val/``,
where ``val`` becomes the test split), read with Pillow at the storage size (default 32). The file list is
scanned once and cached next to the run (:mod:`scalenas.data.sources`). ``source: auto`` streams a tree whose
float32 copy would exceed ``memory_limit_mb``."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scalenas.data.readers.base import InMemory, OnDisk, Reader, ReadRequest
from scalenas.data.sources import (
    FILE_LIST,
    MIN_BAD_ALLOWED,
    FileIndex,
    ImageFiles,
    decode_image,
    file_list_record,
    image_mode,
    load_file_lists,
    one_line,
)
from scalenas.errors import ScalenasError

DEFAULT_STORE_SIZE = 32


@dataclass
class Scan:
    """An ImageFolder tree as listed once per load: file indexes, decode mode, storage size and file list."""

    train: FileIndex
    test: FileIndex | None
    mode: str
    size: int
    record: dict

    def files(self, index: FileIndex) -> ImageFiles:
        return ImageFiles(index.root, index.files, index.labels, self.mode, self.size)


def scan(path: Path, request: ReadRequest) -> Scan:
    def make() -> Scan:
        cache = request.cache_dir / FILE_LIST if request.cache_dir is not None else None
        index, test_index, _ = load_file_lists(path, cache, request.options.rescan_data)
        return Scan(index, test_index, image_mode(index, request.in_channels),
                    request.options.store_size or DEFAULT_STORE_SIZE, file_list_record(path, index, test_index))

    return request.once(f"imagefolder:{path}", make)


def is_directory(path: Path) -> bool:
    return path.is_dir()


def too_big(path: Path, request: ReadRequest) -> bool:
    """Whether the float32 copy in memory would exceed ``memory_limit_mb``."""
    s = scan(path, request)
    n_all = len(s.train) + (len(s.test) if s.test is not None else 0)
    estimate = n_all * (1 if s.mode == "L" else 3) * s.size * s.size * 4
    return estimate > request.options.memory_limit_mb * 2 ** 20


def _decode_all(ds: ImageFiles, index: FileIndex, max_bad_frac: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every file of ``ds`` (the in-memory source), skipping unreadable ones (counted and named)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    for i in range(len(ds)):
        try:
            images.append(decode_image(ds.path(i), ds.mode, ds.size))
            labels.append(int(index.labels[i]))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            if len(skipped) < 5:
                print(f"scalenas: skipping unreadable image {ds.path(i)}: {one_line(exc)}", file=sys.stderr)
            skipped.append(ds.path(i))
    if skipped:
        print(f"scalenas: skipped {len(skipped)} unreadable image(s) under {index.root}", file=sys.stderr)
        if len(skipped) > max(max_bad_frac * len(ds), MIN_BAD_ALLOWED):
            raise ScalenasError(f"data path {index.root}: {len(skipped)} of {len(ds)} images are unreadable (more "
                                f"than max_bad_frac={max_bad_frac}); first: {', '.join(skipped[:3])}")
    present = set(labels)
    for c, name in enumerate(index.classes):
        if c not in present and c in set(index.labels.tolist()):
            raise ScalenasError(f"data path {Path(index.root) / name}: class folder has no readable images")
    return np.stack(images), np.asarray(labels, dtype=np.int64), skipped


def load_image_folder(path: Path, request: ReadRequest) -> InMemory:
    s = scan(path, request)
    max_bad_frac = request.options.max_bad_frac
    x, y, skipped = _decode_all(s.files(s.train), s.train, max_bad_frac)
    test_x = test_y = None
    if s.test is not None:
        tx, test_y, t_skipped = _decode_all(s.files(s.test), s.test, max_bad_frac)
        test_x = torch.from_numpy(tx).float().div_(255.0)
        skipped += t_skipped
    return InMemory(
        x=torch.from_numpy(x).float().div_(255.0), y=y, classes=list(s.train.classes),
        test_x=test_x, test_y=test_y,
        source={"kind": "imagefolder", "path": s.train.root, "image_mode": s.mode,
                "test_path": s.test.root if s.test is not None else None},
        skipped=len(skipped), skipped_files=skipped[:100],
        channel_conversion=f"Pillow convert('{s.mode}')", file_list=s.record,
    )


def open_image_folder(path: Path, request: ReadRequest) -> OnDisk:
    s = scan(path, request)
    return OnDisk(s.files(s.train), list(s.train.classes),
                  {"kind": "imagefolder", "path": str(path), "image_mode": s.mode,
                   "test_path": s.test.root if s.test is not None else None},
                  test=s.files(s.test) if s.test is not None else None, file_list=s.record)


READER = Reader("imagefolder", recognise=is_directory, load=load_image_folder, open=open_image_folder,
                stream_by_default=too_big)
