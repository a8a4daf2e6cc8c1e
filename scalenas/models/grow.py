"""Grow a trained model deeper with shared layers and small per-instance adjustment parameters.

After Hao et al., "ScaleNet: Scaling up Pretrained Neural Networks with Incremental Parameters"
(arXiv 2510.18431); see docs/method.md.

Library API::

    from scalenas.models.grow import grow, param_report

    grown = grow(vit, "2x")                       # 6 -> 12 blocks, blocks 7..12 reuse 1..6's tensors
    grown = grow(vit, 9, order="interleave")      # [1,1,2,2,3,3,4,5,6]
    grown = grow(cnn, "2x", adapter="lowrank")    # inside each stage; stride / width changes never copied
    grown = grow(my_net, "2x", block_lists=["encoder.layers"])   # any nn.ModuleList / nn.Sequential
    print(param_report(vit, grown))               # {"original": .., "grown": .., "added": .., "overhead_pct": ..}

What growing does
    * Every *inserted* block instance reuses the very same ``nn.Parameter`` objects as its source block
      (``p_new is p_src``): one tensor, trained jointly, stored once in a file. Exceptions are normalisation
      layers: BatchNorm-like layers (running statistics) are always per-instance copies, LayerNorm /
      GroupNorm are per-instance copies unless ``share_norms=True``.
    * Every block instance (the original ones too) gets its own adjustment parameters:
      ``"parallel"`` adapters ``s * up(act(down(x)))`` beside the attention and the MLP sub-layers of a ViT
      block (input: the normalised sub-layer input) or beside a whole generic / CNN block (1x1 convs for
      CNN blocks, the block's stride on the down conv, ReLU; Linear + GELU for token blocks);
      ``"lowrank"`` per-instance deltas ``A @ B`` added to the block's Linear and 1x1-conv weights; or
      ``"none"``. The up-projection (``B`` for low-rank) starts at zero, so every instance starts as an exact
      functional copy of its source.
    * Only blocks whose input and output shapes match (stride 1, same width) are ever duplicated.

Depth
    ``"2x"`` / ``"3x"``: every duplicable block appears that many times in its list. An int ``N``: the total
    number of blocks of a single block list (extra copies go to the first duplicable blocks); a model with
    several block lists (a CNN's stages) needs ``N`` to be a whole multiple of its total block count and
    then means the factor ``N / total``. Order ``"stack"`` gives ``[1..L, 1..L]`` (new layer ``l'`` maps to
    source ``(l'-1) mod L + 1``), ``"interleave"`` gives ``[1,1,2,2,...]``.

Targets
    The scalenas ViT (``model.blocks``), scalenas CNN standalone models (``model.stages``: an
    ``nn.ModuleList`` of ``nn.Sequential`` of blocks with int ``stride``, ``in_channels``,
    ``out_channels``), and any ``nn.Module`` whose block container is named with ``block_lists`` (dotted
    paths such as ``"encoder.layers"`` or ``"stages.2"``).

Saving
    The result is a :class:`GrownModel` (model kind ``"grown"``). For a registered scalenas model its config
    records the original kind + config and the grow plan, so ``modelio.save_model`` / ``load_model`` round
    trip it and the loaded model shares exactly the same tensors. A grown *user-defined* model cannot be
    rebuilt from a config: save the whole module with ``torch.save(grown, path)`` (pickling keeps the
    sharing) and load it with ``torch.load(path, weights_only=True)``.

Training
    ``grown.parameters()`` yields every shared tensor once, so optimisers work unchanged; gradients of a
    shared tensor add up over all its instances. ``frozen_shared=True`` (or ``grown.freeze_shared()``) trains
    only the adjustment parameters and the per-instance norms.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
import math
import re
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.models import registry as modelio
from scalenas.errors import ScalenasError
from scalenas.options import check_options, option
from scalenas.models.registry import register_model
from scalenas.models.vit import Block as ViTBlock
from scalenas.spaces.flops import count_params

ORDERS = ("stack", "interleave")
ADAPTERS = ("parallel", "lowrank", "none")
DEFAULT_RANK = 8  # depth 2x on the default ViT: +13.66 % parameters (target < 15 %); see tests/test_grow.py


@dataclass
class GrowOptions:
    """How a model is grown (besides the depth and the block lists); recorded in the grow plan."""

    order: str = option("stack", "stack: [1..L, 1..L]; interleave: [1,1,2,2,...]", choices=ORDERS)
    adapter: str = option("parallel", "per-instance adjustment parameters", choices=ADAPTERS)
    rank: int = option(DEFAULT_RANK, "adapter bottleneck / low-rank rank", min=1)
    scale: float = option(1.0, "adapter output scale s")
    share_norms: bool = option(False, "share LayerNorm/GroupNorm tensors too (BatchNorm is always per-instance)")
    frozen_shared: bool = option(False, "train only adjustment parameters and per-instance norms")

_FACTOR_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*[xX]\s*$")
_RMSNorm: tuple[type, ...] = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
_NORMS: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                            nn.LocalResponseNorm) + _RMSNorm


# --------------------------------------------------------------------------------------------- adapters
class ParallelAdapter(nn.Module):
    """``up(act(down(x)))`` with a zero-initialised up-projection (starts as the zero function).

    ``kind="linear"`` works on the last dimension (tokens, GELU); ``kind="conv"`` on the channel dimension of
    ``(N, C, H, W)`` maps with 1x1 convs (ReLU), the block's stride on the down conv.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, kind: str = "linear", stride: int = 1) -> None:
        super().__init__()
        if kind == "conv":
            self.down: nn.Module = nn.Conv2d(in_dim, rank, kernel_size=1, stride=stride)
            self.act: nn.Module = nn.ReLU()
            self.up: nn.Module = nn.Conv2d(rank, out_dim, kernel_size=1)
        else:
            self.down = nn.Linear(in_dim, rank)
            self.act = nn.GELU()
            self.up = nn.Linear(rank, out_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class AdaptedViTBlock(nn.Module):
    """A ViT :class:`~scalenas.models.vit.Block` instance with adapters beside its attention and MLP sub-layers.

    It calls the block's (possibly shared) sub-modules itself so the adapters see the normalised
    sub-layer input: ``x + attn(h) + s * a1(h)`` with ``h = norm1(x)``, likewise for the MLP.
    """

    def __init__(self, block: ViTBlock, rank: int, scale: float) -> None:
        super().__init__()
        self.block = block
        self.attn_adapter = _like(ParallelAdapter(block.dim, block.dim, rank, "linear"), block)
        self.mlp_adapter = _like(ParallelAdapter(block.dim, block.dim, rank, "linear"), block)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        h = b.norm1(x)
        x = x + b.attn(h) + self.scale * self.attn_adapter(h)
        h = b.norm2(x)
        return x + b.mlp(h) + self.scale * self.mlp_adapter(h)


class AdaptedBlock(nn.Module):
    """A generic / CNN block instance with one adapter beside the whole block: ``block(x) + s * a(x)``."""

    def __init__(self, block: nn.Module, adapter: ParallelAdapter, scale: float) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter
        self.scale = scale
        # Keep the block contract (stride / widths) visible to code that inspects stage blocks.
        for name in ("stride", "in_channels", "out_channels"):
            if isinstance(getattr(block, name, None), int):
                setattr(self, name, getattr(block, name))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.block(x, *args, **kwargs) + self.scale * self.adapter(x)


class LowRankDelta(nn.Module):
    """A (shared) ``base`` layer plus a per-instance low-rank delta ``s * A @ B`` of its weight (out x in); ``B``
    starts at 0, so the grown instance starts as an exact copy. Subclasses apply it to their kind of layer."""

    def __init__(self, base: nn.Module, out_dim: int, in_dim: int, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lr_a = nn.Parameter(torch.empty(out_dim, rank, **like))
        self.lr_b = nn.Parameter(torch.zeros(rank, in_dim, **like))
        nn.init.uniform_(self.lr_a, -1.0 / math.sqrt(rank), 1.0 / math.sqrt(rank))
        self.scale = scale

    def delta(self) -> torch.Tensor:
        """``s * A @ B``, shape (out, in)."""
        return self.scale * (self.lr_a @ self.lr_b)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class LowRankLinear(LowRankDelta):
    """``base(x) + s * x @ (A @ B)^T``: a per-instance low-rank delta on a (shared) Linear."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__(base, base.out_features, base.in_features, rank, scale)

    @property
    def weight(self) -> torch.Tensor:
        # The effective weight, for callers that read ``.weight`` instead of calling the module
        # (nn.MultiheadAttention's out_proj, TransformerEncoderLayer's fast path): they must see the delta.
        return self.base.weight + self.delta()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls instead of materialising A @ B (cheaper for rank << width).
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lr_b), self.lr_a)


class LowRankConv1x1(LowRankDelta):
    """A 1x1 ``Conv2d`` (groups 1) plus a per-instance low-rank delta ``A @ B``."""

    def __init__(self, base: nn.Conv2d, rank: int, scale: float) -> None:
        super().__init__(base, base.out_channels, base.in_channels, rank, scale)

    @property
    def weight(self) -> torch.Tensor:  # effective weight, see LowRankLinear.weight
        return self.base.weight + self.delta()[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        # Padding with zeros commutes with a pointwise linear map, so B then A equals one conv with A @ B.
        low = F.conv2d(x, self.lr_b[:, :, None, None], None, b.stride, b.padding)
        return b(x) + self.scale * F.conv2d(low, self.lr_a[:, :, None, None])


_ADAPTER_TYPES = (ParallelAdapter,)


# ------------------------------------------------------------------------------------------ the grown model
@register_model("grown")
class GrownModel(nn.Module):
    """A model grown by :func:`grow`: the grown network in ``self.model`` plus the plan that built it.

    ``plan`` is JSON-able: ``{"lists": [{"path", "sources"}], "order", "adapter", "rank", "scale",
    "share_norms", "frozen_shared"}``; ``sources[i]`` is the index, in the original list, of the block whose
    tensors instance ``i`` uses. ``base`` is ``{"kind", "config"}`` of the original registered model, or
    ``None`` for a user-defined model (then only ``torch.save(grown)`` can save it).
    """

    def __init__(self, model: nn.Module, plan: dict[str, Any], base: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.base = base

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def source_map(self) -> dict[str, list[int]]:
        """``{block list path: [source index of each instance]}``."""
        return {entry["path"]: list(entry["sources"]) for entry in self.plan["lists"]}

    def freeze_shared(self) -> None:
        """Train only the adjustment parameters and per-instance norms; inherited weights get no gradient."""
        _freeze_shared(self.model, self.plan)
        self.plan["frozen_shared"] = True

    def unfreeze(self) -> None:
        """Make every parameter trainable again (undo :meth:`freeze_shared`)."""
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.plan["frozen_shared"] = False

    def to_config(self) -> dict[str, Any]:
        """Original kind + config and the grow plan; :meth:`from_config` rebuilds the same sharing."""
        if self.base is None:
            raise ScalenasError("a grown user-defined model cannot be rebuilt from a config; "
                                "save it with torch.save(grown_model, path) instead")
        return {"base": copy.deepcopy(self.base), "plan": copy.deepcopy(self.plan)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "GrownModel":
        """Rebuild the original architecture from the registry and apply the recorded plan.

        The sharing exists before any weights are loaded, so ``load_state_dict`` fills each shared tensor
        (once per key that names it, with equal values) and the sharing survives loading.
        """
        if not isinstance(cfg, dict) or not isinstance(cfg.get("base"), dict) or \
                not isinstance(cfg.get("plan"), dict):
            raise ScalenasError("grown model config needs 'base' {kind, config} and 'plan' mappings")
        kind = cfg["base"].get("kind")
        registry = _registry()
        if kind not in registry or kind == "grown":
            raise ScalenasError(f"grown model config: unknown original model kind {kind!r} "
                                f"(known: {', '.join(sorted(k for k in registry if k != 'grown'))})")
        base_model = registry[kind].from_config(cfg["base"].get("config", {}))
        plan = _check_plan(cfg["plan"])
        _apply_plan(base_model, plan)
        return cls(base_model, plan, copy.deepcopy(cfg["base"]))


def _registry() -> dict[str, type]:
    return {kind: modelio.model_class(kind) for kind in modelio.model_kinds()}


# ---------------------------------------------------------------------------------------------- planning
def parse_depth(depth: str | int) -> tuple[str, int]:
    """``"2x"`` -> ``("factor", 2)``; ``12`` or ``"12"`` -> ``("total", 12)``; anything else is an error."""
    if isinstance(depth, bool):
        raise ScalenasError(f"depth must be a factor like '2x' or a block count, got {depth!r}")
    if isinstance(depth, int):
        return "total", depth
    if isinstance(depth, str):
        text = depth.strip()
        if text.isdigit():
            return "total", int(text)
        m = _FACTOR_RE.match(text)
        if m:
            factor = float(m.group(1))
            if factor <= 1:
                raise ScalenasError(f"depth {depth!r}: the factor must be greater than 1 (growing adds blocks)")
            if factor != int(factor):
                raise ScalenasError(f"depth {depth!r}: the factor must be a whole number (2x, 3x, ...)")
            return "factor", int(factor)
    raise ScalenasError(f"depth must be a factor like '2x' or a block count like 12, got {depth!r}")


def _default_block_lists(model: nn.Module) -> list[str]:
    blocks = model._modules.get("blocks")
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return ["blocks"]
    stages = model._modules.get("stages")
    if isinstance(stages, (nn.ModuleList, nn.Sequential)) and len(stages) and \
            all(isinstance(s, (nn.ModuleList, nn.Sequential)) for s in stages):
        return [f"stages.{name}" for name in stages._modules]
    raise ScalenasError(f"{type(model).__name__} is not a scalenas ViT/CNN (no 'blocks' or 'stages'); "
                        "name its block list with --blocks (block_lists=['path.to.list'])")


def _resolve(model: nn.Module, path: str) -> nn.Module:
    """The ``nn.ModuleList`` / ``nn.Sequential`` at dotted ``path`` (``"encoder.layers"``, ``"stages.1"``)."""
    if not isinstance(path, str) or not path.strip():
        raise ScalenasError(f"block list path must be a non-empty dotted name, got {path!r}")
    obj: nn.Module = model
    for part in path.split("."):
        child = obj._modules.get(part)
        if child is None:
            raise ScalenasError(f"block list {path!r}: {type(obj).__name__} has no sub-module {part!r}")
        obj = child
    if not isinstance(obj, (nn.ModuleList, nn.Sequential)):
        raise ScalenasError(f"block list {path!r} is a {type(obj).__name__}, not an nn.ModuleList or "
                            "nn.Sequential")
    if len(obj) == 0:
        raise ScalenasError(f"block list {path!r} is empty")
    return obj


def _weight_layers(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _block_io(block: nn.Module) -> tuple[int | None, int | None, int, str | None]:
    """``(in width, out width, stride, "vit" | "conv" | "linear" | None)`` of a block.

    Int attributes ``in_channels`` / ``out_channels`` / ``stride`` (the CNN block contract) win; otherwise
    the first and last Linear / Conv2d of the block give the widths and the largest conv stride the stride.
    """
    if isinstance(block, ViTBlock):
        return block.dim, block.dim, 1, "vit"
    layers = _weight_layers(block)
    kind = None
    if layers:
        kind = "conv" if isinstance(layers[0], nn.Conv2d) else "linear"
    first, last = (layers[0], layers[-1]) if layers else (None, None)

    def width(attr: str, layer: nn.Module | None, field_conv: str, field_lin: str) -> int | None:
        value = getattr(block, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(layer, nn.Conv2d):
            return getattr(layer, field_conv)
        if isinstance(layer, nn.Linear):
            return getattr(layer, field_lin)
        return None

    c_in = width("in_channels", first, "in_channels", "in_features")
    c_out = width("out_channels", last, "out_channels", "out_features")
    stride = getattr(block, "stride", None)
    if isinstance(stride, (tuple, list)):
        stride = max(stride)
    if not isinstance(stride, int) or isinstance(stride, bool):
        stride = max([m.stride[0] for m in layers if isinstance(m, nn.Conv2d)] or [1])
    return c_in, c_out, stride, kind


def _duplicable(block: nn.Module) -> bool:
    """Only shape-preserving blocks can be repeated: stride 1 and the same input and output width."""
    c_in, c_out, stride, _ = _block_io(block)
    return stride == 1 and (c_in is None or c_out is None or c_in == c_out)


def _sources(eligible: list[bool], extra: list[int], order: str) -> list[int]:
    """Source index of every instance of one list, given the extra copies each block gets."""
    n = len(eligible)
    if order == "interleave":
        out: list[int] = []
        for i in range(n):
            out.extend([i] * (1 + extra[i]))
        return out
    out = list(range(n))
    for r in range(max(extra, default=0)):  # each round appends one more copy of [1..L] (duplicable ones)
        out.extend(i for i in range(n) if extra[i] > r)
    return out


def _make_plan(model: nn.Module, depth: str | int, order: str, paths: list[str]) -> list[dict[str, Any]]:
    mode, value = parse_depth(depth)
    lists = [(p, [_duplicable(b) for b in _resolve(model, p)]) for p in paths]
    total = sum(len(e) for _, e in lists)
    if not any(any(e) for _, e in lists):
        raise ScalenasError("no block can be duplicated: every block changes the stride or the width")
    if mode == "total" and len(lists) == 1:
        path, eligible = lists[0]
        if value <= len(eligible):
            raise ScalenasError(f"depth {value} must exceed the current depth {len(eligible)} of {path!r}")
        idx = [i for i, ok in enumerate(eligible) if ok]
        n_extra = value - len(eligible)
        extra = [0] * len(eligible)
        for j in range(n_extra):  # extra copies go round the duplicable blocks, first ones first
            extra[idx[j % len(idx)]] += 1
        return [{"path": path, "sources": _sources(eligible, extra, order)}]
    if mode == "total":
        if value % total or value // total < 2:
            raise ScalenasError(f"depth {value} is not a whole multiple (2x or more) of the {total} blocks in "
                                f"{len(lists)} block lists; use a factor such as 2x")
        factor = value // total
    else:
        factor = value
    return [{"path": p, "sources": _sources(e, [factor - 1 if ok else 0 for ok in e], order)} for p, e in lists]


def _check_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Validate a plan read from a file (types and names); returns a clean copy."""
    plan = copy.deepcopy(plan)
    plan["share_norms"] = bool(plan.get("share_norms", False))
    plan["frozen_shared"] = bool(plan.get("frozen_shared", False))
    check_options(GrowOptions(plan.get("order"), plan.get("adapter"), plan.get("rank"), plan.get("scale"),
                              plan["share_norms"], plan["frozen_shared"]), "grow plan")
    plan["scale"] = float(plan["scale"])
    lists = plan.get("lists")
    if not isinstance(lists, list) or not lists:
        raise ScalenasError("grow plan: 'lists' must be a non-empty list of {path, sources}")
    for entry in lists:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
                not isinstance(entry.get("sources"), list) or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in entry["sources"]):
            raise ScalenasError("grow plan: each list needs a 'path' string and integer 'sources'")
    return plan


# ---------------------------------------------------------------------------------------------- building
def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORMS)


