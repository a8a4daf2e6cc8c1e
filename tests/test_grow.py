"""Growing with shared layers: real sharing, exact copies at start, accounting, files, orders, CNN rules."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalenas.cli.grow import add_parser, run
from scalenas.errors import ScalenasError
from scalenas.models.grow import AdaptedBlock, AdaptedViTBlock, GrownModel, LowRankLinear, grow, param_report
from scalenas.models.registry import load_model, register_model, save_model
from scalenas.models.vit import ViT
from scalenas.spaces.flops import count_params


# ------------------------------------------------------------------------------------------------ models
def tiny_vit(depth: int = 3) -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=depth, heads=2)


class ConvBlock(nn.Module):
    """The scalenas CNN block contract: int stride / in_channels / out_channels; BN inside."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.in_channels, self.out_channels = stride, cin, cout
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.pw = nn.Conv2d(cout, cout, 1)  # a 1x1 conv for the lowrank adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(F.relu(self.bn(self.conv(x))))
        return x + y if self.stride == 1 and self.in_channels == self.out_channels else y


@register_model("test_tinycnn")
class TinyCNN(nn.Module):
    """Two stages: [b(8->8), b(8->8)] and [b(8->16, stride 2), b(16->16), b(16->16)]."""

    def __init__(self, width: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.width, self.num_classes = width, num_classes
        w = width
        self.stem = nn.Conv2d(1, w, 3, padding=1)
        self.stages = nn.ModuleList([
            nn.Sequential(ConvBlock(w, w, 1), ConvBlock(w, w, 1)),
            nn.Sequential(ConvBlock(w, 2 * w, 2), ConvBlock(2 * w, 2 * w, 1), ConvBlock(2 * w, 2 * w, 1)),
        ])
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean((2, 3)))

    def to_config(self) -> dict:
        return {"width": self.width, "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, cfg: dict) -> "TinyCNN":
        return cls(**cfg)


def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


class UserNet(nn.Module):
    """Not a scalenas model: its blocks are an nn.Sequential under a nested name."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Module()
        self.body.layers = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body.layers(x)))


def inner(grown: GrownModel, i: int) -> nn.Module:
    """The raw (shared) block of instance ``i`` of a grown ViT."""
    inst = grown.model.blocks[i]
    return inst.block if isinstance(inst, (AdaptedViTBlock, AdaptedBlock)) else inst


def perturb_adapters(grown: GrownModel) -> None:
    """Make every adapter non-zero so outputs depend on per-instance parameters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in grown.named_parameters():
            if "adapter" in name or "lr_" in name:
                p.add_(0.1 * torch.randn_like(p))


# --------------------------------------------------------------------------------------------- sharing
def test_inserted_blocks_reuse_the_same_parameter_objects() -> None:
    m = tiny_vit(3)
    g = grow(m, "2x")
    assert g.source_map() == {"blocks": [0, 1, 2, 0, 1, 2]}
    for i in range(3, 6):
        src, dup = inner(g, i - 3), inner(g, i)
        assert dup is not src
        for mod in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            for pn in ("weight", "bias"):
                p_src = src.get_submodule(mod).get_parameter(pn)
                p_dup = dup.get_submodule(mod).get_parameter(pn)
                assert p_dup is p_src
                assert p_dup.untyped_storage().data_ptr() == p_src.untyped_storage().data_ptr()
        # LayerNorms are per-instance copies by default ...
        assert dup.norm1.weight is not src.norm1.weight
        assert torch.equal(dup.norm1.weight, src.norm1.weight)
        # ... and every instance has its own adapters.
        assert g.model.blocks[i].attn_adapter.down.weight is not g.model.blocks[i - 3].attn_adapter.down.weight
    # The input model is untouched and not shared with the result.
    assert len(m.blocks) == 3
    assert inner(g, 0).attn.qkv.weight is not m.blocks[0].attn.qkv.weight
    assert torch.equal(inner(g, 0).attn.qkv.weight, m.blocks[0].attn.qkv.weight)


def test_share_norms_shares_layernorms() -> None:
    g = grow(tiny_vit(2), "2x", share_norms=True)
    assert inner(g, 2).norm1.weight is inner(g, 0).norm1.weight
    assert inner(g, 3).norm2.bias is inner(g, 1).norm2.bias


def test_one_sgd_step_moves_source_and_copy_together_with_summed_gradients() -> None:
    g = grow(tiny_vit(2), "2x")
    perturb_adapters(g)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    # Gradient of the shared tensor = sum of the gradients its two instances would get if untied.
    untied = copy.deepcopy(g)
    w_dup = nn.Parameter(inner(untied, 2).attn.qkv.weight.detach().clone())
    inner(untied, 2).attn.qkv._parameters["weight"] = w_dup
    F.cross_entropy(untied(x), y).backward()
    expected = inner(untied, 0).attn.qkv.weight.grad + w_dup.grad

    opt = torch.optim.SGD(g.parameters(), lr=0.5)
    w = inner(g, 0).attn.qkv.weight
    before = w.detach().clone()
    F.cross_entropy(g(x), y).backward()
    assert torch.allclose(w.grad, expected, atol=1e-6)
    opt.step()
    assert not torch.equal(w, before)
    assert inner(g, 2).attn.qkv.weight is w
    assert torch.equal(inner(g, 2).attn.qkv.weight, inner(g, 0).attn.qkv.weight)


# ----------------------------------------------------------------------------------- exact copies at start
@pytest.mark.parametrize("adapter", ["parallel", "lowrank", "none"])
def test_inserted_instance_starts_as_exact_copy_of_its_source(adapter: str) -> None:
    g = grow(tiny_vit(3), "2x", adapter=adapter).eval()
    x = torch.randn(4, 5, 16)
    for i in range(3, 6):
        assert (g.model.blocks[i](x) - g.model.blocks[i - 3](x)).abs().max().item() <= 1e-6
    # And the original instance still computes what the original block computed.
    m = tiny_vit(3).eval()
    assert (g.model.blocks[1](x) - m.blocks[1](x)).abs().max().item() <= 1e-6


def test_cnn_inserted_instance_starts_as_exact_copy() -> None:
    m = tiny_cnn().eval()
    g = grow(m, "2x").eval()
    stage = g.model.stages[1]
    x = torch.randn(2, 16, 6, 6)
    assert (stage[3](x) - stage[1](x)).abs().max().item() <= 1e-6
    x0 = torch.randn(2, 8, 6, 6)
    assert (stage[0](x0) - m.stages[1][0](x0)).abs().max().item() <= 1e-6  # stride-2 block + adapter


def test_grown_model_without_its_inserted_blocks_is_the_original_function() -> None:
    # Growing changes the network function only through the inserted blocks.
    m = tiny_vit(2).eval()
    g = grow(m, "2x", adapter="parallel").eval()
    blocks = g.model.blocks
    kept = list(blocks)[:2]
    g.model.blocks = nn.ModuleList(kept)
    x = torch.randn(3, 1, 8, 8)
    assert (g(x) - m(x)).abs().max().item() <= 1e-6


# ------------------------------------------------------------------------------------------- accounting
def test_param_accounting_by_hand() -> None:
    net = UserNet()  # 2 x Linear(4,4) = 2 x 20, head 10 -> 50
    assert count_params(net) == 50
    g = grow(net, "2x", block_lists=["body.layers"], rank=2)
    # 4 instances x adapter (down 4*2+2, up 2*4+4 = 22) = 88 new; copied Linears shared -> counted once.
    assert param_report(net, g) == {"original": 50, "grown": 138, "added": 88, "overhead_pct": 176.0}
    low = grow(net, "2x", block_lists=["body.layers"], adapter="lowrank", rank=2)
    assert param_report(net, low)["grown"] == 50 + 4 * (4 * 2 + 2 * 4)
    none = grow(net, "2x", block_lists=["body.layers"], adapter="none")
    assert param_report(net, none)["grown"] == 50 and param_report(net, none)["overhead_pct"] == 0.0
    # Naive counting would see the shared tensors twice.
    assert sum(p.numel() for _, p in none.named_parameters(remove_duplicate=False)) == 90


def test_count_params_dedupes_tied_and_view_tensors() -> None:
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = a.weight  # tied object
    assert count_params(nn.ModuleList([a, b])) == 9 + 3 + 3
    base = torch.zeros(5)
    assert count_params([base, base.view(5), base[:2]]) == 5 + 2


def test_default_vit_2x_overhead_is_below_15_percent() -> None:
    m = ViT()
    r = param_report(m, grow(m, "2x"))
    assert r["original"] == 203_850
    # 12 instances x 2 adapters x (64*8+8 + 8*64+64) + 6 per-instance copies of 2 LayerNorms (256)
    assert r["added"] == 12 * 2 * (64 * 8 + 8 + 8 * 64 + 64) + 6 * 256
    assert r["overhead_pct"] < 15.0  # 13.66 %


# ---------------------------------------------------------------------------------------- save and load
def test_save_load_keeps_sharing_outputs_and_stores_shared_tensors_once(tmp_path) -> None:
    torch.manual_seed(0)
    g = grow(ViT(image_size=8, dim=64, depth=3), "2x")  # wide enough that the copies dwarf file overhead
    perturb_adapters(g)
    g.eval()
    path = tmp_path / "grown.pt"
    save_model(path, g)
    loaded = load_model(path).eval()
    assert isinstance(loaded, GrownModel)
    assert loaded.to_config() == g.to_config()
    assert loaded.to_config()["base"]["kind"] == "vit"
    for i in range(3, 6):
        assert inner(loaded, i).attn.qkv.weight is inner(loaded, i - 3).attn.qkv.weight
        assert inner(loaded, i).mlp.fc2.bias is inner(loaded, i - 3).mlp.fc2.bias
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), g(x))
    assert len(loaded.model.blocks) == 6
    # The file holds each shared tensor once: shared keys come back on one storage, and the size fits.
    payload = torch.load(path, weights_only=True)
    sd = payload["state_dict"]
    a, b = sd["model.blocks.0.block.attn.qkv.weight"], sd["model.blocks.3.block.attn.qkv.weight"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in sd.values()}
    with_dups = sum(t.numel() * t.element_size() for t in sd.values())
    overhead = 1024 * len(sd) + 16 * 1024  # zip records and pickle, generously
    assert path.stat().st_size < sum(unique.values()) + overhead < with_dups


