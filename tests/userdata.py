"""A user's own problem, made from nothing: a small ImageFolder and a search space the project does not ship.

Used by tests/test_user_data_e2e.py and by .ci/run's wheel smoke run (``python tests/userdata.py DIR``):

* ``make_image_folder``: ``classes`` folders of ``per_class`` grey PNGs (``size`` px), each class a bright bar at
  its own place plus noise, so a few steps of training can tell them apart; a class count (12) no shipped space has;
* ``make_space``: a copy of a shipped space under another name, with ``num_classes`` set and a different head.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CLASSES = 12
SPACE_NAME = "user12"


def make_image_folder(root: str | Path, classes: int = CLASSES, per_class: int = 20, size: int = 28,
                      seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"kind{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        row, col = c % 4, c // 4
        for i in range(per_class):
            img = rng.integers(0, 50, (size, size)).astype(np.int32)
            img[3 + 6 * row: 8 + 6 * row, 2 + 8 * col: 9 + 8 * col] += 180
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return root


def make_space(path: str | Path, base: str = "animals-tiny", name: str = SPACE_NAME, classes: int = CLASSES) -> Path:
    from scalenas.spaces.space import resolve_space_path

    raw = yaml.safe_load(resolve_space_path(base).read_text())
    raw["name"] = name
    raw["num_classes"] = classes
    raw["head"] = dict(raw["head"], channels=int(raw["head"]["channels"]) + 8) if isinstance(raw.get("head"), dict) \
        else raw.get("head")
    raw.pop("description", None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))
    return Path(path)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    make_image_folder(out / "images")
    make_space(out / f"{SPACE_NAME}.yaml")
    print(f"wrote {out / 'images'} ({CLASSES} classes) and {out / (SPACE_NAME + '.yaml')}")
