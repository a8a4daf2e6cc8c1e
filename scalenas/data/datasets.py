"""``load_data``: the data options in, seeded train / holdout / test splits out.

It asks the reader registry (:mod:`scalenas.data.readers`) which reader knows the source, has it load the source
into memory or open it lazily (``source``), and makes the splits (:mod:`scalenas.data.splits`). Batches over a
split come from :mod:`scalenas.data.batches`. Sources understood:

* ``"digits"``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the wheel, works offline);
  ``"animals"``: the embedded 28x28 animal silhouettes.
* a directory of CIFAR-10/100 "python version" pickles (``data_batch_1..5`` + ``test_batch``, or CIFAR-100's
  ``train`` + ``test``; ``batches.meta`` / ``meta`` for class names).
* a directory with ``x.npy`` + ``y.npy`` (memory-mapped), or a ``.npz`` file with arrays ``x`` and ``y``
  (optionally ``classes``).
* any other directory: ImageFolder layout ``root/<class>/<image>``, read with Pillow.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from scalenas.data.augment import default_level
from scalenas.data.batches import (
    BatchIterator,
    check_seed,
    derived_seed,
    iterate_eval,
    resize_batch,
)
from scalenas.data.options import SOURCES, DataOptions
from scalenas.data.readers import InMemory, ReadRequest, find_reader
from scalenas.data.splits import (
    DataSplits,
    Split,
    StreamSplit,
    check_frac,
    memory_splits,
    stream_splits,
)
from scalenas.errors import ScalenasError
from scalenas.options import check_options

# The names callers import from here (the splits and batches moved to their own modules).
__all__ = ["SOURCES", "BatchIterator", "DataOptions", "DataSplits", "Split", "StreamSplit", "check_seed",
           "derived_seed", "iterate_eval", "load_data", "resize_batch"]

_ALIASES = {"rescan": "rescan_data"}  # load_data's keyword of earlier versions


def load_data(data: str | os.PathLike | DataOptions, *, seed: int = 0, in_channels: int | None = None,
              mean: list[float] | None = None, std: list[float] | None = None, pin_memory: bool = False,
              cache_dir: str | os.PathLike | None = None, **options: Any) -> DataSplits:
    """Load a dataset and split it into train / holdout / test, held in memory or streamed from disk.

    ``data`` is a :class:`DataOptions` (a recipe's, whole) or the ``data`` key alone (``"digits"``, a path, ...);
    ``options`` set other keys of :class:`DataOptions` (``holdout_frac=0.2``, ``source="stream"``, ``rescan=``
    for ``rescan_data``). The options are checked against their declarations (:mod:`scalenas.options`). The
    split is stratified per class and depends only on the split seed (``data_seed``, else ``seed``) and the data;
    fractions are of the whole dataset (with a predefined test set, ``holdout_frac`` is a fraction of the
    training pool). ``in_channels`` converts 1 <-> 3 channels; ``mean``/``std`` are per channel, when omitted
    computed on the train split (streamed: estimated on 2,000 seeded train images).

    ``source``: ``memory`` holds every split as one normalised float32 tensor; ``stream`` decodes on demand in
    ``workers`` DataLoader processes; ``auto`` lets the reader choose (an ImageFolder streams when its float32
    copy would exceed ``memory_limit_mb``; ``x.npy``/``y.npy`` arrays always stream: they are memory-mapped).
    ``cache_dir`` holds (or receives, via :meth:`DataSplits.save_info`) the ImageFolder's file list;
    ``rescan_data`` ignores it. ``augment``/``flip`` choose the device pipeline (:mod:`scalenas.data.augment`).
    Raises :class:`ScalenasError` for any bad input.
    """
    opts = data if isinstance(data, DataOptions) else DataOptions(data=str(data))
    if options:
        opts = dataclasses.replace(opts, **{_ALIASES.get(k, k): v for k, v in options.items()})
    check_options(opts, "data")
    seed = check_seed(opts.split_seed(seed))
    check_frac("holdout_frac", opts.holdout_frac)
    if in_channels is not None and (isinstance(in_channels, bool) or not isinstance(in_channels, int)
                                    or in_channels < 1):
        raise ScalenasError(f"in_channels={in_channels!r}: must be an integer >= 1")

    spec = opts.data
    reader, path = find_reader(spec)
    request = ReadRequest(opts, in_channels, Path(cache_dir) if cache_dir is not None else None)
    got = reader.read(path, request)
    where = spec if path is None else got.source["path"]
    if len(got.classes) < 2:
        raise ScalenasError(f"data {where}: only one class ({got.classes[0] if got.classes else 'none'}); "
                            "classification needs at least two")
    level, default_flip = default_level(got.source["kind"])
    level = level if opts.augment == "auto" else opts.augment
    flip = default_flip if opts.flip is None else bool(opts.flip)
    if isinstance(got, InMemory):
        return memory_splits(got, opts, spec=spec, where=where, seed=seed, in_channels=in_channels, mean=mean,
                             std=std, level=level, flip=flip)
    return stream_splits(got, opts, spec=spec, where=where, seed=seed, mean=mean, std=std, pin_memory=pin_memory,
                         level=level, flip=flip)
