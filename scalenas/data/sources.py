"""Where images come from: ImageFolder file indexes, image decoding, memory-mapped arrays and the streaming
datasets that :class:`torch.utils.data.DataLoader` workers read from.

A *file index* lists an ImageFolder tree once (classes, relative file paths, labels) together with a cheap
fingerprint (files per class and the modification time of every class folder). It is cached next to the run
(``data_files.json``), so a resumed run, the search's workers and ``scalenas train`` read the very same list;
a tree that changed since is detected from the fingerprint and reported with a re-scan hint.

Streaming datasets return whole batches (``__getitems__``) of ``uint8`` pixels at storage size, the labels and,
per sample, the index of a file that could not be decoded (``-1`` when it was fine); an unreadable file is
replaced by the next readable one so batches keep their size, and the caller counts it (:class:`BadFiles`).
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalenas.errors import ScalenasError

FILE_LIST = "data_files.json"
FILE_LIST_FORMAT = "scalenas-files/1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MIN_BAD_ALLOWED = 2  # a couple of bad files never stop a run, whatever its size
RESCAN_HINT = "re-scan it with --rescan-data (or start a new run)"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------ file indexes
@dataclass
class FileIndex:
    """One ImageFolder tree: class names, file paths relative to ``root`` and their labels."""

    root: str
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    fingerprint: dict[str, list[int]] = field(default_factory=dict)  # class folder -> [files, mtime_ns]

    def __len__(self) -> int:
        return len(self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "classes": self.classes, "files": self.files,
                "labels": self.labels.tolist(), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileIndex:
        return cls(str(d["root"]), [str(c) for c in d["classes"]], [str(f) for f in d["files"]],
                   np.asarray(d["labels"], dtype=np.int64), {str(k): list(v) for k, v in d["fingerprint"].items()})


def _class_files(class_dir: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                out.append(os.path.relpath(os.path.join(dirpath, name), class_dir.parent))
    return sorted(p.replace(os.sep, "/") for p in out)


def scan_image_folder(root: Path, classes: list[str] | None = None, what: str = "data path") -> FileIndex:
    """List ``root/<class>/**/<image>``. With ``classes`` (a test tree), labels follow those names and a class
    folder the list lacks is an error."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ScalenasError(f"{what} {root}: no class sub-folders (expected ImageFolder layout "
                            "root/<class>/<image>) and no CIFAR batches or arrays found")
    if classes is not None:
        extra = [p.name for p in class_dirs if p.name not in classes]
        if extra:
            raise ScalenasError(f"{what} {root}: class folder(s) {', '.join(extra[:5])} not in the training "
                                f"classes ({len(classes)} classes under the train folder)")
    names = classes if classes is not None else [p.name for p in class_dirs]
    label_of = {c: i for i, c in enumerate(names)}
    files: list[str] = []
    labels: list[int] = []
    fingerprint: dict[str, list[int]] = {}
    for d in class_dirs:
        found = _class_files(d)
        if not found:
            raise ScalenasError(f"{what} {d}: empty class folder (no image files); remove it or add images")
        files += found
        labels += [label_of[d.name]] * len(found)
        fingerprint[d.name] = [len(found), d.stat().st_mtime_ns]
    return FileIndex(str(root), list(names), files, np.asarray(labels, dtype=np.int64), fingerprint)


def check_fingerprint(index: FileIndex, where: str) -> None:
    """Raise if the tree changed since ``index`` was made (class folders added, removed or modified)."""
    root = Path(index.root)
    if not root.is_dir():
        raise ScalenasError(f"data path {root}: gone since the file list {where} was made; {RESCAN_HINT}")
    now = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if now != set(index.fingerprint):
        added, removed = sorted(now - set(index.fingerprint)), sorted(set(index.fingerprint) - now)
        raise ScalenasError(f"data path {root}: class folders changed since the file list {where} was made "
                            f"(added {added[:3]}, removed {removed[:3]}); {RESCAN_HINT}")
    for name, (count, mtime) in index.fingerprint.items():
        st = (root / name).stat()
        if st.st_mtime_ns != mtime:
            n_now = len(_class_files(root / name))
            if n_now != count:
                change = "shrank" if n_now < count else "grew"
                raise ScalenasError(f"data path {root}: class folder {name!r} {change} from {count} to {n_now} "
                                    f"files since the file list {where} was made; {RESCAN_HINT}")


def image_folder_layout(root: Path) -> tuple[Path, Path | None]:
    """``(train_root, test_root)``: ImageNet's ``root/train`` + ``root/val`` (or ``test``) layout, else ``root``."""
    train = root / "train"
    if train.is_dir():
        for name in ("val", "test"):
            if (root / name).is_dir():
                return train, root / name
    return root, None


