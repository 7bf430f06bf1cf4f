"""Synthetic ImageNet-sized JPEGs for the benches (bench/extract.py, bench/loader.py).

A bench helper, imported by the bench scripts as ``jpegs`` (they run with bench/ on sys.path).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _make_jpeg(args: tuple[str, int, int, int, int]) -> None:
    """A photo-like JPEG: smooth colour fields plus texture, so it compresses like a photo (~100 KB)."""
    from PIL import Image

    path, seed, w, h, quality = args
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    x = 0.6 * np.asarray(base, np.float32) + 0.3 * np.asarray(mid, np.float32)
    x += rng.normal(0, 12, (h, w, 3))
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, quality=quality)


def make_jpeg_folder(root: Path, n: int, size: tuple[int, int], quality: int, n_classes: int = 10) -> Path:
    """root/cls_K/img_NNNNNNN.jpg; reused when it already holds n images of this size."""
    stamp = root / f".made-{n}-{size[0]}x{size[1]}-q{quality}"
    if stamp.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    jobs = []
    for i in range(n):
        d = root / f"cls_{i % n_classes}"
        d.mkdir(parents=True, exist_ok=True)
        # ImageNet sizes vary around 500x375; jitter so decoding is not one shape
        w = size[0] + (i * 37) % 41 - 20
        h = size[1] + (i * 53) % 31 - 15
        jobs.append((str(d / f"img_{i:07d}.jpg"), i, w, h, quality))
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_make_jpeg, jobs, chunksize=64))
    stamp.touch()
    return root
