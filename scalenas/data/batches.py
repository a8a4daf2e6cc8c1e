"""Batches: seeded, resumable, shardable iteration over a split, evaluation passes in order, and the per-batch
resize to a subnet's resolution.

:class:`BatchIterator` walks epoch ``e`` in the permutation derived only from ``(seed, e)`` (:func:`derived_seed`),
so a resumed run takes exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from scalenas.data.augment import resize_batch as _resize
from scalenas.errors import ScalenasError


def check_seed(seed: Any) -> int:
    """A data seed (splits, batch order): a non-negative int, else :class:`ScalenasError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScalenasError(f"seed={seed!r}: must be a non-negative integer")
    return seed


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch ``(B, C, H, W)`` to ``(B, C, resolution, resolution)``; returns ``x`` itself if already so.

    Bilinear with ``align_corners=False``; antialiased when shrinking so small subnets do not see aliasing
    that the full-resolution ones never saw.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ScalenasError(f"resolution={resolution!r}: must be a positive integer (pixels)")
    return _resize(x, resolution)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. run seed, step, rank).

    SeedSequence mixes the parts properly: (seed, epoch) pairs never collide the way seed * K + epoch can.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class BatchIterator:
    """Seeded, resumable, shardable endless iterator over one :class:`Split`.

    Epoch ``e`` visits the permutation derived only from ``(seed, e)``; ``position`` counts batches already
    taken in the current epoch. So a fresh iterator given ``load_state_dict(state_dict())`` yields exactly the
    batches an uninterrupted one would. With ``world_size > 1`` every rank walks the same permutation and
    takes the strided share ``perm[rank::world_size]`` (disjoint when ``drop_last``; without it the
    permutation is padded by wrapping so all ranks still get the same number of batches). Batches come raw at
    storage size (a streaming split's decoded ahead by its workers); the device pipeline augments them.
    """

    def __init__(self, split, batch_size: int, seed: int, *, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ScalenasError(f"batch_size={batch_size!r}: must be a positive integer")
        if not isinstance(world_size, int) or world_size < 1:
            raise ScalenasError(f"world_size={world_size!r}: must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ScalenasError(f"rank={rank!r}: must be in [0, world_size={world_size})")
        check_seed(seed)
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self._stream: Iterator | None = None  # a streaming split's DataLoader iterator
        n = len(split)
        if drop_last:
            self._per_rank = n // world_size
            self._steps = self._per_rank // batch_size
        else:
            self._per_rank = math.ceil(n / world_size)
            self._steps = math.ceil(self._per_rank / batch_size)
        if self._steps < 1:
            raise ScalenasError(f"batch_size={batch_size}: split of {n} samples gives no full batch per rank "
                                f"(world_size={world_size}); lower batch_size or set drop_last=False")
        self._epoch = 0
        self._position = 0
        self._cache: tuple[int, torch.Tensor] | None = None  # (epoch, this rank's indices)

    @property
    def epoch(self) -> int:
        """Number of completed epochs (the epoch the next batch comes from)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already taken from the current epoch."""
        return self._position

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        return self._steps

    def _rank_indices(self, epoch: int) -> torch.Tensor:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        total = self._per_rank * self.world_size
        if total > n:  # pad by wrapping so ranks stay in lockstep (only without drop_last)
            perm = torch.cat([perm, perm[: total - n]])
        idx = perm[:total][self.rank::self.world_size]
        self._cache = (epoch, idx)
        return idx

    def __iter__(self) -> BatchIterator:
        return self

    def _batches_from(self, epoch: int, position: int) -> Iterator[list[int]]:
        """This rank's index batches from ``(epoch, position)`` on, endlessly (what the workers decode ahead)."""
        while True:  # endless by design (the loop takes what it needs); every epoch yields >= 1 batch
            idx = self._rank_indices(epoch)
            for p in range(position, self._steps):
                yield idx[p * self.batch_size:(p + 1) * self.batch_size].tolist()
            epoch, position = epoch + 1, 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.split.kind == "stream":
            if self._stream is None:
                self._stream = self.split.stream(self._batches_from(self._epoch, self._position))
            x, y = next(self._stream)
        else:
            idx = self._rank_indices(self._epoch)
            start = self._position * self.batch_size
            x, y = self.split.take(idx[start:start + self.batch_size])
        self._position += 1
        if self._position >= self._steps:
            self._epoch += 1
            self._position = 0
        return x, y

    def state_dict(self) -> dict:
        """JSON-able state; enough (with the same split and settings) to continue exactly where this left off."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "num_samples": len(self.split),
                "batch_size": self.batch_size, "world_size": self.world_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``. Any rank may load any rank's state (ranks move in lockstep)."""
        mine = self.state_dict()
        for key in ("seed", "num_samples", "batch_size", "world_size", "shuffle", "drop_last"):
            if key in state and state[key] != mine[key]:
                raise ScalenasError(f"batch iterator state: {key}={state[key]!r} does not match this run's "
                                    f"{key}={mine[key]!r}; resuming would not reproduce the batches")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self._steps:
            raise ScalenasError(f"batch iterator state: epoch={epoch} position={position} out of range "
                                f"(steps_per_epoch={self._steps})")
        self._epoch, self._position = epoch, position
        self.close()

    def close(self) -> None:
        """Stop a streaming split's loader workers (a later batch starts new ones where this left off)."""
        self._stream = None


def iterate_eval(split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of ``split`` in order, the last one possibly smaller; every sample once."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScalenasError(f"batch_size={batch_size!r}: must be a positive integer")
    if split.kind == "stream":
        yield from split.iterate(batch_size)
        return
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size], split.y[i:i + batch_size]
