"""UNet architecture description: the typed config, the presets, and inference from a state dict.

Torch-free on purpose (only tensor ``.shape`` is used), so the CLI and the JSON checkpoint
metadata can use it without importing torch.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rcdm.errors import InvalidInput

CondMethod = Literal["embed", "cbn", "both", "xattn", "none"]
COND_METHODS = ("embed", "cbn", "both", "xattn", "none")


@dataclass(frozen=True)
class UNetConfig:
    """ADM's UNet (Dhariwal & Nichol 2021, guided-diffusion ``UNetModel``) plus RCDM conditioning."""

    image_size: int  # training / sampling resolution in pixels
    model_channels: int  # base channel count
    num_res_blocks: int  # ResBlocks per resolution level (the decoder has one more)
    channel_mult: tuple[int, ...]  # channels per level, as multiples of model_channels
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # resolutions (pixels) with self-attention
    in_channels: int = 3
    out_channels: int = 6  # 2 * in_channels with learned sigma (epsilon and variance interpolation)
    dropout: float = 0.0
    num_heads: int = 1  # attention heads (used when num_head_channels == -1)
    num_head_channels: int = -1  # channels per head; -1: use num_heads
    num_heads_upsample: int = -1  # decoder heads; -1: num_heads
    use_new_attention_order: bool = False  # qkv layout: False = guided-diffusion "legacy" layout
    use_scale_shift_norm: bool = True  # FiLM-style time embedding: norm(h) * (1 + scale) + shift
    resblock_updown: bool = True  # down/upsample with ResBlocks (else strided conv / nearest+conv)
    conv_resample: bool = True  # Downsample/Upsample use a conv (only when resblock_updown is False)
    cond: CondMethod = "embed"  # embed: ssl_emb added to the time embedding; cbn: conditional norm; xattn: cross-attention to the tokens in every attention block
    cond_dim: int = 2048  # dimension of the representation h (0 with cond "none")
    cbn_dim: int = 512  # width of the shared cbn projection of h
    cond_norm: Literal["none", "standardize"] = (
        "none"  # standardize: h -> (h - mean) / std, stats from the training store (buffers cond_norm.*)
    )
    cond_tokens: int = 0  # > 0: h is a flat grid of cond_tokens tokens (cond_dim = cond_tokens x token dim); embed / cbn condition on their mean, xattn attends to them
    xattn_dim: int = 256  # xattn: width of the learned token projection (the keys' and values' input)
    cond_image: int = 0  # > 0: cond_image_map = Linear(h, 3 x N x N), upsampled to image_size and concatenated to the input as 3 channels (an rcdm addition); 0: off
    num_classes: int = 0  # ADM class-conditional label embedding (label_emb, forward y=...); 0: none
    schedule: Literal["linear", "cosine"] = "linear"  # the beta schedule this model is trained with
    learn_sigma: bool = True  # out_channels = 2 * in_channels

    def __post_init__(self) -> None:
        self._check_conditioning()
        self._check_architecture()

    def _check_conditioning(self) -> None:
        if self.cond not in COND_METHODS:
            raise InvalidInput(f"cond={self.cond!r}: expected one of {COND_METHODS}")
        if self.cond != "none" and self.cond_dim <= 0:
            raise InvalidInput(f"cond={self.cond!r} needs cond_dim > 0, got {self.cond_dim}")
        if self.cond == "xattn" and self.cond_tokens <= 0:
            raise InvalidInput(
                "cond='xattn' attends to a patch-token grid: train it on a tokens store "
                "(`rcdm extract --layer tokens`), or use cond 'embed' / 'cbn' for pooled vectors"
            )
        if self.cond_image and (self.cond == "none" or not 0 < self.cond_image <= self.image_size):
            raise InvalidInput(
                f"cond_image={self.cond_image} needs a conditioned model and 1 <= N <= image_size ({self.image_size})"
            )
        if self.cond_tokens and self.cond_dim % self.cond_tokens:
            raise InvalidInput(f"cond_dim {self.cond_dim} is not a whole number of {self.cond_tokens} tokens")

    def _check_architecture(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise InvalidInput(f"schedule={self.schedule!r}: expected 'linear' or 'cosine'")
        expect_out = self.in_channels * (2 if self.learn_sigma else 1)
        if self.out_channels != expect_out:
            raise InvalidInput(
                f"out_channels={self.out_channels} but learn_sigma={self.learn_sigma} with "
                f"{self.in_channels} input channels needs {expect_out}"
            )
        levels = len(self.channel_mult)
        if self.image_size % (2 ** (levels - 1)) != 0:
            raise InvalidInput(
                f"image_size={self.image_size} is not divisible by 2**{levels - 1} (channel_mult has {levels} levels)"
            )
        for ch in self._attention_channels():
            heads = self.heads_for(ch)
            if heads <= 0 or ch % heads != 0:
                raise InvalidInput(
                    f"attention with {ch} channels cannot be split into heads "
                    f"(num_heads={self.num_heads}, num_head_channels={self.num_head_channels})"
                )
        for ch in {self.model_channels * m for m in self.channel_mult}:
            if ch % 32 != 0:
                raise InvalidInput(f"{ch} channels is not a multiple of the 32 GroupNorm groups")

    @property
    def token_dim(self) -> int:
        """The dimension of one token (cond_tokens > 0), or of the pooled vector."""
        return self.cond_dim // self.cond_tokens if self.cond_tokens else self.cond_dim

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsampling rates (1, 2, 4, ...) at which attention is used."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def heads_for(self, channels: int, upsample: bool = False) -> int:
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads

    def _attention_channels(self) -> list[int]:
        chans = [self.model_channels * self.channel_mult[-1]]
        for level, mult in enumerate(self.channel_mult):
            if 2**level in self.attention_ds:
                chans.append(self.model_channels * mult)
        return chans

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidInput(f"unknown UNetConfig keys {unknown}; known: {sorted(names)}")
        kw = dict(d)
        for k in ("channel_mult", "attention_resolutions"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        return cls(**kw)


# ADM's published architectures (guided-diffusion README, "model flags"), plus a CPU-sized one.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=32,
        model_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_head_channels=32,
        dropout=0.0,
        schedule="linear",
    ),
    "adm64": dict(
        image_size=64,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        num_head_channels=64,
        use_new_attention_order=True,  # ADM's 64x64 model uses QKVAttention (new order)
        dropout=0.1,
        schedule="cosine",
    ),
    "adm128": dict(
        image_size=128,
        model_channels=256,
        channel_mult=(1, 1, 2, 3, 4),
        num_res_blocks=2,
        num_heads=4,
        dropout=0.0,
        schedule="linear",
    ),
    "adm256": dict(
        image_size=256,
        model_channels=256,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        num_head_channels=64,
        dropout=0.0,
        schedule="linear",
    ),
}
PRESETS = tuple(_PRESETS)


