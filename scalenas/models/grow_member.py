"""Grow a trained family member into the next, larger member of the same base network (depth, width, resolution).

:func:`grow_to` builds the standalone model of the target member and initialises it from the trained smaller
one so that, straight after growing, it computes the same function (eval mode, at any resolution: the
network is fully convolutional up to the global pool, so resolution growth is free):

* **Width** (Net2Net-style, function preserving): every channel group -- the stem's, each stage's residual
  stream, each block's hidden (expanded) width and its SE width -- keeps its old channels and gets new ones that
  replicate randomly chosen old channels (a producer's rows and its BatchNorm entries are copied). Every
  consumer splits its weight for an old channel among that channel's replicas with **random positive
  fractions per weight entry** that sum to one, so the sum -- and the function -- is unchanged, while the
  replicas receive different gradients from the first step: that is how the symmetry between a channel and its
  copies is broken without noise in the function.
* **Depth**: a stage's extra layers are residual (stride 1, in = out). ``depth_init="copy"`` (default) starts
  each one from an existing layer of the same op in that stage (its weights widened like the others), with the
  block's last BatchNorm scale and shift set to zero, so the block adds exactly zero and the network is
  unchanged; it learns from the first step (the BN scale gets a gradient). A layer with no same-op residual
  layer to copy keeps its fresh initialisation, also with a zero last BN. ``depth_init="fresh"`` never copies.
* **Resolution**: nothing to do.

Growth to a member of another base network, another space, or a smaller member (fewer layers in a stage,
fewer channels) is refused with a clear message.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scalenas.errors import ScalenasError
from scalenas.models.standalone import IRBlock, StandaloneNet
from scalenas.spaces.arch import Subnet, derive_subnet, parse_subnet
from scalenas.spaces.space import load_space

DEPTH_INITS = ("copy", "fresh")


def _mapping(old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    """New channel -> old channel: the old channels first, then random replicas."""
    if new < old:
        raise ScalenasError(f"cannot shrink a channel group from {old} to {new}")
    extra = torch.randint(0, old, (new - old,), generator=gen) if new > old else torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(old), extra])


def _fractions(rows: int, in_map: torch.Tensor, old_in: int, gen: torch.Generator) -> torch.Tensor:
    """Per (output row, new input channel): a positive fraction; over the replicas of one old channel they sum
    to 1 in every row (all 1.0 where a channel has no replica)."""
    u = 0.5 + torch.rand(rows, len(in_map), generator=gen, dtype=torch.float64)
    sums = torch.zeros(rows, old_in, dtype=torch.float64).index_add_(1, in_map, u)
    return u / sums[:, in_map]


@torch.no_grad()
def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out_map: torch.Tensor, in_map: torch.Tensor | None,
               gen: torch.Generator) -> None:
    """Widen ``src`` into ``dst``: output rows replicated by ``out_map``; inputs split among replicas."""
    w = src.weight.detach().double()[out_map]
    if src.groups > 1:  # depthwise: one input per channel, no mixing to split
        dst.weight.copy_(w.to(dst.weight.dtype))
    else:
        if in_map is not None:
            frac = _fractions(len(out_map), in_map, src.in_channels, gen)
            w = w[:, in_map] * frac.reshape(frac.shape + (1,) * (w.ndim - 2))
        dst.weight.copy_(w.to(dst.weight.dtype))
    if src.bias is not None:
        dst.bias.copy_(src.bias.detach()[out_map])


@torch.no_grad()
def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, out_map: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name).detach()[out_map])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _widen_block(dst: IRBlock, src: IRBlock, in_map: torch.Tensor, out_map: torch.Tensor,
                 gen: torch.Generator) -> None:
    """Widen block ``src`` into ``dst`` (same op): input group ``in_map``, output group ``out_map``; the block
    walks its own tensors (:meth:`IRBlock.widen_from`), the replicas and fractions are this module's rule."""
    dst.widen_from(src, in_map, out_map, lambda old, new: _mapping(old, new, gen),
                   lambda rows, cols, old_in: _fractions(rows, cols, old_in, gen))


