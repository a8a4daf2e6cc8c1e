"""The supernet's gemm convolution path (``conv_impl``): the same numbers as the conv path, only the depthwise and
stem convolutions left as convolutions, sliced BN kept off cuDNN, auto = conv on CPU (bit-identical), bad input
refused, and the one table of the inverted-residual block's tensors covering both blocks."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import randomize_bn
from scalenas.cli.main import main
from scalenas.errors import ScalenasError
from scalenas.models.standalone import IR_TENSORS, IRBlock, StandaloneNet
from scalenas.models.supernet import SuperNet, pointwise, resolve_conv_impl
from scalenas.spaces.arch import derive_subnet, sample_subnet
from scalenas.spaces.space import load_space, shipped_spaces
from scalenas.train.config import load_job
from scalenas.train.optim import make_optimizer, masks_from_record
from scalenas.train.supernet import train_supernet

pytestmark = pytest.mark.usefixtures("torch_threads")

TOL = 1e-5  # fp32, max abs difference
PAIRS = 50
# 318 M-parameter supernets (~1-2 s per pair on one CPU thread). A randomly initialised path of 20+ blocks in train
# mode amplifies fp32 rounding layer by layer (seen on scalenet-mbv3: the block outputs of the two paths differ by
# 7e-8 relative after the first block and 3e-5 after the 24th, smoothly; against float64 the *conv* path's weight
# gradients were off by 3-6e-4 on cifar-mbv3). So there every block of the path is compared on its own: the same
# input, the same upstream gradient.
BIG = {"cifar-mbv3", "scalenet-mbv3"}


def _pairs(space, n: int, seed: int):
    """``n`` random (subnet, side) pairs, cycling through the scaling stages, the side drawn per pair."""
    rng = random.Random(seed)
    stages = len(space.scaling)
    return [(sample_subnet(space, rng, stage=k % stages)[1], rng.randrange(space.coupling)) for k in range(n)]


def _path_pass(net: SuperNet, sub, side: int, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    """One training pass on the path: logits, input gradient, the parameters' gradients, the path masks.
    ``seed``: the classifier dropout's masks (the big spaces have dropout), the same for both paths."""
    torch.manual_seed(seed)
    net.zero_grad(set_to_none=True)
    net.record = []
    xg = x.clone().requires_grad_()
    out = net(xg, sub, side)
    F.cross_entropy(out, y).backward()
    masks = masks_from_record(net.record)
    net.record = None
    grads = {p: p.grad for p in net.parameters() if p.grad is not None}
    return out.detach(), xg.grad, grads, masks


def _step(net: SuperNet, grads: dict, masks: dict) -> dict:
    """The parameters after one PathSGD step (fresh momentum) from ``grads``; the network is left unchanged."""
    before = {p: p.detach().clone() for p in grads}
    opt = make_optimizer("sgd", net, lr=0.2, weight_decay=4e-5, momentum=0.9, nesterov=True, path_masked=True)
    for p in net.parameters():
        p.grad = grads.get(p)
    opt.set_masks(masks)
    opt.step()
    after = {p: p.detach().clone() for p in grads}
    with torch.no_grad():
        for p, v in before.items():
            p.copy_(v)
    return after


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _max_abs(a: dict) -> float:
    return max(float(v.abs().max()) for v in a.values())


CASES = [(n, layout) for n in shipped_spaces() if n not in BIG for layout in ("nchw", "channels_last")]


