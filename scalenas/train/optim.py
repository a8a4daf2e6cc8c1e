"""Optimisation pieces shared by supernet and standalone training.

:class:`PathSGD` is SGD (Nesterov momentum, weight decay) that updates only the parameter entries the sampled
path used in this step. Written by hand because ``torch.optim.SGD`` applies weight decay and momentum to every
parameter that has a gradient -- for a sliced weight that moves the unused channels too, and it keeps moving
ops that were sampled earlier through their momentum buffers (the leak METHOD.md §4 warns about).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; BN parameters and biases (1-D tensors) without."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def masks_from_record(record: Iterable[tuple[nn.Parameter, tuple[slice, ...]]]) -> dict[int, torch.Tensor | None]:
    """Per parameter id: a boolean mask of the entries used (``None`` = the whole tensor was used)."""
    masks: dict[int, torch.Tensor | None] = {}
    for p, slices in record:
        key = id(p)
        if not slices or all(s == slice(None) for s in slices):
            masks[key] = None
            continue
        if key in masks and masks[key] is None:
            continue
        m = masks.get(key)
        if m is None:
            m = torch.zeros(p.shape[:len(slices)], dtype=torch.bool, device=p.device)
        elif m.ndim < len(slices):  # the same tensor sliced along more dims than before: widen the mask
            m = m.reshape(m.shape + (1,) * (len(slices) - m.ndim)).expand(p.shape[:len(slices)]).clone()
        masks[key] = m
        m[slices] = True
    return masks


class PathSGD(torch.optim.Optimizer):
    """SGD with (Nesterov) momentum and weight decay restricted to the entries of the sampled path.

    Call :meth:`set_masks` before :meth:`step` with the masks of the step's forward passes; a parameter without
    a gradient, or an entry outside its mask, is left bit-identical (value and momentum buffer).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        self._masks: dict[int, torch.Tensor | None] | None = None

    def set_masks(self, masks: dict[int, torch.Tensor | None] | None) -> None:
        self._masks = masks

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch API
        for group in self.param_groups:
            lr, mom, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self._masks is not None and id(p) not in self._masks:
                    continue  # not on the path (e.g. a gradient left over by another module)
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if mom:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.zeros_like(p)
                    new_buf = buf.mul(mom).add_(g)
                    upd = g.add(new_buf, alpha=mom) if nesterov else new_buf
                else:
                    new_buf, upd = None, g
                mask = None if self._masks is None else self._masks[id(p)]
                if mask is None:
                    if new_buf is not None:
                        buf.copy_(new_buf)
                    p.sub_(upd, alpha=lr)
                else:
                    m = mask.reshape(mask.shape + (1,) * (p.ndim - mask.ndim))
                    if new_buf is not None:
                        buf.copy_(torch.where(m, new_buf, buf))
                    p.copy_(torch.where(m, p - lr * upd, p))
        return None


def lr_at(step: int, total: int, base_lr: float, warmup: int, final_lr: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``final_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * min(1.0, t)))
