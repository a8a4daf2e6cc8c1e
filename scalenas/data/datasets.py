"""In-memory datasets, seeded stratified splits and resumable batch iteration.

Datasets here are small, so every split is held as one float32 tensor ``(N, C, H, W)``, already normalised.
Images are stored once at a fixed *storage size*; :func:`resize_batch` brings each batch to the resolution of
the subnet being trained or evaluated, so one stored copy serves every resolution in the search space.

Sources understood by :func:`load_data`:

* ``"digits"``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the wheel, works offline).
* a directory of CIFAR-10/100 "python version" pickles (``data_batch_1..5`` + ``test_batch``, or CIFAR-100's
  ``train`` + ``test``; ``batches.meta`` / ``meta`` for class names).
* any other directory: ImageFolder layout ``root/<class>/<image>``, read with Pillow.
* a ``.npz`` file with arrays ``x`` and ``y`` (optionally ``classes``).
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalenas.data.augment import AUGMENT_LEVELS, DevicePipeline, default_level
from scalenas.data.augment import resize_batch as _resize
from scalenas.data.sources import (
    FILE_LIST,
    MIN_BAD_ALLOWED,
    ArrayImages,
    BadFiles,
    FileIndex,
    ImageFiles,
    cap_workers,
    check_image_array,
    decode_image,
    file_list_record,
    image_mode,
    load_file_lists,
    loader,
    one_line,
    open_npy,
    open_npz_member,
)
from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_json, file_sha256

DATA_INFO_FORMAT = "scalenas-data/1"
# Above this many samples the split record keeps only the sha256 of each index list, not the list itself.
MAX_LISTED_INDICES = 100_000
# ITU-R BT.601 luma weights: the same ones Pillow's convert("L") uses, so both conversion paths agree.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


# ----------------------------------------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# raw loaders: each returns a _Raw with x float32 (N, C, H, W) in [0, 1] (or the user's float range)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Raw:
    x: torch.Tensor
    y: np.ndarray
    classes: list[str]
    source: dict
    test_x: torch.Tensor | None = None  # a predefined test split (CIFAR test_batch)
    test_y: np.ndarray | None = None
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    channel_conversion: str | None = None
    file_list: dict | None = None


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap); scale to [0, 1].
    x = torch.from_numpy(np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    return _Raw(x=x, y=y, classes=[str(c) for c in range(10)],
                source={"kind": "digits", "path": "sklearn.datasets.load_digits"})


def _get(d: dict, key: str) -> Any:
    """CIFAR pickles from Python 2 have bytes keys; re-pickled copies often have str keys. Accept both."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR "python version" batches hold: dicts, lists, bytes, strings, numbers and numpy
    arrays. Any other global (a callable that would run on load) is refused, so a crafted file runs nothing."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(path: Path) -> dict:
    # The CIFAR "python version" is a pickle by definition: read it with an unpickler that admits only data.
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise ScalenasError(f"data file {path}: not a readable CIFAR pickle ({one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise ScalenasError(f"data file {path}: CIFAR pickle must hold a dict, found {type(obj).__name__}")
    return obj


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data = _get(d, "data")
    labels = _get(d, "fine_labels")  # CIFAR-100: prefer the 100 fine classes over the 20 coarse ones
    if labels is None:
        labels = _get(d, "labels")
    if data is None or labels is None:
        raise ScalenasError(f"data file {path}: CIFAR batch needs keys b'data' and b'labels' (or b'fine_labels')")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ScalenasError(f"data file {path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise ScalenasError(f"data file {path}: {len(labels)} labels for {len(data)} images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ScalenasError(f"data file {path}: labels must be integers, got {labels.dtype}")
    # Rows are row-major channel planes: 1024 red, 1024 green, 1024 blue values, each 32x32.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _is_cifar_dir(root: Path) -> bool:
    names = {p.name for p in root.iterdir() if p.is_file()}
    return bool(names & set(_CIFAR10_TRAIN)) or "test_batch" in names or {"train", "test"} <= names


def _load_cifar(root: Path) -> _Raw:
    train_files = [root / n for n in _CIFAR10_TRAIN if (root / n).is_file()]
    test_file = root / "test_batch"
    if not train_files and (root / "train").is_file():  # CIFAR-100 layout
        train_files = [root / "train"]
        test_file = root / "test"
    if not train_files:
        raise ScalenasError(f"data path {root}: CIFAR directory without training batches "
                            "(data_batch_1..5 or train)")
    xs, ys = zip(*(_cifar_batch(p) for p in train_files))
    x_np, y = np.concatenate(xs), np.concatenate(ys)
    test_np = test_y = None
    if test_file.is_file():
        test_np, test_y = _cifar_batch(test_file)

    classes: list[str] | None = None
    for meta_name, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        if (root / meta_name).is_file():
            names = _get(_unpickle(root / meta_name), key)
            if names is None:
                raise ScalenasError(f"data file {root / meta_name}: no b'{key}' entry")
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            break
    labels_all = y if test_y is None else np.concatenate([y, test_y])
    if classes is None:  # no meta file: name classes by their label number
        classes = [str(i) for i in range(int(labels_all.max()) + 1)]
    if labels_all.min() < 0 or labels_all.max() >= len(classes):
        raise ScalenasError(f"data path {root}: labels out of range [0, {len(classes)}) "
                            f"(found {int(labels_all.min())}..{int(labels_all.max())})")
    to_float = lambda a: torch.from_numpy(a).float().div_(255.0)
    return _Raw(
        x=to_float(x_np), y=y, classes=classes,
        test_x=None if test_np is None else to_float(test_np), test_y=test_y,
        source={"kind": "cifar", "path": str(root), "train_files": [p.name for p in train_files],
                "test_file": test_file.name if test_y is not None else None},
    )


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


def _load_image_folder(index: FileIndex, test: FileIndex | None, store_size: int, mode: str,
                       max_bad_frac: float) -> _Raw:
    x, y, skipped = _decode_all(ImageFiles(index.root, index.files, index.labels, mode, store_size), index,
                                max_bad_frac)
    test_x = test_y = None
    if test is not None:
        tx, test_y, t_skipped = _decode_all(ImageFiles(test.root, test.files, test.labels, mode, store_size), test,
                                            max_bad_frac)
        test_x = torch.from_numpy(tx).float().div_(255.0)
        skipped += t_skipped
    return _Raw(
        x=torch.from_numpy(x).float().div_(255.0), y=y, classes=list(index.classes),
        test_x=test_x, test_y=test_y,
        source={"kind": "imagefolder", "path": index.root, "image_mode": mode,
                "test_path": test.root if test is not None else None},
        skipped=len(skipped), skipped_files=skipped[:100],
        channel_conversion=f"Pillow convert('{mode}')",
    )


def _load_npz(path: Path) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise ScalenasError(f"data file {path}: not a readable .npz ({one_line(exc)})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ScalenasError(f"data file {path}: .npz lacks array(s) {', '.join(missing)} "
                            f"(has: {', '.join(sorted(arrays)) or 'nothing'})")
    x, y = arrays["x"], arrays["y"]
    if y.ndim != 1 or len(x) != len(y):
        raise ScalenasError(f"data file {path}: x has {len(x)} samples but y has shape {y.shape}")
    if len(y) == 0:
        raise ScalenasError(f"data file {path}: no samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise ScalenasError(f"data file {path}: y must hold integer labels, got {y.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        c_first, c_last = x.shape[1], x.shape[3]
        # The channel axis is the small one (<= 4) at either end; refuse to guess when both or neither are.
        if c_last <= 4 and c_first > 4:
            x = x.transpose(0, 3, 1, 2)
        elif not (c_first <= 4 and c_last > 4):
            raise ScalenasError(f"data file {path}: cannot tell the channel axis of x with shape {x.shape} "
                                "(use (N,H,W), (N,H,W,C) or (N,C,H,W) with C <= 4 and H, W > 4)")
    else:
        raise ScalenasError(f"data file {path}: x must be (N,H,W), (N,H,W,C) or (N,C,H,W), got {x.shape}")
    if x.dtype == np.uint8:
        xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(xt).all():
            raise ScalenasError(f"data file {path}: x contains NaN or infinite values")
    else:
        raise ScalenasError(f"data file {path}: x must be uint8 (0..255) or float, got {x.dtype}")
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].tolist()]
    else:
        classes = [str(i) for i in range(max(int(y.max()) + 1, 0))]
    if y.min() < 0 or y.max() >= len(classes):
        raise ScalenasError(f"data file {path}: labels out of range [0, {len(classes)}) "
                            f"(found {int(y.min())}..{int(y.max())})")
    return _Raw(x=xt, y=y.astype(np.int64), classes=classes,
                source={"kind": "npz", "path": str(path), "sha256": file_sha256(path)})


# ----------------------------------------------------------------------------------------------------------
# splitting, conversion, normalisation
# ----------------------------------------------------------------------------------------------------------
def _check_frac(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ScalenasError(f"{name}={value!r}: must be a fraction strictly between 0 and 1")
    return float(value)


def _stratified_split(y: np.ndarray, fracs: list[float], seed: int, classes: list[str],
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


def _index_record(idx: np.ndarray, listed: bool) -> dict:
    """``sha256`` is taken over the sorted indices written as ASCII decimals joined by commas."""
    s = sorted(int(i) for i in idx)
    rec: dict[str, Any] = {"count": len(s), "sha256": hashlib.sha256(",".join(map(str, s)).encode()).hexdigest()}
    if listed:
        rec["indices"] = s
    return rec


def _convert_channels(x: torch.Tensor, want: int | None, where: str) -> tuple[torch.Tensor, str | None]:
    have = x.shape[1]
    if want is None or want == have:
        return x, None
    if have == 1 and want == 3:
        return x.repeat(1, 3, 1, 1), "repeat 1 -> 3 channels"
    if have == 3 and want == 1:
        w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True), "luminance 3 -> 1 channel (ITU-R 601 weights)"
    raise ScalenasError(f"in_channels={want}: data {where} has {have} channel(s); only 1 <-> 3 conversion "
                        "is supported")


def _resize_all(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    # Chunked so the antialiasing temporaries of a large dataset stay small.
    return torch.cat([resize_batch(x[i:i + chunk], size) for i in range(0, len(x), chunk)])


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    # float64 running sums in chunks: exact enough for millions of pixels without a float64 copy of x.
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        b = x[i:i + chunk].double()
        s += b.sum(dim=(0, 2, 3))
        s2 += (b * b).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0.0)
    return mean.tolist(), var.sqrt().tolist()


def _check_stats(name: str, values: list[float] | None, channels: int, positive: bool) -> list[float] | None:
    if values is None:
        return None
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ScalenasError(f"{name}={values!r}: must be a list of {channels} number(s)") from None
    if len(vals) != channels:
        raise ScalenasError(f"{name}={vals}: needs {channels} value(s), one per channel")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in vals):
        raise ScalenasError(f"{name}={vals}: values must be finite{' and > 0' if positive else ''}")
    return vals


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
SOURCES = ("auto", "memory", "stream")
STATS_SAMPLE = 2000  # streamed data: mean/std estimated on this many seeded train images


@dataclass
class _Lazy:
    """A source read on demand: the pool to split (``train``) and an optional predefined test set."""

    train: Any
    classes: list[str]
    source: dict
    test: Any = None
    file_list: dict | None = None


def check_seed(seed: Any) -> int:
    """A data seed (splits, batch order): a non-negative int, else :class:`ScalenasError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScalenasError(f"seed={seed!r}: must be a non-negative integer")
    return seed


def _check_int(name: str, value: Any, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ScalenasError(f"{name}={value!r}: must be an integer >= {low}")


def _npy_dir(path: Path) -> bool:
    return (path / "x.npy").is_file() and (path / "y.npy").is_file()


def _array_source(path: Path, in_channels: int | None) -> _Lazy:
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
    ds = ArrayImages(x, y, layout, in_channels)
    st = path.stat()
    return _Lazy(ds, classes, {"kind": "arrays", "path": str(path), "shape": list(x.shape), "dtype": str(x.dtype),
                               "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns})


def _estimate_bytes(n: int, channels: int, size: int) -> int:
    return n * channels * size * size * 4  # float32 in memory


def load_data(spec: str, *, seed: int = 0, holdout_frac: float = 0.15, test_frac: float = 0.15,
              in_channels: int | None = None, store_size: int | None = None,
              mean: list[float] | None = None, std: list[float] | None = None,
              source: str = "auto", memory_limit_mb: int = 2048, workers: int | None = None,
              pin_memory: bool = False, cache_dir: str | os.PathLike | None = None, rescan: bool = False,
              max_bad_frac: float = 0.01, augment: str = "auto", flip: bool | None = None) -> DataSplits:
    """Load a dataset and split it into train / holdout / test, held in memory or streamed from disk.

    ``spec`` is ``"digits"``, ``"animals"``, a CIFAR python-version directory, an ImageFolder directory (also
    ImageNet's ``train/`` + ``val/`` layout: ``val`` becomes the test split), a directory with ``x.npy`` +
    ``y.npy`` (memory-mapped), or a ``.npz`` file (see the module docstring). The split is stratified per class
    and depends only on ``seed`` and the data; fractions are of the whole dataset (with a predefined test set,
    ``holdout_frac`` is a fraction of the training pool). ``in_channels`` converts 1 <-> 3 channels,
    ``store_size`` is the square storage size (ImageFolder default 32; others keep their size).
    ``mean``/``std`` are per channel; when omitted they are computed on the train split (streamed: estimated on
    2,000 seeded train images).

    ``source``: ``memory`` holds every split as one normalised float32 tensor; ``stream`` decodes on demand in
    ``workers`` DataLoader processes; ``auto`` streams when the float32 copy would exceed ``memory_limit_mb``
    (arrays given as ``x.npy``/``y.npy`` always stream: they are memory-mapped). ``cache_dir`` holds (or
    receives, via :meth:`DataSplits.save_info`) the ImageFolder's file list; ``rescan`` ignores it.
    ``augment``/``flip`` choose the device pipeline (:mod:`scalenas.data.augment`). Raises
    :class:`ScalenasError` for any bad input.
    """
    check_seed(seed)
    holdout_frac = _check_frac("holdout_frac", holdout_frac)
    _check_int("in_channels", in_channels, 1)
    if store_size is not None and (isinstance(store_size, bool) or not isinstance(store_size, int)
                                   or store_size < 1):
        raise ScalenasError(f"store_size={store_size!r}: must be a positive integer (pixels)")
    if source not in SOURCES:
        raise ScalenasError(f"source={source!r}: expected one of {', '.join(SOURCES)}")
    _check_int("workers", workers, 0)
    if augment not in AUGMENT_LEVELS:
        raise ScalenasError(f"augment={augment!r}: expected one of {', '.join(AUGMENT_LEVELS)}")

    spec = str(spec)
    raw: _Raw | None = None
    lazy: _Lazy | None = None
    if spec == "digits":  # the keywords win; write ./digits to load a folder of that name
        raw = _load_digits()
    elif spec == "animals":
        raw = _load_animals()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ScalenasError(f"data path {spec}: does not exist")
        if path.is_dir():
            if not any(True for _ in path.iterdir()):
                raise ScalenasError(f"data path {spec}: directory is empty")
            if _is_cifar_dir(path):
                raw = _load_cifar(path)
                if source == "stream":
                    lazy = _lazy_from_raw(raw, in_channels)
                    raw = None
            elif _npy_dir(path):
                lazy = _array_source(path, in_channels)
                if source == "memory":
                    raw, lazy = _raw_from_lazy(lazy), None
            else:
                cache = Path(cache_dir) / FILE_LIST if cache_dir is not None else None
                index, test_index, _ = load_file_lists(path, cache, rescan)
                mode = image_mode(index, in_channels)
                size = store_size or 32
                n_all = len(index) + (len(test_index) if test_index is not None else 0)
                big = _estimate_bytes(n_all, 1 if mode == "L" else 3, size) > memory_limit_mb * 2 ** 20
                record = file_list_record(path, index, test_index)
                if source == "stream" or (source == "auto" and big):
                    lazy = _Lazy(ImageFiles(index.root, index.files, index.labels, mode, size), list(index.classes),
                                 {"kind": "imagefolder", "path": str(path), "image_mode": mode,
                                  "test_path": test_index.root if test_index is not None else None},
                                 test=(ImageFiles(test_index.root, test_index.files, test_index.labels, mode, size)
                                       if test_index is not None else None),
                                 file_list=record)
                else:
                    raw = _load_image_folder(index, test_index, size, mode, max_bad_frac)
                    raw.file_list = record
        elif path.suffix.lower() == ".npz":
            if source == "stream":
                lazy = _array_source(path, in_channels)
            else:
                raw = _load_npz(path)
        else:
            raise ScalenasError(f"data path {spec}: not a directory or a .npz file")
    kind_source = (raw or lazy).source  # type: ignore[union-attr]
    where = spec if spec in ("digits", "animals") else kind_source["path"]
    classes = (raw or lazy).classes  # type: ignore[union-attr]
    if len(classes) < 2:
        raise ScalenasError(f"data {where}: only one class ({classes[0] if classes else 'none'}); "
                            "classification needs at least two")
    level, default_flip = default_level(kind_source["kind"])
    level = level if augment == "auto" else augment
    flip = default_flip if flip is None else bool(flip)
    if lazy is not None:
        return _stream_splits(lazy, spec, where, seed, holdout_frac, test_frac, mean, std, workers, pin_memory,
                              max_bad_frac, level, flip)
    assert raw is not None
    return _memory_splits(raw, spec, where, seed, holdout_frac, test_frac, in_channels, store_size, mean, std,
                          level, flip)


def _load_animals() -> _Raw:
    from scalenas.data.animals import load_animals

    x, y, classes, source = load_animals()
    return _Raw(x=torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0), y=y, classes=classes,
                source=source)


def _lazy_from_raw(raw: _Raw, in_channels: int | None) -> _Lazy:
    """An in-memory decoded source (CIFAR) served through the streaming path, as uint8."""
    def arr(x: torch.Tensor) -> np.ndarray:
        return x.mul(255.0).round_().to(torch.uint8).numpy()

    test = ArrayImages(arr(raw.test_x), raw.test_y, "nchw", in_channels) if raw.test_x is not None else None
    return _Lazy(ArrayImages(arr(raw.x), raw.y, "nchw", in_channels), raw.classes, raw.source, test=test)


def _raw_from_lazy(lazy: _Lazy) -> _Raw:
    ds = lazy.train
    x, y, _ = ds.__getitems__(list(range(len(ds))))
    return _Raw(x=x.float().div_(255.0) if x.dtype == torch.uint8 else x.float(), y=y.numpy(),
                classes=lazy.classes, source=lazy.source)


def _split_indices(y: np.ndarray, test_y: np.ndarray | None, seed: int, holdout_frac: float, test_frac: float,
                   classes: list[str], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    if test_y is not None:
        frac_desc = f"holdout_frac={holdout_frac}"
        train_idx, hold_idx = _stratified_split(y, [holdout_frac], seed, classes, where, frac_desc)
        return train_idx, hold_idx, np.arange(len(test_y)), None
    used = _check_frac("test_frac", test_frac)
    if holdout_frac + used >= 1.0:
        raise ScalenasError(f"holdout_frac={holdout_frac} + test_frac={used}: must sum to < 1")
    frac_desc = f"holdout_frac={holdout_frac} and test_frac={used}"
    train_idx, hold_idx, test_idx = _stratified_split(y, [holdout_frac, used], seed, classes, where, frac_desc)
    return train_idx, hold_idx, test_idx, used


def _info(spec: str, source: dict, seed: int, holdout_frac: float, used_test_frac: float | None,
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
        "indices": {n: _index_record(v, listed) for n, v in idx.items()},
        "num_classes": len(classes),
        "classes": list(classes),
        **rest,
    }


def _memory_splits(raw: _Raw, spec: str, where: str, seed: int, holdout_frac: float, test_frac: float,
                   in_channels: int | None, store_size: int | None, mean: list[float] | None,
                   std: list[float] | None, level: str, flip: bool) -> DataSplits:
    # Split first on indices (cheap), then convert/resize/normalise only what is kept.
    train_idx, hold_idx, test_idx, used_test_frac = _split_indices(raw.y, raw.test_y, seed, holdout_frac,
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
            px, conv = _convert_channels(px, in_channels, where)
        if store_size is not None and tuple(px.shape[2:]) != (store_size, store_size):
            px = _resize_all(px, store_size)
        if not shrink:
            px, conv = _convert_channels(px, in_channels, where)
        conversion = conv or conversion
        converted[name] = (px.contiguous(), py)
    parts = converted
    channels = int(parts["train"][0].shape[1])

    given_mean = _check_stats("mean", mean, channels, positive=False)
    given_std = _check_stats("std", std, channels, positive=True)
    c_mean, c_std = _channel_stats(parts["train"][0])
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
    info = _info(spec, raw.source, seed, holdout_frac, used_test_frac,
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


def _stream_splits(lazy: _Lazy, spec: str, where: str, seed: int, holdout_frac: float, test_frac: float,
                   mean: list[float] | None, std: list[float] | None, workers: int | None, pin_memory: bool,
                   max_bad_frac: float, level: str, flip: bool) -> DataSplits:
    ds, test_ds = lazy.train, lazy.test
    y = dataset_labels(ds)
    test_y = dataset_labels(test_ds) if test_ds is not None else None
    train_idx, hold_idx, test_idx, used_test_frac = _split_indices(y, test_y, seed, holdout_frac, test_frac,
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
    c_mean, c_std = _channel_stats(xs)
    given_mean = _check_stats("mean", mean, channels, positive=False)
    given_std = _check_stats("std", std, channels, positive=True)
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
    info = _info(spec, lazy.source, seed, holdout_frac, used_test_frac,
                 {"train": train_idx, "holdout": hold_idx, "test": test_idx},
                 {n: sp.y.numpy() for n, sp in splits.items()}, lazy.classes,
                 source_mode="stream", workers=workers,
                 native_channels=channels, in_channels=channels,
                 channel_conversion=lazy.source.get("image_mode") and f"Pillow convert('{lazy.source['image_mode']}')",
                 native_size=None, storage_size=stored,
                 mean=[float(v) for v in mean_v], std=[float(v) for v in std_v],
                 normalisation={"mean": "given" if given_mean is not None else how,
                                "std": "given" if given_std is not None else how,
                                "train_mean_before": c_mean, "train_std_before": c_std},
                 augmentation=pipeline.describe(), skipped=None, skipped_files=[])
    return DataSplits(name=spec, train=train, holdout=holdout, test=test, num_classes=len(lazy.classes),
                      in_channels=channels, classes=list(lazy.classes), mean=info["mean"], std=info["std"],
                      info=info, pipeline=pipeline, file_list=lazy.file_list)


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch ``(B, C, H, W)`` to ``(B, C, resolution, resolution)``; returns ``x`` itself if already so.

    Bilinear with ``align_corners=False``; antialiased when shrinking so small subnets do not see aliasing
    that the full-resolution ones never saw.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ScalenasError(f"resolution={resolution!r}: must be a positive integer (pixels)")
    return _resize(x, resolution)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. run seed, step, rank).

    SeedSequence mixes the parts properly: (seed, epoch) pairs never collide the way seed * K + epoch can.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class BatchIterator:
    """Seeded, resumable, shardable endless iterator over one :class:`Split`.

    Epoch ``e`` visits the permutation derived only from ``(seed, e)``; ``position`` counts batches already
    taken in the current epoch. So a fresh iterator given ``load_state_dict(state_dict())`` yields exactly the
    batches an uninterrupted one would. With ``world_size > 1`` every rank walks the same permutation and
    takes the strided share ``perm[rank::world_size]`` (disjoint when ``drop_last``; without it the
    permutation is padded by wrapping so all ranks still get the same number of batches). Batches come raw at
    storage size (a streaming split's decoded ahead by its workers); the device pipeline augments them.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, *, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ScalenasError(f"batch_size={batch_size!r}: must be a positive integer")
        if not isinstance(world_size, int) or world_size < 1:
            raise ScalenasError(f"world_size={world_size!r}: must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ScalenasError(f"rank={rank!r}: must be in [0, world_size={world_size})")
        check_seed(seed)
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self._stream: Iterator | None = None  # a streaming split's DataLoader iterator
        n = len(split)
        if drop_last:
            self._per_rank = n // world_size
            self._steps = self._per_rank // batch_size
        else:
            self._per_rank = math.ceil(n / world_size)
            self._steps = math.ceil(self._per_rank / batch_size)
        if self._steps < 1:
            raise ScalenasError(f"batch_size={batch_size}: split of {n} samples gives no full batch per rank "
                                f"(world_size={world_size}); lower batch_size or set drop_last=False")
        self._epoch = 0
        self._position = 0
        self._cache: tuple[int, torch.Tensor] | None = None  # (epoch, this rank's indices)

    @property
    def epoch(self) -> int:
        """Number of completed epochs (the epoch the next batch comes from)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already taken from the current epoch."""
        return self._position

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        return self._steps

    def _rank_indices(self, epoch: int) -> torch.Tensor:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        total = self._per_rank * self.world_size
        if total > n:  # pad by wrapping so ranks stay in lockstep (only without drop_last)
            perm = torch.cat([perm, perm[: total - n]])
        idx = perm[:total][self.rank::self.world_size]
        self._cache = (epoch, idx)
        return idx

    def __iter__(self) -> BatchIterator:
        return self

    def _batches_from(self, epoch: int, position: int) -> Iterator[list[int]]:
        """This rank's index batches from ``(epoch, position)`` on, endlessly (what the workers decode ahead)."""
        while True:  # endless by design (the loop takes what it needs); every epoch yields >= 1 batch
            idx = self._rank_indices(epoch)
            for p in range(position, self._steps):
                yield idx[p * self.batch_size:(p + 1) * self.batch_size].tolist()
            epoch, position = epoch + 1, 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.split.kind == "stream":
            if self._stream is None:
                self._stream = self.split.stream(self._batches_from(self._epoch, self._position))
            x, y = next(self._stream)
        else:
            idx = self._rank_indices(self._epoch)
            start = self._position * self.batch_size
            x, y = self.split.take(idx[start:start + self.batch_size])
        self._position += 1
        if self._position >= self._steps:
            self._epoch += 1
            self._position = 0
        return x, y

    def state_dict(self) -> dict:
        """JSON-able state; enough (with the same split and settings) to continue exactly where this left off."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "num_samples": len(self.split),
                "batch_size": self.batch_size, "world_size": self.world_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``. Any rank may load any rank's state (ranks move in lockstep)."""
        mine = self.state_dict()
        for key in ("seed", "num_samples", "batch_size", "world_size", "shuffle", "drop_last"):
            if key in state and state[key] != mine[key]:
                raise ScalenasError(f"batch iterator state: {key}={state[key]!r} does not match this run's "
                                    f"{key}={mine[key]!r}; resuming would not reproduce the batches")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self._steps:
            raise ScalenasError(f"batch iterator state: epoch={epoch} position={position} out of range "
                                f"(steps_per_epoch={self._steps})")
        self._epoch, self._position = epoch, position
        self.close()

    def close(self) -> None:
        """Stop a streaming split's loader workers (a later batch starts new ones where this left off)."""
        self._stream = None


def iterate_eval(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of ``split`` in order, the last one possibly smaller; every sample once."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScalenasError(f"batch_size={batch_size!r}: must be a positive integer")
    if split.kind == "stream":
        yield from split.iterate(batch_size)
        return
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size], split.y[i:i + batch_size]
