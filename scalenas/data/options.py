"""The data options of a recipe: which data, how it is split, stored, read and augmented.

:class:`DataOptions` declares each key once (default, help, choices, range) with :func:`scalenas.options.option`;
:class:`scalenas.train.config.TrainConfig` nests it, so a job file, the flags and ``config.yaml`` keep the flat
keys (``data``, ``holdout_frac``, ...) while :func:`scalenas.data.datasets.load_data` takes the options whole.
"""
from __future__ import annotations

from dataclasses import dataclass

from scalenas.data.augment import AUGMENT_LEVELS
from scalenas.options import option

SOURCES = ("auto", "memory", "stream")


@dataclass
class DataOptions:
    """What to train on and how to load it (one dataset, its split, storage, reading and augmentation)."""

    data: str = option("digits", "'digits', 'animals', an ImageFolder dir (or train/ + val/), a CIFAR python dir, "
                       "a dir with x.npy + y.npy, or an .npz file")
    data_seed: int | None = option(None, "seed of the train/holdout/test split (None: the seed)")
    holdout_frac: float = option(0.15, "share of the data held out for the search's fitness", min=0.0, max=1.0,
                                 max_open=True)
    test_frac: float = option(0.15, "share kept for final reports only", min=0.0, max=1.0, max_open=True)
    store_size: int | None = option(None, "store images once at this size, resized per batch (None: native; "
                                    "ImageFolder: 32)", min=1)
    augment: str = option("auto", "augmentation on the device: none, shift, standard (random-resized crop + flip), "
                          "strong (+ colour jitter); auto: the dataset's default (docs/method.md)",
                          choices=AUGMENT_LEVELS)
    flip: bool | None = option(None, "random horizontal flips (None: the dataset's default; off for digits)")
    source: str = option("auto", "memory (one tensor) or stream (decoded from disk by loader workers); auto: "
                         "stream when the data would take more than memory_limit_mb", choices=SOURCES)
    memory_limit_mb: int = option(2048, "auto source: largest in-memory float32 copy of the data (MB)", min=1)
    workers: int | None = option(None, "data-loader worker processes of a streamed source (None: min(4, cores))",
                                 min=0)
    max_bad_frac: float = option(0.01, "share of unreadable images that stops the run", min=0.0, max=1.0)
    rescan_data: bool = option(False, "re-scan an ImageFolder instead of using the run's cached file list")

    def split_seed(self, seed: int) -> int:
        """The seed of the split: :attr:`data_seed`, or the run's ``seed`` when that is None."""
        return seed if self.data_seed is None else self.data_seed
