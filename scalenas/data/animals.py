"""The embedded "animals" dataset: 10,000 real 28x28 grayscale animal silhouettes, 10 classes x 1,000.

Classes (label order): bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra. Rows are sorted by
class; there is no train/test split (split it yourself, stratified).

Source: the ``animal-mnist`` 0.4 package (MIT licence, copyright (c) 2025 SinaSR-6; the text ships as
``animals_LICENSE.txt``), converted by ``jobs/data/convert_animals.py`` into ``animals.npz`` (arrays ``x``
uint8 (N, 28, 28), ``y`` int64, ``classes`` str, no pickles). ``animals_provenance.json`` records the wheel and
member sha256, the conversion, and the sha256 of the npz, which :func:`load_animals` checks on every load.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from scalenas.errors import ScalenasError
from scalenas.io import file_sha256

PACKAGE = "animal-mnist 0.4 (MIT)"
SIDE = 28


def animals_file() -> Path:
    """The shipped ``animals.npz`` (it may be missing from a broken install; :func:`load_animals` says so)."""
    return Path(str(resources.files("scalenas.data") / "animals.npz"))


def _provenance_file(path: Path) -> Path:
    return path.with_name("animals_provenance.json")



def load_animals(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """``(x, y, classes, source)``: x uint8 (N, 1, 28, 28), y int64 (N,) in 0..9, the 10 class names, and
    ``{"kind": "animals", "path", "sha256", "package"}``.

    ``path`` defaults to :func:`animals_file`; its sha256 must match ``animals_provenance.json`` next to it.
    Any problem raises :class:`ScalenasError` with one line naming the file.
    """
    path = animals_file() if path is None else Path(path)

    def fail(problem: str) -> ScalenasError:
        return ScalenasError(f"embedded dataset file {path}: {problem}")

    if not path.is_file():
        raise fail("missing (reinstall scalenas)")
    prov_path = _provenance_file(path)
    try:
        expected = json.loads(prov_path.read_text(encoding="utf-8"))["npz"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise fail(f"cannot read its provenance {prov_path.name} ({type(exc).__name__}; reinstall scalenas)") from None
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise fail(f"unreadable ({exc.strerror or exc})") from None
    if digest != expected:
        raise fail(f"sha256 {digest[:12]}... does not match {prov_path.name} ({str(expected)[:12]}...); "
                   "the file is corrupt or was replaced (reinstall scalenas)")
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, classes = z["x"], z["y"], z["classes"]
    except Exception as exc:  # noqa: BLE001 - any failure to read the arrays is a corrupt file
        raise fail(f"not a readable npz with arrays x, y, classes ({' '.join(str(exc).split())})") from None
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise fail(f"x must be uint8 (N, {SIDE}, {SIDE}), got {x.dtype} {x.shape}")
    if y.dtype != np.int64 or y.shape != (len(x),):
        raise fail(f"y must be int64 ({len(x)},), got {y.dtype} {y.shape}")
    if classes.dtype.kind != "U" or classes.ndim != 1 or not len(y):
        raise fail(f"classes must be a 1-D str array and y non-empty, got {classes.dtype} {classes.shape}, {len(y)} labels")
    if not 0 <= y.min() <= y.max() < len(classes):
        raise fail(f"labels must be in 0..{len(classes) - 1}, got {int(y.min())}..{int(y.max())}")
    source = {"kind": "animals", "path": str(path), "sha256": digest, "package": PACKAGE}
    return x.reshape(-1, 1, SIDE, SIDE), y, [str(c) for c in classes], source