def test_cnn_round_trip_and_frozen_flag(tmp_path) -> None:
    g = grow(tiny_cnn(), "2x", order="interleave", adapter="lowrank", rank=2, frozen_shared=True)
    perturb_adapters(g)
    g.eval()
    save_model(tmp_path / "c.pt", g)
    loaded = load_model(tmp_path / "c.pt").eval()
    assert loaded.source_map() == {"stages.0": [0, 0, 1, 1], "stages.1": [0, 1, 1, 2, 2]}
    s = loaded.model.stages[1]
    assert s[2].conv.weight is s[1].conv.weight and s[2].pw.base.weight is s[1].pw.base.weight
    assert s[2].bn.running_mean is not s[1].bn.running_mean
    assert not s[1].conv.weight.requires_grad and s[2].pw.lr_b.requires_grad
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), g(x))


def test_user_model_needs_torch_save_and_keeps_sharing(tmp_path) -> None:
    g = grow(UserNet(), 3, block_lists=["body.layers"])
    assert g.source_map() == {"body.layers": [0, 1, 0]}
    assert g.model.body.layers[2].block.weight is g.model.body.layers[0].block.weight
    with pytest.raises(ScalenasError, match="torch.save"):
        save_model(tmp_path / "u.pt", g)
    torch.save(g, tmp_path / "u.pt")
    back = torch.load(tmp_path / "u.pt", weights_only=False)  # the test's own whole-module file
    assert back.model.body.layers[2].block.weight is back.model.body.layers[0].block.weight
    x = torch.randn(5, 4)
    assert torch.equal(back(x), g(x))


