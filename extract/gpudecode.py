"""``extract.decode: gpu``: DataLoader workers read JPEG bytes, the device decodes them in one batched
nvjpeg call (``torchvision.io.decode_jpeg(..., device=...)``), then resizes and crops with exactly
the recorded preprocessing (:mod:`rcdm.data.resample`, Pillow's arithmetic bit for bit).

What is not a plain RGB or greyscale JPEG (PNG, CMYK / YCCK JPEG, ...) is decoded by the worker as
with ``decode: cpu``. Damage is decided before any decoder sees the file, the same on every path:
a JPEG whose data ends before its end-of-image marker is refused by the worker from its bytes
(``rcdm.data.decode.jpeg_incomplete``; nvjpeg would decode it with a grey bottom, PIL refuses it).
A complete JPEG the device cannot decode falls back to PIL in the main process; one PIL cannot
read either is counted and skipped as usual. The decoders themselves may differ by JPEG
rounding (nvjpeg's IDCT and chroma upsampling are not libjpeg-turbo's; there is no draft-mode DCT
scaling on the device): ``bench/extract.py --compare-decode`` measures the feature difference.
"""

from __future__ import annotations

import torch
from rcdm.data.images import Preprocess, UnreadableImage, decode_image
from rcdm.data.resample import encoder_crop
from rcdm.errors import InvalidInput
from rcdm.extract.dataset import crop_uint8

__all__ = ["resolve_decode", "decode_on_device"]


def resolve_decode(spec: str, device: torch.device, uint8: bool) -> str:
    """``auto`` -> ``gpu`` on a CUDA device (when the crops are normalised there), else ``cpu``."""
    if spec == "gpu" and device.type != "cuda":
        raise InvalidInput(
            f"extract.decode=gpu needs a CUDA device (extraction runs on {device}); use decode: auto or cpu"
        )
    if spec == "gpu" and not uint8:
        raise InvalidInput(
            "extract.decode=gpu needs device-side normalisation, which this preprocessing lacks; use decode: cpu"
        )
    if spec == "auto":
        return "gpu" if device.type == "cuda" and uint8 else "cpu"
    return spec


def device_decoder(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The device decoder: torchvision's batched ``decode_jpeg`` (nvjpeg on CUDA), one (3, H, W)
    uint8 tensor on ``device`` per JPEG; raises if any of them fails. Tests replace it with a CPU
    stand-in."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


def _decode_all(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 on ``device`` per JPEG (None where the device decoder refused it)."""
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:  # one batched call
        return device_decoder(tensors, device)
    except Exception:  # one bad file fails the batch: decode one by one
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(device_decoder([t], device)[0])
            except Exception:
                out.append(None)
        return out


def decode_on_device(batch: dict, pp: Preprocess, device: torch.device, x: torch.Tensor) -> None:
    """Fill the rows of ``x`` ((B, 3, crop, crop) uint8 on ``device``) whose item carries JPEG bytes
    (``batch["jpeg"][j]``): decode on the device, resize and crop. Rows that fail fall back to PIL
    on the host; unreadable ones get ``batch["ok"][j] = False`` and their reason."""
    rows = [j for j, d in enumerate(batch["jpeg"]) if d]
    if not rows:
        return
    images = _decode_all([batch["jpeg"][j] for j in rows], device)
    groups: dict[tuple[int, int], list[int]] = {}
    for j, img in zip(rows, images, strict=True):
        if img is None:
            _host_fallback(batch, pp, j, x)
        else:
            groups.setdefault(tuple(img.shape[-2:]), []).append(j)
    by_row = dict(zip(rows, images, strict=True))
    for js in groups.values():  # one resize per distinct size
        crops = encoder_crop(torch.stack([by_row[j] for j in js]), pp)  # (n, 3, crop, crop)
        x[_row_index(js, device)] = crops


def _row_index(rows: list[int], device: torch.device) -> torch.Tensor:
    """Row numbers as an index on ``device``; on CUDA through pinned memory without blocking
    (a plain ``torch.tensor(rows, device=...)`` waits for the stream, once per size per batch)."""
    index = torch.tensor(rows, dtype=torch.long)
    if device.type != "cuda":
        return index.to(device)
    return index.pin_memory().to(device, non_blocking=True)


def _host_fallback(batch: dict, pp: Preprocess, j: int, x: torch.Tensor) -> None:
    try:  # only e.reason is kept: loop.py's file_batch records the source item's key beside it
        img = decode_image(batch["jpeg"][j], None, key=f"item {batch['index'][j]}")
        x[j] = crop_uint8(img, pp).to(x.device)
    except UnreadableImage as e:
        batch["ok"][j] = False
        batch["reason"][j] = e.reason
