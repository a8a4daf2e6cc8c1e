"""The super-supernet: one weight-sharing network holding every subnet of every scaling stage (docs/method.md).

Capacity: every (searchable stage, layer position, op) has its own weights; a stage has
``ceil(max_layers * max_depth)`` positions. Every feature map has a channel capacity ``c(w_max) + c(1)`` for
bilateral coupling (n = 2) or ``c(w_max)`` for ordered slicing (n = 1).

Channel slicing (the coupling side). Every feature map of a subnet takes a slice of its capacity: the left slice
``[:c]`` or the right slice ``[C-c:]``. With n = 2 the side is fixed per *slot* and alternates along the
network: the outputs of every layer of searchable stage i (the stage's residual stream) use side
``(i + side) % 2``, each layer's expanded (hidden) width the other side, its SE width the same side as the output;
the stem output uses ``(side + 1) % 2``. Keeping one side per stage stream means a stage reads its input with the
same weights whatever the depth of the stage before it (alternating per layer made depth parity switch them). The
weights of a conv are sliced ``W[out_slice, in_slice]``, BN parameters and running statistics by the slice of
the feature they normalise. ``side`` (0 or 1) is the *coupling side* of a pass. With n = 1 every slice is left.

scalenas trains each step on one coupling side (drawn per step), and reports fitness and exports standalone
models for side 0: the fitness a search reports and the exported model always agree (the paper instead summed
the logits of both coupled passes at evaluation; a standalone model can only hold one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.spaces.arch import Derived, LayerSpec, Subnet, derive_subnet, se_channels
from scalenas.errors import ScalenasError
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.models.standalone import BN_EPS, BN_MOMENTUM, StandaloneNet


@dataclass(frozen=True)
class LayerSlices:
    inp: slice
    hidden: slice
    se: slice
    out: slice


@dataclass(frozen=True)
class SlicePlan:
    stem: slice
    layers: tuple[LayerSlices, ...]
    head_in: slice


def _sl(cap: int, c: int, side: int) -> slice:
    return slice(0, c) if side == 0 else slice(cap - c, cap)


class SliceLayout:
    """Capacities of every slot and the slice rule; one place for both the supernet and the export."""

    def __init__(self, space: SearchSpace):
        self.space = space
        sc = space.scale_channels
        self.stem_cap = space.capacity(lambda w: sc(space.stem_channels, w))
        self.out_caps = [space.capacity(lambda w, c=st.channels: sc(c, w)) for st in space.stages]
        self.positions = [space.positions(i) for i in range(space.num_stages)]
        self.offsets = [sum(self.positions[:i]) for i in range(space.num_stages)]
        self.in_caps, self.hidden_caps, self.se_caps = [], [], []
        for i, st in enumerate(space.stages):
            prev_c = space.stem_channels if i == 0 else space.stages[i - 1].channels
            row_in, row_h, row_se = [], [], []
            for j in range(self.positions[i]):
                c_in = prev_c if j == 0 else st.channels
                row_in.append(space.capacity(lambda w, c=c_in: sc(c, w)))
                row_h.append(space.capacity(lambda w, c=c_in: sc(c, w) * st.expand))
                row_se.append(space.capacity(lambda w, c=c_in: se_channels(space, sc(c, w) * st.expand)))
            self.in_caps.append(row_in)
            self.hidden_caps.append(row_h)
            self.se_caps.append(row_se)

    def plan(self, derived: Derived, side: int = 0) -> SlicePlan:
        if side not in (0, 1):
            raise ScalenasError(f"coupling side must be 0 or 1, got {side}")
        two = self.space.coupling == 2

        def s(k: int) -> int:
            return k % 2 if two else 0

        stem_side = s(side + 1)
        stem = _sl(self.stem_cap, derived.stem_ch, stem_side)
        cur = stem
        layers = []
        for l in derived.layers:
            i, j = l.stage, l.position
            out_side = s(i + side)  # the residual stream of a stage keeps one side whatever the depth
            if l.expand != 1:
                hid = _sl(self.hidden_caps[i][j], l.hidden, s(out_side + 1))
            else:
                hid = cur  # no expand conv: the depthwise conv works on the input feature itself
            se = _sl(self.se_caps[i][j], l.se_ch, out_side)
            out = _sl(self.out_caps[i], l.out_ch, out_side)
            layers.append(LayerSlices(cur, hid, se, out))
            cur = out
        return SlicePlan(stem, tuple(layers), cur)


class DynamicBN(nn.Module):
    """BatchNorm over a channel slice of its capacity; running statistics are updated only on the slice."""

    def __init__(self, cap: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(cap))
        self.bias = nn.Parameter(torch.zeros(cap))
        self.register_buffer("running_mean", torch.zeros(cap))
        self.register_buffer("running_var", torch.ones(cap))

    def forward(self, x: torch.Tensor, sl: slice, net: "SuperNet") -> torch.Tensor:
        # A basic slice of a 1-D buffer is a contiguous view, so the in-place update reaches the buffer.
        momentum = BN_MOMENTUM if net.bn_momentum is None else net.bn_momentum
        return F.batch_norm(x, self.running_mean[sl], self.running_var[sl], net.use(self.weight, sl),
                            net.use(self.bias, sl), self.training, momentum, BN_EPS)

    def reset_slice(self, sl: slice) -> None:
        self.running_mean[sl] = 0.0
        self.running_var[sl] = 1.0


def _conv_param(out_c: int, in_c: int, k: int) -> nn.Parameter:
    w = torch.empty(out_c, in_c, k, k)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    return nn.Parameter(w)


class DynamicIR(nn.Module):
    """One op at one position: an inverted residual block at full capacity, run on channel slices."""

    def __init__(self, kernel: int, expand: int, se: bool, in_cap: int, hidden_cap: int, se_cap: int,
                 out_cap: int):
        super().__init__()
        self.kernel = kernel
        if expand != 1:
            self.expand_w = _conv_param(hidden_cap, in_cap, 1)
            self.expand_bn = DynamicBN(hidden_cap)
        else:
            self.expand_w = None
            self.expand_bn = None
        self.dw_w = _conv_param(hidden_cap, 1, kernel)
        self.dw_bn = DynamicBN(hidden_cap)
        if se:
            self.se_reduce_w = _conv_param(se_cap, hidden_cap, 1)
            self.se_reduce_b = nn.Parameter(torch.zeros(se_cap))
            self.se_expand_w = _conv_param(hidden_cap, se_cap, 1)
            self.se_expand_b = nn.Parameter(torch.zeros(hidden_cap))
        else:
            self.se_reduce_w = None
        self.project_w = _conv_param(out_cap, hidden_cap, 1)
        self.project_bn = DynamicBN(out_cap)

    def forward(self, x: torch.Tensor, spec: LayerSpec, sl: LayerSlices, net: "SuperNet") -> torch.Tensor:
        y = x
        if self.expand_w is not None:
            y = F.conv2d(y, net.use(self.expand_w, sl.hidden, sl.inp))
            y = F.hardswish(self.expand_bn(y, sl.hidden, net))
        y = F.conv2d(y, net.use(self.dw_w, sl.hidden), None, spec.stride, self.kernel // 2, 1, spec.hidden)
        y = F.hardswish(self.dw_bn(y, sl.hidden, net))
        if self.se_reduce_w is not None:
            s = F.adaptive_avg_pool2d(y, 1)
            s = F.relu(F.conv2d(s, net.use(self.se_reduce_w, sl.se, sl.hidden), net.use(self.se_reduce_b, sl.se)))
            s = F.hardsigmoid(F.conv2d(s, net.use(self.se_expand_w, sl.hidden, sl.se),
                                       net.use(self.se_expand_b, sl.hidden)))
            y = y * s
        y = F.conv2d(y, net.use(self.project_w, sl.out, sl.hidden))
        y = self.project_bn(y, sl.out, net)
        return x + y if spec.residual else y

    def bns(self) -> list[tuple[DynamicBN, str]]:
        out = [(self.dw_bn, "hidden"), (self.project_bn, "out")]
        if self.expand_bn is not None:
            out.append((self.expand_bn, "hidden"))
        return out


class SuperNet(nn.Module):
    """Weight-sharing super-supernet. ``forward(x, subnet, side=0)`` runs one subnet at ``x``'s resolution."""

    def __init__(self, space: SearchSpace | str):
        super().__init__()
        space = load_space(space)
        self.space = space
        self.layout = lay = SliceLayout(space)
        k = space.stem_kernel
        self.stem_w = _conv_param(lay.stem_cap, space.in_channels, k)
        self.stem_bn = DynamicBN(lay.stem_cap)
        self.blocks = nn.ModuleList()
        for i, st in enumerate(space.stages):
            stage = nn.ModuleList()
            for j in range(lay.positions[i]):
                stage.append(nn.ModuleDict({
                    op: DynamicIR(space.ops[op].kernel, st.expand, space.ops[op].se, lay.in_caps[i][j],
                                  lay.hidden_caps[i][j], lay.se_caps[i][j], lay.out_caps[i])
                    for op in st.ops}))
            self.blocks.append(stage)
        zero_init_residual_bns(self)
        align_op_inits(self)
        self.head_w = _conv_param(space.head_channels, lay.out_caps[-1], 1)
        self.head_bn = DynamicBN(space.head_channels)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.dropout = space.dropout
        # When a list, every parameter slice a forward pass uses is recorded here (PathSGD updates only those).
        self.record: list[tuple[nn.Parameter, tuple[slice, ...]]] | None = None
        self._derived_cache: dict[Subnet, Derived] = {}
        self.bn_momentum: float | None = None  # overridden by BN recalibration (cumulative average)

    # -------------------------------------------------------------- helpers
    def use(self, param: torch.Tensor, *slices: slice) -> torch.Tensor:
        if self.record is not None:
            self.record.append((param, slices))
        return param[slices] if slices else param

    def derive(self, subnet: Subnet | Derived) -> Derived:
        if isinstance(subnet, Derived):
            return subnet
        d = self._derived_cache.get(subnet)
        if d is None:
            if subnet.space != self.space.name:
                raise ScalenasError(f"subnet of space {subnet.space!r} given to a supernet of {self.space.name!r}")
            if self.space.stage_of(subnet.depth, subnet.width, subnet.resolution) is None:
                raise ScalenasError(f"subnet {subnet.short()} is outside the supernet's scaling stages")
            d = derive_subnet(self.space, subnet)
            if len(self._derived_cache) > 4096:
                self._derived_cache.clear()
            self._derived_cache[subnet] = d
        return d

    def path_modules(self, derived: Derived) -> list[DynamicIR]:
        return [self.blocks[l.stage][l.position][l.op] for l in derived.layers]

    # -------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, subnet: Subnet | Derived, side: int = 0) -> torch.Tensor:
        d = self.derive(subnet)
        plan = self.layout.plan(d, side)
        k = self.space.stem_kernel
        x = F.conv2d(x, self.use(self.stem_w, plan.stem), None, self.space.stem_stride, k // 2)
        x = F.hardswish(self.stem_bn(x, plan.stem, self))
        for spec, sl in zip(d.layers, plan.layers):
            x = self.blocks[spec.stage][spec.position][spec.op](x, spec, sl, self)
        x = F.conv2d(x, self.use(self.head_w, slice(None), plan.head_in))
        x = F.hardswish(self.head_bn(x, slice(None), self))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, self.training)
        return F.linear(x, self.use(self.classifier.weight), self.use(self.classifier.bias))

    def reset_bn_stats(self, subnet: Subnet | Derived, side: int = 0) -> None:
        """Reset the running statistics of every BN on the subnet's path (before recalibration)."""
        d = self.derive(subnet)
        plan = self.layout.plan(d, side)
        with torch.no_grad():
            self.stem_bn.reset_slice(plan.stem)
            for spec, sl in zip(d.layers, plan.layers):
                for bn, which in self.blocks[spec.stage][spec.position][spec.op].bns():
                    bn.reset_slice(getattr(sl, which))
            self.head_bn.reset_slice(slice(None))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"space": self.space.name, "space_path": self.space.path, "space_yaml": self.space.raw}


