"""Decoding for extraction: a Dataset over an image source that never raises on a bad image.

Workers do the CPU work (read bytes, JPEG decode in PIL draft mode, resize, center crop) and
return uint8 crops; scaling to the encoder's value range and mean/std, and the horizontal flip of
view 1, happen on the device (4x less data through worker queues and the host-to-device copy).
The crop rule itself is ``rcdm.data.images.encoder_input``'s: there is one definition of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from rcdm.data.decode import decode_opened, device_decodable, open_image, readable_reason
from rcdm.data.images import Preprocess, UnreadableImage, encoder_input


def crop_uint8(img: Image.Image, pp: Preprocess) -> torch.Tensor:
    """The encoder's resize + center crop before any scaling: (3, crop, crop) uint8.

    ``rcdm.data.images.encoder_input`` stays the one definition of the rule: with value range
    [0, 255] and mean 0 / std 1 its output is the crop's integer levels themselves.
    """
    raw = dataclasses.replace(pp, value_range=(0.0, 255.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return encoder_input(img, raw).to(torch.uint8)  # (3, crop, crop)


def normalize(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> encoder input float32: [0, 255] -> value_range, then (x - mean) / std.

    The same operations in the same order as ``encoder_input``, so the result is bit-identical
    (checked at the start of every run by ``device_normalisation_is_exact``).
    """
    lo, hi = pp.value_range
    x = x.float() / (255.0 / (hi - lo)) + lo
    if tuple(pp.mean) != (0.0, 0.0, 0.0) or tuple(pp.std) != (1.0, 1.0, 1.0):
        mean = torch.tensor(pp.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(pp.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def device_normalisation_is_exact(pp: Preprocess) -> bool:
    """Does ``normalize(crop_uint8(img))`` equal ``encoder_input(img)`` bit for bit (on the CPU)?

    If ``rcdm.data.images`` ever changes its scaling, extraction falls back to normalising in the
    workers instead of storing features of a subtly different input.
    """
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    want = encoder_input(img, pp)
    got = normalize(crop_uint8(img, pp)[None], pp)[0]
    return bool(torch.equal(got, want))


class ExtractDataset(torch.utils.data.Dataset):
    """Item ``i`` of ``source`` -> {index, x, ok, reason, data}.

    ``x`` is (3, crop, crop) uint8 (``uint8=True``: normalised on the device) or the float32
    encoder input.
    An unreadable image gives ``ok=False`` and its reason instead of raising: corrupt files are
    counted and skipped, they never stop a run. So is an image of more than ``max_pixels`` pixels,
    found from its header without decoding it.
    """

    def __init__(
        self,
        source,
        pp: Preprocess,
        *,
        draft: bool = True,
        keep_bytes: bool = False,
        uint8: bool = True,
        max_pixels: int | None = None,
        device_decode: bool = False,
    ):
        self.source = source
        self.max_pixels = max_pixels
        self.uint8 = uint8
        self.pp = pp
        self.draft = pp.draft_size() if draft else None
        self.keep_bytes = keep_bytes
        self.device_decode = device_decode  # JPEGs travel as bytes, decoded on the device (gpudecode)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        key = self.source.items[i].key
        data, jpeg = b"", b""
        try:
            data = self.source.read_bytes(i)
            img = open_image(data, key=key, max_pixels=self.max_pixels)  # the header: refused if too large
            if self.device_decode and device_decodable(img):
                x = torch.zeros(3, self.pp.crop, self.pp.crop, dtype=torch.uint8)  # filled on the device
                return {
                    "index": i,
                    "x": x,
                    "ok": True,
                    "reason": "",
                    "data": data if self.keep_bytes else b"",
                    "jpeg": data,
                }
            img = decode_opened(img, self.draft, key=key, max_pixels=self.max_pixels)
            x = crop_uint8(img, self.pp) if self.uint8 else encoder_input(img, self.pp)  # (3, crop, crop)
            ok, reason = True, ""
        except UnreadableImage as e:
            x, ok, reason = None, False, e.reason
        except Exception as e:  # anything else about one image (odd modes, huge sizes) is skipped too
            x, ok, reason = None, False, readable_reason(f"{type(e).__name__}: {e}")
        if x is None:
            x = torch.zeros(3, self.pp.crop, self.pp.crop, dtype=torch.uint8 if self.uint8 else torch.float32)
            data = b""
        return {"index": i, "x": x, "ok": ok, "reason": reason, "data": data if self.keep_bytes else b"", "jpeg": jpeg}


def collate(batch: list[dict]) -> dict:
    return {
        "index": [b["index"] for b in batch],
        "x": torch.stack([b["x"] for b in batch]),  # (B, 3, crop, crop) uint8 or float32
        "ok": torch.tensor([b["ok"] for b in batch], dtype=torch.bool),
        "reason": [b["reason"] for b in batch],
        "data": [b["data"] for b in batch],
        "jpeg": [b["jpeg"] for b in batch],  # bytes to decode on the device (decode: gpu), else b""
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