def check_growth(source: Subnet, target: Subnet, space) -> None:
    """Refuse growth to another space, another base network, or a member that is smaller anywhere."""
    if source.space != target.space:
        raise ScalenasError(f"cannot grow a {source.space!r} model into a member of space {target.space!r}")
    if tuple(map(tuple, source.base)) != tuple(map(tuple, target.base)):
        raise ScalenasError(f"cannot grow into a member of another base network (model {source.short()}, "
                            f"target {target.short()}); members of one family share their base")
    a, b = derive_subnet(space, source), derive_subnet(space, target)
    for i in range(len(space.stages)):
        na, nb = len(a.stage_layers(i)), len(b.stage_layers(i))
        if nb < na:
            raise ScalenasError(f"target member {target.short()} is smaller than the model: stage {i + 1} has {nb} "
                                f"layers, the model {na}; grow only into larger members")
    pairs = [("stem", a.stem_ch, b.stem_ch)] + [
        (f"stage {i + 1}", a.stage_layers(i)[0].out_ch, b.stage_layers(i)[0].out_ch) for i in range(len(space.stages))]
    for where, ca, cb in pairs:
        if cb < ca:
            raise ScalenasError(f"target member {target.short()} is narrower than the model ({where}: {cb} < {ca} "
                                "channels); grow only into larger members")
    if target.resolution < source.resolution:
        raise ScalenasError(f"target member {target.short()} has a lower resolution ({target.resolution} < "
                            f"{source.resolution}); grow only into larger members")


def grow_to(model: nn.Module, target: Subnet | dict[str, Any] | str, *, depth_init: str = "copy",
            seed: int = 0) -> StandaloneNet:
    """The standalone model of member ``target``, initialised from the trained smaller ``model``.

    ``model`` is a scalenas CNN (:class:`StandaloneNet`) of the same space and base network; ``target`` a
    :class:`Subnet`, its dict or JSON text. Returns a new model (``model`` is not modified) in eval mode whose
    output equals ``model``'s on the same input (up to float rounding); see the module docstring.
    """
    if not isinstance(model, StandaloneNet):
        kind = getattr(model, "model_kind", type(model).__name__)
        raise ScalenasError(f"grow --to needs a scalenas CNN member (kind 'cnn'), got a {kind!r} model")
    if depth_init not in DEPTH_INITS:
        raise ScalenasError(f"depth_init must be one of {', '.join(DEPTH_INITS)}, got {depth_init!r}")
    space = model.space if model.space is not None else load_space(model.subnet.space)  # a user's space too
    if isinstance(target, str):
        import json

        try:
            target = json.loads(target)
        except json.JSONDecodeError as exc:
            raise ScalenasError(f"target member: not valid JSON ({exc.msg})") from None
    if not isinstance(target, Subnet):
        target = parse_subnet(target, space, allow_outside=True)
    check_growth(model.subnet, target, space)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dropout = model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0
    grown = StandaloneNet(derive_subnet(space, target), dropout, space)
    src, dst = model, grown

    # stem
    stem_map = _mapping(src.stem[0].out_channels, dst.stem[0].out_channels, gen)
    _copy_conv(dst.stem[0], src.stem[0], stem_map, None, gen)
    _copy_bn(dst.stem[1], src.stem[1], stem_map)
    in_map = stem_map
    for i, (s_stage, d_stage) in enumerate(zip(src.stages, dst.stages)):
        out_map = _mapping(s_stage[0].out_channels, d_stage[0].out_channels, gen)
        for j, d_block in enumerate(d_stage):
            if j < len(s_stage):
                _widen_block(d_block, s_stage[j], in_map if j == 0 else out_map, out_map, gen)
                continue
            # an extra layer: a copy of a same-op residual layer of this stage, adding zero at the start
            same = [b for b in list(s_stage)[1:] if b.kernel == d_block.kernel and
                    (b.se is None) == (d_block.se is None)]
            if same and depth_init == "copy":
                _widen_block(d_block, same[-1], out_map, out_map, gen)
            d_block.zero_branch()
        in_map = out_map
    head_conv = src.head[0]
    with torch.no_grad():
        frac = _fractions(head_conv.out_channels, in_map, head_conv.in_channels, gen)
        w = head_conv.weight.detach().double()[:, in_map] * frac[:, :, None, None]
        dst.head[0].weight.copy_(w.to(dst.head[0].weight.dtype))
    _copy_bn(dst.head[1], src.head[1], torch.arange(src.head[1].num_features))
    with torch.no_grad():
        dst.classifier.weight.copy_(src.classifier.weight)
        dst.classifier.bias.copy_(src.classifier.bias)
    return grown.eval()
