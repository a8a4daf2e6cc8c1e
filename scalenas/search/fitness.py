"""The search's fitness: a supernet held by one worker scores architectures by holdout top-1.

BN is recalibrated per candidate on a fixed set of training batches (:mod:`scalenas.train.evaluate`), so the
score does not depend on the order candidates are evaluated in or on the worker that evaluates them.
"""
from __future__ import annotations

import json
import os

import torch

from scalenas.data.datasets import load_data
from scalenas.spaces.arch import parse_subnet
from scalenas.train.checkpoint import checkpoint_space, load_supernet, read_checkpoint
from scalenas.train.evaluate import calibration_batches, subnet_top1


class SupernetEvaluator:
    """Holds a supernet and the holdout split; scores architectures (canonical JSON) by holdout top-1.

    Built once per worker (Ray actor or in-process) and reused for many candidates. The split and the BN
    calibration batches come from the training run's recorded data settings, so every worker sees the same data.
    """

    def __init__(self, checkpoint: str, calib_batches: int = 4, calib_batch_size: int = 128, device: str = "cpu",
                 split: str = "holdout", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        payload = read_checkpoint(checkpoint)
        self.space = checkpoint_space(payload, str(checkpoint))
        self.supernet = load_supernet(checkpoint, payload=payload).to(device)
        cfg = payload.get("config", {})
        data = load_data(cfg.get("data", "digits"), seed=cfg.get("data_seed", cfg.get("seed", 0)),
                         holdout_frac=cfg.get("holdout_frac", 0.15), test_frac=cfg.get("test_frac", 0.15),
                         in_channels=self.space.in_channels, store_size=cfg.get("store_size"))
        if split not in ("holdout", "test"):
            raise ValueError(split)
        self.split = getattr(data, split)
        self.calib = calibration_batches(data.train, calib_batches, calib_batch_size, seed=cfg.get("seed", 0))
        self.device = device

    def set_threads(self, n: int) -> None:
        torch.set_num_threads(n)

    def evaluate(self, item: str) -> dict:
        subnet = parse_subnet(json.loads(item), self.space)
        return {"top1": subnet_top1(self.supernet, subnet, self.calib, self.split, 0, self.device),
                "pid": os.getpid()}
