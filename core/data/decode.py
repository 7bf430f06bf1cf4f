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

__all__ = [
    "UnreadableImage",
    "decode_image",
    "open_image",
    "decode_opened",
    "device_decodable",
    "jpeg_incomplete",
    "to_rgb",
]

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
    if img.format == "JPEG":  # the damage rule of every decode path (PIL, nvjpeg): see jpeg_incomplete
        reason = jpeg_incomplete(data)
        if reason is not None:
            raise UnreadableImage(key, reason)
    return img


# A marker where one may start: 0xFF then a code that is not stuffing (00), a restart marker (D0-D7)
# or a fill byte (FF). Inside entropy-coded data every other 0xFF is followed by one of those.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_NO_LENGTH = frozenset((0x01, 0xD8))  # TEM and SOI carry no length field (RSTn never match _MARKER)
_TRUNCATED = "truncated JPEG: its data ends before the end-of-image marker (an interrupted download or copy?)"


def jpeg_incomplete(data: bytes) -> str | None:
    """Why a JPEG file is incomplete, or None when its segments fit in the file and an end-of-image
    marker (EOI) follows its image data. Bytes after the EOI are allowed.

    This is the one damage rule of every decode path: nvjpeg decodes a truncated file with a grey
    bottom, libjpeg-turbo (PIL) refuses it, so without it the store's rows would depend on
    ``extract.decode``. The check walks the markers (skipping segments by their lengths, scanning
    entropy-coded data at C speed for the next marker) and decodes nothing. It is stricter than
    PIL's load() in two ways, on every path alike: a file that lacks only its EOI is refused (PIL
    reads a greyscale one), and so is a file whose corrupt image data holds what looks like a
    segment running past the end (PIL decodes it, with garbage after that point).
    """
    n, pos, scans = len(data), 2, 0  # after SOI
    while True:
        found = _MARKER.search(data, pos)  # extraneous bytes before a marker are skipped, as libjpeg does
        if found is None:
            return _TRUNCATED
        pos = found.start()
        code = data[pos + 1]
        if code == 0xD9:  # EOI
            return None if scans else "damaged JPEG: it ends (end-of-image marker) before any image data"
        if code in _NO_LENGTH:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 > n or pos + 2 + length > n:  # cut inside a segment, or corrupt data that looks like one
            return (
                f"truncated or corrupt JPEG: its segment 0xFF{code:02X} at byte {pos} runs past the end of "
                f"the file ({n} bytes)"
            )
        if length < 2:
            return f"damaged JPEG: segment 0xFF{code:02X} at byte {pos} has length {length}"
        scans += code == 0xDA  # a scan: its entropy-coded data follows the header
        pos += 2 + length


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
    ``extract.decode: gpu`` sends to the device decoder)?

    CMYK and YCCK JPEGs (PIL opens both as mode CMYK; Adobe-marker files are stored inverted) go
    through PIL on every path: the device decoders' CMYK conversions are not PIL's. No path applies
    an embedded ICC profile (an Adobe RGB file is read as its stored values, as PIL reads it)."""
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
