"""PIL's resize and the encoder/ADM crop rules on uint8 torch tensors, bit for bit, on any device.

Pillow resizes an 8-bit image in two separable passes, each with per-output-pixel filter weights
computed in double precision, normalised, rounded to 22-bit fixed point, accumulated in int32 from
``1 << 21`` and clipped to [0, 255] (Resample.c). This module computes the same weights (with numpy,
in the same order of operations) and applies them with an integer gather-multiply-sum, so
``resize(x)`` equals ``Image.resize`` exactly, on the CPU or a GPU. Releases differ in which pass
runs first (Resample.c up to Pillow 12: horizontal; Pillow 13 picks per size by a rule it does not
document), so the order for each (size, new size, filter) is found once by resizing a seeded probe
image of that size with the installed Pillow (:func:`pass_order`, cached).
``encoder_crop`` / ``adm_crop`` then apply ``rcdm.data.preprocess``'s rules on top of it, so an
image decoded on the GPU (``extract.decode: gpu``) gets exactly the recorded preprocessing.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from rcdm.data.preprocess import (
    Preprocess,
    adm_offsets,
    adm_sizes,
    center_offsets,
    shorter_side_size,
)

__all__ = ["resize", "adm_crop", "encoder_crop", "pil_weights", "pass_order"]

_PRECISION_BITS = 32 - 8 - 2  # Resample.c


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1, np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0)
    )


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


_FILTERS = {"box": (_box, 0.5), "bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@lru_cache(maxsize=4096)
def pil_weights(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(index (out, k) int64, weight (out, k) int32): Pillow's fixed-point weights of one pass."""
    fn, fsupport = _FILTERS[kind]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = fsupport * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale  # (out,)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C's (int) truncates
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    j = np.arange(ksize)
    valid = j[None, :] < xmax[:, None]  # (out, k)
    w = np.where(valid, fn(((j[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    ww = np.zeros(out_size)
    for c in range(ksize):  # sequential, as Resample.c sums
        ww = ww + w[:, c]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION_BITS)), np.trunc(0.5 + w * (1 << _PRECISION_BITS)))
    index = np.minimum(xmin[:, None] + j[None, :], in_size - 1)
    return index.astype(np.int64), fixed.astype(np.int32)


@lru_cache(maxsize=4096)
def _device_weights(in_size: int, out_size: int, kind: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``pil_weights`` as tensors on ``device`` (flat index (out * k,), weight (out, k)), cached:
    one host-to-device copy per distinct pair of sizes, not per image."""
    index, weight = pil_weights(in_size, out_size, kind)
    return torch.from_numpy(index.reshape(-1)).to(device), torch.from_numpy(weight).to(device)


def _pass(x: torch.Tensor, dim: int, out_size: int, kind: str) -> torch.Tensor:
    """One Pillow pass along ``dim`` of int32 pixels (..., H, W): clipped 8-bit levels, int32."""
    idx, w = _device_weights(int(x.shape[dim]), int(out_size), kind, x.device)  # w: (out, k)
    k = w.shape[1]
    g = x.index_select(dim, idx)
    if dim == x.ndim - 1:  # (..., H, out * k) -> (..., H, out, k)
        s = (g.unflatten(-1, (out_size, k)) * w).sum(-1, dtype=torch.int32)
    else:  # (..., out * k, W) -> (..., out, k, W)
        s = (g.unflatten(-2, (out_size, k)) * w[..., None]).sum(-2, dtype=torch.int32)
    return ((s + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS).clamp_(0, 255)


def _resize(x: torch.Tensor, size: tuple[int, int], kind: str, vertical_first: bool) -> torch.Tensor:
    w_out, h_out = size
    y = x.to(torch.int32)
    passes = [(y.ndim - 1, w_out), (y.ndim - 2, h_out)]
    for dim, n in reversed(passes) if vertical_first else passes:
        if y.shape[dim] != n:
            y = _pass(y, dim, n, kind)
    return y.to(torch.uint8)


_PIL_FILTER = {"box": 4, "bilinear": 2, "bicubic": 3}  # Image.Resampling values


_ORDER: dict[tuple, bool] = {}


def pass_order(in_size: tuple[int, int], size: tuple[int, int], kind: str) -> bool:
    """Does the installed Pillow run the vertical pass first for (w, h) -> (w', h') with ``kind``?

    Found by resizing a seeded random probe of that size both ways and with Pillow (a few
    milliseconds per distinct pair of sizes; cached by sizes). The probe always runs on the CPU:
    the integer arithmetic is the same on every device, and a probe on a GPU would make the
    device path wait for the host (a stream sync) each time a new size appears.
    Raises if neither order matches Pillow.
    """
    from PIL import Image

    (w, h), (w2, h2) = in_size, size
    if w == w2 or h == h2:
        return False  # one pass: no order
    key = (in_size, size, kind)
    if key in _ORDER:
        return _ORDER[key]
    probe = np.random.default_rng(w * 7919 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    want = torch.from_numpy(np.array(Image.fromarray(probe).resize(size, _PIL_FILTER[kind]))).permute(2, 0, 1)
    x = torch.from_numpy(probe).permute(2, 0, 1)
    for vertical_first in (False, True):
        if torch.equal(_resize(x, size, kind, vertical_first), want):
            _ORDER[key] = vertical_first
            return vertical_first
    raise RuntimeError(
        f"Pillow's {kind} resize {in_size} -> {size} matches neither pass order; report this Pillow version"
    )


def resize(x: torch.Tensor, size: tuple[int, int], kind: str) -> torch.Tensor:
    """``Image.resize((w, h), kind)`` of uint8 (..., 3, H, W) pixels: uint8 (..., 3, h, w), exact."""
    size = (int(size[0]), int(size[1]))
    in_size = (int(x.shape[-1]), int(x.shape[-2]))
    if in_size == size:
        return x
    return _resize(x, size, kind, pass_order(in_size, size, kind))


def adm_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """``rcdm.data.preprocess.adm_center_crop`` of uint8 (..., 3, H, W): (..., 3, size, size)."""
    *halvings, final = adm_sizes(x.shape[-1], x.shape[-2], size)
    for half in halvings:
        x = resize(x, half, "box")
    x = resize(x, final, "bicubic")
    top, left = adm_offsets(x.shape[-2], x.shape[-1], size)
    return x[..., top : top + size, left : left + size]


def encoder_crop(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """``rcdm.extract.dataset.crop_uint8``'s rule on uint8 (..., 3, H, W): (..., 3, crop, crop).

    The same resize and crop as ``rcdm.data.preprocess.encoder_input`` before any scaling.
    """
    if pp.resize_rule == "adm":
        x = adm_crop(x, pp.resize)
        top, left = adm_offsets(pp.resize, pp.resize, pp.crop)
        return x[..., top : top + pp.crop, left : left + pp.crop].contiguous()
    x = resize(x, shorter_side_size(x.shape[-1], x.shape[-2], pp.resize), pp.interpolation)  # same size: x itself
    top, left = center_offsets(x.shape[-2], x.shape[-1], pp.crop)
    return x[..., top : top + pp.crop, left : left + pp.crop].contiguous()
