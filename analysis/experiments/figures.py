"""Small figure helpers on top of rcdm.viz: tiles of one size with a fixed-height label."""

from __future__ import annotations

import numpy as np
from PIL import Image
from rcdm.data.images import adm_center_crop
from rcdm.viz import annotate, fit


def tile(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: PIL images get ADM's center crop, arrays are resized."""
    if isinstance(img, Image.Image):
        return adm_center_crop(img, size)
    return fit(np.asarray(img, dtype=np.uint8), (size, size))


def labelled(img: Image.Image | np.ndarray, text: str, size: int, lines: int = 2) -> np.ndarray:
    """``tile`` with ``text`` below in exactly ``lines`` lines, so labelled tiles line up."""
    chars = max(4, size // 6)  # what rcdm.viz.annotate fits on one line
    wrapped = []
    for part in text.splitlines() or [""]:
        while len(part) > chars:
            wrapped.append(part[:chars])
            part = part[chars:]
        wrapped.append(part)
    wrapped = (wrapped + [""] * lines)[:lines]
    return annotate(tile(img, size), "\n".join(wrapped))


def display_size(image_size: int) -> int:
    """Tiles at least 64 px wide, so a number fits under each."""
    return max(64, int(image_size))