def zero_init_residual_bns(net: "SuperNet") -> None:
    """Zero the last BN scale of every block that can be residual (positions >= 1), as BigNAS does.

    Each such block then starts as the identity, so the stage's stream means the same thing whichever ops and
    depth a step samples; without it a random-path supernet on digits stayed near chance for hundreds of steps.
    """
    with torch.no_grad():
        for stage in net.blocks:
            for j, ops in enumerate(stage):
                if j == 0:
                    continue
                for blk in ops.values():
                    blk.project_bn.weight.zero_()


def align_op_inits(net: "SuperNet") -> None:
    """Start the candidate ops of one position as the same function; they keep separate weights.

    Every op of a position copies the initial 1x1 (expand, SE, project) weights of the first op, and its depthwise
    kernel holds the first op's kernel at the centre with a zero ring. The first layer of a stage defines the
    stage's stream; when its candidates start as unrelated functions, a random-op supernet on digits stayed near
    chance for hundreds of steps (each op moved the stream into another basis). This is an initialisation only:
    weights stay per op (docs/method.md) and diverge with training.
    """
    with torch.no_grad():
        for stage in net.blocks:
            for ops in stage:
                blocks = sorted(ops.values(), key=lambda b: b.kernel)
                ref = blocks[0]
                for blk in blocks[1:]:
                    for name in ("expand_w", "se_reduce_w", "se_reduce_b", "se_expand_w", "se_expand_b",
                                 "project_w"):
                        src, dst = getattr(ref, name, None), getattr(blk, name, None)
                        if src is not None and dst is not None:
                            dst.copy_(src)
                    pad = (blk.kernel - ref.kernel) // 2
                    blk.dw_w.zero_()
                    blk.dw_w[:, :, pad:pad + ref.kernel, pad:pad + ref.kernel] = ref.dw_w
                    for bn_name in ("expand_bn", "dw_bn", "project_bn"):
                        src, dst = getattr(ref, bn_name), getattr(blk, bn_name)
                        if src is not None:
                            dst.weight.copy_(src.weight)
                            dst.bias.copy_(src.bias)


