"""Standalone models: ordinary ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear``, no slicing.

A :class:`StandaloneNet` is built from a :class:`~scalenas.spaces.arch.Subnet` (possibly an extrapolated one outside
the supernet). Its structure mirrors the supernet path layer by layer so weights can be copied over
(:func:`scalenas.models.supernet.export_subnet`). Load a saved one with ``scalenas.models.registry.load_model(path)``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.spaces.arch import Derived, LayerSpec, derive_subnet, parse_subnet
from scalenas.models.registry import register_model
from scalenas.spaces.space import SearchSpace, load_space

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


class IRBlock(nn.Module):
    """Inverted residual: 1x1 expand → kxk depthwise → SE → 1x1 project; residual when shapes match."""

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


@register_model("cnn")
class StandaloneNet(nn.Module):
    """The network one subnet builds. ``stages`` is an ``nn.ModuleList`` of ``nn.Sequential`` of IR blocks."""

    def __init__(self, derived: Derived, dropout: float = 0.0):
        super().__init__()
        self.derived = derived
        self.subnet = derived.subnet
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
        return cls(derive_subnet(space, subnet), space.dropout if dropout is None else dropout)

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
        return {"arch": self.subnet.to_dict(), "dropout": p}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "StandaloneNet":
        return cls.from_subnet(cfg["arch"]["space"], cfg["arch"], cfg.get("dropout", 0.0))


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
            nn.init.zeros_(m.project_bn.weight)
