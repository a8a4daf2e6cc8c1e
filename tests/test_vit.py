"""The small DeiT-style ViT: shapes, any input size, config round trip, bad configs, it learns."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scalenas.errors import ScalenasError
from scalenas.models.registry import load_model, save_model
from scalenas.models.vit import Block, ViT, ViTConfig


def tiny(**kw) -> ViT:
    cfg = dict(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2, heads=2)
    cfg.update(kw)
    return ViT(**cfg)


def test_defaults_and_shapes() -> None:
    torch.manual_seed(0)
    m = ViT()
    assert m.to_config() == {"image_size": 16, "patch_size": 4, "in_channels": 1, "num_classes": 10,
                             "dim": 64, "depth": 6, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.0}
    assert isinstance(m.blocks, torch.nn.ModuleList) and all(isinstance(b, Block) for b in m.blocks)
    assert len(m.blocks) == 6
    assert m.pos_embed.shape == (1, 17, 64)  # 16 patches + class token
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("size", [8, 16, 13, 32])
def test_any_input_size_is_resized(size: int) -> None:
    m = tiny().eval()
    assert m(torch.randn(3, 1, size, size)).shape == (3, 3)


def test_resize_matches_explicit_interpolation() -> None:
    m = tiny().eval()
    x = torch.randn(2, 1, 4, 4)
    ref = m(F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False))
    assert torch.equal(m(x), ref)


def test_attention_matches_manual_softmax_attention() -> None:
    torch.manual_seed(0)
    blk = Block(dim=8, heads=2).eval()
    x = torch.randn(2, 5, 8)
    a = blk.attn
    q, k, v = a.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / 4 ** 0.5, dim=-1)
    manual = a.proj((w @ v).transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(a(x), manual, atol=1e-6)


def test_config_round_trip_and_file(tmp_path) -> None:
    m = tiny(mlp_ratio=3.0, dropout=0.1)
    again = ViT.from_config(m.to_config())
    assert again.to_config() == m.to_config()
    save_model(tmp_path / "vit.pt", m.eval())
    loaded = load_model(tmp_path / "vit.pt").eval()
    assert isinstance(loaded, ViT)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), m(x))


@pytest.mark.parametrize("bad, word", [
    ({"dim": 30, "heads": 4}, "heads"),
    ({"image_size": 10, "patch_size": 4}, "patch_size"),
    ({"depth": 0}, "depth"),
    ({"dropout": 1.5}, "dropout"),
    ({"widht": 3}, "widht"),
])
def test_bad_config_names_the_field(bad: dict, word: str) -> None:
    with pytest.raises(ScalenasError) as exc:
        ViTConfig.from_dict({**ViTConfig().__dict__, **bad})
    assert word in str(exc.value) and "\n" not in str(exc.value)


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    m = tiny()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(m(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
