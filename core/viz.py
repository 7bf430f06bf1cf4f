"""Image grids for the paper's figures: conditioning image first, its samples beside it.

All images are ``(H, W, 3)`` uint8 numpy arrays. Shared by sampling, training (sample grids) and
the analyses. No torch.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    "enlarge",
    "display_scale",
    "headed_grid",
    "font",
    "text_width",
    "wrap",
    "label_problems",
    "LabelLayout",
    "recording",
]

BACKGROUND = 255  # white gaps, as in the paper's figures


def _check(img: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise InvalidInput(f"{where}: expected an (H, W, 3) uint8 image, got shape {a.shape} dtype {a.dtype}")
    return a


# ------------------------------------------------------------------------------ text layout
FONT_SIZE = 11  # pixels; labels shrink to MIN_FONT_SIZE before a word would be cut
MIN_FONT_SIZE = 8
MARGIN = 2  # pixels left and right of a label
# Where a token without spaces may break: after "/" or "_", after a hyphen between letters
# ("color-" / "jitter"), before the "(" of a call ("RandomRotation" / "(20)"); never inside a
# number ("2.01e+03", "-0.5") or a plain word.
_BREAK = re.compile(r"(?<=[/_])(?=.)|(?<=[A-Za-z]-)(?=[A-Za-z])|(?<=[A-Za-z])(?=\()")


@functools.lru_cache(maxsize=16)
def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (a scalable font when Pillow has FreeType, the
    fixed bitmap font otherwise); every width below is measured with it."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def text_width(text: str, f: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> float:
    """Measured width of ``text`` in pixels."""
    return float((f or font()).getlength(text))


def _pieces(word: str) -> list[str]:
    return [p for p in _BREAK.split(word) if p]


def wrap(text: str, width: float, f: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px (measured), at spaces and the given
    line breaks; a word wider than the line breaks only where ``_BREAK`` allows (after "/", "_",
    a hyphen between letters). A piece that still does not fit stays whole on its own line (too
    wide: :func:`label_problems` reports it), it is never cut."""
    f = f or font()
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split():
            for k, piece in enumerate(_pieces(word) if text_width(word, f) > width else [word]):
                glue = " " if (line and k == 0) else ""
                if not line or text_width(line + glue + piece, f) <= width:
                    line += glue + piece
                else:
                    lines.append(line)
                    line = piece
        lines.append(line)
    return lines


def label_problems(text: str, lines: list[str] | tuple[str, ...], width: float, f=None) -> list[str]:
    """What is wrong with ``lines`` as a layout of ``text`` in ``width`` px: a line wider than
    the width (cut when drawn), a word broken where :func:`wrap` may not break, text lost."""
    f = f or font()
    problems = [
        f"line {line!r} is {text_width(line, f):.0f} px wide, more than {width:.0f}"
        for line in lines
        if text_width(line, f) > width
    ]
    # (token, first on its line) in reading order
    tokens = [(t, k == 0) for line in lines for k, t in enumerate(line.split())]
    i = 0
    for word in (w for para in text.split("\n") for w in para.split()):
        allowed = {m.start() for m in _BREAK.finditer(word)}
        got = tokens[i][0] if i < len(tokens) else ""
        i += 1
        while got != word and i < len(tokens) and tokens[i][1] and len(got) in allowed:
            got += tokens[i][0]  # the word continues on the next line, at an allowed break
            i += 1
        if got != word:
            problems.append(f"word {word!r} is cut inside (or lost) in {list(lines)!r}")
            return problems
    if i != len(tokens):
        problems.append(f"lines {list(lines)!r} hold more than {text!r}")
    return problems


@dataclass(frozen=True)
class LabelLayout:
    text: str
    width: float  # px available
    lines: tuple[str, ...]
    font_size: int


_RECORDS: list[list[LabelLayout]] = []


@contextmanager
def recording() -> Iterator[list[LabelLayout]]:
    """Collect every label laid out inside the block (the figure tests check them all)."""
    log: list[LabelLayout] = []
    _RECORDS.append(log)
    try:
        yield log
    finally:
        _RECORDS.remove(log)


def layout(text: str, width: float, max_lines: int | None = None) -> tuple[list[str], int]:
    """Lines and font size for ``text`` in ``width`` px: the default size, or a smaller one down
    to ``MIN_FONT_SIZE`` when a word would not fit on a line (or more than ``max_lines`` lines
    would be needed)."""
    for size in range(FONT_SIZE, MIN_FONT_SIZE - 1, -1):
        f = font(size)
        lines = wrap(text, width, f)
        fits = all(text_width(x, f) <= width for x in lines)
        if fits and (max_lines is None or len(lines) <= max_lines):
            break
    for log in _RECORDS:
        log.append(LabelLayout(text, width, tuple(lines), size))
    return lines, size


def _draw_lines(im: Image.Image, lines: list[str], size: int, x0: int = MARGIN, y0: int = 2) -> None:
    draw = ImageDraw.Draw(im)
    f = font(size)
    for i, line in enumerate(lines):
        draw.text((x0, y0 + line_height(size) * i), line, fill=(0, 0, 0), font=f)


