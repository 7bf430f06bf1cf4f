"""Image bytes -> an RGB PIL image: 16-bit images scaled to 8 bits, huge images refused from
their header before any pixel is decoded.

Import these from :mod:`rcdm.data.images` (which re-exports them) or from here.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image

__all__ = ["UnreadableImage", "decode_image", "open_image", "decode_opened", "device_decodable", "to_rgb"]

# 16-bit single-channel modes (PNG, TIFF, PGM); mode "I" is 32-bit, where 16-bit PGMs decode to.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class UnreadableImage(Exception):
    """An image that cannot be read or decoded. Extraction counts and skips these."""

    def __init__(self, key: str, reason: str):
        reason = readable_reason(reason)
        super().__init__(f"cannot read image {key!r}: {reason}")
        self.key = key
        self.reason = reason


def readable_reason(text: str) -> str:
    """A library's error text without Python object reprs: PIL says "cannot identify image file
    <_io.BytesIO object at 0x7f...>", which names nothing a user can find."""
    return re.sub(r"\s*<[^<>]*? object at 0x[0-9a-fA-F]+>", "", str(text)).strip()


def decode_image(
    data: bytes, draft: tuple[int, int] | None = None, *, key: str = "<bytes>", max_pixels: int | None = None
) -> Image.Image:
    """Decode image bytes to an RGB PIL image (raises :class:`UnreadableImage`).

    ``draft=(w, h)`` lets libjpeg decode at a reduced DCT scale (1/2, 1/4, 1/8) that is still at
    least ``w`` x ``h``: several times faster for large JPEGs, but not bit-identical to a full
    decode followed by resizing. Ignored for non-JPEG images.
    ``max_pixels``: an image whose header declares more pixels (width x height) is refused
    before it is decoded (a 121 Mpx PNG of one colour is ~140 KB on disk, 363 MB in RGB). PIL's
    own guard (``DecompressionBombError`` past 2 x ``Image.MAX_IMAGE_PIXELS``) still refuses
    larger ones whatever ``max_pixels`` says.
    """
    img = open_image(data, key=key, max_pixels=max_pixels)
    return decode_opened(img, draft, key=key, max_pixels=max_pixels)


def open_image(data: bytes, *, key: str = "<bytes>", max_pixels: int | None = None) -> Image.Image:
    """The first half of :func:`decode_image`: read the header only, refusing what is not an image
    or declares more than ``max_pixels`` pixels (raises :class:`UnreadableImage`)."""
    with _reading(key, max_pixels):
        img = Image.open(io.BytesIO(data))  # reads the header only
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise UnreadableImage(
                key,
                f"image is {w}x{h} ({w * h / 1e6:.1f} Mpx), more than extract.max_pixels "
                f"({max_pixels / 1e6:g} Mpx); skipped without decoding",
            )
    return img


def decode_opened(
    img: Image.Image, draft: tuple[int, int] | None = None, *, key: str = "<bytes>", max_pixels: int | None = None
) -> Image.Image:
    """The second half of :func:`decode_image`: decode an :func:`open_image` result to RGB."""
    with _reading(key, max_pixels):
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (int(draft[0]), int(draft[1])))
        img.load()  # decode now, so truncated files fail here and not later
        return to_rgb(img)


def device_decodable(img: Image.Image) -> bool:
    """Is an :func:`open_image` result a baseline/progressive RGB or greyscale JPEG (what
    ``extract.decode: gpu`` sends to the device decoder)?"""
    return img.format == "JPEG" and img.mode in ("RGB", "L")


@contextlib.contextmanager
def _reading(key: str, max_pixels: int | None) -> Iterator[None]:
    """PIL's errors as :class:`UnreadableImage`; its size warning silenced when ``max_pixels`` decides."""
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # our budget decides; PIL's warning would only repeat it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except UnreadableImage:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise UnreadableImage(key, f"{type(e).__name__}: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with 16-bit grey levels x scaled to round(x / 257) (PIL's own conversion clips them
    at 255, turning all but the darkest into white). A mode "I" image with values outside
    [0, 65535] has its own range [min, max] mapped to [0, 255]."""
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        x = np.asarray(img).astype(np.int64)  # (H, W)
        if img.mode == "I" and x.size and (x.min() < 0 or x.max() > 65535):
            lo, hi = int(x.min()), int(x.max())
            x8 = np.floor((x - lo) * 255 / max(hi - lo, 1) + 0.5)
        else:
            x8 = (x * 255 + 32767) // 65535  # round(x / 257), in integers
        img = Image.fromarray(x8.astype(np.uint8))  # mode L
    return img.convert("RGB")
