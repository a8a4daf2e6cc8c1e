"""The embedded animal silhouettes (:mod:`scalenas.data.animals`), by the name ``animals``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scalenas.data.animals import load_animals
from scalenas.data.readers.base import InMemory, Reader, ReadRequest


def load_embedded_animals(path: Path | None, request: ReadRequest) -> InMemory:
    x, y, classes, source = load_animals()
    return InMemory(x=torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0), y=y, classes=classes,
                    source=source)


READER = Reader("animals", load=load_embedded_animals)
