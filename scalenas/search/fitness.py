"""The search's fitness: a supernet held by one worker scores architectures on the holdout split.

BN is recalibrated per candidate on a fixed set of training batches (:mod:`scalenas.train.evaluate`), so the
score does not depend on the order candidates are evaluated in or on the worker that evaluates them.

Every evaluation reports holdout top-1 AND mean log-loss, each with its own noise: the bootstrap standard error
over the holdout images (:func:`bootstrap_se`, seeded, so it is as deterministic as the metric). Which metric the
search optimises is the search's ``metric`` option (:class:`scalenas.search.strategy.SearchOptions`).
:func:`calibration_noise` measures the other source of noise, the draw of the BN calibration batches.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scalenas.data.datasets import load_data
from scalenas.data.splits import Split
from scalenas.spaces.arch import Subnet, parse_subnet
from scalenas.train.checkpoint import checkpoint_space, load_supernet, read_checkpoint
from scalenas.train.config import recorded_data_options
from scalenas.train.evaluate import calibration_batches, subnet_metrics
from scalenas.models.supernet import resolve_conv_impl
from scalenas.train.loop import configure_cudnn

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CELLS = 4_000_000  # resampled values held at once (bounds the memory of one chunk)


def bootstrap_se(values: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Any:
    """Bootstrap standard error of the mean of ``values`` over its first axis (the holdout images).

    ``values`` is 1-D (one metric per image: a bool ``correct`` vector, per-image losses) or 2-D (images x
    metrics: every column is resampled with the same draws). ``resamples`` resamples of n images with
    replacement, drawn from ``numpy.random.default_rng(seed)``; returns the standard deviation (ddof=1) of the
    resampled means: a float for 1-D input, an array for 2-D. NaN for no images or fewer than 2 resamples.
    """
    v = np.asarray(values.numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    one = v.ndim == 1
    if one:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"bootstrap_se: expected 1-D or 2-D values, got shape {v.shape}")
    n = v.shape[0]
    if n == 0 or resamples < 2:
        out = np.full(v.shape[1], math.nan)
        return float(out[0]) if one else out
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _BOOTSTRAP_CELLS // (n * v.shape[1])))
    means = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(v[idx].mean(axis=1))
    out = np.concatenate(means).std(axis=0, ddof=1)
    return float(out[0]) if one else out


def split_metrics(supernet, subnet: Subnet, calib: list[torch.Tensor], split: Split, side: int = 0,
                  device: str | torch.device = "cpu", resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """:func:`~scalenas.train.evaluate.subnet_metrics` (BN recalibrated on ``calib``, then ``split`` evaluated)
    plus the bootstrap standard errors of top-1 and loss: ``{"top1", "loss", "top1_se", "loss_se", "n"}``.

    The per-image losses are computed from the logits of the same forward passes (a hook on the supernet that
    keeps the eval-mode outputs), so nothing is evaluated twice.
    """
    logits: list[torch.Tensor] = []

    def keep(module, args, output) -> None:
        if not module.training:  # the evaluation's forwards, not the BN recalibration's
            logits.append(output.detach().float().cpu())

    handle = supernet.register_forward_hook(keep)
    try:
        res = subnet_metrics(supernet, subnet, calib, split, side, device)
    finally:
        handle.remove()
    n = int(res["n"])
    out = torch.cat(logits) if logits else torch.zeros(0, 1)
    if out.shape[0] != n:
        raise RuntimeError(f"split_metrics: captured {out.shape[0]} logits for {n} holdout images")
    losses = F.cross_entropy(out, split.y[:n], reduction="none") if n else torch.zeros(0)
    per_image = torch.stack([res["correct"].to(torch.float64), losses.to(torch.float64)], dim=1)
    se = bootstrap_se(per_image, resamples, seed)
    return {"top1": float(res["top1"]), "loss": float(res["loss"]), "top1_se": float(se[0]),
            "loss_se": float(se[1]), "n": n}


def calibration_noise(supernet, subnet: Subnet, train: Split, split: Split, draws: int = 5, calib_batches: int = 4,
                      calib_batch_size: int = 128, seed: int = 1, side: int = 0,
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """Noise of the fitness from the draw of the BN calibration batches: ``subnet`` evaluated on ``split``
    after recalibrating BN on ``draws`` different calibration sets of ``train`` (seeds ``seed`` ..
    ``seed + draws - 1``, each :func:`~scalenas.train.evaluate.calibration_batches`).

    Returns ``{"top1_sd", "loss_sd"}`` (standard deviation over the draws, ddof=1; NaN for one draw), the
    per-draw ``top1`` and ``loss`` lists and the ``seeds``. The supernet's BN statistics of the subnet's path are
    those of the last draw afterwards (every evaluation recalibrates them anyway).
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"calibration_noise: draws must be a positive integer, got {draws!r}")
    seeds = [seed + k for k in range(draws)]
    top1, loss = [], []
    for s in seeds:
        calib = calibration_batches(train, calib_batches, calib_batch_size, seed=s)
        res = subnet_metrics(supernet, subnet, calib, split, side, device)
        top1.append(float(res["top1"]))
        loss.append(float(res["loss"]))

    def sd(xs: list[float]) -> float:
        return float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan

    return {"top1_sd": sd(top1), "loss_sd": sd(loss), "top1": top1, "loss": loss, "seeds": seeds}


