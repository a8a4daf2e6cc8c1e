"""scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the wheel, works offline), by the name
``digits`` (the name wins over a folder of that name: write ``./digits`` for the folder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scalenas.data.readers.base import InMemory, Reader, ReadRequest


def load_digits(path: Path | None, request: ReadRequest) -> InMemory:
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap); scale to [0, 1].
    x = torch.from_numpy(np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    return InMemory(x=x, y=y, classes=[str(c) for c in range(10)],
                    source={"kind": "digits", "path": "sklearn.datasets.load_digits"})


READER = Reader("digits", load=load_digits)
