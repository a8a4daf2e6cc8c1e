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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_json

DATA_INFO_FORMAT = "scalenas-data/1"
# Above this many samples the split record keeps only the sha256 of each index list, not the list itself.
MAX_LISTED_INDICES = 100_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
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

    def __post_init__(self) -> None:
        # Cheap guard: a mismatch here would otherwise surface much later as a confusing indexing error.
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split needs x (N, C, H, W) and y (N,), got {tuple(self.x.shape)} and "
                             f"{tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


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

    def save_info(self, path: str | os.PathLike) -> None:
        """Write :attr:`info` (the split record) atomically as JSON to ``path``."""
        atomic_write_json(path, self.info)


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


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


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
        raise ScalenasError(f"data file {path}: not a readable CIFAR pickle ({_one_line(exc)})") from None
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
    to_float = lambda a: torch.from_numpy(a).float().div_(255.0)  # noqa: E731
    return _Raw(
        x=to_float(x_np), y=y, classes=classes,
        test_x=None if test_np is None else to_float(test_np), test_y=test_y,
        source={"kind": "cifar", "path": str(root), "train_files": [p.name for p in train_files],
                "test_file": test_file.name if test_y is not None else None},
    )


def _load_image_folder(root: Path, store_size: int, in_channels: int | None) -> _Raw:
    from PIL import Image

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ScalenasError(f"data path {root}: no class sub-folders (expected ImageFolder layout "
                            "root/<class>/<image>) and no CIFAR batches or images found")
    mode = "L" if in_channels == 1 else "RGB"
    resample = Image.Resampling.BILINEAR  # Pillow widens the filter when shrinking, i.e. antialiased
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    classes: list[str] = []
    ignored: list[str] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            # A folder without image files is not a class; say so, since it shifts no labels but may be a typo.
            print(f"scalenas: ignoring folder without images {class_dir}", file=sys.stderr)
            ignored.append(class_dir.name)
            continue
        label = len(classes)
        n_before = len(images)
        for f in files:
            try:
                with Image.open(f) as img:
                    img.load()  # force decoding now so a truncated file fails here, not later
                    arr = np.asarray(img.convert(mode).resize((store_size, store_size), resample), dtype=np.uint8)
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
                print(f"scalenas: skipping unreadable image {f}: {_one_line(exc)}", file=sys.stderr)
                skipped.append(str(f))
                continue
            images.append(arr)
            labels.append(label)
        if len(images) == n_before:
            raise ScalenasError(f"data path {class_dir}: class folder has no readable images")
        classes.append(class_dir.name)
    if skipped:
        print(f"scalenas: skipped {len(skipped)} unreadable image(s) under {root}", file=sys.stderr)
    if not images:
        raise ScalenasError(f"data path {root}: no images found in its class sub-folders")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return _Raw(
        x=torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0),
        y=np.asarray(labels, dtype=np.int64), classes=classes,
        source={"kind": "imagefolder", "path": str(root), "image_mode": mode,
                "ignored_folders": ignored},
        skipped=len(skipped), skipped_files=skipped[:100],
        channel_conversion=f"Pillow convert('{mode}')",
    )


