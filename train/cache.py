"""The training image cache: every store row's image at the model resolution, decoded and resized
with ADM's rule (``adm_center_crop``) exactly once, written next to the store as one uint8 array.

Without it each sample is a full JPEG decode plus a box-and-bicubic resize, every epoch (about
250 img/s per core at ImageNet sizes); with it a sample is one memory-mapped read, so a few
workers feed any GPU. The pixels are the very ones the decoding path gives (same decode, same
rule), so training is unchanged by it.

Layout: ``<store>.images-<R>px/`` (``-draft`` appended with ``train.draft``) beside the store,
holding ``images.npy`` ((N, R, R, 3) uint8, row i = store row i) and ``meta.json`` (written last:
the store's manifest hash, N, R, the rule). A cache whose meta does not match the store is rebuilt;
one being written elsewhere is in a ``.tmp-<pid>`` folder until it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rcdm.errors import InvalidInput

__all__ = ["cache_dir", "wanted", "build"]

VERSION = 1


def cache_dir(store_path: str | Path, resolution: int, draft: bool = False) -> Path:
    store = Path(store_path).resolve()
    return store.parent / f"{store.name}.images-{int(resolution)}px{'-draft' if draft else ''}"


def _meta(store: Any, resolution: int, draft: bool) -> dict:
    return {
        "version": VERSION,
        "store_manifest_sha256": store.manifest_sha256,
        "rows": len(store),
        "resolution": int(resolution),
        "rule": "guided-diffusion center_crop_arr (rcdm.data.preprocess.adm_center_crop), no flip",
        "draft": bool(draft),
    }


def _valid(d: Path, meta: dict) -> bool:
    try:
        return json.loads((d / "meta.json").read_text()) == meta and (d / "images.npy").is_file()
    except (OSError, ValueError):
        return False


def wanted(spec: str, store: Any, resolution: int, device: torch.device, draft: bool = False) -> bool:
    """``on`` / ``off`` as said; ``auto``: on CUDA (where decoding would starve the GPU) when the
    cache is already there or would take under a quarter of the free disk space beside the store."""
    if spec == "off" or (spec == "auto" and device.type != "cuda"):
        return False
    d = cache_dir(store.path, resolution, draft)
    if _valid(d, _meta(store, resolution, draft)):
        return True
    need = len(store) * int(resolution) ** 2 * 3
    free = shutil.disk_usage(d.parent).free
    if need > free // (4 if spec == "auto" else 1):
        if spec == "on":
            raise InvalidInput(
                f"the image cache {d} needs {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free; "
                "free space there or set train.image_cache=off"
            )
        print(
            f"train.image_cache=auto: {need / 2**30:.1f} GiB would not fit comfortably beside the store; decoding images instead",
            file=sys.stderr,
        )
        return False
    return True


class _Rows(torch.utils.data.Dataset):
    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return self.dataset.n

    def __getitem__(self, row: int) -> tuple[int, np.ndarray]:
        return row, self.dataset.load_image(row)  # (R, R, 3) uint8, the decoding path's own


def build(dataset: Any, store: Any, workers: int, show: bool = True) -> Path:
    """The cache of ``dataset`` (an ``ImageFeatureDataset`` not yet using one): reused if it
    matches ``store``, else written (with ``workers`` decoding processes). Returns its folder."""
    from tqdm.auto import tqdm

    res, draft = dataset.resolution, dataset.draft
    d = cache_dir(store.path, res, draft)
    meta = _meta(store, res, draft)
    if _valid(d, meta):
        return d
    tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(dataset.n, res, res, 3))
        loader = torch.utils.data.DataLoader(
            _Rows(dataset),
            batch_size=64,
            num_workers=workers,
            collate_fn=lambda b: b,
            prefetch_factor=4 if workers else None,
        )
        with tqdm(total=dataset.n, unit="img", desc=f"image cache {res}px", disable=not show) as bar:
            for batch in loader:
                for row, img in batch:
                    arr[row] = img
                bar.update(len(batch))
        arr.flush()
        del arr
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: the cache is complete
        if d.exists():  # a stale cache of another store version
            shutil.rmtree(d)
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if show:
        print(f"image cache: {d} ({dataset.n} images at {res}px)", file=sys.stderr)
    return d
