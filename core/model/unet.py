"""ADM's UNet (Dhariwal & Nichol 2021) conditioned on a representation h, with guided-diffusion keys.

Conditioning (``UNetConfig.cond``):
- ``embed`` (the released RCDM code): ``ssl_emb = Linear(cond_dim, 4 * model_channels)`` is added
  to the timestep embedding, which drives every ResBlock's scale-shift norm.
- ``cbn`` (the RCDM paper's main method): ``cbn_shared = Linear(cond_dim, cbn_dim)`` gives s, and
  every ResBlock GroupNorm becomes affine-free with gain ``1 + W_g s`` and bias ``W_b s`` (see
  ``nn_blocks.CondGroupNorm``; group statistics, so samples in a batch are independent).
- ``both`` (an rcdm addition, opt-in): ``ssl_emb`` and ``cbn_shared`` together, h enters the
  timestep embedding and modulates every ResBlock GroupNorm.
- ``xattn`` (for a ``tokens`` store: h is a ViT's patch grid, ``cond_tokens`` tokens stored
  flat): ``token_proj = Linear(token_dim, xattn_dim)`` plus learned position embeddings
  ``token_pos`` and a LayerNorm give the context, and every attention block then cross-attends to
  it (``blocks.CrossAttention``: queries from the feature map, keys / values from the context).
  ``embed`` / ``cbn`` with ``cond_tokens`` > 0 condition on the mean of the tokens instead.
- ``none``: unconditional (e.g. ADM's unconditional 256 px model).

``cond_image`` > 0 (an rcdm addition, opt-in, with any of the above): ``cond_image_map =
Linear(token_dim, 3 N^2)`` maps h to a 3 x N x N image, bilinearly upsampled to the model's size
and concatenated to the noisy input as 3 more channels. Training fits it by ridge regression on
the training store first (``rcdm.train.condimage``); the null condition (h = 0) gives its bias,
the fitted mean image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from rcdm.model.blocks import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_module,
)
from rcdm.model.config import PRESETS, UNetConfig, config_from_state_dict, preset
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PRESETS",
    "UNetConfig",
    "UNetModel",
    "config_from_state_dict",
    "count_parameters",
    "preset",
]


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential whose ResBlocks also receive the embedding and the cbn projection."""

    def forward(
        self,
        x: torch.Tensor,
        emb_act: torch.Tensor,
        s: torch.Tensor | None = None,
        ctx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb_act, s)
            elif ctx is not None and isinstance(layer, AttentionBlock):
                x = layer(x, ctx)  # cross-attention to the tokens (cond xattn)
            else:
                x = layer(x)
        return x


class CondStandardize(nn.Module):
    """h -> (h - mean) / std per dimension, with statistics of the training store (buffers).

    Representations whose images differ only in a small part of a large common component (a
    random network's features are ~99% correlated across images) give the conditioning layers
    little to work with; standardising makes every dimension's variation visible. The buffers are
    saved with the weights, so sampling applies exactly the training statistics.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def set_statistics(self, feats: torch.Tensor, eps: float = 1e-6) -> None:
        """feats (N, dim) float: the training representations."""
        self.set_moments(feats.mean(0), feats.std(0), eps)

    def set_moments(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> None:
        """The training representations' per-dimension mean and standard deviation (dim,)."""
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(eps))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h.float() - self.mean) / self.std


