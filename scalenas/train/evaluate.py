"""BN recalibration and supernet accuracy: the fitness the search reports.

BN for evaluation (docs/method.md): reset the running statistics of the subnet's path, recalibrate them on a
fixed set of training batches at the subnet's resolution (cumulative average, train mode, no gradients), then
evaluate in eval mode. The result does not depend on the order subnets are evaluated in.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.spaces.arch import Subnet
from scalenas.data.batches import iterate_eval, resize_batch
from scalenas.data.splits import Split


class CalibrationBatches(list):
    """Raw training batches for BN recalibration, with the evaluation view of their split (``view(x, r)``)."""

    def __init__(self, batches, view=resize_batch):
        super().__init__(batches)
        self.view = view


def calibration_batches(split: Split, batches: int, batch_size: int, seed: int) -> CalibrationBatches:
    """A fixed, seeded set of training images for BN recalibration (same for every candidate), decoded once
    and seen through the evaluation view (no augmentation)."""
    g = torch.Generator().manual_seed(seed)
    n = min(len(split), batches * batch_size)
    idx = torch.randperm(len(split), generator=g)[:n]
    return CalibrationBatches([split.take(idx[i:i + batch_size])[0] for i in range(0, n, batch_size)], split.view)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], resolution: int,
                   subnet: Subnet | None = None, side: int = 0, device: str | torch.device = "cpu") -> None:
    """Reset BN running statistics and re-estimate them on ``batches`` at ``resolution``; leave ``model`` in eval.

    Works for a :class:`~scalenas.models.supernet.SuperNet` (pass ``subnet``; only the path's slices are touched) and for
    any standalone model (every BatchNorm layer is reset).
    """
    from scalenas.models.supernet import SuperNet

    view = getattr(batches, "view", resize_batch)
    batches = list(batches)
    model.train()
    if isinstance(model, SuperNet):
        model.reset_bn_stats(subnet, side)
        for k, xb in enumerate(batches):
            model.bn_momentum = 1.0 / (k + 1)  # cumulative average over the calibration batches
            model(view(xb.to(device), resolution), subnet, side)
        model.bn_momentum = None
    else:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
        for xb in batches:
            model(view(xb.to(device), resolution))
        for m, mom in zip(bns, saved):
            m.momentum = mom
    model.eval()


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, resolution: int, subnet: Subnet | None = None, side: int = 0,
                   batch_size: int = 128, device: str | torch.device = "cpu") -> dict:
    """Top-1 and mean log-loss (natural log, per sample) of ``model`` on ``split`` at ``resolution`` (eval mode).

    Returns ``{"top1", "loss", "n", "correct"}``; ``correct`` is a per-sample bool tensor (CPU), for bootstraps.
    """
    from scalenas.models.supernet import SuperNet

    model.eval()
    hits: list[torch.Tensor] = []
    loss_sum = 0.0
    for xb, yb in iterate_eval(split, batch_size):
        xb = split.view(xb.to(device), resolution)
        out = model(xb, subnet, side) if isinstance(model, SuperNet) else model(xb)
        out = out.float().cpu()
        loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
        hits.append(out.argmax(1) == yb)
    correct = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    n = int(correct.numel())
    return {"top1": float(correct.sum()) / max(1, n), "loss": loss_sum / max(1, n), "n": n, "correct": correct}


def accuracy(model: nn.Module, split: Split, resolution: int, subnet: Subnet | None = None, side: int = 0,
             batch_size: int = 128, device: str | torch.device = "cpu") -> float:
    """Top-1 of ``model`` on ``split`` at ``resolution`` (eval mode)."""
    return evaluate_split(model, split, resolution, subnet, side, batch_size, device)["top1"]


def subnet_metrics(supernet, subnet: Subnet, calib: list[torch.Tensor], split: Split, side: int = 0,
                   device: str | torch.device = "cpu", batch_size: int = 128) -> dict:
    """Recalibrate BN of ``subnet``'s path on ``calib``, then :func:`evaluate_split` it on ``split``."""
    recalibrate_bn(supernet, calib, subnet.resolution, subnet, side, device)
    return evaluate_split(supernet, split, subnet.resolution, subnet, side, batch_size=batch_size, device=device)


def subnet_top1(supernet, subnet: Subnet, calib: list[torch.Tensor], split: Split, side: int = 0,
                device: str | torch.device = "cpu", batch_size: int = 128) -> float:
    return subnet_metrics(supernet, subnet, calib, split, side, device, batch_size)["top1"]


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    return -(soft_targets * F.log_softmax(logits, 1)).sum(1).mean()
