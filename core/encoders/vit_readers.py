"""Checkpoint readers of the ViT families, each strict to its repository's published layout.

Each maps the file onto :class:`rcdm.encoders.vit.ViT` (timm names) and, where the method has a
projector, the head; keys it does not know are reported as unexpected (and refused by
``strict_load``). Layouts:

- DINOv2 (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``, facebookresearch/dinov2 ``DinoVisionTransformer``):
  a plain state dict with ``cls_token``, ``pos_embed`` (CLS + 37x37 grid of 518 px),
  ``mask_token`` (used in training only), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
  attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` (ViT-g: SwiGLU ``mlp.w12`` /
  ``mlp.w3``), ``norm``; the register models add ``register_tokens`` (1, 4, D), placed after the
  CLS token without position embedding (timm folds the CLS position embedding into the token).
- MAE (``mae_pretrain_vit_{base,large,huge}.pth``, facebookresearch/mae): ``{"model": ...}``
  with timm names; a full pre-training checkpoint's ``decoder_*`` and ``mask_token`` are the
  decoder's and not used.
- I-JEPA (``IN1K-vit.h.14-300e.pth.tar``, facebookresearch/ijepa): ``{"encoder", "predictor",
  "target_encoder", "opt", "scaler", "epoch", ...}``; the target encoder (DDP: ``module.``) has
  ``pos_embed`` (fixed sin-cos, patches only), ``patch_embed.proj``, ``blocks.N.*``, ``norm``.
- open_clip ViT (``open_clip_pytorch_model.bin``; OpenAI CLIP layout): ``visual.class_embedding``
  (D,), ``visual.positional_embedding`` (1 + T, D), ``visual.conv1`` (no bias), ``visual.ln_pre``,
  ``visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias,
  attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post``, ``visual.proj`` (D, E): the
  head; the text tower (``token_embedding``, ``transformer.*``, ``positional_embedding``,
  ``ln_final``, ``text_projection``, ``logit_scale``) is not used. timm's own file
  (``model.safetensors``: timm names, ``head.weight`` the projection with a zero bias) also reads.
- SigLIP: open_clip's ``visual.trunk.`` (a timm ViT with ``attn_pool.*``), text keys not used, or
  timm's ``model.safetensors`` (the same names without the prefix).
"""

from __future__ import annotations

from typing import Any

import torch
from rcdm.encoders.keymap import Mapped, first_keys, remap, strip_prefix
from rcdm.encoders.registry import HeadSpec
from rcdm.errors import InvalidInput

__all__ = ["VIT_READERS"]

# open_clip text-tower keys (not used for the image tower); an OpenAI state dict also records
# input_resolution / context_length / vocab_size (open_clip drops them on load)
_TEXT = (
    "token_embedding.",
    "transformer.",
    "positional_embedding",
    "ln_final.",
    "text_projection",
    "logit_scale",
    "logit_bias",
    "text.",
    "attn_mask",
    "input_resolution",
    "context_length",
    "vocab_size",
)


def _state_dict(ckpt: dict, *wrappers: str) -> dict:
    for w in wrappers:
        if isinstance(ckpt.get(w), dict):
            return ckpt[w]
    return ckpt


