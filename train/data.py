"""The training data: each feature-store row joined with its image.

The order of the data is a pure function of (seed, global position): epoch ``e`` is a permutation
of the store rows plus one coin flip per row, both drawn from a generator seeded with
``(seed, e)``. Global position ``g`` goes to rank ``g % world_size``, so ranks see disjoint data,
and a resumed run (even with another number of processes) continues the same stream from the
number of images already consumed.

A flipped image gets feature view 1 (the encoder's input flipped horizontally), an unflipped one
view 0, so the cached feature is exactly what the encoder saw.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rcdm.errors import InvalidInput
from rcdm.store import FeatureStore, StoreImages
from torch.utils.data import DataLoader, Dataset, Sampler

# Separates the seeds of consecutive epochs' generators (any large odd constant will do).
_EPOCH_STRIDE = 1_000_003


def epoch_order(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm (n,) int64, flip (n,) bool) for one epoch: a pure function of (n, seed, epoch)."""
    g = torch.Generator().manual_seed(int(seed) * _EPOCH_STRIDE + int(epoch))
    perm = torch.randperm(n, generator=g).numpy()
    flip = torch.randint(0, 2, (n,), generator=g).numpy().astype(bool)
    return perm, flip


class StreamSampler(Sampler):
    """Infinite stream of (row, flip) for one rank, starting at global position ``start``.

    ``start`` must be a multiple of ``world_size`` (the loop consumes whole global batches).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if n <= 0:
            raise InvalidInput("the feature store has no rows to train on")
        if start % world_size:
            raise InvalidInput(f"data position {start} is not a multiple of world size {world_size}")
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        g = self.start + self.rank
        epoch, perm, flip = -1, None, None
        while True:
            e, i = divmod(g, self.n)
            if e != epoch:
                epoch = e
                perm, flip = epoch_order(self.n, self.seed, e)
            yield int(perm[i]), bool(flip[i])
            g += self.world

    def __len__(self) -> int:  # a DataLoader asks; the stream is endless
        return 2**62


_SOURCE_HINT = (
    "give the image source the store was extracted from: `rcdm train --source PATH` (train.source in pipeline.yaml)"
)


class ImageFeatureDataset(Dataset):
    """``(row, flip) -> (x (H, W, 3) uint8, h (D,) float32, row)``.

    The image comes from the store itself (webdataset shards written with the image bytes) or,
    for other stores, from the source the store was extracted from, looked up by key. It is
    resized with ADM's rule (``adm_center_crop``) and flipped when ``flip`` is true, in which case
    the feature is view 1.
    """

    def __init__(self, store_path: str | Path, resolution: int, source: str | None = None, draft: bool = False):
        self.store_path = str(store_path)
        self.resolution = int(resolution)
        self.draft = bool(draft)  # JPEG draft-mode decoding (opt-in: not guided-diffusion's pixels)
        self.cache: Path | None = None  # rcdm.train.cache folder: rows read from it, not decoded
        self._cache_arr: np.ndarray | None = None
        store = FeatureStore(self.store_path)
        self.n = len(store)
        views = list(store.views)
        if len(views) < 2:
            raise InvalidInput(
                f"store {self.store_path} has only the views {views}; training flips images and "
                "needs the flipped view (re-extract with both views, the default)"
            )
        self.use_store_images = store.format == "wds" and bool(store.has_images)
        self.source_root = None
        self._source: Any = None  # the opened image source, reused by forked workers (folders)
        self._source_index: np.ndarray | None = None
        if not self.use_store_images:
            self.source_root = source or store.source.get("root")
            self._source_index = self._map_keys(store)
        self._store: FeatureStore | None = None
        self._images: StoreImages | None = None
        self._pid = -1
        _close(store)

    def _map_keys(self, store: FeatureStore) -> np.ndarray:
        """Check every key against the image source once, up front; keep the source's index."""
        images = StoreImages(store, root=self.source_root, hint=_SOURCE_HINT)
        index = images.index()
        self._source = images.source
        return index

    def _open(self) -> None:
        # Each process (DataLoader worker) opens its own file handles: HDF5 handles do not
        # survive fork.
        if self._pid != os.getpid():
            self._store = FeatureStore(self.store_path)
            # A folder listing is safe to share with forked workers; tar handles are not.
            shared = self._source if getattr(self._source, "kind", "") not in ("", "wds") else None
            self._images = StoreImages(self._store, root=self.source_root, hint=_SOURCE_HINT, source=shared)
            if self.cache is not None:
                self._cache_arr = np.load(self.cache / "images.npy", mmap_mode="r")  # (N, R, R, 3) uint8
            self._pid = os.getpid()

    def __len__(self) -> int:
        return self.n

    def use_cache(self, folder: Path) -> None:
        """Read rows from the image cache ``folder`` (``rcdm.train.cache.build``) from now on."""
        self.cache, self._pid = Path(folder), -1

    def load_image(self, row: int) -> np.ndarray:
        """The uint8 (H, W, 3) image of store row ``row`` at the model resolution (no flip)."""
        from rcdm.data.images import adm_center_crop

        self._open()
        if self._cache_arr is not None:
            return np.array(self._cache_arr[row])
        known = None if self._source_index is None else self._source_index[row]
        # draft: libjpeg's DCT scaling to no less than the model resolution, then ADM's rule
        draft = (self.resolution, self.resolution) if self.draft else None
        return adm_center_crop(self._images.load(row, known, draft), self.resolution)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor, int]:
        row, flip = item
        self._open()
        x = self.load_image(row)  # (H, W, 3) uint8
        feat, _key, _label = self._store[row]  # (V, D)
        if flip:
            x = x[:, ::-1]
        if not (x.flags.c_contiguous and x.flags.writeable):  # a flipped view, a read-only decode
            x = np.array(x)  # the cache's row (load_image's copy) is used as it is
        h = np.array(feat[1 if flip else 0], dtype=np.float32)  # a writable copy
        return torch.from_numpy(x), torch.from_numpy(h), int(row)  # writable, contiguous

    def __getstate__(self) -> dict:
        # Workers reopen the store and the source themselves.
        state = dict(self.__dict__)
        state["_store"] = None
        state["_images"] = None
        state["_cache_arr"] = None
        state["_pid"] = -1
        return state


def _close(store: FeatureStore) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def to_model_input(x: torch.Tensor, channels_last: bool | None = False) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (ADM's ``x / 127.5 - 1``) in an explicit
    layout: contiguous NCHW (``False``) or channels-last (``True``). ``None`` keeps the strides of
    the permuted NHWC pixels (channels-last, without a copy), which is what the CPU training path
    uses: the demo's recorded figures were trained with it and the CPU's float results depend on
    the layout (see :func:`input_layout`)."""
    if channels_last is None:
        return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.permute(0, 3, 1, 2).to(torch.float32, memory_format=fmt).div_(127.5).sub_(1.0)


def input_layout(channels_last: bool, device: torch.device) -> bool | None:
    """The ``to_model_input`` layout for a model in ``channels_last`` on ``device``: the model's
    own on CUDA or when channels-last (one layout end to end, no NHWC/NCHW mixing on every add);
    on a CPU model in NCHW, the pixels' own strides (None), so CPU results stay what they were."""
    return channels_last if channels_last or device.type == "cuda" else None


def make_loader(
    dataset: ImageFeatureDataset,
    batch_per_process: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
    start: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """An endless loader of micro-batches for this rank, from global position ``start``."""
    sampler = StreamSampler(dataset.n, seed, rank, world_size, start)
    return DataLoader(
        dataset,
        batch_size=batch_per_process,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