@pytest.mark.parametrize("name, layout", CASES)  # channels_last: the layout CUDA trains in by default
def test_gemm_path_equals_conv_path(name, layout):
    """Logits, input gradient, every weight gradient and one PathSGD step: gemm == conv within 1e-5 (fp32)."""
    space = load_space(name)
    torch.manual_seed(0)
    net = SuperNet(space).train()
    randomize_bn(net, seed=1)  # live residual branches and non-trivial BN
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)
    worst = Counter()
    for k, (sub, side) in enumerate(_pairs(space, PAIRS, seed=len(name))):
        # batch 2: the stem's weight gradient sums batch x H x W products, and its fp32 rounding grows with them
        x = torch.randn(2, space.in_channels, sub.resolution, sub.resolution, generator=gen).contiguous(memory_format=fmt)
        y = torch.randint(0, space.num_classes, (2,), generator=gen)
        net.conv_impl = "conv"
        out_c, dx_c, g_c, m_c = _path_pass(net, sub, side, x, y, seed=k)
        net.conv_impl = "gemm"
        out_g, dx_g, g_g, m_g = _path_pass(net, sub, side, x, y, seed=k)
        assert out_c.abs().max() > 1e-3 and dx_c.abs().max() > 0  # a non-trivial function and gradient
        assert g_c.keys() == g_g.keys() and m_c.keys() == m_g.keys()
        assert all((m_c[i] is None and m_g[i] is None) or torch.equal(m_c[i], m_g[i]) for i in m_c)  # same slices
        after_c = _step(net, g_c, m_c)
        diffs = {"logits": (float((out_c - out_g).abs().max()), float(out_c.abs().max())),
                 "input_grad": (float((dx_c - dx_g).abs().max()), float(dx_c.abs().max())),
                 "weight_grad": (_max_diff(g_c, g_g), _max_abs(g_c)),
                 "sgd_step": (_max_diff(after_c, _step(net, g_g, m_g)), _max_abs(after_c))}
        for key, (v, scale) in diffs.items():
            worst[key] = max(worst[key], v)
            # channels_last: CPU's channels_last kernels sum less accurately -- the conv path's own depthwise and
            # stem weight gradients (|g| ~ 2-3) were 1-2e-5 off float64 -- so there the bound is relative above 1
            tol = TOL if layout == "nchw" else TOL * max(1.0, scale)
            assert v <= tol, (name, layout, sub.short(), side, key, v, scale)
    assert set(worst) == {"logits", "input_grad", "weight_grad", "sgd_step"}


def _block_pass(net: SuperNet, blk, spec, sl, x: torch.Tensor, up: torch.Tensor, gemm: bool):
    """One block of a path on its own: output, input gradient, weight gradients, masks (upstream gradient ``up``).
    Only the block's gradients are cleared and compared (clearing all 318 M parameters per block cost 10 %)."""
    blk.zero_grad(set_to_none=True)
    net.record = []
    xg = x.clone().requires_grad_()
    out = blk(xg, spec, sl, net, gemm)
    (out * up).sum().backward()
    masks = masks_from_record(net.record)
    net.record = None
    return out.detach(), xg.grad, {p: p.grad for p in blk.parameters() if p.grad is not None}, masks


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG))
def test_gemm_blocks_equal_conv_blocks_on_the_big_spaces(name):
    """Every block of 50 paths (train mode): output, input gradient, weight gradients and a PathSGD step of the
    block's parameters within 1e-5 x max(1, largest |value|); and the head's 1x1 convolution."""
    space = load_space(name)
    torch.manual_seed(0)
    net = SuperNet(space).train()
    randomize_bn(net, seed=1)
    gen = torch.Generator().manual_seed(0)
    worst = Counter()
    for k, (sub, side) in enumerate(_pairs(space, PAIRS, seed=len(name))):
        res = min(sub.resolution, 64)  # the supernet runs at the input's resolution; 64 px keeps it cheap
        x = torch.randn(2, space.in_channels, res, res, generator=gen)
        d = net.derive(sub)
        plan = net.layout.plan(d, side)
        blocks = net.path_modules(d)
        inputs: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach())) for b in blocks]
        net.conv_impl = "conv"
        with torch.no_grad():
            net(x, sub, side)
        for h in hooks:
            h.remove()
        head_in = None
        for blk, spec, sl, xin in zip(blocks, d.layers, plan.layers, inputs):
            up = torch.randn(xin.shape[0], spec.out_ch, *_out_hw(xin, spec), generator=gen)
            out_c, dx_c, g_c, m_c = _block_pass(net, blk, spec, sl, xin, up, False)
            out_g, dx_g, g_g, m_g = _block_pass(net, blk, spec, sl, xin, up, True)
            assert g_c.keys() == g_g.keys() and m_c.keys() == m_g.keys()
            after_c = _step(net, g_c, m_c) if k % 10 == 0 else None  # the step clones the block: a sample
            diffs = {"output": (float((out_c - out_g).abs().max()), float(out_c.abs().max())),
                     "input_grad": (float((dx_c - dx_g).abs().max()), float(dx_c.abs().max())),
                     "weight_grad": (_max_diff(g_c, g_g), _max_abs(g_c))}
            if after_c is not None:
                diffs["sgd_step"] = (_max_diff(after_c, _step(net, g_g, m_g)), _max_abs(after_c))
            for key, (v, scale) in diffs.items():
                worst[key] = max(worst[key], v / max(1.0, scale))
                assert v <= TOL * max(1.0, scale), (name, sub.short(), side, spec, key, v, scale)
            head_in = out_c
        w = net.head_w[:, plan.head_in]
        ref = F.conv2d(head_in, w)
        diff = float((pointwise(head_in, w) - ref).abs().max())
        assert diff <= TOL * max(1.0, float(ref.abs().max())), (name, sub.short(), "head", diff)
    assert set(worst) == {"output", "input_grad", "weight_grad", "sgd_step"}


