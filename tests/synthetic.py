"""Synthetic data for tests: small image sets and corrupt files (no network, seeded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def random_image(rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A smooth random RGB image (low-frequency noise, so JPEG keeps it recognisable)."""
    w, h = size
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_image_folder(
    root: str | Path,
    n_classes: int = 3,
    per_class: int = 4,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
    ext: str = ".jpg",
) -> Path:
    """An ImageFolder tree root/cls_K/img_NNN.jpg with smooth random images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        d = root / f"cls_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            random_image(rng, size).save(d / f"img_{i:03d}{ext}", quality=90)
    return root


def corrupt_jpeg(path: str | Path) -> Path:
    """Overwrite ``path`` with a truncated JPEG that PIL cannot decode."""
    path = Path(path)
    data = jpeg_bytes(random_image(np.random.default_rng(1)))
    path.write_bytes(data[: len(data) // 3])
    return path
