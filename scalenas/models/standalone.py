"""Standalone models: ordinary ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear``, no slicing.

A :class:`StandaloneNet` is built from a :class:`~scalenas.spaces.arch.Subnet` (possibly an extrapolated one outside
the supernet). Its structure mirrors the supernet path layer by layer so weights can be copied over
(:func:`scalenas.models.supernet.export_subnet`). Load a saved one with ``scalenas.models.registry.load_model(path)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.errors import ScalenasError
from scalenas.spaces.arch import Derived, LayerSpec, arch_record, derive_subnet, parse_subnet
from scalenas.models.registry import register_model
from scalenas.spaces.space import SearchSpace, load_space, resolve_space_ref

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class SqueezeExcite(nn.Module):
    """SE on the expanded width: pool → 1x1 reduce (+ReLU) → 1x1 expand → h-sigmoid gate."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


# ------------------------------------------------------------------ the inverted-residual block, described once
@dataclass(frozen=True)
class IRTensor:
    """One tensor of the inverted-residual block and the channel groups its dimensions run over.

    The supernet's dynamic block (:class:`~scalenas.models.supernet.DynamicIR`) and the static one
    (:class:`IRBlock`) hold the same tensors; this table is the one place that names them. Export, op alignment
    and zero-init (``DynamicIR``), Net2Net widening (:meth:`IRBlock.widen_from`) and the supernet's gemm
    convolution path all read it.

    ``dynamic``: the attribute of ``DynamicIR``; ``static``: the dotted path in ``IRBlock`` (a ``bn`` row names
    the BatchNorm: its affine parameters and running statistics all run over ``out``). ``kind``: ``pointwise``
    (a 1x1 conv weight, ``out`` x ``inp``), ``depthwise`` (one kxk filter per ``out`` channel), ``bias`` or
    ``bn``. The groups are those of :class:`~scalenas.models.supernet.LayerSlices`: ``inp`` (the block's input),
    ``hidden`` (the expanded width; the input itself when the block has no expand conv), ``se`` (the SE width) and
    ``out`` (the block's output). ``needs``: the op feature the tensor exists for (``expand``: expand ratio != 1,
    ``se``: squeeze-excite), empty when every block has it.
    """

    dynamic: str
    static: str
    kind: str
    out: str
    inp: str | None = None
    needs: str = ""


IR_TENSORS: tuple[IRTensor, ...] = (  # in the order of the forward pass (and of initialisation)
    IRTensor("expand_w", "expand_conv.weight", "pointwise", "hidden", "inp", needs="expand"),
    IRTensor("expand_bn", "expand_bn", "bn", "hidden", needs="expand"),
    IRTensor("dw_w", "dw_conv.weight", "depthwise", "hidden"),
    IRTensor("dw_bn", "dw_bn", "bn", "hidden"),
    IRTensor("se_reduce_w", "se.reduce.weight", "pointwise", "se", "hidden", needs="se"),
    IRTensor("se_reduce_b", "se.reduce.bias", "bias", "se", needs="se"),
    IRTensor("se_expand_w", "se.expand.weight", "pointwise", "hidden", "se", needs="se"),
    IRTensor("se_expand_b", "se.expand.bias", "bias", "hidden", needs="se"),
    IRTensor("project_w", "project_conv.weight", "pointwise", "out", "hidden"),
    IRTensor("project_bn", "project_bn", "bn", "out"),
)
IR_ROWS = {r.dynamic: r for r in IR_TENSORS}
IR_LAST_BN = [r for r in IR_TENSORS if r.kind == "bn"][-1]  # the BN whose zero scale makes the block add zero
BN_STATE = ("weight", "bias", "running_mean", "running_var")


def _rows_of(t: Any) -> int:
    """The size of a table entry's output group: a BatchNorm's features or a tensor's first dimension."""
    return t.num_features if isinstance(t, nn.BatchNorm2d) else t.shape[0]