def _load_npz(path: Path) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise ScalenasError(f"data file {path}: not a readable .npz ({_one_line(exc)})") from None
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
                source={"kind": "npz", "path": str(path), "sha256": _file_sha256(path)})


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
def load_data(spec: str, *, seed: int = 0, holdout_frac: float = 0.15, test_frac: float = 0.15,
              in_channels: int | None = None, store_size: int | None = None,
              mean: list[float] | None = None, std: list[float] | None = None) -> DataSplits:
    """Load a dataset into memory and split it into train / holdout / test.

    ``spec`` is ``"digits"``, a CIFAR python-version directory, an ImageFolder directory or a ``.npz`` file
    (see the module docstring). The split is stratified per class and depends only on ``seed`` and the data;
    fractions are of the whole dataset (for CIFAR with a ``test_batch``, the test split is that batch and
    ``holdout_frac`` is a fraction of the training batches). ``in_channels`` converts 1 <-> 3 channels,
    ``store_size`` resizes once to a square storage size (ImageFolder default 32; others keep their size).
    ``mean``/``std`` are per channel; when omitted they are computed on the train split. Raises
    :class:`ScalenasError` for any bad input.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScalenasError(f"seed={seed!r}: must be a non-negative integer")
    holdout_frac = _check_frac("holdout_frac", holdout_frac)
    if in_channels is not None and (isinstance(in_channels, bool) or not isinstance(in_channels, int)
                                    or in_channels < 1):
        raise ScalenasError(f"in_channels={in_channels!r}: must be a positive integer")
    if store_size is not None and (isinstance(store_size, bool) or not isinstance(store_size, int)
                                   or store_size < 1):
        raise ScalenasError(f"store_size={store_size!r}: must be a positive integer (pixels)")

    spec = str(spec)
    if spec == "digits":  # the keyword wins; write ./digits to load a folder of that name
        raw = _load_digits()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ScalenasError(f"data path {spec}: does not exist")
        if path.is_dir():
            if not any(True for _ in path.iterdir()):
                raise ScalenasError(f"data path {spec}: directory is empty")
            if _is_cifar_dir(path):
                raw = _load_cifar(path)
            else:
                raw = _load_image_folder(path, store_size or 32, in_channels)
        elif path.suffix.lower() == ".npz":
            raw = _load_npz(path)
        else:
            raise ScalenasError(f"data path {spec}: not a directory or a .npz file")
    where = spec if spec == "digits" else raw.source["path"]

    if len(raw.classes) < 2:
        raise ScalenasError(f"data {where}: only one class ({raw.classes[0] if raw.classes else 'none'}); "
                            "classification needs at least two")

    # Split first on indices (cheap), then convert/resize/normalise only what is kept.
    if raw.test_x is not None:
        frac_desc = f"holdout_frac={holdout_frac}"
        train_idx, hold_idx = _stratified_split(raw.y, [holdout_frac], seed, raw.classes, where, frac_desc)
        test_idx = np.arange(len(raw.test_y))
        test_x, test_y = raw.test_x, raw.test_y
        used_test_frac: float | None = None
    else:
        used_test_frac = _check_frac("test_frac", test_frac)
        if holdout_frac + used_test_frac >= 1.0:
            raise ScalenasError(f"holdout_frac={holdout_frac} + test_frac={used_test_frac}: must sum to < 1")
        frac_desc = f"holdout_frac={holdout_frac} and test_frac={used_test_frac}"
        train_idx, hold_idx, test_idx = _stratified_split(raw.y, [holdout_frac, used_test_frac], seed,
                                                          raw.classes, where, frac_desc)
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
    m = torch.tensor(mean_v, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std_v, dtype=torch.float32).view(1, -1, 1, 1)
    splits = {n: Split(x=px.sub_(m).div_(s), y=torch.from_numpy(np.ascontiguousarray(py)).long())
              for n, (px, py) in parts.items()}

    total = len(train_idx) + len(hold_idx) + len(test_idx)
    listed = total <= MAX_LISTED_INDICES
    storage_hw = [int(d) for d in splits["train"].x.shape[2:]]
    info = {
        "format": DATA_INFO_FORMAT,
        "name": spec,
        "source": raw.source,
        "seed": seed,
        "holdout_frac": holdout_frac,
        "test_frac": used_test_frac,
        "test_source": "split" if used_test_frac is not None else raw.source.get("test_file"),
        "index_base": ("positions in the concatenated training batches (test: in the test batch)"
                       if used_test_frac is None else "positions in the loaded dataset"),
        "sizes": {n: len(sp) for n, sp in splits.items()},
        "class_counts": {n: np.bincount(sp.y.numpy(), minlength=len(raw.classes)).tolist()
                         for n, sp in splits.items()},
        "indices": {"train": _index_record(train_idx, listed), "holdout": _index_record(hold_idx, listed),
                    "test": _index_record(test_idx, listed)},
        "num_classes": len(raw.classes),
        "classes": list(raw.classes),
        "native_channels": native_channels,
        "in_channels": channels,
        "channel_conversion": conversion,
        "native_size": native_hw,
        "storage_size": storage_hw,
        "mean": [float(v) for v in mean_v],
        "std": [float(v) for v in std_v],
        "normalisation": {"mean": "given" if given_mean is not None else "computed on train split",
                          "std": "given" if given_std is not None else "computed on train split",
                          "train_mean_before": c_mean, "train_std_before": c_std},
        "skipped": raw.skipped,
        "skipped_files": raw.skipped_files,
    }
    return DataSplits(name=spec, train=splits["train"], holdout=splits["holdout"], test=splits["test"],
                      num_classes=len(raw.classes), in_channels=channels, classes=list(raw.classes),
                      mean=info["mean"], std=info["std"], info=info)


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch ``(B, C, H, W)`` to ``(B, C, resolution, resolution)``; returns ``x`` itself if already so.

    Bilinear with ``align_corners=False``; antialiased when shrinking so small subnets do not see aliasing
    that the full-resolution ones never saw.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ScalenasError(f"resolution={resolution!r}: must be a positive integer (pixels)")
    h, w = x.shape[-2:]
    if h == resolution and w == resolution:
        return x
    down = resolution < h or resolution < w
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down)


def _derived_seed(*parts: int) -> int:
    # SeedSequence mixes the parts properly: (seed, epoch) pairs never collide the way seed * K + epoch can.
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class BatchIterator:
    """Seeded, resumable, shardable endless iterator over one :class:`Split`.

    Epoch ``e`` visits the permutation derived only from ``(seed, e)``; ``position`` counts batches already
    taken in the current epoch. So a fresh iterator given ``load_state_dict(state_dict())`` yields exactly the
    batches an uninterrupted one would. With ``world_size > 1`` every rank walks the same permutation and
    takes the strided share ``perm[rank::world_size]`` (disjoint when ``drop_last``; without it the
    permutation is padded by wrapping so all ranks still get the same number of batches). Batches come at
    storage size; the caller resizes with :func:`resize_batch`.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, *, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1, augment: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ScalenasError(f"batch_size={batch_size!r}: must be a positive integer")
        if not isinstance(world_size, int) or world_size < 1:
            raise ScalenasError(f"world_size={world_size!r}: must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ScalenasError(f"rank={rank!r}: must be in [0, world_size={world_size})")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ScalenasError(f"seed={seed!r}: must be a non-negative integer")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
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
            g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        total = self._per_rank * self.world_size
        if total > n:  # pad by wrapping so ranks stay in lockstep (only without drop_last)
            perm = torch.cat([perm, perm[: total - n]])
        idx = perm[:total][self.rank::self.world_size]
        self._cache = (epoch, idx)
        return idx

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._rank_indices(self._epoch)
        start = self._position * self.batch_size
        sel = idx[start:start + self.batch_size]
        x, y = self.split.x[sel], self.split.y[sel]
        if self.augment:
            g = torch.Generator().manual_seed(_derived_seed(self.seed, self._epoch, self._position, self.rank, 1))
            x = _random_shift(x, g)
        self._position += 1
        if self._position >= self._steps:
            self._epoch += 1
            self._position = 0
        return x, y

    def state_dict(self) -> dict:
        """JSON-able state; enough (with the same split and settings) to continue exactly where this left off."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "num_samples": len(self.split),
                "batch_size": self.batch_size, "world_size": self.world_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "augment": self.augment, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``. Any rank may load any rank's state (ranks move in lockstep)."""
        mine = self.state_dict()
        for key in ("seed", "num_samples", "batch_size", "world_size", "shuffle", "drop_last", "augment"):
            if key in state and state[key] != mine[key]:
                raise ScalenasError(f"batch iterator state: {key}={state[key]!r} does not match this run's "
                                    f"{key}={mine[key]!r}; resuming would not reproduce the batches")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self._steps:
            raise ScalenasError(f"batch iterator state: epoch={epoch} position={position} out of range "
                                f"(steps_per_epoch={self._steps})")
        self._epoch, self._position = epoch, position


def _random_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``p`` pixels (1 for tiny images, else 2) and take a random crop of the original size.

    Zero is the channel mean after normalisation, so the border carries no colour of its own.
    """
    b, c, h, w = x.shape
    p = 1 if min(h, w) < 16 else 2
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def iterate_eval(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of ``split`` in order, the last one possibly smaller; every sample once."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScalenasError(f"batch_size={batch_size!r}: must be a positive integer")
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size], split.y[i:i + batch_size]