def preset(name: str, cond: str = "embed", cond_dim: int = 2048, **overrides: Any) -> UNetConfig:
    """The named architecture; ``overrides`` replace any UNetConfig field (e.g. image_size)."""
    if name not in _PRESETS:
        raise InvalidInput(f"unknown UNet preset {name!r}; known: {', '.join(PRESETS)}")
    kw = dict(_PRESETS[name], cond=cond, cond_dim=0 if cond == "none" else cond_dim)
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise InvalidInput(f"unknown UNetConfig fields {bad}; known: {sorted(names)}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return UNetConfig(**kw)


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in sd[key].shape)


def config_from_state_dict(sd: Mapping[str, Any], image_size: int | None = None, **overrides: Any) -> UNetConfig:
    """Infer the UNetConfig of a guided-diffusion / RCDM state dict from its key names and shapes.

    Head counts, dropout and the schedule are not stored in the weights: they come from the ADM
    preset with the same channels / levels / blocks, else guided-diffusion's defaults (with a
    warning), and ``overrides`` win over both.
    """
    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        raise InvalidInput(
            "not a guided-diffusion UNet state dict: keys 'input_blocks.0.0.weight' and 'out.2.weight' are missing"
        )
    mc, in_ch = _shape(sd, "input_blocks.0.0.weight")[:2]
    if "cond_image_map.weight" in sd:  # the map's 3 channels are inputs of the first conv too
        in_ch -= 3
        overrides = {"cond_image": round((_shape(sd, "cond_image_map.weight")[0] // 3) ** 0.5), **overrides}
    out_ch = _shape(sd, "out.2.weight")[0]
    levels, nrb, resblock_updown = _decoder_levels(sd)
    channel_mult, attn_ds = _encoder_levels(sd, mc, levels, nrb)
    if "token_proj.weight" in sd:
        t, xd = _shape(sd, "token_pos")[1:]
        overrides = {
            "cond": "xattn",
            "cond_tokens": t,
            "xattn_dim": xd,
            "cond_dim": t * _shape(sd, "token_proj.weight")[1],
            **overrides,
        }
    cond, cond_dim, cbn_dim = _conditioning(sd)
    emb_out = _shape(sd, "input_blocks.1.0.emb_layers.1.weight")[0]
    use_ssn = emb_out == 2 * mc * channel_mult[0]

    known = _unrecorded_settings(mc, channel_mult, nrb, image_size)
    size = image_size or known["image_size"]
    kw: dict[str, Any] = dict(known)
    kw.update(
        image_size=size,
        model_channels=mc,
        num_res_blocks=nrb,
        channel_mult=channel_mult,
        attention_resolutions=tuple(size // ds for ds in attn_ds),
        in_channels=in_ch,
        out_channels=out_ch,
        learn_sigma=out_ch == 2 * in_ch,
        use_scale_shift_norm=use_ssn,
        resblock_updown=resblock_updown,
        cond_norm="standardize" if "cond_norm.mean" in sd else "none",
        cond=cond,
        cond_dim=cond_dim,
        cbn_dim=cbn_dim,
        num_classes=_shape(sd, "label_emb.weight")[0] if "label_emb.weight" in sd else 0,
    )
    kw.update(overrides)
    return UNetConfig(**kw)


def _n_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    """How many ``<prefix>.N`` blocks the state dict has."""
    idx = {int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")}
    return max(idx) + 1 if idx else 0


def _decoder_levels(sd: Mapping[str, Any]) -> tuple[int, int, bool]:
    """(levels, ResBlocks per level, resblock_updown), read off the decoder.

    Each decoder level but the last ends with an up layer: a ResBlock (in_layers) or Upsample
    (conv), found as sub-module 1 or 2 of an output block; a level has ``num_res_blocks + 1``
    output blocks."""
    n_out = _n_blocks(sd, "output_blocks")
    n_up = 0
    resblock_updown = True
    for i in range(n_out):
        for m in (1, 2):
            p = f"output_blocks.{i}.{m}."
            if f"{p}in_layers.2.weight" in sd:
                n_up += 1
            elif f"{p}conv.weight" in sd:
                n_up += 1
                resblock_updown = False
    levels = n_up + 1
    if n_out % levels:
        raise InvalidInput(f"cannot infer the levels: {n_out} output blocks, {n_up} up layers")
    return levels, n_out // levels - 1, resblock_updown


def _encoder_levels(sd: Mapping[str, Any], mc: int, levels: int, nrb: int) -> tuple[tuple[int, ...], list[int]]:
    """(channel_mult, the downsampling rates with attention), read off the encoder: block
    1 + l * (nrb + 1) is the first ResBlock of level l (ds = 2**l)."""
    mult, attn_ds = [], []
    for level in range(levels):
        b = 1 + level * (nrb + 1)
        mult.append(_shape(sd, f"input_blocks.{b}.0.out_layers.3.weight")[0] // mc)
        if f"input_blocks.{b}.1.qkv.weight" in sd:
            attn_ds.append(2**level)
    return tuple(mult), attn_ds


# (has ssl_emb, has cbn_shared) -> the conditioning method
_COND_OF_KEYS = {(True, True): "both", (True, False): "embed", (False, True): "cbn", (False, False): "none"}


def _conditioning(sd: Mapping[str, Any]) -> tuple[str, int, int]:
    """(cond, cond_dim, cbn_dim) from the conditioning layers present (cbn_dim 512 without cbn)."""
    embed, cbn = "ssl_emb.weight" in sd, "cbn_shared.weight" in sd
    cond = _COND_OF_KEYS[(embed, cbn)]
    cond_dim = _shape(sd, "ssl_emb.weight" if embed else "cbn_shared.weight")[1] if embed or cbn else 0
    cbn_dim = _shape(sd, "cbn_shared.weight")[0] if cbn else 512
    return cond, cond_dim, cbn_dim


def _unrecorded_settings(mc: int, channel_mult: tuple[int, ...], nrb: int, image_size: int | None) -> dict[str, Any]:
    """What the weights do not record (heads, dropout, schedule, the preset's image size): the
    ADM preset of the same channels / levels / blocks, else guided-diffusion's defaults, with a
    warning (attributed to the caller of config_from_state_dict)."""
    for p in _PRESETS.values():
        if (p["model_channels"], tuple(p["channel_mult"]), p["num_res_blocks"]) == (mc, channel_mult, nrb):
            known = dict(p)
            known.pop("attention_resolutions", None)
            return known
    warnings.warn(
        f"unknown architecture (channels {mc}, mult {channel_mult}, {nrb} blocks): assuming "
        "guided-diffusion defaults num_heads=4, legacy attention, dropout 0, linear schedule; "
        "pass overrides if that is wrong",
        stacklevel=3,
    )
    if image_size is None:
        raise InvalidInput("cannot infer the image size of this architecture; pass image_size explicitly")
    return dict(num_heads=4, dropout=0.0, schedule="linear")
