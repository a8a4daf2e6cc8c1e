"""A small DeiT-style Vision Transformer, registered as model kind ``"vit"``.

Sized by default for the 8x8 scikit-learn digits upsampled to 16 px (16 patches of 4x4, 64-wide, 6 blocks).
It is the transformer target of :mod:`scalenas.models.grow`: the blocks live in ``self.blocks`` (an
``nn.ModuleList`` of :class:`Block`), each with the sub-modules ``norm1``, ``attn``, ``norm2``, ``mlp`` so the
grower can put adapters beside the attention and MLP sub-layers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.errors import ScalenasError
from scalenas.options import check_options, option
from scalenas.models.registry import register_model


@dataclass
class ViTConfig:
    """Architecture of a :class:`ViT`; every field is JSON-able so the model round-trips through a file."""

    image_size: int = option(16, "input size (inputs of another size are resized to this first)", min=1)
    patch_size: int = option(4, "square patches; image_size must be a multiple", min=1)
    in_channels: int = option(1, "input channels (digits are grey-scale)", min=1)
    num_classes: int = option(10, "classes", min=1)
    dim: int = option(64, "token width", min=1)
    depth: int = option(6, "number of transformer blocks", min=1)
    heads: int = option(4, "attention heads; dim must be a multiple", min=1)
    mlp_ratio: float = option(2.0, "MLP hidden width = dim * mlp_ratio", min=0.0, min_open=True)
    dropout: float = option(0.0, "dropout on attention weights, projections and MLP", min=0.0, max=1.0,
                            max_open=True)

    def validate(self) -> "ViTConfig":
        """Check every field (one validation idiom, messages naming the field) and the rules between them."""
        check_options(self, "vit config")
        if self.image_size % self.patch_size:
            raise ScalenasError(f"vit config: image_size {self.image_size} is not a multiple of "
                                f"patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ScalenasError(f"vit config: dim {self.dim} is not a multiple of heads {self.heads}")
        if int(self.dim * self.mlp_ratio) < 1:
            raise ScalenasError(f"vit config: mlp_ratio must give an MLP width >= 1, got {self.mlp_ratio!r}")
        return self

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "ViTConfig":
        """Build from a dict; unknown keys are an error (a typo must not silently fall back to a default)."""
        if not isinstance(cfg, dict):
            raise ScalenasError(f"vit config must be a mapping, got {type(cfg).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ScalenasError(f"vit config: unknown key(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")
        return cls(**cfg).validate()


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and PyTorch's fused attention kernel."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (n, heads, t, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, t, c)))


class Mlp(nn.Module):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_model("vit")
class ViT(nn.Module):
    """DeiT-style ViT: conv patch embedding, class token, learned positions, pre-norm blocks, linear head.

    ``ViT(**fields)`` with the fields of :class:`ViTConfig`; ``forward`` takes ``(N, C, H, W)`` images of any
    size (resized to ``image_size`` first) and returns ``(N, num_classes)`` logits.
    """

    def __init__(self, **cfg: Any) -> None:
        super().__init__()
        self.config = ViTConfig.from_dict(cfg)
        c = self.config
        self.patch_embed = nn.Conv2d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        num_patches = (c.image_size // c.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, c.dim))
        self.pos_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # DeiT's recipe: small truncated-normal weights, zero biases; LayerNorms keep their (1, 0) default.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token feature after the final norm, ``(N, dim)``."""
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            # Accept any input size: the position embedding is fixed, so resize the image instead.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def to_config(self) -> dict[str, Any]:
        """JSON-able architecture; ``ViT.from_config(m.to_config())`` rebuilds the same shapes."""
        return asdict(self.config)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ViT":
        """Rebuild from :meth:`to_config` output (weights are random until a state dict is loaded)."""
        return cls(**ViTConfig.from_dict(cfg).__dict__)