def _out_hw(x: torch.Tensor, spec) -> tuple[int, int]:
    return tuple((n - 1) // spec.stride + 1 for n in x.shape[2:])  # "same" padding, odd kernels


class _ConvCensus(TorchDispatchMode):
    """Every convolution (forward and backward) the dispatcher sees: (pass, groups, in channels, kernel)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int, int, int]] = []
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name == "convolution":
            x, w, groups = args[0], args[1], args[8]
            self.calls.append(("forward", groups, x.shape[1], w.shape[-1]))
        elif name == "convolution_backward":
            x, w, groups = args[1], args[2], args[9]
            self.calls.append(("backward", groups, x.shape[1], w.shape[-1]))
        return func(*args, **kwargs)


def _census(net, sub, side, impl):
    net.conv_impl = impl
    d = net.derive(sub)
    x = torch.randn(4, net.space.in_channels, sub.resolution, sub.resolution, requires_grad=True)
    mode = _ConvCensus()
    with mode:
        net(x, sub, side).sum().backward()
    return mode, d


@pytest.mark.parametrize("name", ["digits-tiny", "animals-tiny"])
def test_dispatch_census_gemm_leaves_only_depthwise_and_stem_convolutions(name):
    space = load_space(name)
    torch.manual_seed(0)
    net = SuperNet(space).train()
    rng = random.Random(3)
    for stage in range(len(space.scaling)):
        sub = sample_subnet(space, rng, stage=stage)[1]
        gemm, d = _census(net, sub, stage % space.coupling, "gemm")
        for kind in ("forward", "backward"):
            calls = [c for c in gemm.calls if c[0] == kind]
            stem = [c for c in calls if c[2] == space.in_channels and c[3] == space.stem_kernel and c[1] == 1]
            dw = [c for c in calls if c[1] == c[2] > 1 or (c[1] == c[2] == 1 and c not in stem)]
            assert len(stem) == 1 and len(dw) == len(d.layers) and len(calls) == 1 + len(d.layers), (kind, calls)
        assert gemm.ops["mm"] + gemm.ops["addmm"] > 0  # the 1x1 convolutions became matrix products
        conv, _ = _census(net, sub, stage % space.coupling, "conv")
        n_se = sum(1 for l in d.layers if l.se)
        n_expand = sum(1 for l in d.layers if l.expand != 1)
        # the conv path: stem, expand, depthwise, SE (2), project per layer, and the head
        assert sum(c[0] == "forward" for c in conv.calls) == 2 + n_expand + 2 * len(d.layers) + 2 * n_se


class _BatchNormCalls(TorchFunctionMode):
    """The ``cudnn_enabled`` argument of every ``torch.batch_norm`` call (the last positional one)."""

    def __init__(self):
        super().__init__()
        self.cudnn: list[bool] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.batch_norm:
            self.cudnn.append(bool(args[8]))
        return func(*args, **(kwargs or {}))


def test_sliced_batch_norm_never_asks_for_cudnn(digits):
    torch.manual_seed(0)
    net = SuperNet(digits).train()
    sub = sample_subnet(digits, random.Random(5), stage=2)[1]
    for impl in ("conv", "gemm"):
        net.conv_impl = impl
        mode = _BatchNormCalls()
        with mode:
            net(torch.randn(4, 1, sub.resolution, sub.resolution), sub, 1)
        assert len(mode.cudnn) == 2 + sum(2 + (l.expand != 1) for l in derive_subnet(digits, sub).layers)
        assert not any(mode.cudnn)


def test_conv_impl_resolution_and_bad_values():
    assert resolve_conv_impl("auto", "cpu") == "conv" and resolve_conv_impl("auto", torch.device("cpu")) == "conv"
    assert resolve_conv_impl("auto", "cuda") == "gemm" and resolve_conv_impl("auto", "cuda:0") == "gemm"
    assert resolve_conv_impl("gemm", "cpu") == "gemm" and resolve_conv_impl("conv", "cuda") == "conv"
    with pytest.raises(ScalenasError, match="conv_impl"):
        resolve_conv_impl("winograd", "cpu")


def test_auto_on_cpu_is_bit_identical_to_conv_and_gemm_trains_close(tmp_path):
    def run(impl: str) -> dict:
        cfg = load_job("digits", {"steps": 3, "batch_size": 16, "threads": 1, "device": "cpu", "conv_impl": impl,
                                  "warmup_steps": 1, "log_every": 1, "checkpoint_every": 3, "panel_random": 0,
                                  "bn_calib_batches": 1, "sandwich": True, "inplace_distill": True, "seed": 2})
        train_supernet(cfg, tmp_path / impl, progress=False)
        return torch.load(tmp_path / impl / "checkpoint.pt", weights_only=True)["model"]

    auto, conv, gemm = run("auto"), run("conv"), run("gemm")
    for k in conv:
        assert torch.equal(auto[k], conv[k]), k  # auto is the conv path on CPU, bit for bit
    assert max(float((gemm[k].float() - conv[k].float()).abs().max()) for k in conv) <= 1e-4
    assert (tmp_path / "auto" / "config.yaml").read_text().count("conv_impl: auto") == 1


def test_bad_inputs_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train-supernet", "--job", "digits", "--conv-impl", "bogus", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'bogus'" in err and len(err.strip().splitlines()) == 1
    job = tmp_path / "job.yaml"
    job.write_text("space: digits-tiny\ndata: digits\nconv_impl: winograd\n")
    assert main(["train-supernet", "--job", str(job), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "conv_impl" in err and str(job) in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "c"
    assert main(["train-supernet", "--job", "digits", "--device", "cpu", "--amp", "fp16", "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fp16" in err and "CUDA" in err and len(err.strip().splitlines()) == 1
    assert not (out / "checkpoint.pt").exists() and not (out / "config.yaml").exists()


# ------------------------------------------------------------------------------------------ the block's one table
@pytest.mark.parametrize("name", ["digits-tiny", "scalenet-mbv3"])
def test_the_table_names_every_tensor_of_both_blocks(name):
    space = load_space(name)
    rows = {r.dynamic for r in IR_TENSORS}
    statics = {r.static for r in IR_TENSORS}
    rng = random.Random(0)
    seen_expand = seen_plain = False
    for _ in range(20):
        d = derive_subnet(space, sample_subnet(space, rng)[1])
        model = StandaloneNet(d)
        for blk in (b for stage in model.stages for b in stage):
            assert isinstance(blk, IRBlock)
            seen_expand |= blk.expand_conv is not None
            seen_plain |= blk.expand_conv is None
            for pname, _ in list(blk.named_parameters()) + list(blk.named_buffers()):
                owner, leaf = pname.rsplit(".", 1)
                # a BN row names the module; a conv row names the weight or bias tensor itself
                assert owner in statics or pname in statics, pname
    assert seen_expand and seen_plain
    if name == "digits-tiny":  # the dynamic block: the table's rows are exactly its tensors (cheap space only)
        net = SuperNet(space)
        for stage in net.blocks:
            for ops in stage:
                for blk in ops.values():
                    names = {n.split(".")[0] for n, _ in blk.named_parameters()}
                    assert names <= rows and names == {r.dynamic for r, _ in blk.parts()}