def line_height(size: int = FONT_SIZE) -> int:
    return size + 3


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
    max_lines = max(1, (size[0] - 4) // line_height(MIN_FONT_SIZE))
    lines, fsize = layout(text, size[1] - 2 * MARGIN, max_lines)
    _draw_lines(im, lines, fsize)
    return np.asarray(im)


def grid(
    rows: list[list[np.ndarray]],
    pad: int = 2,
    separator_after_first: bool = True,
    cell: tuple[int, int] | None = None,
) -> np.ndarray:
    """Lay ``rows`` of images out as one ``(H, W, 3)`` uint8 image.

    Row r is ``[condition image, sample 1, sample 2, ...]``, the layout of the paper's figures.
    Every cell is resized to ``cell = (H, W)`` (default: the width of the last image of the first
    row, i.e. a sample, and the height of the tallest image of that width); an image of the cell's
    width but shorter (a tile with fewer label lines) is padded with white below, not stretched. ``pad`` pixels of white separate cells; with ``separator_after_first``
    the first column is set apart by a wider gap (3 * pad + 2). Short rows leave white cells.
    """
    if not rows or not any(len(r) for r in rows):
        raise InvalidInput("grid needs at least one row with at least one image")
    first = next(r for r in rows if len(r))
    if cell is None:  # a sample's width; the tallest tile of that width (labels may differ)
        cw = _check(first[-1], "grid").shape[1]
        cell = (max(np.asarray(im).shape[0] for r in rows for im in r if np.asarray(im).shape[1] == cw), cw)
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
            img = _check(img, f"grid row {r} column {c}")
            if img.shape[1] == cw and img.shape[0] < ch:  # a shorter label band: pad, never stretch
                out[y : y + img.shape[0], x : x + cw] = img
            else:
                out[y : y + ch, x : x + cw] = fit(img, cell)
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


def display_scale(size: int, target: int = 128) -> int:
    """The whole factor that brings a ``size``-px sample to at least ``target`` px (1 when it
    is already that big), so small samples are enlarged with sharp pixels, never blurred."""
    return max(1, -(-int(target) // max(1, int(size))))


def headed_grid(
    rows: list[list[np.ndarray]],
    column_labels: list[str],
    title: str = "",
    scale: int = 1,
    pad: int = 2,
) -> np.ndarray:
    """:func:`grid` of ``rows`` with every cell enlarged by the whole factor ``scale``, a label
    above each column (``column_labels``; the first names the conditioning column) and
    ``title`` above it all (what drew the samples: checkpoint, kimg, sampler, guidance)."""
    if not rows or not rows[0]:
        raise InvalidInput("headed_grid needs at least one row with at least one image")
    ch, cw = _check(rows[0][-1], "headed_grid").shape[:2]
    body = grid([[enlarge(fit(_check(im, "headed_grid"), (ch, cw)), scale) for im in r] for r in rows], pad=pad)
    n_cols = max(len(r) for r in rows)
    labels = (list(column_labels) + [""] * n_cols)[:n_cols]
    blank = np.full((0, cw * scale, 3), BACKGROUND, np.uint8)
    heads = [annotate(blank, text, lines=1) for text in labels]
    head_h = max(h.shape[0] for h in heads)
    header = grid([heads], pad=pad, cell=(head_h, cw * scale))[pad:]  # no gap above the labels
    out = np.concatenate([header, body], axis=0)
    return annotate(out, title, position="above") if title else out


def save_png(arr: np.ndarray, path: str | Path) -> Path:
    """Write ``arr`` (H, W, 3) uint8 as a PNG, atomically."""
    arr = _check(arr, "save_png")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def annotate(img: np.ndarray, text: str, position: str = "below", lines: int = 1) -> np.ndarray:
    """Add ``text`` in a white band below or above, laid out with measured widths (:func:`layout`:
    broken at spaces, never inside a word). ``lines`` is both the band's least height, so tiles
    labelled alike line up, and the lines the text is fitted into: a smaller font (down to
    ``MIN_FONT_SIZE``) is used before a word would not fit or the text would need more than
    ``lines`` lines; only text that needs more even at that size makes the band taller."""
    img = _check(img, "annotate")
    if position not in ("below", "above"):
        raise InvalidInput(f"annotate: position must be 'below' or 'above', got {position!r}")
    text_lines, size = layout(text, img.shape[1] - 2 * MARGIN, max(1, lines))
    band = Image.new("RGB", (img.shape[1], band_height(max(len(text_lines), lines))), (255, 255, 255))
    _draw_lines(band, text_lines, size)
    band_arr = np.asarray(band)
    parts = [img, band_arr] if position == "below" else [band_arr, img]
    return np.concatenate(parts, axis=0)


def band_height(n_lines: int) -> int:
    """Height of a label band of ``n_lines`` lines."""
    return line_height() * max(1, n_lines) + 4


def enlarge(img: np.ndarray, factor: int) -> np.ndarray:
    """``img`` enlarged by a whole ``factor`` (each pixel a factor x factor block: nothing blurred)."""
    img = _check(img, "enlarge")
    f = max(1, int(factor))
    return img if f == 1 else np.repeat(np.repeat(img, f, axis=0), f, axis=1)


def red_border(img: np.ndarray, width: int = 2, color: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """A copy of ``img`` with a ``width``-pixel coloured frame drawn inside its edges (same size),
    used to mark the conditioning image or a changed sample."""
    out = _check(img, "red_border").copy()
    w = max(1, min(width, out.shape[0] // 2, out.shape[1] // 2))
    c = np.asarray(color, dtype=np.uint8)
    out[:w], out[-w:], out[:, :w], out[:, -w:] = c, c, c, c
    return out
