"""A plain Vision Transformer with timm / DINO parameter names (no timm dependency).

Matches DINO's ``vision_transformer.py`` (and timm's ``VisionTransformer``): patch embedding by
a strided convolution, a class token, learned position embeddings, pre-norm blocks with
LayerNorm(eps=1e-6), and the final norm; the feature is the normalised CLS token. Parameter
names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.attn.qkv``,
``blocks.N.mlp.fc1``, ``norm``), so DINO and timm checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, H/p * W/p, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, d_head)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT returning the normalised CLS token ``(N, embed_dim)``."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        n_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # DINO's initialisation: truncated normal (std 0.02) for tokens and linear weights
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an (h, w) input: the trained ones at ``img_size``, otherwise
        the patch grid's embeddings resized bicubically to (h/p, w/p) (DINO's
        ``interpolate_pos_encoding``, timm's ``resample_abs_pos_embed``); the CLS one is kept."""
        p = self.patch_embed.patch_size
        if h % p or w % p:
            raise InvalidInput(
                f"this ViT cuts {p}x{p} patches, so its input sides must be multiples of {p}; got "
                f"{h}x{w}: set extract.input_size to a multiple of {p} (the checkpoint's is {self.img_size})"
            )
        if (h, w) == (self.img_size, self.img_size):
            return self.pos_embed
        g = self.img_size // p
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = F.interpolate(grid.float(), size=(h // p, w // p), mode="bicubic", align_corners=False)
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, (h // p) * (w // p), -1)
        return torch.cat([cls, grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed_for(*x.shape[-2:])
        x = self.patch_embed(x)  # (N, T, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]  # (N, D)


def vit_small_patch16(img_size: int = 224) -> VisionTransformer:
    """ViT-S/16 (DINO ``vit_small``): 384-d, 12 blocks, 6 heads."""
    return VisionTransformer(img_size, 16, 384, 12, 6, 4.0)