class SupernetEvaluator:
    """Holds a supernet and the holdout split; scores architectures (canonical JSON) on the holdout.

    Built once per worker (Ray actor or in-process) and reused for many candidates. The split and the BN
    calibration batches come from the training run's recorded data settings, so every worker sees the same data.
    ``conv_impl``: the supernet's convolution path (``auto``: gemm on CUDA, conv on CPU; see
    :mod:`scalenas.models.supernet`).
    """

    def __init__(self, checkpoint: str, calib_batches: int = 4, calib_batch_size: int = 128, device: str = "cpu",
                 split: str = "holdout", threads: int | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                 conv_impl: str = "auto"):
        if threads:
            torch.set_num_threads(threads)
        if split not in ("holdout", "test"):
            raise ValueError(split)
        payload = read_checkpoint(checkpoint)
        self.space = checkpoint_space(payload, str(checkpoint))
        # A supernet path's shapes change per candidate: the gemm path (auto on CUDA) keeps them off cuDNN, so
        # cuDNN stays on for the rest; the conv path turns it off (configure_cudnn).
        impl = resolve_conv_impl(conv_impl, device)
        configure_cudnn(torch.device(device), dynamic_shapes=impl == "conv")
        self.supernet = load_supernet(checkpoint, payload=payload).to(device)
        self.supernet.conv_impl = impl
        cfg = payload.get("config", {})
        # The run's own data settings and file list (RUN/data_files.json); a streamed holdout is decoded in
        # this worker (workers=0: a Ray worker is one CPU), nothing travels through the object store.
        self._data_options = dataclasses.replace(recorded_data_options(cfg), workers=0)
        self._data_args = dict(in_channels=self.space.in_channels, cache_dir=str(Path(checkpoint).parent))
        data = self._load_data()
        self.split_name = split
        self.split = getattr(data, split)
        self.calib_seed = cfg.get("seed", 0)
        self.calib_batches, self.calib_batch_size = calib_batches, calib_batch_size
        self.calib = calibration_batches(data.train, calib_batches, calib_batch_size, seed=self.calib_seed)
        self.device = device
        self.resamples = resamples

    def _load_data(self):
        return load_data(self._data_options, **self._data_args)

    def set_threads(self, n: int) -> None:
        torch.set_num_threads(n)

    def evaluate(self, item: str) -> dict:
        """``{"top1", "loss", "top1_se", "loss_se", "n", "pid"}`` of the architecture ``item`` (see
        :func:`split_metrics`); deterministic given the item."""
        subnet = parse_subnet(json.loads(item), self.space)
        return {**split_metrics(self.supernet, subnet, self.calib, self.split, 0, self.device, self.resamples),
                "pid": os.getpid()}

    def calibration_noise(self, item: str, draws: int = 5, seed: int | None = None) -> dict[str, Any]:
        """:func:`calibration_noise` of the architecture ``item`` with this evaluator's calibration size (the
        training split is reloaded for it; seeds start after the evaluator's own calibration seed)."""
        subnet = parse_subnet(json.loads(item), self.space)
        train = self._load_data().train
        return calibration_noise(self.supernet, subnet, train, self.split, draws, self.calib_batches,
                                 self.calib_batch_size, self.calib_seed + 1 if seed is None else seed, 0, self.device)
