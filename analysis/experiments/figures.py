"""Small figure helpers on top of rcdm.viz: tiles of one size with a fixed-height label."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from PIL import Image
from rcdm.data.images import adm_center_crop
from rcdm.viz import MARGIN, MIN_FONT_SIZE, annotate, fit, font, text_width, wrap


def tile(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: PIL images get ADM's center crop, arrays are resized."""
    if isinstance(img, Image.Image):
        return adm_center_crop(img, size)
    return fit(np.asarray(img, dtype=np.uint8), (size, size))


def labelled(img: Image.Image | np.ndarray, text: str, size: int, lines: int = 2) -> np.ndarray:
    """``tile`` with ``text`` below in a band of at least ``lines`` lines (so labelled tiles line
    up), laid out with measured widths: broken at spaces, never inside a word, in a smaller font
    when it would need more than ``lines`` lines (``rcdm.viz.annotate``)."""
    return annotate(tile(img, size), text, lines=lines)


def display_size(image_size: int, labels: Iterable[str] = ()) -> int:
    """Tiles at least 64 px wide, so a number fits under each, and wide enough that the longest
    unbreakable piece of any of ``labels`` fits on one line at the smallest font."""
    f = font(MIN_FONT_SIZE)
    pieces = [p for t in labels for w in t.split() for p in wrap(w, 1, f)]
    widest = max((text_width(p, f) for p in pieces), default=0.0)
    return max(64, int(image_size), math.ceil(widest) + 2 * MARGIN)