class UNetModel(nn.Module):
    """ADM's UNet: forward(x (N, C, H, W), t (N,), cond (N, cond_dim)) -> (N, out_channels, H, W).

    ``cond`` is ignored by an unconditional (``cond="none"``) model. ``grad_checkpointing = True``
    recomputes each block's activations in backward to save memory.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False  # recompute each block in backward (saves memory)
        mc, ted = cfg.model_channels, cfg.time_embed_dim

        # Creation order = guided-diffusion's state-dict key order (and the order of the random
        # initialisation's draws): time embedding, conditioning, encoder, middle, decoder, output.
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        self._add_conditioning(cfg)
        ch, skip_chans, ds = self._add_input_blocks(cfg)
        self.middle_block = TimestepEmbedSequential(_resblock(cfg, ch, ch), _attention(cfg, ch), _resblock(cfg, ch, ch))
        ch = self._add_output_blocks(cfg, ch, skip_chans, ds)
        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(mc * cfg.channel_mult[0], cfg.out_channels, 3, padding=1)),
        )

    def _add_conditioning(self, cfg: UNetConfig) -> None:
        """The layers that take y or h, each only when the config uses it (the module docstring)."""
        ted = cfg.time_embed_dim
        if cfg.num_classes:  # ADM's class-conditional checkpoints
            self.label_emb = nn.Embedding(cfg.num_classes, ted)
        if cfg.cond != "none" and cfg.cond_norm == "standardize":
            self.cond_norm = CondStandardize(cfg.cond_dim)
        if cfg.cond in ("embed", "both"):
            self.ssl_emb = nn.Linear(cfg.token_dim, ted)
        if cfg.cond in ("cbn", "both"):
            self.cbn_shared = nn.Linear(cfg.token_dim, cfg.cbn_dim)
        if cfg.cond == "xattn":
            self.token_proj = nn.Linear(cfg.token_dim, cfg.xattn_dim)
            self.token_pos = nn.Parameter(torch.randn(1, cfg.cond_tokens, cfg.xattn_dim) * 0.02)
            self.token_norm = nn.LayerNorm(cfg.xattn_dim)
        if cfg.cond_image:  # h -> a 3 x N x N image, given as 3 more input channels (rcdm addition)
            self.cond_image_map = nn.Linear(cfg.token_dim, 3 * cfg.cond_image**2)

    def _add_input_blocks(self, cfg: UNetConfig) -> tuple[int, list[int], int]:
        """The encoder: per level ``num_res_blocks`` ResBlocks (with attention where the level's
        downsampling rate is in ``attention_ds``), then a downsampling layer but after the last.
        Returns the channels at the bottom, each block's output channels (the skips) and the
        bottom's downsampling rate."""
        mc = cfg.model_channels
        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels + 3 * bool(cfg.cond_image), ch, 3, padding=1))]
        )
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [_resblock(cfg, ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(_attention(cfg, ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(_downsample(cfg, ch)))
                skip_chans.append(ch)
                ds *= 2
        return ch, skip_chans, ds

    def _add_output_blocks(self, cfg: UNetConfig, ch: int, skip_chans: list[int], ds: int) -> int:
        """The decoder, levels in reverse: ``num_res_blocks + 1`` ResBlocks each taking one skip
        (``skip_chans`` is used up), attention as in the encoder, an upsampling layer ending every
        level but the top. Returns the output channels."""
        mc = cfg.model_channels
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [_resblock(cfg, ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers.append(_attention(cfg, ch, upsample=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(_upsample(cfg, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        return ch

    def _block(self, block: nn.Module, h: torch.Tensor, emb_act, s, ctx=None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb_act, s, ctx, use_reentrant=False)
        return block(h, emb_act, s, ctx)

    def cond_vector(self, cond: torch.Tensor) -> torch.Tensor:
        """The (N, token_dim) vector of h that embed / cbn / cond_image see: standardised if the
        model standardises, the token mean on a tokens store."""
        if self.cfg.cond_norm == "standardize":
            cond = self.cond_norm(cond)
        return self._pooled(cond)

    def _pooled(self, cond: torch.Tensor) -> torch.Tensor:
        if not self.cfg.cond_tokens:
            return cond
        return cond.view(cond.shape[0], self.cfg.cond_tokens, self.cfg.token_dim).mean(1)  # token mean

    def cond_image(self, vec: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, token_dim) -> the map's (N, 3, H, W) image of h, bilinearly upsampled to ``size``."""
        r = self.cfg.cond_image
        img = self.cond_image_map(vec).view(vec.shape[0], 3, r, r)
        return img if (r, r) == tuple(size) else F.interpolate(img, size=size, mode="bilinear", align_corners=False)

    def token_context(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (N, cond_tokens * token_dim) flat tokens -> the context (N, T, xattn_dim)."""
        t = cond.view(cond.shape[0], self.cfg.cond_tokens, self.cfg.token_dim)
        return self.token_norm(self.token_proj(t) + self.token_pos)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        cond_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (N, C, H, W), t (N,) timesteps, cond (N, cond_dim) representations, y (N,) class
        labels (only for ADM class-conditional models) -> (N, out_channels, H, W).

        cond_drop (N,) bool marks samples drawn without their condition: their (standardised)
        representation is replaced by zeros, the null condition of classifier-free guidance."""
        cfg = self.cfg
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        # inputs in the parameters' dtype (fp32 under autocast, which casts per op; bf16 for a
        # model converted with .to(torch.bfloat16))
        wdtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(wdtype))  # (N, 4 mc)
        if cfg.num_classes:
            if y is None:
                raise InvalidInput("this ADM model is class-conditional: pass labels y=(N,)")
            emb = emb + self.label_emb(y)
        s = ctx = extra = None
        if cfg.cond != "none":
            emb, s, ctx, extra = self._condition(self._checked(cond), cond_drop, emb, wdtype, x.shape[-2:])
        # every ResBlock starts its embedding path with SiLU: apply it once here
        emb_act = F.silu(emb)

        hs = []
        h = x.to(wdtype) if extra is None else torch.cat([x.to(wdtype), extra.to(wdtype)], 1)
        for block in self.input_blocks:
            h = self._block(block, h, emb_act, s, ctx)
            hs.append(h)
        h = self._block(self.middle_block, h, emb_act, s, ctx)
        for block in self.output_blocks:
            h = self._block(block, torch.cat([h, hs.pop()], dim=1), emb_act, s, ctx)
        return self.out(h)

    def _checked(self, cond: torch.Tensor | None) -> torch.Tensor:
        """``cond`` itself, if a conditioned model can take it (else the error says what it needs)."""
        cfg = self.cfg
        if cond is None:
            raise InvalidInput(f"this model is conditioned ({cfg.cond}); pass cond=(N, {cfg.cond_dim})")
        if cond.shape[-1] != cfg.cond_dim:
            tokens = f" ({cfg.cond_tokens} tokens of {cfg.token_dim})" if cfg.cond_tokens else ""
            raise InvalidInput(f"condition has dimension {cond.shape[-1]}, the model expects {cfg.cond_dim}{tokens}")
        return cond

    def _condition(
        self,
        cond: torch.Tensor,
        cond_drop: torch.Tensor | None,
        emb: torch.Tensor,
        wdtype: torch.dtype,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """What h contributes: (the time embedding plus ``ssl_emb``, the cbn projection s, the
        cross-attention context, the cond_image channels at ``size``); None for what the model
        does not use."""
        cfg = self.cfg
        s = ctx = extra = None
        if cfg.cond_norm == "standardize":
            cond = self.cond_norm(cond)
        if cond_drop is not None:
            cond = cond.masked_fill(cond_drop.view(-1, 1).to(torch.bool), 0.0)
        cond = cond.to(wdtype)
        if cfg.cond == "xattn":
            ctx = self.token_context(cond)
        cond = self._pooled(cond)  # pooled conditioning on a tokens store: the token mean
        if cfg.cond_image:
            extra = self.cond_image(cond, size)
        if cfg.cond in ("embed", "both"):
            emb = emb + self.ssl_emb(cond)
        if cfg.cond in ("cbn", "both"):
            s = self.cbn_shared(cond)  # (N, cbn_dim)
        return emb, s, ctx, extra


def _resblock(cfg: UNetConfig, ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
    """A ResBlock of ``cfg`` (its norms conditional under cbn)."""
    cbn_dim = cfg.cbn_dim if cfg.cond in ("cbn", "both") else 0
    return ResBlock(ch_in, cfg.time_embed_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, up, down, cbn_dim)


def _attention(cfg: UNetConfig, ch: int, upsample: bool = False) -> AttentionBlock:
    """An attention block of ``cfg`` (cross-attending to the tokens under xattn)."""
    ctx_dim = cfg.xattn_dim if cfg.cond == "xattn" else 0
    return AttentionBlock(ch, cfg.heads_for(ch, upsample), not cfg.use_new_attention_order, ctx_dim)


def _downsample(cfg: UNetConfig, ch: int) -> nn.Module:
    """A ResBlock that halves the size (``resblock_updown``), else a strided conv / average pool."""
    return _resblock(cfg, ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)


def _upsample(cfg: UNetConfig, ch: int) -> nn.Module:
    """A ResBlock that doubles the size (``resblock_updown``), else nearest (+ conv)."""
    return _resblock(cfg, ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
