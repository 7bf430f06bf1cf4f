"""Vision Transformers built with timm (``pretrained=False``: nothing is downloaded).

:class:`ViT` is timm's ``VisionTransformer`` (so its parameter names are timm's: ``cls_token``,
``reg_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.attn.qkv``, ``blocks.N.ls1.gamma``,
``blocks.N.mlp.fc1``, ``norm``, ``attn_pool.*``) with what rcdm needs on top:

- ``output`` selects what ``forward`` returns: ``cls`` (the method's pooled output: the
  normalised CLS token, SigLIP's attention pool, or the patch-token mean for models without a
  CLS token, I-JEPA), ``mean`` (the mean of the normalised patch tokens), ``tokens`` (the patch
  grid ``(N, T, D)``, row-major over the (h/p, w/p) grid; register and CLS tokens left out);
- the position embeddings of the checkpoint's grid are resized bicubically for another input
  size (prefix tokens kept): to the new grid size, or for DINOv2 exactly as its
  ``interpolate_pos_encoding`` does (scale factor (grid + 0.1) / 37 without registers,
  antialiasing with registers), so DINOv2's 518 px embeddings give its own 224 px features; an
  input side that is not a multiple of the patch size is an ``InvalidInput`` naming ``extract.input_size``.

``ARCHS`` holds every architecture of the registry (the timm arguments of the published models);
``tiny(arch)`` is the same layout at test size (2 blocks, 32-d or 64-d).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["ARCHS", "ViTArch", "ViT", "build_vit", "tiny", "describe_state_dict"]


@dataclass(frozen=True)
class ViTArch:
    """The timm arguments of one published ViT (what its checkpoint's shapes depend on)."""

    patch: int
    dim: int
    depth: int
    heads: int
    img: int  # the checkpoint's input size: its position embeddings cover img/patch squared
    mlp_ratio: float = 4.0
    cls_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False  # position embeddings for the patches only
    layer_scale: bool = False  # ls1 / ls2 gammas (DINOv2)
    pre_norm: bool = False  # CLIP's ln_pre (and a bias-free patch projection)
    eps: float = 1e-6
    act: str = "gelu"  # "gelu" | "quick_gelu" (OpenAI CLIP) | "swiglu" (DINOv2 ViT-g)
    pool: str = "token"  # what "cls" returns: "token" | "avg" (I-JEPA) | "map" (SigLIP)
    antialias: bool = False  # position-embedding resize with antialiasing (DINOv2 registers)
    interp_offset: float = 0.0  # DINOv2 (no registers): resize by scale factor (grid + 0.1) / old grid

    @property
    def name(self) -> str:
        return {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H", 1536: "ViT-g"}.get(
            self.dim, f"ViT ({self.dim}-d)"
        )

    def grid(self, size: int) -> int:
        return size // self.patch

    def describe(self) -> str:
        """``ViT-B/14 (768-d, 12 blocks, 4 register tokens)``, as :func:`describe_state_dict` says it."""
        return f"{self.name}/{self.patch} ({self.dim}-d, {self.depth} blocks, {self.reg_tokens} register tokens)"


# DINOv2's interpolate_pos_encoding: hub backbones without registers use interpolate_offset 0.1 and
# no antialiasing, those with registers offset 0 and antialiasing (dinov2/hub/backbones.py)
_DINOV2 = dict(patch=14, img=518, layer_scale=True)
_REG = dict(reg_tokens=4, no_embed_class=True, antialias=True)
_NOREG = dict(interp_offset=0.1)
_G = dict(dim=1536, depth=40, heads=24, mlp_ratio=2.66667 * 2, act="swiglu")
ARCHS: dict[str, ViTArch] = {
    # DINO ViT-S/16 (facebookresearch/dino vision_transformer.vit_small)
    "vit_small_patch16": ViTArch(16, 384, 12, 6, 224),
    # DINOv2 (facebookresearch/dinov2 hub backbones: img_size 518, init_values 1e-5)
    "vit_small_patch14_dinov2": ViTArch(dim=384, depth=12, heads=6, **_DINOV2, **_NOREG),
    "vit_base_patch14_dinov2": ViTArch(dim=768, depth=12, heads=12, **_DINOV2, **_NOREG),
    "vit_large_patch14_dinov2": ViTArch(dim=1024, depth=24, heads=16, **_DINOV2, **_NOREG),
    "vit_giant_patch14_dinov2": ViTArch(**_G, **_DINOV2, **_NOREG),
    "vit_small_patch14_reg4_dinov2": ViTArch(dim=384, depth=12, heads=6, **_DINOV2, **_REG),
    "vit_base_patch14_reg4_dinov2": ViTArch(dim=768, depth=12, heads=12, **_DINOV2, **_REG),
    "vit_large_patch14_reg4_dinov2": ViTArch(dim=1024, depth=24, heads=16, **_DINOV2, **_REG),
    "vit_giant_patch14_reg4_dinov2": ViTArch(**_G, **_DINOV2, **_REG),
    # MAE (facebookresearch/mae models_vit / models_mae encoders; ViT-H uses 14x14 patches)
    "vit_base_patch16_mae": ViTArch(16, 768, 12, 12, 224),
    "vit_large_patch16_mae": ViTArch(16, 1024, 24, 16, 224),
    "vit_huge_patch14_mae": ViTArch(14, 1280, 32, 16, 224),
    # I-JEPA (facebookresearch/ijepa src/models/vision_transformer.vit_huge): no CLS token
    "vit_huge_patch14_ijepa": ViTArch(14, 1280, 32, 16, 224, cls_token=False, pool="avg"),
    # CLIP image towers (open_clip VisionTransformer: ln_pre, LayerNorm eps 1e-5)
    "vit_base_patch16_clip_quickgelu": ViTArch(16, 768, 12, 12, 224, pre_norm=True, eps=1e-5, act="quick_gelu"),
    "vit_base_patch16_clip": ViTArch(16, 768, 12, 12, 224, pre_norm=True, eps=1e-5),
    # SigLIP (timm vit_base_patch16_siglip_224: no CLS token, attention-pool head)
    "vit_base_patch16_siglip": ViTArch(16, 768, 12, 12, 224, cls_token=False, pool="map"),
}


def tiny(arch: str) -> ViTArch:
    """``arch``'s layout at test size: 2 blocks, 32-d (64-d for DINO ViT-S), 2 heads, 4x4 grid
    (14x14 for DINO ViT-S, whose tests feed 224 px)."""
    a = ARCHS[arch]
    if arch == "vit_small_patch16":
        return replace(a, dim=64, depth=2, heads=2)
    return replace(a, dim=32, depth=2, heads=2, img=4 * a.patch)


class ViT(VisionTransformer):
    """timm's VisionTransformer returning one of ``cls`` / ``mean`` / ``tokens`` (``output``)."""

    def __init__(self, arch: ViTArch):
        act: object = {"gelu": "gelu", "quick_gelu": "quick_gelu", "swiglu": nn.SiLU}[arch.act]
        kw = dict(mlp_layer=SwiGLUPacked) if arch.act == "swiglu" else {}
        super().__init__(
            img_size=arch.img,
            patch_size=arch.patch,
            embed_dim=arch.dim,
            depth=arch.depth,
            num_heads=arch.heads,
            mlp_ratio=arch.mlp_ratio,
            num_classes=0,
            global_pool=arch.pool,
            class_token=arch.cls_token,
            reg_tokens=arch.reg_tokens,
            no_embed_class=arch.no_embed_class,
            init_values=1e-5 if arch.layer_scale else None,
            pre_norm=arch.pre_norm,
            norm_layer=partial(nn.LayerNorm, eps=arch.eps),
            act_layer=act,
            dynamic_img_size=True,
            **kw,
        )
        self.arch = arch
        self.img_size = arch.img
        self.output = "cls"

    @property
    def patch_size(self) -> int:
        return self.arch.patch

    def _check_side(self, h: int, w: int) -> None:
        """InvalidInput unless both input sides are multiples of the patch size."""
        p = self.arch.patch
        if h % p or w % p:
            raise InvalidInput(
                f"this ViT cuts {p}x{p} patches, so its input sides must be multiples of {p}; got "
                f"{h}x{w}: set extract.input_size to a multiple of {p} (e.g. {max(p, round(h / p) * p)}; "
                f"the checkpoint's is {self.img_size})"
            )

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an (h, w) input: the checkpoint's at its own size, otherwise
        the patch grid's embeddings resized bicubically to (h/p, w/p); prefix ones are kept."""
        self._check_side(h, w)
        p = self.arch.patch
        g = self.arch.grid(self.img_size)
        if (h // p, w // p) == (g, g):
            return self.pos_embed
        n_pre = 0 if self.no_embed_class else self.num_prefix_tokens
        pre, grid = self.pos_embed[:, :n_pre], self.pos_embed[:, n_pre:]
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        off, aa = self.arch.interp_offset, self.arch.antialias
        if off:  # DINOv2's rule: the output size from a scale factor nudged by the offset
            scale = ((h // p + off) / g, (w // p + off) / g)
            grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False, antialias=aa)
        else:
            grid = F.interpolate(grid.float(), size=(h // p, w // p), mode="bicubic", align_corners=False, antialias=aa)
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, (h // p) * (w // p), -1)
        return torch.cat([pre, grid], dim=1)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:  # timm's hook; x (N, h, w, D)
        n, gh, gw, d = x.shape
        p = self.arch.patch
        pos = self.pos_embed_for(gh * p, gw * p)
        x = x.reshape(n, gh * gw, d)
        prefix = [t.expand(n, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            return torch.cat([*prefix, x + pos], dim=1)
        return torch.cat([*prefix, x], dim=1) + pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_side(*x.shape[-2:])  # before timm's patch embedding, which would fail less clearly
        feats = self.forward_features(x)  # (N, prefix + T, D), normalised
        if self.output == "tokens":
            return feats[:, self.num_prefix_tokens :]
        if self.output == "mean":
            return feats[:, self.num_prefix_tokens :].mean(1)
        return self.forward_head(feats, pre_logits=True)  # the method's pooled output


def build_vit(arch: str | ViTArch) -> ViT:
    if isinstance(arch, str):
        if arch.endswith("-tiny"):
            arch = tiny(arch[: -len("-tiny")])
        elif arch == "vit_tiny_patch16":  # the test variant of DINO ViT-S/16
            arch = tiny("vit_small_patch16")
        elif arch in ARCHS:
            arch = ARCHS[arch]
        else:
            raise InvalidInput(f"unknown ViT architecture {arch!r}; known: {', '.join(ARCHS)}")
    return ViT(arch)


def describe_state_dict(sd: dict) -> str:
    """What ViT a (mapped) state dict holds, for messages: ``ViT-B (768-d, 12 blocks), 4 registers``."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or getattr(w, "ndim", 0) != 4:
        return "no ViT patch embedding"
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    regs = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    return ViTArch(patch, dim, depth, 1, 0, reg_tokens=regs).describe()
