"""Pixel conversions applied once when splits are made: 1 <-> 3 channels, the square storage size, per-channel
statistics and checks of a given mean and std."""
from __future__ import annotations

import math

import torch

from scalenas.data.batches import resize_batch
from scalenas.errors import ScalenasError

# ITU-R BT.601 luma weights: the same ones Pillow's convert("L") uses, so both conversion paths agree.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def convert_channels(x: torch.Tensor, want: int | None, where: str) -> tuple[torch.Tensor, str | None]:
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


def resize_all(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    # Chunked so the antialiasing temporaries of a large dataset stay small.
    return torch.cat([resize_batch(x[i:i + chunk], size) for i in range(0, len(x), chunk)])


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
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


def check_stats(name: str, values: list[float] | None, channels: int, positive: bool) -> list[float] | None:
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
