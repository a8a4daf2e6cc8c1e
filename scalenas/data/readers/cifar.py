"""A directory of CIFAR-10/100 "python version" pickles: ``data_batch_1..5`` + ``test_batch`` (CIFAR-10) or
``train`` + ``test`` (CIFAR-100, fine labels), class names from ``batches.meta`` / ``meta``. The test batch
becomes the test split. Read whole into memory; ``source: stream`` serves the decoded arrays through the workers.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalenas.data.readers.base import InMemory, OnDisk, Reader, ReadRequest
from scalenas.data.sources import one_line
from scalenas.errors import ScalenasError

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


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


def is_cifar_dir(root: Path) -> bool:
    if not root.is_dir():
        return False
    names = {p.name for p in root.iterdir() if p.is_file()}
    return bool(names & set(CIFAR10_TRAIN)) or "test_batch" in names or {"train", "test"} <= names


def load_cifar(root: Path, request: ReadRequest) -> InMemory:
    train_files = [root / n for n in CIFAR10_TRAIN if (root / n).is_file()]
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
    return InMemory(
        x=to_float(x_np), y=y, classes=classes,
        test_x=None if test_np is None else to_float(test_np), test_y=test_y,
        source={"kind": "cifar", "path": str(root), "train_files": [p.name for p in train_files],
                "test_file": test_file.name if test_y is not None else None},
    )


def open_cifar(root: Path, request: ReadRequest) -> OnDisk:
    return load_cifar(root, request).as_stream(request.in_channels)


READER = Reader("cifar", recognise=is_cifar_dir, load=load_cifar, open=open_cifar)
