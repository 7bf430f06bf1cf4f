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


# ImageNet's shapes: most images are a handful of sizes (Flickr's 500 px long side), then a tail
# with one side 500 and the other anywhere from 150 to 500 px. Fractions of the images.
IMAGENET_COMMON = {(500, 375): 0.40, (500, 333): 0.18, (375, 500): 0.10, (500, 334): 0.05, (333, 500): 0.04}
IMAGENET_COMMON[(500, 500)] = 0.03


def imagenet_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (w, h) sizes drawn like ImageNet's: ~80% from ``IMAGENET_COMMON``, the rest a tail.

    (Jittering every image by a few pixels made ~1,300 distinct sizes out of 3,000 images, so a
    bench of GPU decoding measured the per-size set-up rather than the decoding.)"""
    rng = np.random.default_rng(seed)
    common = list(IMAGENET_COMMON)
    p = np.array([IMAGENET_COMMON[s] for s in common])
    out = []
    for _ in range(n):
        if rng.random() < p.sum():
            out.append(common[rng.choice(len(common), p=p / p.sum())])
        else:
            short = int(rng.integers(150, 501))
            out.append((500, short) if rng.random() < 0.75 else (short, 500))
    return out


def make_jpeg_folder(root: Path, n: int, size: tuple[int, int] | None, quality: int, n_classes: int = 10) -> Path:
    """root/cls_K/img_NNNNNNN.jpg; reused when it already holds n images of this size.
    ``size=None``: ImageNet-like sizes (:func:`imagenet_sizes`); else every image is ``size``."""
    sizes = imagenet_sizes(n) if size is None else [tuple(size)] * n
    tag = "imagenet" if size is None else f"{size[0]}x{size[1]}"
    stamp = root / f".made-{n}-{tag}-q{quality}"
    if stamp.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    jobs = []
    for i in range(n):
        d = root / f"cls_{i % n_classes}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i]
        jobs.append((str(d / f"img_{i:07d}.jpg"), i, w, h, quality))
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_make_jpeg, jobs, chunksize=64))
    stamp.touch()
    return root