def test_user_transformer_layers_lowrank_delta_reaches_every_code_path() -> None:
    # nn.MultiheadAttention reads out_proj.weight directly and TransformerEncoderLayer has a no-grad fast path
    # that reads .weight: the low-rank wrappers expose the effective weight so the delta is never skipped.
    torch.manual_seed(0)
    layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
                           for _ in range(2))
    net = nn.Module()
    net.layers = layers
    g = grow(net, "2x", block_lists=["layers"], adapter="lowrank").eval()
    L = g.model.layers
    assert L[2].self_attn.in_proj_weight is L[0].self_attn.in_proj_weight
    assert isinstance(L[2].self_attn.out_proj, LowRankLinear)
    x = torch.randn(2, 5, 16)
    assert (L[2](x) - L[0](x)).abs().max().item() <= 1e-6
    with torch.no_grad():
        L[2].self_attn.out_proj.lr_b.add_(0.3)
    assert (L[2](x) - L[0](x)).abs().max().item() > 1e-3  # the out_proj delta is used ...
    with torch.inference_mode():
        fast = L[2](x)
    assert torch.allclose(fast, L[2](x), atol=1e-5)  # ... on the fast path too


# ---------------------------------------------------------------------------------------------- orders
@pytest.mark.parametrize("depth, order, expected", [
    ("2x", "stack", [0, 1, 2, 0, 1, 2]),
    ("2x", "interleave", [0, 0, 1, 1, 2, 2]),
    ("3x", "stack", [0, 1, 2, 0, 1, 2, 0, 1, 2]),
    ("3x", "interleave", [0, 0, 0, 1, 1, 1, 2, 2, 2]),
    (5, "stack", [0, 1, 2, 0, 1]),
    ("5", "interleave", [0, 0, 1, 1, 2]),
    (6, "stack", [0, 1, 2, 0, 1, 2]),
])
def test_source_maps(depth, order: str, expected: list[int]) -> None:
    g = grow(tiny_vit(3), depth, order=order, adapter="none")
    assert g.source_map()["blocks"] == expected
    assert len(g.model.blocks) == len(expected)
    # Published stacked formula: new layer l' (1-based) maps to source (l'-1) mod L + 1.
    if order == "stack":
        assert all(s == (lp - 1) % 3 for lp, s in enumerate(expected, start=1))


