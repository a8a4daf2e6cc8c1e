"""Layer configurations: what a latency table measures, one row per distinct layer a space can build.

A built network (:class:`~scalenas.spaces.arch.Derived`) is a stem, one inverted-residual block per layer and a
head. Its latency is predicted from the latencies of these parts, so each part is described by everything that
decides its cost and nothing else: a :class:`LayerConfig` (kind, input channels, hidden channels, output channels,
kernel, stride, input resolution, SE channels). :func:`network_layers` walks a network exactly as the analytic FLOPs
count does (:func:`scalenas.spaces.flops.flops_params`); :func:`space_layer_configs` lists every configuration a
subnet of any scaling stage (and, with ``max_stage`` above the space's last stage, any extrapolated member up to that
stage) can contain; :func:`layer_module` builds the PyTorch module of one configuration with the very layers of the
exported model (:mod:`scalenas.models.standalone`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scalenas.errors import ScalenasError
from scalenas.models.standalone import BN_EPS, BN_MOMENTUM, IRBlock, init_weights
from scalenas.spaces.arch import Derived, LayerSpec, Subnet, arch_limits, derive_subnet
from scalenas.spaces.flops import conv_out, subnet_flops_params
from scalenas.spaces.space import SearchSpace

KINDS = ("stem", "block", "head")
MAX_EXTRA_STAGES = 6  # --max-stage at most this many stages above the space's last one
# An extrapolated member lands near growth x the previous member's FLOPs; this much more per step is allowed for when
# bounding the widths and resolutions members up to --max-stage can have (it covers the tolerance and rounding).
EXTRAPOLATION_SLACK = 1.25
WIDTH_DECIMALS = 4  # extrapolated widths are written with 4 decimals (scalenas.search.extrapolate.DECIMALS)


@dataclass(frozen=True, order=True)
class LayerConfig:
    """One part of a built network, as measured: its kind and every size that decides its cost.

    ``stem``: conv k x k (stride) + BN + h-swish, ``cin`` image channels -> ``cout`` (``hidden`` = ``cout``);
    ``block``: inverted residual ``cin`` -> ``hidden`` (1x1 expansion, absent when ``hidden == cin``) -> k x k
    depthwise (stride) -> SE with ``se`` channels (0: no SE) -> 1x1 projection to ``cout``, residual when the
    shapes match; ``head``: 1x1 conv ``cin`` -> ``hidden`` + BN + h-swish, global pooling, linear to ``cout``
    classes. ``resolution`` is the input's height (= width).
    """

    kind: str
    cin: int
    hidden: int
    cout: int
    kernel: int
    stride: int
    resolution: int
    se: int = 0

    @property
    def key(self) -> str:
        """``block 8>24>12 k5 s2 r16 se6``: the row key in a latency table (readable, unique)."""
        se = f" se{self.se}" if self.se else ""
        return f"{self.kind} {self.cin}>{self.hidden}>{self.cout} k{self.kernel} s{self.stride} r{self.resolution}{se}"



def network_layers(derived: Derived) -> list[LayerConfig]:
    """The stem, every block and the head of a built network, in order (the walk of the analytic FLOPs count)."""
    r = derived.resolution
    out = [LayerConfig("stem", derived.in_channels, derived.stem_ch, derived.stem_ch, derived.stem_kernel,
                       derived.stem_stride, r)]
    h = conv_out(r, derived.stem_kernel, derived.stem_stride)
    for l in derived.layers:
        out.append(_block_config(l, h))
        h = conv_out(h, l.kernel, l.stride)
    out.append(LayerConfig("head", derived.head_in, derived.head_ch, derived.num_classes, 1, 1, h))
    return out


def subnet_layers(space: SearchSpace, subnet: Subnet) -> list[LayerConfig]:
    """:func:`network_layers` of the network ``subnet`` builds."""
    return network_layers(derive_subnet(space, subnet))


def _block_config(l: LayerSpec, resolution: int) -> LayerConfig:
    return LayerConfig("block", l.in_ch, l.hidden, l.out_ch, l.kernel, l.stride, resolution, l.se_ch if l.se else 0)


# ---------------------------------------------------------------------------------------------- a whole space
def space_layer_configs(space: SearchSpace, max_stage: int | None = None) -> list[LayerConfig]:
    """Every layer configuration a subnet of ``space`` can contain, sorted by key.

    Stage s contributes every (width, resolution) pair of its option lists; within a pair each searchable stage
    has its first layer (stride, channel change) and, where the stage can hold two or more layers, its repeated
    layers, each with every op of the stage. ``max_stage`` above the space's last scaling stage S adds every
    configuration an extrapolated member of stages S+1..max_stage can have (:func:`extrapolation_points`).
    """
    s_last = space.num_scaling_stages
    max_stage = s_last if max_stage is None else check_max_stage(space, max_stage)
    points: list[tuple[float, int, bool]] = []  # (width, resolution, stages may repeat layers)
    for sc in space.scaling:
        repeat = max(sc.depth) > 1.0 + 1e-9
        points += [(w, r, repeat) for w in sc.width for r in sc.resolution]
    points += [(w, r, True) for w, r in extrapolation_points(space, max_stage)]

    seen: dict[str, LayerConfig] = {}
    done: set[tuple] = set()
    n_ops = max(len(st.ops) for st in space.stages)
    for w, r, repeat in points:
        vector = (r, repeat, _channel_vector(space, w))
        if vector in done:  # another width that builds the same channels
            continue
        done.add(vector)
        for j in range(n_ops):
            # One network per op index: every stage two layers of its j-th op (the last if it has fewer), so the
            # first and the repeated layer of every stage come out of derive_subnet itself (one rounding rule).
            base = tuple((st.ops[min(j, len(st.ops) - 1)],) * 2 for st in space.stages)
            derived = derive_subnet(space, Subnet(space.name, base, 1.0, w, r))
            for config, spec in zip(network_layers(derived), (None, *derived.layers, None)):
                if spec is not None and spec.position > 0 and not (repeat or space.stages[spec.stage].max_layers > 1):
                    continue
                seen.setdefault(config.key, config)
    return [seen[k] for k in sorted(seen)]


def check_max_stage(space: SearchSpace, max_stage: int) -> int:
    """``max_stage`` must lie in S..S+6 (S: the space's last scaling stage)."""
    s_last = space.num_scaling_stages
    if isinstance(max_stage, bool) or not isinstance(max_stage, int) or \
            not s_last <= max_stage <= s_last + MAX_EXTRA_STAGES:
        raise ScalenasError(f"--max-stage must be an integer from {s_last} (the last scaling stage of space "
                            f"{space.name!r}) to {s_last + MAX_EXTRA_STAGES}, got {max_stage!r}")
    return max_stage


def _channel_vector(space: SearchSpace, width: float) -> tuple[int, ...]:
    return (space.scale_channels(space.stem_channels, width),
            *(space.scale_channels(st.channels, width) for st in space.stages))


def _smallest_base(space: SearchSpace) -> tuple[tuple[str, ...], ...]:
    """One layer per stage of its cheapest op (smallest kernel, no SE first): the fewest FLOPs at any (w, r)."""
    return tuple((min(st.ops, key=lambda o: (space.ops[o].kernel, space.ops[o].se, o)),) for st in space.stages)


def extrapolated_flops_bound(space: SearchSpace, stage: int) -> float:
    """The most FLOPs a member of ``stage`` can have: the largest subnet of the last scaling stage S (deepest
    base of the largest kernels at the largest multipliers), times (growth x :data:`EXTRAPOLATION_SLACK`) per stage
    above S."""
    sc = space.scaling[-1]
    largest = Subnet(space.name, tuple((max(st.ops, key=lambda o: space.ops[o].kernel),) * st.max_layers
                                       for st in space.stages), max(sc.depth), max(sc.width), max(sc.resolution))
    extra = max(0, stage - space.num_scaling_stages)
    return subnet_flops_params(space, largest)[0] * (space.growth * EXTRAPOLATION_SLACK) ** extra


def extrapolation_points(space: SearchSpace, max_stage: int) -> list[tuple[float, int]]:
    """(width, resolution) pairs an extrapolated member of stages S+1..``max_stage`` can have.

    Extrapolated members (:func:`scalenas.search.extrapolate.extrapolate`) never shrink: their width is at least
    the smallest width option of stage S and their resolution at least its smallest resolution, on the
    ``resolution_step`` grid (or the space's ``max_resolution``, which caps it). Their FLOPs are at most
    (growth x :data:`EXTRAPOLATION_SLACK`)^(K - S) times the largest subnet of stage S at stage K (the space's
    ``growth``, the extrapolation default). FLOPs grow with width and resolution, so a pair whose cheapest network
    (one layer per stage of the cheapest op, depth 1) already exceeds that bound is left out; widths are scanned
    on the 4-decimal grid extrapolated members are written on, one per distinct set of channel counts.
    """
    s_last = space.num_scaling_stages
    if max_stage <= s_last:
        return []
    sc = space.scaling[-1]
    bound = extrapolated_flops_bound(space, max_stage)
    limits = arch_limits(space)
    small = _smallest_base(space)

    def cheapest(w: float, r: int) -> int:
        return subnet_flops_params(space, Subnet(space.name, small, 1.0, w, r))[0]

    w_lo, r_lo = min(sc.width), min(sc.resolution)
    step = space.resolution_step
    r_top = int(min(limits["resolution"], space.max_resolution or math.inf))
    grid = range(step * math.ceil(r_lo / step), r_top + 1, step)
    resolutions = sorted({r for r in grid if cheapest(w_lo, r) <= bound}
                         | ({space.max_resolution} if space.max_resolution and space.max_resolution >= r_lo else set()))
    lo, hi = w_lo, limits["width"]  # bisect the largest width whose cheapest network at r_lo stays within the bound
    if cheapest(hi, r_lo) <= bound:
        lo = hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cheapest(mid, r_lo) <= bound else (lo, mid)
    w_top = lo
    widths: dict[tuple[int, ...], float] = {}
    for w in np.round(np.arange(w_lo, w_top + 10.0 ** -WIDTH_DECIMALS, 10.0 ** -WIDTH_DECIMALS), WIDTH_DECIMALS):
        widths.setdefault(_channel_vector(space, float(w)), float(w))
    return [(w, r) for w in widths.values() for r in resolutions if cheapest(w, r) <= bound]


def config_counts(space: SearchSpace, max_stage: int | None = None) -> dict[str, int]:
    """How many configurations of each kind :func:`space_layer_configs` lists (and ``total``)."""
    configs = space_layer_configs(space, max_stage)
    out = {k: sum(c.kind == k for c in configs) for k in KINDS}
    out["total"] = len(configs)
    return out


# ---------------------------------------------------------------------------------------------- modules
class _Stem(nn.Sequential):
    """The stem of :class:`~scalenas.models.standalone.StandaloneNet` (same layers, same state-dict keys)."""

    def __init__(self, c: LayerConfig):
        super().__init__(nn.Conv2d(c.cin, c.cout, c.kernel, c.stride, c.kernel // 2, bias=False),
                         nn.BatchNorm2d(c.cout, eps=BN_EPS, momentum=BN_MOMENTUM), nn.Hardswish())


class _Head(nn.Module):
    """The tail of :meth:`StandaloneNet.forward` (1x1 conv + BN + h-swish, pooling, linear; dropout is the identity
    in eval mode), with the model's state-dict keys (``head.*``, ``classifier.*``)."""

    def __init__(self, c: LayerConfig):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(c.cin, c.hidden, 1, bias=False),
                                  nn.BatchNorm2d(c.hidden, eps=BN_EPS, momentum=BN_MOMENTUM), nn.Hardswish())
        self.classifier = nn.Linear(c.hidden, c.cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


def layer_module(config: LayerConfig) -> nn.Module:
    """The eval-mode PyTorch module of one configuration, initialised as the exported model is."""
    if config.kind == "stem":
        module: nn.Module = _Stem(config)
    elif config.kind == "head":
        module = _Head(config)
    elif config.kind == "block":
        expand = config.hidden // config.cin
        if expand * config.cin != config.hidden:
            raise ScalenasError(f"layer {config.key}: hidden channels must be a multiple of the input channels")
        module = IRBlock(LayerSpec(stage=0, position=0, op="", kernel=config.kernel, expand=expand,
                                   se=config.se > 0, in_ch=config.cin, out_ch=config.cout, hidden=config.hidden,
                                   se_ch=config.se, stride=config.stride))
    else:
        raise ScalenasError(f"unknown layer kind {config.kind!r} (known: {', '.join(KINDS)})")
    init_weights(module)
    return module.eval()


def layer_input(config: LayerConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """A random input of the configuration's shape (batch, cin, resolution, resolution)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.cin, config.resolution, config.resolution, generator=g)


def unique_configs(configs: Iterable[LayerConfig]) -> list[LayerConfig]:
    """Configurations in first-seen order, each once."""
    out: dict[str, LayerConfig] = {}
    for c in configs:
        out.setdefault(c.key, c)
    return list(out.values())
