"""Optimisation pieces shared by supernet and standalone training.

:class:`PathSGD` is SGD (Nesterov momentum, weight decay) that updates only the parameter entries the sampled
path used in this step. Written by hand because ``torch.optim.SGD`` applies weight decay and momentum to every
parameter that has a gradient -- for a sliced weight that moves the unused channels too, and it keeps moving
ops that were sampled earlier through their momentum buffers (the leak docs/method.md warns about).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from scalenas.errors import ScalenasError


NO_DECAY_SUFFIXES = ("pos_embed", "cls_token")  # a ViT's position embedding and class token are not decayed


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; BN parameters, biases (1-D tensors) and ViT tokens without."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else decay).append(p)
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


class PathMaskedOptimizer(torch.optim.Optimizer):
    """Base of the path-restricted optimisers: :meth:`set_masks` gives the entries the step's paths used."""

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        self._masks: dict[int, torch.Tensor | None] | None = None

    def set_masks(self, masks: dict[int, torch.Tensor | None] | None) -> None:
        self._masks = masks

    def on_path(self, p: torch.Tensor) -> bool:
        """``p`` has a gradient from this step's path (a gradient left over by another module does not count)."""
        return p.grad is not None and (self._masks is None or id(p) in self._masks)

    def mask_of(self, p: torch.Tensor) -> torch.Tensor | None:
        """Boolean mask broadcastable to ``p`` of the entries the path used (None: every entry)."""
        mask = None if self._masks is None else self._masks[id(p)]
        return None if mask is None else mask.reshape(mask.shape + (1,) * (p.ndim - mask.ndim))


class PathSGD(PathMaskedOptimizer):
    """SGD with (Nesterov) momentum and weight decay restricted to the entries of the sampled path.

    Call :meth:`set_masks` before :meth:`step` with the masks of the step's forward passes; a parameter without
    a gradient, or an entry outside its mask, is left bit-identical (value and momentum buffer).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch API
        for group in self.param_groups:
            lr, mom, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if not self.on_path(p):
                    continue
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
                m = self.mask_of(p)
                if m is None:
                    if new_buf is not None:
                        buf.copy_(new_buf)
                    p.sub_(upd, alpha=lr)
                else:
                    if new_buf is not None:
                        buf.copy_(torch.where(m, new_buf, buf))
                    p.copy_(torch.where(m, p - lr * upd, p))
        return None


SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: int, total: int, base_lr: float, warmup: int, final_lr: float = 0.0,
          schedule: str = "cosine") -> float:
    """Linear warm-up for ``warmup`` steps, then ``schedule`` (cosine / linear decay to ``final_lr``, constant)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "constant":
        return base_lr
    if schedule == "linear":
        return final_lr + (base_lr - final_lr) * (1.0 - t)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * t))


class PathAdamW(PathMaskedOptimizer):
    """AdamW (decoupled weight decay) restricted to the entries of the sampled path, like :class:`PathSGD`.

    Bias correction needs the number of updates *of each entry*: an entry's step count lives in a tensor of
    the parameter's shape (an op sampled in 3 of 100 steps is corrected for 3 updates, not 100). Written by
    hand because ``torch.optim.AdamW`` moves every entry of a tensor that has a gradient.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch API
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if not self.on_path(p):
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros_like(p)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                mask = self.mask_of(p)
                m = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.expand_as(p)
                g = p.grad
                n = torch.where(m, state["step"] + 1, state["step"])
                avg = torch.where(m, state["exp_avg"] * b1 + g * (1 - b1), state["exp_avg"])
                sq = torch.where(m, state["exp_avg_sq"] * b2 + g * g * (1 - b2), state["exp_avg_sq"])
                corr1 = 1 - b1 ** n.clamp(min=1)
                corr2 = 1 - b2 ** n.clamp(min=1)
                upd = (avg / corr1) / ((sq / corr2).sqrt() + eps)
                new = p * (1 - lr * wd) - lr * upd
                p.copy_(torch.where(m, new, p))
                state["step"], state["exp_avg"], state["exp_avg_sq"] = n, avg, sq
        return None


OPTIMIZERS = ("sgd", "adamw")
DEFAULT_WEIGHT_DECAY = {"sgd": 4e-5, "adamw": 0.05}  # L2 in the gradient (SGD) vs decoupled decay (AdamW)
DEFAULT_LR = {"sgd": 0.2, "adamw": 3e-3}


def make_optimizer(name: str, model: nn.Module, *, lr: float, weight_decay: float, momentum: float = 0.9,
                   nesterov: bool = True, path_masked: bool = False) -> torch.optim.Optimizer:
    """``sgd`` or ``adamw`` over :func:`param_groups` (no decay on BN parameters and biases).

    ``path_masked`` (supernet training): the optimiser updates only the entries of the sampled path
    (:class:`PathSGD`, :class:`PathAdamW`; call ``set_masks`` before each step).
    """
    groups = [g for g in param_groups(model, weight_decay) if g["params"]]
    if not groups:
        raise ScalenasError("the model has no trainable parameters")
    if name == "sgd":
        cls = PathSGD if path_masked else torch.optim.SGD
        return cls(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay)
    if name == "adamw":
        cls = PathAdamW if path_masked else torch.optim.AdamW
        return cls(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