def _has_running_stats(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or \
        (isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None)


def _per_instance_norm(m: nn.Module, share_norms: bool) -> bool:
    return _is_norm(m) and (_has_running_stats(m) or not share_norms)


def _shared_copy(src: nn.Module, share_norms: bool) -> nn.Module:
    """A new instance of ``src`` whose parameters (and buffers) ARE ``src``'s, except per-instance norms."""
    dup = copy.deepcopy(src)  # gives the module structure, and the per-instance norm copies with their stats
    for s_mod, d_mod in zip(src.modules(), dup.modules()):
        if _per_instance_norm(s_mod, share_norms):
            continue
        # Re-point the copy's own (non-recursive) tensors at the source's objects: real sharing, not copies.
        for name, p in s_mod._parameters.items():
            d_mod._parameters[name] = p
        for name, b in s_mod._buffers.items():
            d_mod._buffers[name] = b
    return dup


def _like(module: nn.Module, ref: nn.Module) -> nn.Module:
    """Put a NEW adapter module on the device / dtype of ``ref``'s first floating parameter.

    Only ever called on freshly built adapters (never on a module holding shared tensors), so a CUDA model
    grows CUDA adapters without touching the shared weights.
    """
    for t in ref.parameters():
        if t.is_floating_point():
            return module.to(device=t.device, dtype=t.dtype)
    return module


def _with_lowrank(block: nn.Module, rank: int, scale: float, where: str) -> nn.Module:
    targets: list[tuple[nn.Module | None, str, nn.Module]] = []
    if isinstance(block, (nn.Linear, nn.Conv2d)):
        targets.append((None, "", block))
    else:
        for parent in block.modules():
            for name, child in parent._modules.items():
                if isinstance(child, (nn.Linear, nn.Conv2d)):
                    targets.append((parent, name, child))
    wrapped_block = block
    n = 0
    for parent, name, child in targets:
        if isinstance(child, nn.Linear):
            new: nn.Module = LowRankLinear(child, rank, scale)
        elif child.kernel_size == (1, 1) and child.groups == 1:
            new = LowRankConv1x1(child, rank, scale)
        else:
            continue  # 3x3 / depthwise convs keep only the shared weight
        n += 1
        if parent is None:
            wrapped_block = new
        else:
            parent._modules[name] = new
    if n == 0:
        raise ScalenasError(f"{where}: the lowrank adapter found no Linear or 1x1 conv in "
                            f"{type(block).__name__}; use --adapter parallel or none")
    return wrapped_block


def _with_adapter(block: nn.Module, plan: dict[str, Any], where: str) -> nn.Module:
    adapter, rank, scale = plan["adapter"], plan["rank"], plan["scale"]
    if adapter == "none":
        return block
    if adapter == "lowrank":
        return _with_lowrank(block, rank, scale, where)
    c_in, c_out, stride, kind = _block_io(block)
    if kind == "vit":
        return AdaptedViTBlock(block, rank, scale)
    if kind is None or c_in is None or c_out is None:
        raise ScalenasError(f"{where}: cannot tell the widths of {type(block).__name__} for a parallel "
                            "adapter; give it in_channels/out_channels or use --adapter lowrank or none")
    ad = _like(ParallelAdapter(c_in, c_out, rank, kind, stride if kind == "conv" else 1), block)
    return AdaptedBlock(block, ad, scale)


def _replace_children(container: nn.Module, modules: list[nn.Module]) -> None:
    # Mutate in place so the container keeps its type (and any subclass behaviour) and its place in the model.
    container._modules.clear()
    for i, m in enumerate(modules):
        container._modules[str(i)] = m


def _apply_plan(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Grow ``model`` in place following ``plan`` (shared copies, adapters, optional freezing)."""
    for entry in plan["lists"]:
        path, sources = entry["path"], entry["sources"]
        container = _resolve(model, path)
        originals = list(container)
        if any(not 0 <= s < len(originals) for s in sources) or set(sources) != set(range(len(originals))):
            raise ScalenasError(f"grow plan: sources of {path!r} do not cover its {len(originals)} blocks")
        instances: list[nn.Module] = []
        seen: set[int] = set()
        for s in sources:
            if s in seen:
                if not _duplicable(originals[s]):
                    raise ScalenasError(f"grow plan: block {s} of {path!r} changes stride or width and "
                                        "cannot be duplicated")
                instances.append(_shared_copy(originals[s], plan["share_norms"]))
            else:  # the first occurrence keeps the original modules
                instances.append(originals[s])
                seen.add(s)
        instances = [_with_adapter(b, plan, f"{path}[{i}]") for i, b in enumerate(instances)]
        _replace_children(container, instances)
    if plan["frozen_shared"]:
        _freeze_shared(model, plan)
    return model


def _adjustment_params(model: nn.Module) -> Iterator[nn.Parameter]:
    for m in model.modules():
        if isinstance(m, _ADAPTER_TYPES):
            yield from m.parameters()
        elif isinstance(m, LowRankDelta):
            yield m.lr_a
            yield m.lr_b


def _freeze_shared(model: nn.Module, plan: dict[str, Any]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in _adjustment_params(model):
        p.requires_grad_(True)
    for entry in plan["lists"]:  # per-instance norms are the instance's own, so they train too
        for block in _resolve(model, entry["path"]):
            for m in block.modules():
                if _per_instance_norm(m, plan["share_norms"]):
                    for p in m.parameters():
                        p.requires_grad_(True)


# ----------------------------------------------------------------------------------------------- public
def grow(model: nn.Module, depth: str | int = "2x", *, order: str = "stack", adapter: str = "parallel",
         rank: int = DEFAULT_RANK, scale: float = 1.0, share_norms: bool = False,
         block_lists: list[str] | None = None, frozen_shared: bool = False) -> GrownModel:
    """Return a deeper copy of ``model`` whose inserted blocks share their source blocks' tensors.

    Args:
        model: a scalenas ViT (``.blocks``), a scalenas CNN (``.stages``), or any module with ``block_lists``.
            It is not modified; the result starts from a deep copy of it.
        depth: ``"2x"``, ``"3x"``, ... (each duplicable block that many times) or an int total block count of
            a single block list (for several lists: a whole multiple of their total block count).
        order: ``"stack"`` (``[1..L, 1..L]``) or ``"interleave"`` (``[1,1,2,2,...]``).
        adapter: ``"parallel"``, ``"lowrank"`` or ``"none"`` (per-instance adjustment parameters).
        rank: adapter bottleneck / low-rank rank (default 8: +13.7 % parameters for 2x on the default ViT).
        scale: multiplier ``s`` of the adapter output / low-rank delta.
        share_norms: share LayerNorm/GroupNorm tensors too (BatchNorm is always per-instance).
        block_lists: dotted paths of the ``nn.ModuleList`` / ``nn.Sequential`` block containers to grow.
        frozen_shared: train only adjustment parameters and per-instance norms.

    Raises:
        ScalenasError: bad depth, order, adapter, rank or block list, or a model without a block list.
    """
    if isinstance(model, GrownModel):
        raise ScalenasError("model is already grown; grow the original model instead")
    if not isinstance(model, nn.Module):
        raise ScalenasError(f"grow needs an nn.Module, got {type(model).__name__}")
    check_options(GrowOptions(order, adapter, rank, scale, share_norms, frozen_shared), "grow")
    if block_lists is not None and (isinstance(block_lists, str) or not list(block_lists)):
        raise ScalenasError("block_lists must be a non-empty list of dotted paths, e.g. ['encoder.layers']")

    kind = getattr(model, "model_kind", None)
    base = None
    if kind is not None and kind in _registry() and hasattr(model, "to_config"):
        base = {"kind": kind, "config": model.to_config()}  # before growing: the original architecture

    work = copy.deepcopy(model)  # deepcopy keeps any sharing already inside the model
    paths = list(block_lists) if block_lists is not None else _default_block_lists(work)
    plan = {"lists": _make_plan(work, depth, order, paths), "order": order, "adapter": adapter,
            "rank": rank, "scale": float(scale), "share_norms": bool(share_norms),
            "frozen_shared": bool(frozen_shared)}
    _apply_plan(work, plan)
    return GrownModel(work, plan, base)


def param_report(original: nn.Module, grown: nn.Module) -> dict[str, Any]:
    """``{"original", "grown", "added", "overhead_pct"}`` with shared tensors counted once."""
    n0 = count_params(original)
    n1 = count_params(grown)
    return {"original": n0, "grown": n1, "added": n1 - n0,
            "overhead_pct": 100.0 * (n1 - n0) / n0 if n0 else float("nan")}
