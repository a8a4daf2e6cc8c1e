"""A ``.npz`` file with arrays ``x`` (``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)``, uint8 or float) and ``y``
(integer labels), optionally ``classes``. Loaded whole; ``source: stream`` memory-maps an uncompressed one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scalenas.data.readers.arrays import open_arrays
from scalenas.data.readers.base import InMemory, Reader, ReadRequest
from scalenas.data.sources import one_line
from scalenas.errors import ScalenasError
from scalenas.io import file_sha256


def is_npz(path: Path) -> bool:
    return not path.is_dir() and path.suffix.lower() == ".npz"


def load_npz(path: Path, request: ReadRequest) -> InMemory:
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
    return InMemory(x=xt, y=y.astype(np.int64), classes=classes,
                    source={"kind": "npz", "path": str(path), "sha256": file_sha256(path)})


READER = Reader("npz", recognise=is_npz, load=load_npz, open=open_arrays)
