"""Decoding for extraction: a Dataset over an image source that never raises on a bad image.

Workers do the CPU work (read bytes, JPEG decode in PIL draft mode, resize, center crop) and
return uint8 crops; scaling to the encoder's value range and mean/std, and the horizontal flip of
view 1, happen on the device (4x less data through worker queues and the host-to-device copy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from rcdm.images import Preprocess, UnreadableImage, decode_image


def crop_uint8(img: Image.Image, pp: Preprocess) -> np.ndarray:
    """The encoder's resize + center crop, before any scaling: (crop, crop, 3) uint8.

    Same rule as ``rcdm.images.encoder_input`` (torchvision's Resize(int) + CenterCrop);
    ``normalize`` of this equals ``encoder_input`` exactly (tested).
    """
    from rcdm.images import _center_crop, _resize_shorter  # the one definition of the rule

    resample = Image.BICUBIC if pp.interpolation == "bicubic" else Image.BILINEAR
    return np.asarray(_center_crop(_resize_shorter(img.convert("RGB"), pp.resize, resample), pp.crop), dtype=np.uint8)


def normalize(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> encoder input float32: [0, 255] -> value_range, then (x - mean) / std.

    The operations and their order are those of ``encoder_input``, so results match bit for bit
    on the CPU.
    """
    lo, hi = pp.value_range
    x = x.float() / 255.0 * (hi - lo) + lo
    mean = torch.tensor(pp.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ExtractDataset(torch.utils.data.Dataset):
    """Item ``i`` of ``source`` -> {index, x (3, crop, crop) uint8, ok, reason, data}.

    An unreadable image gives ``ok=False`` and its reason instead of raising: corrupt files are
    counted and skipped, they never stop a run.
    """

    def __init__(self, source, pp: Preprocess, *, draft: bool = True, keep_bytes: bool = False):
        self.source = source
        self.pp = pp
        self.draft = pp.draft_size() if draft else None
        self.keep_bytes = keep_bytes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        key = self.source.items[i].key
        data = b""
        try:
            data = self.source.read_bytes(i)
            img = decode_image(data, self.draft, key=key)
            x = torch.from_numpy(crop_uint8(img, self.pp).copy()).permute(2, 0, 1)  # (3, crop, crop)
            ok, reason = True, ""
        except UnreadableImage as e:
            x, ok, reason = None, False, e.reason
        except Exception as e:  # anything else about one image (odd modes, huge sizes) is skipped too
            x, ok, reason = None, False, f"{type(e).__name__}: {e}"
        if x is None:
            x = torch.zeros(3, self.pp.crop, self.pp.crop, dtype=torch.uint8)
            data = b""
        return {"index": i, "x": x, "ok": ok, "reason": reason, "data": data if self.keep_bytes else b""}


def collate(batch: list[dict]) -> dict:
    return {
        "index": [b["index"] for b in batch],
        "x": torch.stack([b["x"] for b in batch]),  # (B, 3, crop, crop) uint8
        "ok": torch.tensor([b["ok"] for b in batch], dtype=torch.bool),
        "reason": [b["reason"] for b in batch],
        "data": [b["data"] for b in batch],
    }


class ShardBatches(torch.utils.data.Sampler):
    """Batches of item indices that never cross a shard boundary.

    A shard's batches are then the same whatever the resume point or the number of processes,
    so its features are computed identically.
    """

    def __init__(self, shards: Sequence[int], shard_size: int, n_items: int, batch_size: int):
        self.shards, self.shard_size, self.n_items, self.batch_size = list(shards), shard_size, n_items, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for k in self.shards:
            start, stop = k * self.shard_size, min((k + 1) * self.shard_size, self.n_items)
            for b in range(start, stop, self.batch_size):
                yield list(range(b, min(b + self.batch_size, stop)))

    def __len__(self) -> int:
        n = 0
        for k in self.shards:
            rows = min((k + 1) * self.shard_size, self.n_items) - k * self.shard_size
            n += -(-rows // self.batch_size)
        return n
