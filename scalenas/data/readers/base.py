"""What a reader is and what it returns.

A :class:`Reader` knows one kind of source: how to recognise its path (or its name, for a dataset shipped inside
the package), how to *load* it into memory (:class:`InMemory`: float pixels, decoded once) and, where it can, how
to *open* it lazily (:class:`OnDisk`: a dataset that DataLoader workers decode on demand). The registry in
:mod:`scalenas.data.readers` keeps them by name; :func:`scalenas.data.datasets.load_data` picks one and makes the
splits from what it returns.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalenas.data.options import DataOptions
from scalenas.data.sources import ArrayImages


@dataclass
class ReadRequest:
    """What a reader may need besides the path: the data options, the model's input channels (None: the data's
    own) and the run folder that caches an ImageFolder's file list (None: none)."""

    options: DataOptions
    in_channels: int | None = None
    cache_dir: Path | None = None
    memo: dict[str, Any] = field(default_factory=dict)  # work a reader shares between its steps (a folder scan)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for, the same value after that."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class InMemory:
    """A source decoded into memory: ``x`` float32 ``(N, C, H, W)`` in [0, 1] (or the user's float range)."""

    x: torch.Tensor
    y: np.ndarray
    classes: list[str]
    source: dict
    test_x: torch.Tensor | None = None  # a predefined test split (CIFAR test_batch, ImageNet val/)
    test_y: np.ndarray | None = None
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    channel_conversion: str | None = None
    file_list: dict | None = None

    def as_stream(self, in_channels: int | None) -> OnDisk:
        """This source served through the streaming path, as uint8 (CIFAR with ``source: stream``)."""
        def arr(x: torch.Tensor) -> np.ndarray:
            return x.mul(255.0).round_().to(torch.uint8).numpy()

        test = ArrayImages(arr(self.test_x), self.test_y, "nchw", in_channels) if self.test_x is not None else None
        return OnDisk(ArrayImages(arr(self.x), self.y, "nchw", in_channels), self.classes, self.source, test=test)


@dataclass
class OnDisk:
    """A source read on demand: the pool to split (``train``) and an optional predefined test set, both datasets
    of :mod:`scalenas.data.sources` (batches of uint8 or float pixels at storage size)."""

    train: Any
    classes: list[str]
    source: dict
    test: Any = None
    file_list: dict | None = None

    def into_memory(self) -> InMemory:
        """Every sample decoded into memory (arrays with ``source: memory``; a predefined test set is not kept)."""
        ds = self.train
        x, y, _ = ds.__getitems__(list(range(len(ds))))
        return InMemory(x=x.float().div_(255.0) if x.dtype == torch.uint8 else x.float(), y=y.numpy(),
                        classes=self.classes, source=self.source)


def never(path: Path, request: ReadRequest) -> bool:
    return False


@dataclass(frozen=True)
class Reader:
    """One kind of source, registered by :attr:`name`.

    ``recognise(path)`` says whether an existing path is of this kind (None: the reader is named, not found: an
    embedded dataset, asked for by its name). ``load(path, request)`` decodes it into memory; ``open(path,
    request)`` opens it lazily (None: memory only). ``stream_by_default(path, request)`` is what ``source: auto``
    picks: True to open it lazily. ``path`` is None for a named dataset.
    """

    name: str
    load: Callable[[Path | None, ReadRequest], InMemory]
    recognise: Callable[[Path], bool] | None = None
    open: Callable[[Path | None, ReadRequest], OnDisk] | None = None
    stream_by_default: Callable[[Path | None, ReadRequest], bool] = never

    def read(self, path: Path | None, request: ReadRequest) -> InMemory | OnDisk:
        """Loaded or opened, as ``request.options.source`` says."""
        source = request.options.source
        lazy = self.open is not None and (source == "stream" or
                                          (source == "auto" and self.stream_by_default(path, request)))
        return self.open(path, request) if lazy else self.load(path, request)