class IRBlock(nn.Module):
    """Inverted residual: 1x1 expand → kxk depthwise → SE → 1x1 project; residual when shapes match.

    Its tensors and their channel groups are listed once in :data:`IR_TENSORS`.
    """

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.stride = spec.stride
        self.in_channels = spec.in_ch
        self.out_channels = spec.out_ch
        self.kernel = spec.kernel
        self.residual = spec.residual
        if spec.expand != 1:
            self.expand_conv = nn.Conv2d(spec.in_ch, spec.hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(spec.hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        else:
            self.expand_conv = None
            self.expand_bn = None
        self.dw_conv = nn.Conv2d(spec.hidden, spec.hidden, spec.kernel, spec.stride, spec.kernel // 2,
                                 groups=spec.hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(spec.hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.se = SqueezeExcite(spec.hidden, spec.se_ch) if spec.se else None
        self.project_conv = nn.Conv2d(spec.hidden, spec.out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(spec.out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand_conv is not None:
            y = F.hardswish(self.expand_bn(self.expand_conv(y)))
        y = F.hardswish(self.dw_bn(self.dw_conv(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y))
        return x + y if self.residual else y

    def part(self, row: IRTensor) -> Any:
        """The tensor (or BatchNorm) of table row ``row``; None when this block's op has no such part."""
        obj: Any = self
        for name in row.static.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.part(IR_LAST_BN)

    @torch.no_grad()
    def zero_branch(self) -> None:
        """Zero the last BN's scale and shift: the block's branch adds exactly zero (a residual block is then the
        identity) and still learns from the first step (the BN scale gets a gradient)."""
        self.last_bn.weight.zero_()
        self.last_bn.bias.zero_()

    @torch.no_grad()
    def widen_from(self, src: "IRBlock", in_map: torch.Tensor, out_map: torch.Tensor,
                   new_map: Callable[[int, int], torch.Tensor],
                   fractions: Callable[[int, torch.Tensor, int], torch.Tensor]) -> None:
        """Initialise this block from the narrower block ``src`` of the same op (Net2Net widening).

        ``in_map`` / ``out_map``: new channel -> old channel of the input and output groups. The hidden and SE
        groups get ``new_map(old, new)`` where :data:`IR_TENSORS` first meets them (the hidden group is the input
        group when the block has no expand conv). A tensor's rows follow its output group; a pointwise weight's
        inputs follow its input group, the weight of an old input channel split among its replicas by
        ``fractions(rows, input map, old inputs)`` (positive, summing to one per old channel), so the function is
        unchanged. BatchNorms copy parameters, running statistics and the batch counter.
        """
        if self.kernel != src.kernel or any((self.part(r) is None) != (src.part(r) is None) for r in IR_TENSORS):
            raise ScalenasError("internal: grown block and its source differ in op")
        maps = {"inp": in_map, "out": out_map}
        if self.expand_conv is None:
            maps["hidden"] = in_map
        for row in IR_TENSORS:
            old, new = src.part(row), self.part(row)
            if old is None:
                continue
            if row.out not in maps:
                maps[row.out] = new_map(_rows_of(old), _rows_of(new))
            rows = maps[row.out]
            if row.kind == "bn":
                for name in BN_STATE:
                    getattr(new, name).copy_(getattr(old, name).detach()[rows])
                new.num_batches_tracked.copy_(old.num_batches_tracked)
            elif row.kind == "bias":
                new.copy_(old.detach()[rows])
            else:
                w = old.detach().double()[rows]
                if row.inp is not None:
                    cols = maps[row.inp]
                    frac = fractions(len(rows), cols, old.shape[1])
                    w = w[:, cols] * frac.reshape(frac.shape + (1,) * (w.ndim - 2))
                new.copy_(w.to(new.dtype))


@register_model("cnn")
class StandaloneNet(nn.Module):
    """The network one subnet builds. ``stages`` is an ``nn.ModuleList`` of ``nn.Sequential`` of IR blocks."""

    def __init__(self, derived: Derived, dropout: float = 0.0, space: SearchSpace | None = None):
        super().__init__()
        self.derived = derived
        self.subnet = derived.subnet
        self.space = space  # the space the subnet was built in (saved with the model: it may be a user's own)
        self.resolution = derived.resolution
        self.stem = nn.Sequential(
            nn.Conv2d(derived.in_channels, derived.stem_ch, derived.stem_kernel, derived.stem_stride,
                      derived.stem_kernel // 2, bias=False),
            nn.BatchNorm2d(derived.stem_ch, eps=BN_EPS, momentum=BN_MOMENTUM), nn.Hardswish())
        n_stages = max(l.stage for l in derived.layers) + 1
        self.stages = nn.ModuleList(
            nn.Sequential(*[IRBlock(l) for l in derived.stage_layers(i)]) for i in range(n_stages))
        self.head = nn.Sequential(nn.Conv2d(derived.head_in, derived.head_ch, 1, bias=False),
                                  nn.BatchNorm2d(derived.head_ch, eps=BN_EPS, momentum=BN_MOMENTUM), nn.Hardswish())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(derived.head_ch, derived.num_classes)
        init_weights(self)

    @classmethod
    def from_subnet(cls, space: SearchSpace | str, subnet: Any, dropout: float | None = None) -> "StandaloneNet":
        space = load_space(space)
        if isinstance(subnet, dict):
            subnet = parse_subnet(subnet, space, allow_outside=True)
        return cls(derive_subnet(space, subnet), space.dropout if dropout is None else dropout, space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.head(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(self.dropout(x))

    # modelio protocol
    def to_config(self) -> dict[str, Any]:
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        arch = self.subnet.to_dict() if self.space is None else arch_record(self.subnet, self.space, embed=True)
        return {"arch": arch, "dropout": p}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "StandaloneNet":
        # the space travels with the model (shipped name, the user's YAML file, or embedded: space_reference)
        return cls.from_subnet(resolve_space_ref(cfg["arch"], source="model config"), cfg["arch"],
                               cfg.get("dropout", 0.0))


def init_weights(module: nn.Module) -> None:
    """He init for convs, unit BN, small normal for the classifier (the MobileNet recipe)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    for m in module.modules():  # residual blocks start as the identity (as in the supernet)
        if isinstance(m, IRBlock) and m.residual:
            nn.init.zeros_(m.last_bn.weight)
