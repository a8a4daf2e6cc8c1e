"""FLOPs and parameters, analytic and exact (docs/method.md).

Convention: fvcore's count -- one fused multiply-add is one FLOP (so these are MACs), batch 1, eval mode, at the
subnet's own resolution. fvcore counts convolutions and linear layers (no bias), BatchNorm in eval mode as
2 per element, adaptive average pooling as 1 per input element, and skips activations and elementwise
mul/add. The analytic counter below follows the same rules and is tested against fvcore on hundreds of
subnets; it takes microseconds where fvcore takes ~100 ms (it traces the model).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import nn

from scalenas.spaces.arch import Derived, Subnet, derive_subnet
from scalenas.spaces.space import SearchSpace

FLOPS_CONVENTION = "fvcore MACs (1 multiply-add = 1 FLOP), batch 1, eval mode"


def conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def flops_params(derived: Derived) -> tuple[int, int]:
    """(FLOPs, params) of the built network, analytically."""
    r = derived.resolution
    h = conv_out(r, derived.stem_kernel, derived.stem_stride)
    k = derived.stem_kernel
    flops = h * h * derived.stem_ch * derived.in_channels * k * k + 2 * derived.stem_ch * h * h
    params = derived.stem_ch * derived.in_channels * k * k + 2 * derived.stem_ch
    for l in derived.layers:
        if l.expand != 1:
            flops += h * h * l.hidden * l.in_ch + 2 * l.hidden * h * h
            params += l.hidden * l.in_ch + 2 * l.hidden
        h = conv_out(h, l.kernel, l.stride)
        area = h * h
        flops += area * l.hidden * l.kernel * l.kernel + 2 * l.hidden * area
        params += l.hidden * l.kernel * l.kernel + 2 * l.hidden
        if l.se:
            flops += l.hidden * area + 2 * l.hidden * l.se_ch
            params += 2 * l.hidden * l.se_ch + l.se_ch + l.hidden
        flops += area * l.out_ch * l.hidden + 2 * l.out_ch * area
        params += l.out_ch * l.hidden + 2 * l.out_ch
    area = h * h
    flops += area * derived.head_ch * derived.head_in + 2 * derived.head_ch * area + derived.head_ch * area
    params += derived.head_ch * derived.head_in + 2 * derived.head_ch
    flops += derived.head_ch * derived.num_classes
    params += derived.head_ch * derived.num_classes + derived.num_classes
    return flops, params


# (space.content_key, subnet) -> (FLOPs, params). Keyed by the space's content, not its path or name: a space
# rebuilt from a checkpoint (no file, or num_classes fitted to the data) shares the entries of an equal one.
_CACHE: dict[tuple[str, Subnet], tuple[int, int]] = {}
_CACHE_MAX = 200_000


def subnet_flops_params(space: SearchSpace, subnet: Subnet) -> tuple[int, int]:
    """(FLOPs, params) of a subnet, cached by (space content, subnet)."""
    key = (space.content_key, subnet)
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        hit = _CACHE[key] = flops_params(derive_subnet(space, subnet))
    return hit


def count_params(model: nn.Module | Iterable[torch.Tensor]) -> int:
    """Parameter elements of a module (or of the tensors given), each shared tensor counted once: the same
    object, or the same view of the same storage (tied weights, grown models)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for p in params:
        key = _storage_key(p)
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def _storage_key(p: torch.Tensor) -> tuple[Any, ...]:
    try:
        ptr = p.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # meta / fake tensors have no storage
        ptr = 0
    if ptr == 0:
        return ("id", id(p))
    return (p.device.type, ptr, p.storage_offset(), tuple(p.shape), tuple(p.stride()))


def fvcore_flops(model: nn.Module, resolution: int, in_channels: int) -> int:
    """fvcore's count of ``model`` at ``resolution`` (batch 1, eval mode; training mode restored after)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        was_training = model.training
        model.eval()
        try:
            x = torch.zeros(1, in_channels, resolution, resolution)
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return int(analysis.total())
        finally:
            model.train(was_training)