def load_file_lists(root: Path, cache: Path | None, rescan: bool) -> tuple[FileIndex, FileIndex | None, bool]:
    """The train (and optional test) file index of ``root``: from ``cache`` when it holds one for this root
    (checked against the tree), else scanned. Returns ``(train, test, scanned)``."""
    train_root, test_root = image_folder_layout(root)
    if cache is not None and cache.is_file() and not rescan:
        try:
            d = json.loads(cache.read_text())
            ok = d.get("format") == FILE_LIST_FORMAT and d.get("root") == str(root.resolve())
            train = FileIndex.from_dict(d["train"]) if ok else None
            test = FileIndex.from_dict(d["test"]) if ok and d.get("test") else None
        except (OSError, ValueError, KeyError, TypeError):
            raise ScalenasError(f"{cache}: unreadable file list; {RESCAN_HINT}") from None
        if train is not None:
            check_fingerprint(train, str(cache))
            if test is not None:
                check_fingerprint(test, str(cache))
            return train, test, False
    train = scan_image_folder(train_root)
    test = scan_image_folder(test_root, train.classes, "test folder") if test_root is not None else None
    return train, test, True


def file_list_record(root: Path, train: FileIndex, test: FileIndex | None) -> dict[str, Any]:
    return {"format": FILE_LIST_FORMAT, "root": str(root.resolve()), "train": train.to_dict(),
            "test": test.to_dict() if test is not None else None}


def image_mode(index: FileIndex, in_channels: int | None) -> str:
    """Pillow mode to decode with: from ``in_channels`` when given (every image converted, as ImageNet needs
    for its few grey and CMYK JPEGs), else from the images themselves: the first image of every class must
    agree, or the data has mixed channel counts and the caller must choose."""
    if in_channels == 1:
        return "L"
    if in_channels is not None:
        return "RGB"
    from PIL import Image

    seen: dict[str, str] = {}
    first: dict[str, int] = {}
    for i, label in enumerate(index.labels.tolist()):
        first.setdefault(index.classes[label], i)
    for i in first.values():
        path = os.path.join(index.root, index.files[i])
        try:
            with Image.open(path) as img:
                seen.setdefault("L" if img.mode in GREY_MODES else "RGB", path)
        except Exception:  # noqa: BLE001, S112 - an unreadable probe is counted later, when decoded
            continue
        if len(seen) > 1:
            raise ScalenasError(f"data path {index.root}: mixed channel counts ({seen['L']} is greyscale, "
                                f"{seen['RGB']} is colour); set in_channels: 1 or 3 to convert every image")
    return next(iter(seen), "RGB")


def decode_image(path: str, mode: str, size: int) -> np.ndarray:
    """Decode one image to ``uint8`` ``(C, size, size)``: shorter side resized to ``size`` (antialiased), then
    the centre square. JPEGs are decoded at a reduced scale first when they are much larger (Pillow draft)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft(mode, (size, size))
        img = img.convert(mode)
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        if (nw, nh) != (size, size):
            img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------ arrays
def open_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise ScalenasError(f"{what} {path}: not a readable .npy array ({one_line(exc)})") from None


def open_npz_member(path: Path, name: str) -> np.ndarray:
    """A member of an *uncompressed* ``.npz`` opened memory-mapped (``np.load`` reads npz members whole)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError("compressed")
        with z.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            header = fh.tell()
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
        offset = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
            int.from_bytes(local[28:30], "little") + header
    if dtype.hasobject:
        raise ScalenasError(f"data file {path}: array {name} holds Python objects (not allowed)")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def check_image_array(x: np.ndarray, y: np.ndarray, where: str) -> str:
    """Validate an image array for streaming; returns its layout: ``"nchw"``, ``"nhwc"`` or ``"nhw"``."""
    if x.dtype != np.uint8 and x.dtype != np.float32:
        raise ScalenasError(f"data {where}: memory-mapped x must be uint8 or float32, got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise ScalenasError(f"data {where}: x has {len(x)} samples but y has shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ScalenasError(f"data {where}: y must hold integer labels, got {y.dtype}")
    if x.ndim == 3:
        return "nhw"
    if x.ndim == 4 and x.shape[1] <= 4 < min(x.shape[2:]):
        return "nchw"
    if x.ndim == 4 and x.shape[3] <= 4 < min(x.shape[1:3]):
        return "nhwc"
    raise ScalenasError(f"data {where}: memory-mapped x must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C <= 4, "
                        f"got shape {x.shape}")


# ------------------------------------------------------------------------------------------ datasets
def _identity(batch):
    return batch


class ImageFiles(torch.utils.data.Dataset):
    """Decode ``files`` (relative to ``root``) on demand; batches via :meth:`__getitems__`."""

    def __init__(self, root: str, files: list[str], labels: np.ndarray, mode: str, size: int):
        # One fixed-width bytes array, not a list of str: 1.28 M names stay ~60 MB, and forked loader workers
        # share its pages (touching a Python object writes its refcount, which would copy the page per worker).
        self.root, self.labels, self.mode, self.size = root, labels, mode, int(size)
        self.files = np.asarray([f.encode("utf-8", "surrogateescape") for f in files], dtype=np.bytes_)
        self.channels = 1 if mode == "L" else 3

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i].decode("utf-8", "surrogateescape"))

    def _decode(self, i: int) -> tuple[np.ndarray, int, int]:
        bad = -1
        for k in range(min(16, len(self.files))):
            j = (i + k) % len(self.files)
            try:
                return decode_image(self.path(j), self.mode, self.size), int(self.labels[j]), bad
            except Exception:  # noqa: BLE001 - Pillow raises many types for bad files
                bad = i if bad < 0 else bad
        raise ScalenasError(f"data path {self.root}: 16 unreadable images in a row from {self.path(i)}")

    def __getitem__(self, i: int):
        x, y, bad = self._decode(int(i))
        return torch.from_numpy(x), y, bad

    def __getitems__(self, idx: list[int]):
        out = [self._decode(int(i)) for i in idx]
        x = torch.from_numpy(np.stack([o[0] for o in out]))
        return x, torch.tensor([o[1] for o in out], dtype=torch.int64), torch.tensor([o[2] for o in out])