# ------------------------------------------------------------------------------------------------- CNN
def test_cnn_never_duplicates_stride_or_width_changes_and_bn_is_per_instance() -> None:
    m = tiny_cnn()
    g = grow(m, "2x")
    assert g.source_map() == {"stages.0": [0, 1, 0, 1], "stages.1": [0, 1, 2, 1, 2]}
    s = g.model.stages[1]
    assert [b.stride for b in s] == [2, 1, 1, 1, 1]  # contract attributes stay visible on wrapped blocks
    assert s[3].block.conv.weight is s[1].block.conv.weight
    assert s[3].block.bn.weight is not s[1].block.bn.weight  # BN affine per instance too
    assert s[3].block.bn.running_mean is not s[1].block.bn.running_mean
    assert s[0].adapter.down.stride == (2, 2)  # the stride-2 block's own adapter strides too
    g.train()
    g(torch.randn(4, 1, 8, 8))  # instances see different inputs -> their running stats diverge
    assert not torch.equal(s[3].block.bn.running_mean, s[1].block.bn.running_mean)
    assert g(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    # A 12-block request on 5 blocks in 2 stages is not a whole multiple; 10 is (= 2x).
    with pytest.raises(ScalenasError, match="multiple"):
        grow(m, 12)
    assert grow(m, 10).source_map() == g.source_map()


def test_real_standalone_cnn_grows_and_round_trips(tmp_path) -> None:
    from scalenas.spaces.arch import extreme_subnets
    from scalenas.spaces.space import load_space
    from scalenas.models.standalone import StandaloneNet

    space = load_space("digits-tiny")
    torch.manual_seed(0)
    m = StandaloneNet.from_subnet(space, extreme_subnets(space, len(space.scaling) - 1)[1]).eval()
    g = grow(m, "2x", order="interleave")
    for path, sources in g.source_map().items():
        stage = m.get_submodule(path)
        twice = {s for s in sources if sources.count(s) > 1}
        assert twice == {i for i, b in enumerate(stage) if b.stride == 1 and b.in_channels == b.out_channels}
    perturb_adapters(g)
    save_model(tmp_path / "g.pt", g)
    loaded = load_model(tmp_path / "g.pt").eval()
    assert loaded.to_config()["base"]["kind"] == "cnn"
    x = torch.randn(2, 1, m.resolution, m.resolution)
    assert torch.equal(loaded(x), g.eval()(x))


# ---------------------------------------------------------------------------------------------- freeze
def test_frozen_shared_trains_only_adapters_and_per_instance_norms() -> None:
    g = grow(tiny_vit(2), "2x", frozen_shared=True)
    trainable = {n for n, p in g.named_parameters() if p.requires_grad}
    assert trainable and all("adapter" in n or ".block.norm" in n for n in trainable)
    assert "model.blocks.3.block.norm1.weight" in trainable and "model.norm.weight" not in trainable
    assert not inner(g, 0).attn.qkv.weight.requires_grad and not g.model.head.weight.requires_grad
    perturb_adapters(g)
    F.cross_entropy(g(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
    assert inner(g, 0).attn.qkv.weight.grad is None
    assert g.model.blocks[3].mlp_adapter.up.weight.grad is not None
    g.unfreeze()
    assert all(p.requires_grad for p in g.parameters())
    g2 = grow(tiny_vit(2), "2x", adapter="lowrank", share_norms=True)
    g2.freeze_shared()
    trainable = {n for n, p in g2.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lr_a", "lr_b")) for n in trainable)  # shared norms are frozen
    assert isinstance(inner(g2, 0).attn.qkv, LowRankLinear)


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("kwargs, word", [
    ({"depth": "1x"}, "greater than 1"),
    ({"depth": "0.5x"}, "greater than 1"),
    ({"depth": "1.5x"}, "whole"),
    ({"depth": "deep"}, "depth"),
    ({"depth": 3}, "exceed"),
    ({"depth": 2}, "exceed"),
    ({"depth": True}, "depth"),
    ({"adapter": "prefix"}, "adapter"),
    ({"order": "random"}, "order"),
    ({"rank": 0}, "rank"),
    ({"block_lists": ["nope"]}, "nope"),
    ({"block_lists": ["head"]}, "not an nn.ModuleList"),
])
def test_bad_inputs_raise_one_line_errors(kwargs: dict, word: str) -> None:
    with pytest.raises(ScalenasError) as exc:
        grow(tiny_vit(3), **kwargs)
    assert word in str(exc.value) and "\n" not in str(exc.value)


def test_non_scalenas_model_without_block_list_is_refused() -> None:
    with pytest.raises(ScalenasError, match="--blocks"):
        grow(UserNet(), "2x")
    with pytest.raises(ScalenasError, match="already grown"):
        grow(grow(tiny_vit(2), "2x"), "2x")


# ------------------------------------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scalenas")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_grow(tmp_path, capsys) -> None:
    save_model(tmp_path / "vit.pt", tiny_vit(3))
    args = _cli(["grow", "--model", str(tmp_path / "vit.pt"), "--depth", "2x", "--order", "interleave",
                 "--out", str(tmp_path / "out" / "g.pt")])
    assert args.func is run and run(args) == 0
    out = capsys.readouterr().out
    assert "depth: blocks 3 -> 6" in out and "overhead" in out and "original" in out
    g = load_model(tmp_path / "out" / "g.pt")
    assert g.source_map() == {"blocks": [0, 0, 1, 1, 2, 2]}
    with pytest.raises(ScalenasError, match="greater than 1"):
        run(_cli(["grow", "--model", str(tmp_path / "vit.pt"), "--depth", "1x", "--out", str(tmp_path / "x")]))
    with pytest.raises(ScalenasError, match="not found"):
        run(_cli(["grow", "--model", str(tmp_path / "no.pt"), "--depth", "2x", "--out", str(tmp_path / "x")]))
