"""Augmentation and evaluation views on the training device, per batch, at the subnet's resolution.

Batches arrive at storage size, either already normalised (the in-memory source) or as ``uint8`` pixels (the
streaming source, which normalises here, on the device). :class:`DevicePipeline` turns such a raw batch into the
network's input at a given resolution:

* ``train(x, resolution, seed)``: the augmentation level's random transform, seeded per step (the same seed
  gives the same crops at every resolution, so the sandwich passes of one step see the same views);
* ``eval(x, resolution)``: resize (and, for large stored images, centre crop) without randomness.

Levels (config key ``augment``; ``auto`` picks the dataset's default, see :func:`default_level`):

========== ==================================================================================================
none       resize to the resolution
shift      zero-pad 1-2 px and crop back (random shift), then resize: for tiny images such as 8x8 digits
standard   kornia ``RandomResizedCrop`` straight to the resolution (one resampling), scale (0.08, 1) for stored
           images of 64 px and more, (0.35, 1) below; horizontal flip unless flips change the data's meaning
strong     standard + kornia ``ColorJitter`` (brightness/contrast 0.4, saturation 0.4 on colour data), p = 0.8
========== ==================================================================================================

Evaluation for ``standard``/``strong`` on stored images of 64 px and more resizes to ``resolution / 0.875`` and
takes the centre crop (the ImageNet convention); smaller images are resized whole.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_LEVELS = ("auto", "none", "shift", "standard", "strong")
EVAL_CROP = 0.875
LARGE_IMAGE = 64  # stored size from which the ImageNet conventions (scale 0.08, centre crop) apply


def default_level(kind: str) -> tuple[str, bool]:
    """``(level, flip)`` the ``auto`` setting means for a source kind (``digits``, ``animals``, ``cifar``, ...).

    Digits and arrays of unknown content get shifts without flips (a mirrored 2 or 7 is another glyph); natural
    images (CIFAR, ImageFolder trees) get the standard random-resized crop with flips; animal silhouettes keep
    their meaning when mirrored, so they get shifts with flips.
    """
    return {"digits": ("shift", False), "animals": ("shift", True), "cifar": ("standard", True),
            "imagefolder": ("standard", True)}.get(kind, ("shift", False))


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, resolution, resolution)``; returns ``x`` itself if already so.

    Bilinear with ``align_corners=False``; antialiased when shrinking so small subnets do not see aliasing
    that the full-resolution ones never saw.
    """
    h, w = x.shape[-2:]
    if h == resolution and w == resolution:
        return x
    down = resolution < h or resolution < w
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down)


def eval_resize(x: torch.Tensor, resolution: int, crop: float = 1.0) -> torch.Tensor:
    """Resize to ``ceil(resolution / crop)`` and take the centre ``resolution`` square (``crop=1``: resize)."""
    if crop >= 1.0:
        return resize_batch(x, resolution)
    big = int(math.ceil(resolution / crop))
    x = resize_batch(x, big)
    top = (big - resolution) // 2
    return x[..., top:top + resolution, top:top + resolution]


def random_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``p`` pixels (1 for images under 16 px, else 2) and take a random crop of the original size.

    Zero is the channel mean after normalisation, so the border carries no colour of its own.
    """
    b, c, h, w = x.shape
    p = 1 if min(h, w) < 16 else 2
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


class DevicePipeline:
    """Normalisation + augmentation (train) or resize/centre crop (eval) of raw batches on their device.

    ``mean``/``std`` normalise ``uint8`` batches (pixels / 255 first); float batches are taken as normalised
    already. ``stored`` is the storage size (it decides the crop scale and the evaluation crop).
    """

    def __init__(self, level: str, flip: bool, mean: list[float], std: list[float], stored: int):
        if level not in AUGMENT_LEVELS[1:]:
            raise ValueError(f"augment level {level!r}: expected one of {', '.join(AUGMENT_LEVELS[1:])}")
        self.level, self.flip, self.stored = level, bool(flip), int(stored)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        large = self.stored >= LARGE_IMAGE
        self.scale = (0.08, 1.0) if large else (0.35, 1.0)
        self.eval_crop = EVAL_CROP if large and level in ("standard", "strong") else 1.0
        self._modules: dict[int, torch.nn.Module] = {}

    def describe(self) -> dict:
        return {"augment": self.level, "flip": self.flip, "crop_scale": list(self.scale),
                "eval_crop": self.eval_crop, "stored": self.stored}

    # -- normalisation ------------------------------------------------------------------------------------
    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return m, s

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (undoing the normalisation of a float batch)."""
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        m, s = self._stats(x)
        return x.float() * s + m

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A raw batch as the network's normalised float input (float batches pass unchanged)."""
        if x.dtype != torch.uint8:
            return x
        m, s = self._stats(x)
        return x.float().div_(255.0).sub_(m).div_(s)

    # -- views --------------------------------------------------------------------------------------------
    def eval(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        return eval_resize(self.normalise(x), resolution, self.eval_crop)

    def train(self, x: torch.Tensor, resolution: int, seed: int) -> torch.Tensor:
        if self.level == "none" and not self.flip:
            return resize_batch(self.normalise(x), resolution)
        if self.level in ("none", "shift"):
            g = torch.Generator().manual_seed(int(seed))
            x = self.normalise(x)
            if self.level == "shift":
                x = random_shift(x, g)
            if self.flip:
                flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            return resize_batch(x, resolution)
        # kornia draws its parameters from torch's global generator: fork it, so training's own random
        # stream (dropout, path sampling) is untouched and the views depend only on ``seed``.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            if self.level == "strong":
                x = self._module("jitter", x.shape[1])(self.to_unit(x))
                m, s = self._stats(x)
                x = (x - m) / s
            else:
                x = self.normalise(x)
            x = self._module(resolution, x.shape[1])(x)
        return x

    def _module(self, key, channels: int) -> torch.nn.Module:
        import kornia.augmentation as K

        if (key, channels) not in self._modules:
            if key == "jitter":
                mod = K.ColorJitter(0.4, 0.4, 0.4 if channels == 3 else 0.0, 0.0, p=0.8)
            else:
                parts = [K.RandomResizedCrop((key, key), scale=self.scale, ratio=(3 / 4, 4 / 3),
                                             cropping_mode="slice")]
                if self.flip:
                    parts.append(K.RandomHorizontalFlip(p=0.5))
                mod = torch.nn.Sequential(*parts)
            self._modules[(key, channels)] = mod
        return self._modules[(key, channels)]


def train_view(pipeline: DevicePipeline | None, x: torch.Tensor, resolution: int, seed: int) -> torch.Tensor:
    """``pipeline.train`` (or a plain resize without a pipeline)."""
    return pipeline.train(x, resolution, seed) if pipeline is not None else resize_batch(x, resolution)