class ArrayImages(torch.utils.data.Dataset):
    """Images from an array (memory-mapped or in memory) in any of the layouts of :func:`check_image_array`."""

    def __init__(self, x: np.ndarray, y: np.ndarray, layout: str, in_channels: int | None = None):
        self.x, self.y, self.layout = x, np.asarray(y, dtype=np.int64), layout
        self.native = 1 if layout == "nhw" else int(x.shape[1] if layout == "nchw" else x.shape[3])
        if in_channels is not None and in_channels != self.native and {in_channels, self.native} != {1, 3}:
            raise ScalenasError(f"in_channels={in_channels}: the array has {self.native} channel(s); only 1 <-> 3 "
                                "conversion is supported")
        self.channels = in_channels or self.native

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x, y, bad = self.__getitems__([int(i)])
        return x[0], int(y[0]), int(bad[0])

    def __getitems__(self, idx: list[int]):
        order = np.argsort(idx)  # sorted reads are sequential on disk
        sel = np.asarray(idx, dtype=np.int64)[order]
        x = np.asarray(self.x[sel])
        x = x[:, None] if self.layout == "nhw" else (x.transpose(0, 3, 1, 2) if self.layout == "nhwc" else x)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        x = torch.from_numpy(np.ascontiguousarray(x[inv]))
        if self.channels == 3 and self.native == 1:
            x = x.repeat(1, 3, 1, 1)
        elif self.channels == 1 and self.native == 3:  # ITU-R 601 luma, as Pillow's convert("L")
            w = torch.tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)
            luma = (x.float() * w).sum(1, keepdim=True)
            x = luma.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else luma
        return x, torch.from_numpy(self.y[np.asarray(idx, dtype=np.int64)]), torch.full((len(idx),), -1)


class BadFiles:
    """Counts samples that could not be decoded; stops the run when their share passes ``max_frac``."""

    def __init__(self, dataset, max_frac: float, total: int):
        self.dataset, self.max_frac, self.total = dataset, float(max_frac), int(total)
        self.bad: set[int] = set()
        self.seen = 0

    def note(self, bad: torch.Tensor) -> None:
        self.seen += int(bad.numel())
        new = [int(i) for i in bad.tolist() if i >= 0 and int(i) not in self.bad]
        for i in new:
            self.bad.add(i)
            if len(self.bad) <= 5:
                name = self.dataset.path(i) if hasattr(self.dataset, "path") else f"sample {i}"
                print(f"scalenas: skipping unreadable image {name}", file=sys.stderr)
        allowed = max(self.max_frac * (self.total if self.seen < 200 else self.seen), MIN_BAD_ALLOWED)
        if new and len(self.bad) > allowed:
            first = ", ".join(self.dataset.path(i) if hasattr(self.dataset, "path") else str(i)
                              for i in sorted(self.bad)[:3])
            raise ScalenasError(f"data: {len(self.bad)} unreadable images among {self.seen} read (more than "
                                f"max_bad_frac={self.max_frac}); first: {first}")


def loader(dataset, batches, workers: int, pin_memory: bool, persistent: bool = False):
    """A DataLoader over an iterable of index batches (``batch_sampler``), decoding in ``workers`` processes."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {"prefetch_factor": 4, "persistent_workers": persistent,
              "multiprocessing_context": "fork" if sys.platform.startswith("linux") else None}
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_identity,
                                       pin_memory=pin_memory, **kw)


def cap_workers(workers: int) -> int:
    """``workers`` capped at the cores this process may use (with a warning)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if workers > cores:
        print(f"scalenas: workers={workers} is more than the {cores} core(s) available; using {cores}",
              file=sys.stderr)
        return cores
    return workers