def read_dinov2(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    sd = strip_prefix(_state_dict(ckpt, "model", "teacher"))
    if "pos_embed" not in sd or "cls_token" not in sd:
        raise InvalidInput(f"not a DINOv2 backbone: no cls_token / pos_embed (keys: {first_keys(sd, 6)})")
    out: dict[str, Any] = {}
    unexpected: list[str] = []
    if "register_tokens" in sd:  # CLS and registers outside the position embeddings
        out["reg_token"] = sd["register_tokens"]
        out["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
        out["pos_embed"] = sd["pos_embed"][:, 1:]
    for k, v in sd.items():
        if k in ("mask_token",) or (k in ("register_tokens", "cls_token", "pos_embed") and "reg_token" in out):
            continue
        if k.startswith("blocks.") and ".mlp.w12." in k:
            k = k.replace(".mlp.w12.", ".mlp.fc1.")
        elif k.startswith("blocks.") and ".mlp.w3." in k:
            k = k.replace(".mlp.w3.", ".mlp.fc2.")
        elif k.startswith(("head.", "dino_head.", "ibot_head.")):
            unexpected.append(k)
            continue
        out[k] = v
    return Mapped(out, None, unexpected, "DINOv2 backbone" + (" with registers" if "reg_token" in out else ""))


def read_mae(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    sd = strip_prefix(_state_dict(ckpt, "model"))
    trunk, unexpected = remap(sd, [("", "")], ignore=("decoder_", "mask_token"))
    if "cls_token" not in trunk:
        raise InvalidInput(f"not an MAE encoder: no cls_token (keys: {first_keys(sd, 6)})")
    return Mapped(trunk, None, unexpected, "MAE encoder ({'model': ...})")


def read_ijepa(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    if not isinstance(ckpt.get("target_encoder"), dict):
        raise InvalidInput(
            "not an I-JEPA training checkpoint: expected a 'target_encoder' entry (the released "
            f"IN1K-vit.h.14-300e.pth.tar has encoder, predictor and target_encoder); top-level keys: {first_keys(ckpt, 8)}"
        )
    sd = strip_prefix(ckpt["target_encoder"])
    return Mapped(dict(sd), None, [], "I-JEPA checkpoint (target_encoder)")


def _clip_block(k: str) -> str:
    for a, b in (
        ("transformer.resblocks.", "blocks."),
        (".ln_1.", ".norm1."),
        (".ln_2.", ".norm2."),
        (".attn.in_proj_weight", ".attn.qkv.weight"),
        (".attn.in_proj_bias", ".attn.qkv.bias"),
        (".attn.out_proj.", ".attn.proj."),
        (".mlp.c_fc.", ".mlp.fc1."),
        (".mlp.c_proj.", ".mlp.fc2."),
    ):
        k = k.replace(a, b)
    return k


def read_clip(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    sd = strip_prefix(_state_dict(ckpt, "state_dict"))
    if "cls_token" in sd:  # timm's file: timm names, head = the projection (zero bias)
        return _read_timm_clip(sd, want_head)
    if "visual.class_embedding" not in sd:
        raise InvalidInput(f"not an open_clip ViT checkpoint: no visual.class_embedding (keys: {first_keys(sd, 6)})")
    return _read_open_clip(sd, want_head)


def _read_timm_clip(sd: dict, want_head: bool) -> Mapped:
    trunk = {k: v for k, v in sd.items() if not k.startswith("head.")}
    head_sd = None
    if want_head and "head.weight" in sd:
        b = sd.get("head.bias")
        if b is not None and torch.count_nonzero(b):
            raise InvalidInput("timm CLIP file with a non-zero head.bias: not a CLIP projection")
        head_sd = {"0.weight": sd["head.weight"]}
    return Mapped(trunk, head_sd, [], "timm CLIP image tower")


def _read_open_clip(sd: dict, want_head: bool) -> Mapped:
    """open_clip's ``visual.*``: the trunk in timm names, ``visual.proj`` (D, E) the head's
    weight (E, D); the text tower's keys are not used, any other key is unexpected."""
    trunk: dict[str, Any] = {}
    unexpected: list[str] = []
    head_sd = None
    for k, v in sd.items():
        if not k.startswith("visual."):
            if not k.startswith(_TEXT):
                unexpected.append(k)
            continue
        name = k[len("visual.") :]
        if name == "proj":
            head_sd = {"0.weight": v.t().contiguous()} if want_head else None
            continue
        timm = _clip_visual(name, v)
        if timm is None:
            unexpected.append(k)
        else:
            trunk[timm[0]] = timm[1]
    return Mapped(trunk, head_sd, unexpected, "open_clip image tower (visual.*)")


# open_clip visual.<prefix>... -> timm <prefix>... (the patch embedding and the two LayerNorms)
_CLIP_PREFIXES = (("conv1.", "patch_embed.proj."), ("ln_pre.", "norm_pre."), ("ln_post.", "norm."))


def _clip_visual(name: str, v: Any) -> tuple[str, Any] | None:
    """timm's (name, tensor) for the open_clip trunk entry ``visual.<name>``; None if it is not one."""
    if name == "class_embedding":
        return "cls_token", v.reshape(1, 1, -1)
    if name == "positional_embedding":
        return "pos_embed", v.unsqueeze(0)
    for src, dst in _CLIP_PREFIXES:
        if name.startswith(src):
            return dst + name[len(src) :], v
    if name.startswith("transformer.resblocks."):
        return _clip_block(name), v
    return None


def read_siglip(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    sd = strip_prefix(_state_dict(ckpt, "state_dict"))
    if any(k.startswith("visual.trunk.") for k in sd):
        trunk, unexpected = remap(sd, [("visual.trunk.", "")], ignore=_TEXT)
        return Mapped(trunk, None, unexpected, "open_clip SigLIP image tower (visual.trunk.*)")
    if "pos_embed" not in sd or not any(k.startswith("attn_pool.") for k in sd):
        raise InvalidInput(f"not a SigLIP image tower: no pos_embed / attn_pool (keys: {first_keys(sd, 6)})")
    return Mapped(dict(sd), None, [], "timm SigLIP image tower")


VIT_READERS = {
    "dinov2": read_dinov2,
    "mae": read_mae,
    "ijepa": read_ijepa,
    "clip": read_clip,
    "siglip": read_siglip,
}
