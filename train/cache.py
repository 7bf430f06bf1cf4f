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
    """Rows ``lo .. hi - 1`` of ``dataset``, decoded."""

    def __init__(self, dataset: Any, lo: int, hi: int):
        self.dataset, self.lo, self.hi = dataset, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        row = self.lo + i
        return row, self.dataset.load_image(row)  # (R, R, 3) uint8, the decoding path's own


def build(dataset: Any, store: Any, workers: int, show: bool = True, rank: int = 0, world: int = 1) -> Path:
    """The cache of ``dataset`` (an ``ImageFeatureDataset`` not yet using one): reused if it
    matches ``store``, else written (with ``workers`` decoding processes). Returns its folder.

    Every process of a launch calls it (``rank`` of ``world``): each decodes its own slice of the
    rows into the one file the main process made, so ImageNet's cache takes 1 / world of the time
    and no process waits alone for long; an error on any process is raised on all of them."""
    from rcdm.launch import on_all, on_main

    res, draft = dataset.resolution, dataset.draft
    d = cache_dir(store.path, res, draft)
    meta = _meta(store, res, draft)
    tmp = on_main(lambda: _begin(d, meta, dataset.n, res))  # None: the cache is there
    if tmp is None:
        return d
    lo, hi = dataset.n * rank // world, dataset.n * (rank + 1) // world
    try:
        on_all(lambda: _fill(tmp, dataset, lo, hi, workers, show))
        on_main(lambda: _commit(tmp, d, meta), share=False)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if show:
        print(f"image cache: {d} ({dataset.n} images at {res}px)", file=sys.stderr)
    return d


def _begin(d: Path, meta: dict, n: int, res: int) -> Path | None:
    """None if ``d`` holds this cache; else a fresh temporary folder holding ``images.npy`` at its
    full size (the header written, the rows not yet)."""
    if _valid(d, meta):
        return None
    tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, res, res, 3))
        del arr
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _fill(tmp: Path, dataset: Any, lo: int, hi: int, workers: int, show: bool) -> None:
    """Decode rows ``lo .. hi - 1`` into ``tmp/images.npy``: plain writes at their offsets (not a
    shared mapping: processes on other hosts write their byte ranges, not whole pages)."""
    from tqdm.auto import tqdm

    path = tmp / "images.npy"
    header = np.load(path, mmap_mode="r")
    offset, row_bytes = header.offset, int(np.prod(header.shape[1:]))
    del header
    loader = torch.utils.data.DataLoader(
        _Rows(dataset, lo, hi),
        batch_size=64,
        num_workers=workers,
        collate_fn=lambda b: b,
        prefetch_factor=4 if workers else None,
    )
    fd = os.open(path, os.O_WRONLY)
    try:
        desc = f"image cache {dataset.resolution}px" + (
            f" (rows {lo}-{hi - 1} of {dataset.n})" if hi - lo < dataset.n else ""
        )
        with tqdm(total=hi - lo, unit="img", desc=desc, disable=not show) as bar:
            for batch in loader:  # consecutive rows: one write
                data = np.stack([img for _, img in batch]).astype(np.uint8, copy=False)
                os.pwrite(fd, data.tobytes(), offset + batch[0][0] * row_bytes)
                bar.update(len(batch))
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, d: Path, meta: dict) -> None:
    """The cache complete: its meta written last, the folder renamed into place."""
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if d.exists():  # a stale cache of another store version
        shutil.rmtree(d)
    os.replace(tmp, d)