# ------------------------------------------------------------------ export
def _copy_bn(dst: nn.BatchNorm2d, src: DynamicBN, sl: slice) -> None:
    dst.weight.copy_(src.weight[sl])
    dst.bias.copy_(src.bias[sl])
    dst.running_mean.copy_(src.running_mean[sl])
    dst.running_var.copy_(src.running_var[sl])


@torch.no_grad()
def export_subnet(supernet: SuperNet, subnet: Subnet, side: int = 0) -> StandaloneNet:
    """A standalone model for ``subnet`` with the supernet's weights on coupling side ``side``.

    In eval mode its output equals ``supernet(x, subnet, side)`` in eval mode (to float rounding).
    """
    d = supernet.derive(subnet)
    plan = supernet.layout.plan(d, side)
    model = StandaloneNet(d, supernet.space.dropout)
    model.stem[0].weight.copy_(supernet.stem_w[plan.stem])
    _copy_bn(model.stem[1], supernet.stem_bn, plan.stem)
    blocks = [b for stage in model.stages for b in stage]
    for blk, spec, sl in zip(blocks, d.layers, plan.layers):
        src: DynamicIR = supernet.blocks[spec.stage][spec.position][spec.op]
        if blk.expand_conv is not None:
            blk.expand_conv.weight.copy_(src.expand_w[sl.hidden, sl.inp])
            _copy_bn(blk.expand_bn, src.expand_bn, sl.hidden)
        blk.dw_conv.weight.copy_(src.dw_w[sl.hidden])
        _copy_bn(blk.dw_bn, src.dw_bn, sl.hidden)
        if blk.se is not None:
            blk.se.reduce.weight.copy_(src.se_reduce_w[sl.se, sl.hidden])
            blk.se.reduce.bias.copy_(src.se_reduce_b[sl.se])
            blk.se.expand.weight.copy_(src.se_expand_w[sl.hidden, sl.se])
            blk.se.expand.bias.copy_(src.se_expand_b[sl.hidden])
        blk.project_conv.weight.copy_(src.project_w[sl.out, sl.hidden])
        _copy_bn(blk.project_bn, src.project_bn, sl.out)
    model.head[0].weight.copy_(supernet.head_w[:, plan.head_in])
    _copy_bn(model.head[1], supernet.head_bn, slice(None))
    model.classifier.weight.copy_(supernet.classifier.weight)
    model.classifier.bias.copy_(supernet.classifier.bias)
    return model


def fits_supernet(space: SearchSpace, subnet: Subnet) -> bool:
    return subnet.space == space.name and space.stage_of(subnet.depth, subnet.width, subnet.resolution) is not None

