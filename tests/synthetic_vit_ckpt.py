"""Synthetic ViT checkpoints in the published layouts of DINOv2, MAE, I-JEPA, open_clip and timm.

Each ``save_*`` takes a (tiny) :class:`rcdm.encoders.vit.ViT` and writes the file its method
publishes, spelling every key the way the method's own module names it (written out here from
the repositories' module structures, independently of ``rcdm.encoders.vit_readers``):

- DINOv2 ``DinoVisionTransformer`` (dinov2/models/vision_transformer.py): ``cls_token``,
  ``pos_embed`` (CLS + grid), ``register_tokens``, ``mask_token``, ``patch_embed.proj``,
  ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1|w12, mlp.fc2|w3, ls2.gamma}``, ``norm``;
- MAE ``MaskedAutoencoderViT`` (models_mae.py), saved as ``{"model": ...}``;
- I-JEPA's training checkpoint (src/train.py ``save_checkpoint``) with DDP ``module.`` keys;
- open_clip's ``CLIP`` (``visual.*`` OpenAI layout + the text tower) and the SigLIP ``CustomTextCLIP``
  (``visual.trunk.*`` + ``text.*``), and timm's plain files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _sd(vit: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vit.state_dict().items()}


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.02


def _blocks(sd: dict, rename) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            out[f"blocks.{i}.{rename(rest)}"] = v
    return out


def save_dinov2(path: str | Path, vit: nn.Module) -> Path:
    """``dinov2_vit*14[_reg4]_pretrain.pth``. For a register model, the CLS position embedding
    is a separate random vector in the file; ``vit.cls_token`` is set to the sum DINOv2 feeds its
    blocks (its CLS token plus that embedding), so the file and ``vit`` compute the same."""
    sd = _sd(vit)
    d = sd["pos_embed"].shape[-1]
    swiglu = vit.arch.act == "swiglu"  # ViT-g: SwiGLUFFNFused
    out: dict[str, torch.Tensor] = {}
    if "reg_token" in sd:
        cls, pos0 = _rand(1, 1, d, seed=1), _rand(1, 1, d, seed=2)
        with torch.no_grad():
            vit.cls_token.copy_(cls + pos0)
        out["cls_token"] = cls
        out["pos_embed"] = torch.cat([pos0, sd["pos_embed"]], dim=1)
        out["register_tokens"] = sd["reg_token"]
    else:
        out["cls_token"], out["pos_embed"] = sd["cls_token"], sd["pos_embed"]
    out["mask_token"] = _rand(1, d, seed=3)
    out["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"]
    out["patch_embed.proj.bias"] = sd["patch_embed.proj.bias"]

    def rename(rest: str) -> str:
        if swiglu:  # SwiGLUFFNFused: w12 (the packed gate and value), w3
            rest = rest.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        return rest

    out.update(_blocks(sd, rename))
    out["norm.weight"], out["norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    torch.save(out, path)
    return Path(path)


def save_mae(path: str | Path, vit: nn.Module, decoder: bool = False) -> Path:
    """``mae_pretrain_vit_*.pth`` (``{"model": encoder}``), or with ``decoder`` a full
    pre-training checkpoint (``mae_visualize_vit_*.pth``: the decoder and ``mask_token`` too)."""
    model = _sd(vit)
    if decoder:
        d = model["pos_embed"].shape[-1]
        model.update(
            {
                "mask_token": _rand(1, 1, 16),
                "decoder_embed.weight": _rand(16, d),
                "decoder_embed.bias": _rand(16),
                "decoder_pos_embed": _rand(*model["pos_embed"].shape[:2], 16),
                "decoder_blocks.0.norm1.weight": torch.ones(16),
                "decoder_norm.weight": torch.ones(16),
                "decoder_pred.weight": _rand(3 * 16 * 16, 16),
                "decoder_pred.bias": _rand(3 * 16 * 16),
            }
        )
    torch.save({"model": model}, path)
    return Path(path)


def save_ijepa(path: str | Path, target: nn.Module, context: nn.Module | None = None) -> Path:
    """``IN1K-vit.h.14-300e.pth.tar``: encoder (context), predictor and target encoder, DDP keys."""
    ddp = lambda sd: {"module." + k: v for k, v in sd.items()}  # noqa: E731
    enc = _sd(context) if context is not None else {k: v + 1 for k, v in _sd(target).items()}
    ckpt = {
        "encoder": ddp(enc),
        "predictor": ddp(
            {
                "predictor_embed.weight": _rand(8, 32),
                "mask_token": _rand(1, 1, 8),
                "predictor_pos_embed": _rand(1, 16, 8),
            }
        ),
        "target_encoder": ddp(_sd(target)),
        "opt": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
        "scaler": None,
        "epoch": 300,
        "loss": 0.12,
        "batch_size": 2048,
        "world_size": 16,
        "lr": 0.001,
    }
    torch.save(ckpt, path)
    return Path(path)


def _text_tower(width: int = 16, embed: int = 24) -> dict[str, torch.Tensor]:
    """open_clip CLIP's text-tower keys (a 1-block transformer)."""
    return {
        "positional_embedding": _rand(77, width),
        "text_projection": _rand(width, embed),
        "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": _rand(49408 // 256, width),
        "transformer.resblocks.0.ln_1.weight": torch.ones(width),
        "transformer.resblocks.0.attn.in_proj_weight": _rand(3 * width, width),
        "transformer.resblocks.0.mlp.c_fc.weight": _rand(4 * width, width),
        "ln_final.weight": torch.ones(width),
        "ln_final.bias": torch.zeros(width),
    }


_CLIP_BLOCK = [
    ("norm1.", "ln_1."),
    ("attn.qkv.weight", "attn.in_proj_weight"),
    ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj.", "attn.out_proj."),
    ("norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]


def save_open_clip(path: str | Path, vit: nn.Module, proj: nn.Linear) -> Path:
    """open_clip's ``open_clip_pytorch_model.bin`` for a ViT CLIP (OpenAI layout of ``visual``):
    ``proj`` is the bias-free image projection (``visual.proj`` holds its weight transposed)."""
    sd = _sd(vit)
    v = {
        "visual.class_embedding": sd["cls_token"].reshape(-1),
        "visual.positional_embedding": sd["pos_embed"][0],
        "visual.proj": proj.weight.detach().t().clone(),
        "visual.conv1.weight": sd["patch_embed.proj.weight"],
        "visual.ln_pre.weight": sd["norm_pre.weight"],
        "visual.ln_pre.bias": sd["norm_pre.bias"],
        "visual.ln_post.weight": sd["norm.weight"],
        "visual.ln_post.bias": sd["norm.bias"],
    }

    def rename(rest: str) -> str:
        for a, b in _CLIP_BLOCK:
            if rest.startswith(a):
                return b + rest[len(a) :]
        raise AssertionError(rest)

    v.update({"visual.transformer.resblocks." + k[len("blocks.") :]: t for k, t in _blocks(sd, rename).items()})
    torch.save({**_text_tower(), **v}, path)
    return Path(path)


def save_timm(path: str | Path, vit: nn.Module, proj: nn.Linear | None = None) -> Path:
    """timm's ``model.safetensors`` (CLIP: the projection as ``head`` with a zero bias)."""
    from safetensors.torch import save_file

    sd = _sd(vit)
    if proj is not None:
        sd["head.weight"] = proj.weight.detach().clone()
        sd["head.bias"] = torch.zeros(proj.weight.shape[0])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return Path(path)


def save_open_clip_siglip(path: str | Path, vit: nn.Module) -> Path:
    """open_clip's SigLIP ``open_clip_pytorch_model.bin``: ``visual.trunk.*`` (timm) + ``text.*``."""
    sd = {"visual.trunk." + k: v for k, v in _sd(vit).items()}
    sd.update(
        {
            "text.token_embedding.weight": _rand(64, 16),
            "text.positional_embedding": _rand(64, 16),
            "text.transformer.resblocks.0.ln_1.weight": torch.ones(16),
            "text.ln_final.weight": torch.ones(16),
            "logit_scale": torch.tensor(2.3),
            "logit_bias": torch.tensor(-10.0),
        }
    )
    torch.save(sd, path)
    return Path(path)
