"""Splits: what a split is (in memory or streamed), how the seeded stratified train / holdout / test split is
drawn, its JSON record (``split.json``), and the making of :class:`DataSplits` from what a reader returned.

Datasets held in memory keep every split as one float32 tensor ``(N, C, H, W)``, already normalised, stored once
at a fixed *storage size*; :func:`scalenas.data.batches.resize_batch` brings each batch to the resolution of the
subnet being trained or evaluated, so one stored copy serves every resolution in the search space. Streamed
splits keep only the labels in memory; their pixels are decoded per batch and normalised on the device.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalenas.data.augment import DevicePipeline
from scalenas.data.batches import resize_batch
from scalenas.data.normalise import (
    channel_stats,
    check_stats,
    convert_channels,
    resize_all,
)
from scalenas.data.options import DataOptions
from scalenas.data.readers.base import InMemory, OnDisk
from scalenas.data.sources import FILE_LIST, BadFiles, ImageFiles, cap_workers, loader
from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_json

DATA_INFO_FORMAT = "scalenas-data/1"
# Above this many samples the split record keeps only the sha256 of each index list, not the list itself.
MAX_LISTED_INDICES = 100_000
STATS_SAMPLE = 2000  # streamed data: mean/std estimated on this many seeded train images


@dataclass
class Split:
    """One split held in memory: normalised float32 images ``x (N, C, H, W)`` and int64 labels ``y (N,)``."""

    x: torch.Tensor
    y: torch.Tensor
    pipeline: DevicePipeline | None = None  # how evaluation turns a raw batch into input (None: plain resize)

    kind = "memory"

    def __post_init__(self) -> None:
        # Cheap guard: a mismatch here would otherwise surface much later as a confusing indexing error.
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split needs x (N, C, H, W) and y (N,), got {tuple(self.x.shape)} and "
                             f"{tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at ``positions`` (of this split) as a raw batch."""
        return self.x[positions], self.y[positions]

    def view(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        """A raw batch as evaluation input at ``resolution``."""
        return self.pipeline.eval(x, resolution) if self.pipeline is not None else resize_batch(x, resolution)


class StreamSplit:
    """One split read on demand: ``dataset`` positions ``indices``, decoded in DataLoader worker processes.

    Raw batches are ``uint8`` at storage size; :attr:`pipeline` normalises them on the device. ``y`` (the
    labels) is held in memory, the pixels never are.
    """

    kind = "stream"

    def __init__(self, dataset, indices: np.ndarray, workers: int, pin_memory: bool, bad: BadFiles,
                 pipeline: DevicePipeline | None = None):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.y = torch.from_numpy(np.asarray(dataset_labels(dataset)[self.indices], dtype=np.int64))
        self.workers, self.pin_memory, self.bad, self.pipeline = workers, pin_memory, bad, pipeline
        self._eval_loaders: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _fetch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, bad = batch
        self.bad.note(bad)
        return x, y

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fetch(self.dataset.__getitems__(self.indices[np.asarray(positions)].tolist()))

    def stream(self, batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Raw batches for an iterable of position lists (of this split), decoded ahead by the workers."""
        source = ([int(self.indices[p]) for p in b] for b in batches)
        for batch in loader(self.dataset, _Once(source), self.workers, self.pin_memory):
            yield self._fetch(batch)

    def iterate(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, in order (evaluation); the workers persist between passes."""
        if batch_size not in self._eval_loaders:
            order = [self.indices[i:i + batch_size].tolist() for i in range(0, len(self.indices), batch_size)]
            self._eval_loaders[batch_size] = loader(self.dataset, order, self.workers, self.pin_memory,
                                                    persistent=self.workers > 0)
        for batch in self._eval_loaders[batch_size]:
            yield self._fetch(batch)

    def view(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        return self.pipeline.eval(x, resolution) if self.pipeline is not None else resize_batch(x, resolution)


class _Once:
    """An iterable batch sampler over a generator (the DataLoader iterates it once, in the main process)."""

    def __init__(self, gen):
        self.gen = gen

    def __iter__(self):
        return self.gen


def dataset_labels(dataset) -> np.ndarray:
    return dataset.labels if isinstance(dataset, ImageFiles) else dataset.y


@dataclass
class DataSplits:
    """Train / holdout / test splits of one dataset plus the JSON-able record of how they were made."""

    name: str
    train: Split
    holdout: Split
    test: Split
    num_classes: int
    in_channels: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    info: dict = field(default_factory=dict)
    pipeline: DevicePipeline | None = None  # normalisation + augmentation on the training device
    file_list: dict | None = None  # an ImageFolder's file index, cached next to the run

    def save_info(self, path: str | os.PathLike) -> None:
        """Write :attr:`info` (the split record) atomically as JSON to ``path`` and, for an ImageFolder, the
        file list beside it (``data_files.json``)."""
        atomic_write_json(path, self.info)
        if self.file_list is not None:
            atomic_write_json(Path(path).parent / FILE_LIST, self.file_list)
            self.file_list = None  # written once; 1.28 M names as Python objects would stay in every worker


def check_frac(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ScalenasError(f"{name}={value!r}: must be a fraction strictly between 0 and 1")
    return float(value)


def stratified_split(y: np.ndarray, fracs: list[float], seed: int, classes: list[str],
                      where: str, frac_desc: str) -> list[np.ndarray]:
    """Split indices of ``y`` per class: returns ``[train, part_1, ...]`` for ``fracs = [f_1, ...]``.

    Each part gets ``max(1, round(n_c * f))`` samples of class ``c`` so every class is present in every split
    (holdout and test accuracies stay meaningful per class); train keeps the rest and must keep at least one.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fracs) + 1)]
    for c, cname in enumerate(classes):
        idx = np.flatnonzero(y == c)
        n_c = len(idx)
        if n_c == 0:
            raise ScalenasError(f"data {where}: class {cname!r} (label {c}) has no samples")
        counts = [max(1, math.floor(n_c * f + 0.5)) for f in fracs]
        if n_c - sum(counts) < 1:
            raise ScalenasError(f"data {where}: class {cname!r} has only {n_c} sample(s), not enough for "
                                f"{frac_desc} (every split needs at least one per class)")
        perm = rng.permutation(idx)
        start = n_c - sum(counts)
        parts[0].append(perm[:start])
        for k, n in enumerate(counts):
            parts[k + 1].append(perm[start:start + n])
            start += n
    # Sorted so a split is a set: the same data gives the same tensors, and iteration order is the iterator's.
    return [np.sort(np.concatenate(p)) for p in parts]


def index_record(idx: np.ndarray, listed: bool) -> dict:
    """``sha256`` is taken over the sorted indices written as ASCII decimals joined by commas."""
    s = sorted(int(i) for i in idx)
    rec: dict[str, Any] = {"count": len(s), "sha256": hashlib.sha256(",".join(map(str, s)).encode()).hexdigest()}
    if listed:
        rec["indices"] = s
    return rec


def split_indices(y: np.ndarray, test_y: np.ndarray | None, seed: int, holdout_frac: float, test_frac: float,
                   classes: list[str], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    if test_y is not None:
        frac_desc = f"holdout_frac={holdout_frac}"
        train_idx, hold_idx = stratified_split(y, [holdout_frac], seed, classes, where, frac_desc)
        return train_idx, hold_idx, np.arange(len(test_y)), None
    used = check_frac("test_frac", test_frac)
    if holdout_frac + used >= 1.0:
        raise ScalenasError(f"holdout_frac={holdout_frac} + test_frac={used}: must sum to < 1")
    frac_desc = f"holdout_frac={holdout_frac} and test_frac={used}"
    train_idx, hold_idx, test_idx = stratified_split(y, [holdout_frac, used], seed, classes, where, frac_desc)
    return train_idx, hold_idx, test_idx, used


def split_record(spec: str, source: dict, seed: int, holdout_frac: float, used_test_frac: float | None,
                 idx: dict[str, np.ndarray], ys: dict[str, np.ndarray], classes: list[str], **rest: Any) -> dict:
    listed = sum(len(v) for v in idx.values()) <= MAX_LISTED_INDICES
    return {
        "format": DATA_INFO_FORMAT,
        "name": spec,
        "source": source,
        "seed": seed,
        "holdout_frac": holdout_frac,
        "test_frac": used_test_frac,
        "test_source": "split" if used_test_frac is not None else (source.get("test_file")
                                                                   or source.get("test_path")),
        "index_base": ("positions in the training pool (test: in the predefined test set)"
                       if used_test_frac is None else "positions in the loaded dataset"),
        "sizes": {n: len(v) for n, v in idx.items()},
        "class_counts": {n: np.bincount(np.asarray(y), minlength=len(classes)).tolist() for n, y in ys.items()},
        "indices": {n: index_record(v, listed) for n, v in idx.items()},
        "num_classes": len(classes),
        "classes": list(classes),
        **rest,
    }


def memory_splits(raw: InMemory, options: DataOptions, *, spec: str, where: str, seed: int, in_channels: int | None,
                  mean: list[float] | None, std: list[float] | None, level: str, flip: bool) -> DataSplits:
    """The splits of a source decoded into memory: split on indices, then convert channels (to ``in_channels``),
    resize to ``options.store_size`` and normalise (``mean``/``std``, else the train split's) what is kept."""
    holdout_frac, test_frac, store_size = options.holdout_frac, options.test_frac, options.store_size
    train_idx, hold_idx, test_idx, used_test_frac = split_indices(raw.y, raw.test_y, seed, holdout_frac,
                                                                  test_frac, raw.classes, where)
    if raw.test_x is not None:
        test_x, test_y = raw.test_x, raw.test_y
    else:
        test_x, test_y = raw.x[torch.from_numpy(test_idx)], raw.y[test_idx]
    parts = {
        "train": (raw.x[torch.from_numpy(train_idx)], raw.y[train_idx]),
        "holdout": (raw.x[torch.from_numpy(hold_idx)], raw.y[hold_idx]),
        "test": (test_x, test_y),
    }
    native_channels = int(raw.x.shape[1])
    native_hw = [int(raw.x.shape[2]), int(raw.x.shape[3])]
    raw.x = raw.test_x = None  # free the full copy before making converted ones

    conversion = raw.channel_conversion
    converted: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
    for name, (px, py) in parts.items():
        # Both steps are linear so their order does not change the result; resize the fewer channels.
        shrink = in_channels is not None and in_channels < px.shape[1]
        if shrink:
            px, conv = convert_channels(px, in_channels, where)
        if store_size is not None and tuple(px.shape[2:]) != (store_size, store_size):
            px = resize_all(px, store_size)
        if not shrink:
            px, conv = convert_channels(px, in_channels, where)
        conversion = conv or conversion
        converted[name] = (px.contiguous(), py)
    parts = converted
    channels = int(parts["train"][0].shape[1])

    given_mean = check_stats("mean", mean, channels, positive=False)
    given_std = check_stats("std", std, channels, positive=True)
    c_mean, c_std = channel_stats(parts["train"][0])
    mean_v = given_mean if given_mean is not None else c_mean
    std_v = given_std if given_std is not None else c_std
    if given_std is None and min(std_v) < 1e-8:
        raise ScalenasError(f"data {where}: a channel is constant on the train split (std {std_v}); "
                            "pass std explicitly")
    storage_hw = [int(d) for d in parts["train"][0].shape[2:]]
    pipeline = DevicePipeline(level, flip, mean_v, std_v, min(storage_hw))
    m = torch.tensor(mean_v, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std_v, dtype=torch.float32).view(1, -1, 1, 1)
    splits = {n: Split(x=px.sub_(m).div_(s), y=torch.from_numpy(np.ascontiguousarray(py)).long(), pipeline=pipeline)
              for n, (px, py) in parts.items()}
    info = split_record(spec, raw.source, seed, holdout_frac, used_test_frac,
                        {"train": train_idx, "holdout": hold_idx, "test": test_idx},
                        {n: sp.y.numpy() for n, sp in splits.items()}, raw.classes,
                        source_mode="memory",
                        native_channels=native_channels, in_channels=channels, channel_conversion=conversion,
                        native_size=native_hw, storage_size=storage_hw,
                        mean=[float(v) for v in mean_v], std=[float(v) for v in std_v],
                        normalisation={"mean": "given" if given_mean is not None else "computed on train split",
                                       "std": "given" if given_std is not None else "computed on train split",
                                       "train_mean_before": c_mean, "train_std_before": c_std},
                        augmentation=pipeline.describe(), skipped=raw.skipped, skipped_files=raw.skipped_files)
    return DataSplits(name=spec, train=splits["train"], holdout=splits["holdout"], test=splits["test"],
                      num_classes=len(raw.classes), in_channels=channels, classes=list(raw.classes),
                      mean=info["mean"], std=info["std"], info=info, pipeline=pipeline, file_list=raw.file_list)


def stream_splits(lazy: OnDisk, options: DataOptions, *, spec: str, where: str, seed: int, mean: list[float] | None,
                  std: list[float] | None, pin_memory: bool, level: str, flip: bool) -> DataSplits:
    """The splits of a source read on demand by ``options.workers`` loader processes; the normalisation
    (``mean``/``std``, else estimated on a seeded sample of the train split) runs on the device."""
    holdout_frac, test_frac, workers, max_bad_frac = (options.holdout_frac, options.test_frac, options.workers,
                                                      options.max_bad_frac)
    ds, test_ds = lazy.train, lazy.test
    y = dataset_labels(ds)
    test_y = dataset_labels(test_ds) if test_ds is not None else None
    train_idx, hold_idx, test_idx, used_test_frac = split_indices(y, test_y, seed, holdout_frac, test_frac,
                                                                  lazy.classes, where)
    workers = cap_workers(min(4, os.cpu_count() or 1) if workers is None else workers)
    bad = BadFiles(ds, max_bad_frac, len(ds))
    test_bad = BadFiles(test_ds, max_bad_frac, len(test_ds)) if test_ds is not None else bad
    channels = int(ds.channels)
    train = StreamSplit(ds, train_idx, workers, pin_memory, bad)
    # Channel statistics from a seeded sample of the train split (decoding every image would be an epoch).
    g = np.random.default_rng(seed)
    sample = np.sort(g.choice(len(train), size=min(STATS_SAMPLE, len(train)), replace=False))
    xs, _ = train.take(torch.from_numpy(sample))
    xs = xs.float().div_(255.0) if xs.dtype == torch.uint8 else xs.float()
    c_mean, c_std = channel_stats(xs)
    given_mean = check_stats("mean", mean, channels, positive=False)
    given_std = check_stats("std", std, channels, positive=True)
    mean_v = given_mean if given_mean is not None else c_mean
    std_v = given_std if given_std is not None else c_std
    if given_std is None and min(std_v) < 1e-8:
        raise ScalenasError(f"data {where}: a channel is constant on the sampled train images (std {std_v}); "
                            "pass std explicitly")
    stored = [int(d) for d in xs.shape[2:]]
    pipeline = DevicePipeline(level, flip, mean_v, std_v, min(stored))
    train.pipeline = pipeline
    holdout = StreamSplit(ds, hold_idx, workers, pin_memory, bad, pipeline)
    test = StreamSplit(test_ds if test_ds is not None else ds, test_idx, workers, pin_memory, test_bad, pipeline)
    splits = {"train": train, "holdout": holdout, "test": test}
    how = f"estimated on {len(sample)} seeded train images"
    mode = lazy.source.get("image_mode")
    info = split_record(spec, lazy.source, seed, holdout_frac, used_test_frac,
                        {"train": train_idx, "holdout": hold_idx, "test": test_idx},
                        {n: sp.y.numpy() for n, sp in splits.items()}, lazy.classes,
                        source_mode="stream", workers=workers,
                        native_channels=channels, in_channels=channels,
                        channel_conversion=mode and f"Pillow convert('{mode}')",
                        native_size=None, storage_size=stored,
                        mean=[float(v) for v in mean_v], std=[float(v) for v in std_v],
                        normalisation={"mean": "given" if given_mean is not None else how,
                                       "std": "given" if given_std is not None else how,
                                       "train_mean_before": c_mean, "train_std_before": c_std},
                        augmentation=pipeline.describe(), skipped=None, skipped_files=[])
    return DataSplits(name=spec, train=train, holdout=holdout, test=test, num_classes=len(lazy.classes),
                      in_channels=channels, classes=list(lazy.classes), mean=info["mean"], std=info["std"],
                      info=info, pipeline=pipeline, file_list=lazy.file_list)

