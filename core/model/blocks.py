"""Building blocks of ADM's UNet: normalisation, ResBlock, attention, resampling.

Module and attribute names match guided-diffusion's ``unet.py`` so state-dict keys are identical
(``in_layers.0``, ``emb_layers.1``, ``out_layers.3``, ``skip_connection``, ``norm``, ``qkv``,
``proj_out``, ``op``, ``conv``).

Conditional normalisation (``cbn``, the RCDM paper's main method after IC-GAN / BigGAN's
conditional BatchNorm): every ResBlock normalisation becomes an affine-free GroupNorm whose
per-channel gain ``1 + W_g s`` and bias ``W_b s`` come from the shared projection ``s`` of the
representation. We use *group* statistics (per sample, 32 groups) instead of batch statistics, so
samples in a batch never affect each other: a sample depends on its own condition and seed only,
whatever the batch size, and train / eval behave the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from torch import nn

GROUPS = 32


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (ADM initialises residual outputs at zero)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (N,) -> (N, dim) float32.

    Same layout as guided-diffusion: [cos(t f_0..f_{d/2-1}), sin(...)].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _group_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm with 32 groups, returned in x's dtype.

    float32 inputs take the plain path. For bf16/fp16 inputs the native kernels already
    accumulate the statistics in float32, so we run them on the low-precision tensor directly
    (autocast would otherwise up-cast to float32 and write a float32 copy): one memory pass
    instead of three in eager mode, and the same numerics as guided-diffusion's
    ``GroupNorm32`` (statistics in float32, output in the input's dtype).
    """
    if x.dtype == torch.float32:
        return F.group_norm(x, GROUPS, weight, bias, eps)
    with torch.autocast(x.device.type, enabled=False):
        w = None if weight is None else weight.to(x.dtype)
        b = None if bias is None else bias.to(x.dtype)
        return F.group_norm(x, GROUPS, w, b, eps)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups) with float32 statistics, output in the input's dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _group_norm(x, self.weight, self.bias, self.eps)


class CondGroupNorm(nn.Module):
    """Affine-free GroupNorm modulated per sample: norm(x) * (1 + W_g s) + W_b s.

    ``gain`` and ``bias`` are bias-free linear maps of the shared cbn projection s (N, cbn_dim),
    as in BigGAN's ``ccbn`` layer.
    """

    def __init__(self, channels: int, cbn_dim: int) -> None:
        super().__init__()
        self.num_groups, self.eps = GROUPS, 1e-5
        self.gain = nn.Linear(cbn_dim, channels, bias=False)
        self.bias = nn.Linear(cbn_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = _group_norm(x, None, None, self.eps)
        gain = (1 + self.gain(s)).to(h.dtype)[:, :, None, None]  # (N, C, 1, 1)
        bias = self.bias(s).to(h.dtype)[:, :, None, None]
        return torch.addcmul(bias, h, gain)


def normalization(channels: int, cbn_dim: int = 0) -> nn.Module:
    return CondGroupNorm(channels, cbn_dim) if cbn_dim else GroupNorm32(channels)


def _norm(layer: nn.Module, x: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, CondGroupNorm):
        if s is None:
            raise InvalidInput("a cbn-conditioned model needs a condition (cond=...)")
        return layer(x, s)
    return layer(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling, optionally followed by a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if self.use_conv else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """ADM's residual block with time-embedding scale-shift norm, optional up/down sampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
        cbn_dim: int = 0,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            normalization(channels, cbn_dim),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels, cbn_dim),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W); emb_act = SiLU(time embedding) (N, E), shared by all blocks."""
        h = F.silu(_norm(self.in_layers[0], x, s))
        # up/down: resample after the activation and before the conv, on both paths
        h = self._resample(h)
        x = self._resample(x)
        h = self.in_layers[2](h)
        emb_out = self.emb_layers[1](emb_act).to(h.dtype)[:, :, None, None]  # (N, 2C or C, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = _norm(self.out_layers[0], h, s)
            h = torch.addcmul(shift, h, 1 + scale)
        else:
            h = _norm(self.out_layers[0], h + emb_out, s)
        h = self.out_layers[3](self.out_layers[2](F.silu(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, via scaled_dot_product_attention.

    ``qkv`` and ``proj_out`` keep guided-diffusion's 1x1 Conv1d parameter shapes; they are applied
    as linear maps on the (N, T, C) token view. ``legacy=True`` is QKVAttentionLegacy's channel
    layout (per head: q, k, v), ``legacy=False`` QKVAttention's (q for all heads, then k, then v).
    """

    def __init__(self, channels: int, num_heads: int, legacy: bool = True, ctx_dim: int = 0) -> None:
        super().__init__()
        if channels % num_heads:
            raise InvalidInput(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads, self.legacy = num_heads, legacy
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        if ctx_dim:  # cond "xattn": then attend to the representation's tokens
            self.cross = CrossAttention(channels, num_heads, ctx_dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W); ctx (N, T, ctx_dim): the projected tokens (models with cond xattn)."""
        x = self.self_attention(x)
        if hasattr(self, "cross"):
            if ctx is None:
                raise InvalidInput("a cross-attention (xattn) model needs its token condition (cond=...)")
            x = self.cross(x, ctx)
        return x

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        # (N, C, H, W) -> (N, T, C) tokens (free for channels_last inputs)
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias)  # (N, T, 3C)
        if self.legacy:
            qkv = qkv.view(n, hh * ww, heads, 3, ch)
            q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # (N, heads, T, ch)
        else:
            qkv = qkv.view(n, hh * ww, 3, heads, ch)
            q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        # softmax(q k^T / sqrt(ch)) v: the same scale as guided-diffusion's two 1/ch**0.25
        a = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, ch)
        a = a.transpose(1, 2).reshape(n, hh * ww, c)  # (N, T, C), head-major channels
        out = F.linear(a, self.proj_out.weight[:, :, 0], self.proj_out.bias)  # (N, T, C)
        return x + out.transpose(1, 2).reshape(n, c, hh, ww)


class CrossAttention(nn.Module):
    """Cross-attention from the feature map to the representation's tokens (cond ``xattn``).

    Queries from the GroupNorm'd feature map, keys and values from the projected tokens ``ctx``
    (N, T, ctx_dim); the output projection starts at zero, so a fresh block is the identity
    (ADM's rule for residual outputs). Added after each attention block's self-attention.
    """

    def __init__(self, channels: int, num_heads: int, ctx_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(ctx_dim, 2 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))  # (N, HW, C)
        k, v = self.kv(ctx.to(q.dtype)).chunk(2, dim=-1)  # (N, T, C) each
        q, k, v = (t.reshape(n, -1, heads, ch).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, ch)
        out = self.proj_out(a.transpose(1, 2).reshape(n, hh * ww, c))  # (N, HW, C)
        return x + out.transpose(1, 2).reshape(n, c, hh, ww)
