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

Convolution paths (``SuperNet.conv_impl``, the job key ``conv_impl``). ``conv``: every convolution is
``F.conv2d`` on the weight slices. ``gemm``: every 1x1 convolution (expand, SE, project, head) is a matrix product
(channels_last: one over the N·H·W pixels; NCHW: one batched over the images), and every depthwise convolution
runs on PyTorch's own depthwise kernel with cuDNN off in both passes; only the stem stays a convolution. Each
keeps its input's memory format. A supernet meets a new set of shapes at every step, and
cuDNN builds an execution plan for each new one; a matrix product needs none. ``auto``: gemm on CUDA, conv
elsewhere (CPU results stay bit-identical to earlier versions). Sliced BatchNorm never reaches cuDNN on either
path (:class:`DynamicBN`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.spaces.arch import Derived, LayerSpec, Subnet, derive_subnet, se_channels
from scalenas.errors import ScalenasError
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.models.standalone import (BN_EPS, BN_MOMENTUM, BN_STATE, IR_LAST_BN, IR_ROWS, IR_TENSORS, IRBlock,
                                        IRTensor, StandaloneNet)

CONV_IMPLS = ("auto", "conv", "gemm")


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


def resolve_conv_impl(setting: str, device: torch.device | str) -> str:
    """``conv`` or ``gemm`` for ``setting`` (``auto`` | ``conv`` | ``gemm``) on ``device``: auto is gemm on CUDA
    and conv elsewhere, so CPU results stay bit-identical to the plain convolution path."""
    if setting not in CONV_IMPLS:
        raise ScalenasError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "gemm" if torch.device(device).type == "cuda" else "conv"


@contextmanager
def cudnn_disabled() -> Iterator[None]:
    """cuDNN off for the block (process-wide flag, restored after)."""
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before


def pointwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution as a matrix product (cuBLAS: no per-shape plan to build), in the input's memory format.

    channels_last input (the CUDA default): the pixels are the rows of one (N·H·W) x C matrix, a view of the input,
    so forward and both backward passes are one matrix product each over N·H·W, and the output is channels_last.
    NCHW input: one batched product ``W @ x[n]`` over the N images (no copy), NCHW output.
    """
    n, c, h, wd = x.shape
    w2 = w.reshape(w.shape[0], c)
    if h * wd == 1:  # a pooled vector (the SE): a plain linear layer
        return F.linear(x.reshape(n, c), w2, b).reshape(n, -1, 1, 1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = F.linear(x.permute(0, 2, 3, 1).reshape(n * h * wd, c), w2, b)
        return y.view(n, h, wd, -1).permute(0, 3, 1, 2)
    y = torch.matmul(w2, x.reshape(n, c, h * wd))
    if b is not None:
        y = y + b.reshape(-1, 1)
    return y.view(n, -1, h, wd)


class _Depthwise(torch.autograd.Function):
    """A depthwise convolution whose forward and both backward passes run with cuDNN off: on CUDA that is
    PyTorch's own depthwise kernel (cuDNN would plan every new shape, and always takes channels_last input).
    Inputs arrive already cast (autocast does not reach inside a custom function)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding = stride, padding
        with cudnn_disabled():
            return F.conv2d(x, w, None, stride, padding, 1, w.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        with cudnn_disabled():
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad.contiguous(), x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], w.shape[0],
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return gx, gw, None, None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type``, None when autocast is off there."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (AttributeError, TypeError):  # torch < 2.4: only the CUDA query exists
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" and torch.is_autocast_enabled() else None


def depthwise(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """The gemm path's depthwise convolution (:class:`_Depthwise`), in the autocast dtype when autocast is on.

    It computes in NCHW, the layout PyTorch's depthwise kernel works in (on CUDA it would copy a channels_last input
    itself), and returns the input's memory format, so a channels_last network stays channels_last and its 1x1
    products stay single matrix products over N·H·W (:func:`pointwise`).
    """
    dtype = _autocast_dtype(x.device.type) or x.dtype
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = _Depthwise.apply(x.to(dtype).contiguous(), w.to(dtype), stride, padding)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


class DynamicBN(nn.Module):
    """BatchNorm over a channel slice of its capacity; running statistics are updated only on the slice.

    Never on cuDNN: a right-side slice ``[C-c:]`` of the parameters is a view whose address need not be 16-byte
    aligned, and cuDNN's batch norm (which PyTorch picks for fp16 and fp32 input) is reported to fail on such
    pointers with "misaligned address". PyTorch's own kernel takes any view and updates the running statistics
    in place, in the buffer.
    """

    def __init__(self, cap: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(cap))
        self.bias = nn.Parameter(torch.zeros(cap))
        self.register_buffer("running_mean", torch.zeros(cap))
        self.register_buffer("running_var", torch.ones(cap))

    def forward(self, x: torch.Tensor, sl: slice, net: "SuperNet") -> torch.Tensor:
        # A basic slice of a 1-D buffer is a contiguous view, so the in-place update reaches the buffer.
        momentum = BN_MOMENTUM if net.bn_momentum is None else net.bn_momentum
        if self.training and x.numel() // x.shape[1] == 1:  # as F.batch_norm refuses it
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
        return torch.batch_norm(x, net.use(self.weight, sl), net.use(self.bias, sl), self.running_mean[sl],
                                self.running_var[sl], self.training, momentum, BN_EPS, False)

    def reset_slice(self, sl: slice) -> None:
        self.running_mean[sl] = 0.0
        self.running_var[sl] = 1.0


def _conv_param(out_c: int, in_c: int, k: int) -> nn.Parameter:
    w = torch.empty(out_c, in_c, k, k)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    return nn.Parameter(w)


class DynamicIR(nn.Module):
    """One op at one position: an inverted residual block at full capacity, run on channel slices.

    Its tensors, their kinds and channel groups come from :data:`~scalenas.models.standalone.IR_TENSORS` (shared
    with the static :class:`~scalenas.models.standalone.IRBlock`): construction, the slices of the forward pass,
    the kernel of each convolution on the gemm path, export, op alignment and zero-init all read that table.
    """

    def __init__(self, kernel: int, expand: int, se: bool, in_cap: int, hidden_cap: int, se_cap: int,
                 out_cap: int):
        super().__init__()
        self.kernel = kernel
        has = {"": True, "expand": expand != 1, "se": se}
        caps = {"inp": in_cap, "hidden": hidden_cap, "se": se_cap, "out": out_cap}
        for row in IR_TENSORS:  # the table's order is the initialisation order (one RNG stream)
            if not has[row.needs]:
                value = None
            elif row.kind == "pointwise":
                value = _conv_param(caps[row.out], caps[row.inp], 1)
            elif row.kind == "depthwise":
                value = _conv_param(caps[row.out], 1, kernel)
            elif row.kind == "bias":
                value = nn.Parameter(torch.zeros(caps[row.out]))
            else:
                value = DynamicBN(caps[row.out])
            setattr(self, row.dynamic, value)

    # ------------------------------------------------------------------ the forward pass
    def _slices(self, row: IRTensor, sl: LayerSlices) -> tuple[slice, ...]:
        return (getattr(sl, row.out),) + ((getattr(sl, row.inp),) if row.inp else ())

    def _conv(self, name: str, y: torch.Tensor, sl: LayerSlices, net: "SuperNet", gemm: bool, bias: str = "",
              stride: int = 1) -> torch.Tensor:
        row = IR_ROWS[name]
        w = net.use(getattr(self, name), *self._slices(row, sl))
        b = net.use(getattr(self, bias), *self._slices(IR_ROWS[bias], sl)) if bias else None
        if row.kind == "depthwise":
            if gemm:
                return depthwise(y, w, stride, self.kernel // 2)
            return F.conv2d(y, w, None, stride, self.kernel // 2, 1, w.shape[0])
        return pointwise(y, w, b) if gemm else F.conv2d(y, w, b)

    def _bn(self, name: str, y: torch.Tensor, sl: LayerSlices, net: "SuperNet") -> torch.Tensor:
        return getattr(self, name)(y, getattr(sl, IR_ROWS[name].out), net)

    def forward(self, x: torch.Tensor, spec: LayerSpec, sl: LayerSlices, net: "SuperNet",
                gemm: bool = False) -> torch.Tensor:
        y = x
        if self.expand_w is not None:
            y = F.hardswish(self._bn("expand_bn", self._conv("expand_w", y, sl, net, gemm), sl, net))
        y = F.hardswish(self._bn("dw_bn", self._conv("dw_w", y, sl, net, gemm, stride=spec.stride), sl, net))
        if self.se_reduce_w is not None:
            s = F.adaptive_avg_pool2d(y, 1)
            s = F.relu(self._conv("se_reduce_w", s, sl, net, gemm, bias="se_reduce_b"))
            s = F.hardsigmoid(self._conv("se_expand_w", s, sl, net, gemm, bias="se_expand_b"))
            y = y * s
        y = self._bn("project_bn", self._conv("project_w", y, sl, net, gemm), sl, net)
        return x + y if spec.residual else y

    # ------------------------------------------------------------------ the block's tensors
    def parts(self) -> Iterator[tuple[IRTensor, Any]]:
        """(table row, tensor or DynamicBN) of every tensor this op has."""
        for row in IR_TENSORS:
            value = getattr(self, row.dynamic)
            if value is not None:
                yield row, value

    def bns(self) -> list[tuple[DynamicBN, str]]:
        """(BN, the LayerSlices group it normalises) of every BN of the block."""
        return [(value, row.out) for row, value in self.parts() if row.kind == "bn"]

    @torch.no_grad()
    def export_to(self, blk: IRBlock, sl: LayerSlices) -> None:
        """Copy this op's weights on the slices ``sl`` into the static block ``blk`` (same op and widths)."""
        for row, value in self.parts():
            dst = blk.part(row)
            if row.kind == "bn":
                for name in BN_STATE:
                    getattr(dst, name).copy_(getattr(value, name)[getattr(sl, row.out)])
            else:
                dst.copy_(value[self._slices(row, sl)])

    @torch.no_grad()
    def align_to(self, ref: "DynamicIR") -> None:
        """Start as the same function as ``ref`` (another op of the same position, smaller or equal kernel): copy
        its 1x1 and SE weights, biases and BN affine parameters; hold its depthwise kernel at the centre of a
        zero ring. The weights stay separate."""
        for row, value in self.parts():
            src = getattr(ref, row.dynamic)
            if src is None:
                continue
            if row.kind == "depthwise":
                pad = (self.kernel - ref.kernel) // 2
                value.zero_()
                value[:, :, pad:pad + ref.kernel, pad:pad + ref.kernel] = src
            elif row.kind == "bn":
                value.weight.copy_(src.weight)
                value.bias.copy_(src.bias)
            else:
                value.copy_(src)

    @torch.no_grad()
    def zero_last_bn_scale(self) -> None:
        """Zero the scale of the block's last BN: the branch starts adding zero (the identity when residual)."""
        getattr(self, IR_LAST_BN.dynamic).weight.zero_()


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
        # Convolution path: auto | conv | gemm (module docstring); auto is resolved per forward from the input's device.
        self.conv_impl = "auto"

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
        gemm = resolve_conv_impl(self.conv_impl, x.device) == "gemm"
        k = self.space.stem_kernel
        x = F.conv2d(x, self.use(self.stem_w, plan.stem), None, self.space.stem_stride, k // 2)
        x = F.hardswish(self.stem_bn(x, plan.stem, self))
        for spec, sl in zip(d.layers, plan.layers):
            x = self.blocks[spec.stage][spec.position][spec.op](x, spec, sl, self, gemm)
        head_w = self.use(self.head_w, slice(None), plan.head_in)
        x = pointwise(x, head_w) if gemm else F.conv2d(x, head_w)
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
    for stage in net.blocks:
        for j, ops in enumerate(stage):
            if j == 0:
                continue
            for blk in ops.values():
                blk.zero_last_bn_scale()


def align_op_inits(net: "SuperNet") -> None:
    """Start the candidate ops of one position as the same function; they keep separate weights.

    Every op of a position copies the initial 1x1 (expand, SE, project) weights of the first op, and its depthwise
    kernel holds the first op's kernel at the centre with a zero ring (:meth:`DynamicIR.align_to`). The first
    layer of a stage defines the stage's stream; when its candidates start as unrelated functions, a random-op
    supernet on digits stayed near chance for hundreds of steps (each op moved the stream into another basis).
    This is an initialisation only: weights stay per op (docs/method.md) and diverge with training.
    """
    for stage in net.blocks:
        for ops in stage:
            blocks = sorted(ops.values(), key=lambda b: b.kernel)
            for blk in blocks[1:]:
                blk.align_to(blocks[0])


# ------------------------------------------------------------------ export
def _copy_bn(dst: nn.BatchNorm2d, src: DynamicBN, sl: slice) -> None:
    for name in BN_STATE:
        getattr(dst, name).copy_(getattr(src, name)[sl])


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
        supernet.blocks[spec.stage][spec.position][spec.op].export_to(blk, sl)
    model.head[0].weight.copy_(supernet.head_w[:, plan.head_in])
    _copy_bn(model.head[1], supernet.head_bn, slice(None))
    model.classifier.weight.copy_(supernet.classifier.weight)
    model.classifier.bias.copy_(supernet.classifier.bias)
    return model


def fits_supernet(space: SearchSpace, subnet: Subnet) -> bool:
    return subnet.space == space.name and space.stage_of(subnet.depth, subnet.width, subnet.resolution) is not None

