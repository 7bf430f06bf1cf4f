"""Image grids for the paper's figures: conditioning image first, its samples beside it.

All images are ``(H, W, 3)`` uint8 numpy arrays. Shared by sampling, training (sample grids) and
the analyses. No torch.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rcdm.errors import InvalidInput
from rcdm.utils import atomic_write_bytes

__all__ = [
    "grid",
    "strip",
    "placeholder",
    "fit",
    "save_png",
    "annotate",
    "red_border",
]

BACKGROUND = 255  # white gaps, as in the paper's figures


def _check(img: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise InvalidInput(f"{where}: expected an (H, W, 3) uint8 image, got shape {a.shape} dtype {a.dtype}")
    return a


def fit(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``img`` to ``size = (H, W)`` (bicubic) unless it already has that size."""
    img = _check(img, "fit")
    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))


def placeholder(size: tuple[int, int], text: str = "", value: int = 200) -> np.ndarray:
    """A grey ``(H, W, 3)`` tile with ``text`` in it: stands in for a condition without an image
    (a class mean, a KDE draw, an algebra result)."""
    tile = np.full((size[0], size[1], 3), value, dtype=np.uint8)
    if not text:
        return tile
    im = Image.fromarray(tile)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    chars = max(4, size[1] // 6)
    lines = textwrap.wrap(text, chars)[: max(1, size[0] // 12)]
    for i, line in enumerate(lines):
        draw.text((2, 2 + 11 * i), line, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def grid(
    rows: list[list[np.ndarray]],
    pad: int = 2,
    separator_after_first: bool = True,
    cell: tuple[int, int] | None = None,
) -> np.ndarray:
    """Lay ``rows`` of images out as one ``(H, W, 3)`` uint8 image.

    Row r is ``[condition image, sample 1, sample 2, ...]``, the layout of the paper's figures.
    Every cell is resized to ``cell = (H, W)`` (default: the size of the last image of the first
    row, i.e. a sample). ``pad`` pixels of white separate cells; with ``separator_after_first``
    the first column is set apart by a wider gap (3 * pad + 2). Short rows leave white cells.
    """
    if not rows or not any(len(r) for r in rows):
        raise InvalidInput("grid needs at least one row with at least one image")
    first = next(r for r in rows if len(r))
    if cell is None:
        cell = _check(first[-1], "grid").shape[:2]
    ch, cw = cell
    n_cols = max(len(r) for r in rows)
    gap0 = 3 * pad + 2 if separator_after_first and n_cols > 1 else pad
    width = pad + n_cols * cw + (n_cols - 1) * pad + (gap0 - pad) + pad
    height = pad + len(rows) * (ch + pad)
    out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for r, row in enumerate(rows):
        y = pad + r * (ch + pad)
        for c, img in enumerate(row):
            x = pad + c * (cw + pad) + (gap0 - pad if c >= 1 else 0)
            out[y : y + ch, x : x + cw] = fit(_check(img, f"grid row {r} column {c}"), cell)
    return out


def strip(
    images: list[np.ndarray],
    pad: int = 2,
    ends: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> np.ndarray:
    """An interpolation strip: ``images`` along the path in one row, with the two endpoint
    images (if given) set apart at the left and right ends."""
    if not images:
        raise InvalidInput("strip needs at least one image")
    cell = _check(images[0], "strip").shape[:2]
    body = grid([list(images)], pad=pad, separator_after_first=False, cell=cell)
    parts = []
    gap = np.full((body.shape[0], 2 * pad + 2, 3), BACKGROUND, dtype=np.uint8)
    if ends[0] is not None:
        parts += [grid([[ends[0]]], pad=pad, separator_after_first=False, cell=cell), gap]
    parts.append(body)
    if ends[1] is not None:
        parts += [gap, grid([[ends[1]]], pad=pad, separator_after_first=False, cell=cell)]
    return np.concatenate(parts, axis=1)


def save_png(arr: np.ndarray, path: str | Path) -> Path:
    """Write ``arr`` (H, W, 3) uint8 as a PNG, atomically."""
    arr = _check(arr, "save_png")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def annotate(
    img: np.ndarray,
    text: str,
    position: str = "below",
    line_height: int = 12,
) -> np.ndarray:
    """Add ``text`` (PIL's default font, wrapped to the width) in a white band below or above."""
    img = _check(img, "annotate")
    if position not in ("below", "above"):
        raise InvalidInput(f"annotate: position must be 'below' or 'above', got {position!r}")
    font = ImageFont.load_default()
    chars = max(4, img.shape[1] // 6)  # the default bitmap font is about 6 px per character
    lines = [w for part in text.splitlines() for w in (textwrap.wrap(part, chars) or [""])]
    band = Image.new("RGB", (img.shape[1], line_height * max(1, len(lines)) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((2, 2 + line_height * i), line, fill=(0, 0, 0), font=font)
    band_arr = np.asarray(band)
    parts = [img, band_arr] if position == "below" else [band_arr, img]
    return np.concatenate(parts, axis=0)


def red_border(img: np.ndarray, width: int = 2, color: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """A copy of ``img`` with a ``width``-pixel coloured frame drawn inside its edges (same size),
    used to mark the conditioning image or a changed sample."""
    out = _check(img, "red_border").copy()
    w = max(1, min(width, out.shape[0] // 2, out.shape[1] // 2))
    c = np.asarray(color, dtype=np.uint8)
    out[:w], out[-w:], out[:, :w], out[:, -w:] = c, c, c, c
    return out
