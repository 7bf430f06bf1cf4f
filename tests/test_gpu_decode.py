"""``extract.decode: gpu``: the device path's resize/crop equals the CPU path's on the same pixels.

The resampler (``rcdm.data.resample``) reproduces Pillow's fixed-point arithmetic, so these run on
CPU tensors; the last test repeats the check with the decode on a CUDA device.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from rcdm.data.preprocess import PREPROCESS, Preprocess, adm_center_crop, effective_preprocess
from rcdm.data.resample import adm_crop, encoder_crop, resize
from rcdm.errors import InvalidInput
from rcdm.extract.dataset import ExtractDataset, collate, crop_uint8
from rcdm.extract.gpudecode import decode_on_device, resolve_decode

PPS = [
    PREPROCESS["rcdm"],
    PREPROCESS["imagenet"],
    effective_preprocess("rcdm", input_size=32),  # the demo's
    effective_preprocess("imagenet", input_size=48),
    Preprocess(40, 36, "bicubic", (0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
]


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    return np.clip(base.astype(int) + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


@pytest.mark.parametrize("kind,pil", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR), ("box", Image.BOX)])
def test_resize_is_pillows_bit_for_bit(kind, pil):
    rng = np.random.default_rng(1)
    for seed in range(6):
        w, h = (int(v) for v in rng.integers(9, 120, 2))
        a = _photo(w, h, seed)
        for size in [(int(v) for v in rng.integers(4, 160, 2)), (w, max(1, h // 3)), (w * 2 + 1, h)]:
            size = tuple(size)
            want = np.asarray(Image.fromarray(a).resize(size, pil))
            got = resize(_chw(a), size, kind).permute(1, 2, 0).numpy()
            assert got.shape == want.shape
            assert np.array_equal(got, want), (kind, (w, h), size, int(np.abs(got.astype(int) - want).max()))


def test_crop_rules_match_the_cpu_path():
    """encoder_crop / adm_crop on uint8 tensors == crop_uint8 / adm_center_crop on the PIL image."""
    for seed, (w, h) in enumerate([(300, 225), (225, 300), (97, 64), (64, 64), (513, 130), (33, 480)]):
        a = _photo(w, h, seed)
        img, x = Image.fromarray(a), _chw(a)
        for pp in PPS:
            assert torch.equal(encoder_crop(x, pp), crop_uint8(img, pp)), (pp, (w, h))
        assert np.array_equal(adm_crop(x, 32).permute(1, 2, 0).numpy(), adm_center_crop(img, 32))
        batch = torch.stack([x, x.flip(-1)])  # batched: each row as alone
        assert torch.equal(encoder_crop(batch, PPS[2])[1], crop_uint8(img.transpose(Image.FLIP_LEFT_RIGHT), PPS[2]))


class _Source:
    """A minimal image source: items with keys, bytes by index."""

    def __init__(self, blobs: list[bytes]):
        self.blobs = blobs
        self.items = [type("Item", (), {"key": f"k{i}", "label": 0})() for i in range(len(blobs))]

    def __len__(self):
        return len(self.blobs)

    def read_bytes(self, i):
        return self.blobs[i]


def _encode(a: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _device_path_matches(device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    pp = PPS[2]
    arrays = [_photo(120, 90, 0), _photo(90, 120, 1), _photo(120, 90, 2), _photo(70, 50, 3)]
    blobs = [_encode(a, "JPEG", quality=90) for a in arrays]
    blobs[1] = _encode(arrays[1], "JPEG", quality=75, progressive=True)
    blobs.append(_encode(arrays[0], "PNG"))  # not a JPEG: the worker decodes it (CPU path)
    blobs.append(blobs[0][: len(blobs[0]) // 3])  # truncated JPEG
    blobs.append(_encode(np.asarray(Image.fromarray(arrays[3]).convert("L"))[..., None].repeat(3, 2), "JPEG"))
    ds = ExtractDataset(_Source(blobs), pp, draft=False, device_decode=True)
    batch = collate([ds[i] for i in range(len(blobs))])
    assert [bool(j) for j in batch["jpeg"]] == [True, True, True, True, False, True, True]
    x = batch["x"].to(device)
    decode_on_device(batch, pp, device, x)
    for j in (0, 1, 2, 3, 6):  # the same decoded pixels through the CPU path's crop
        pixels = decode_jpeg(
            torch.frombuffer(bytearray(blobs[j]), dtype=torch.uint8), mode=ImageReadMode.RGB, device=device
        )
        want = crop_uint8(Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()), pp)
        assert torch.equal(x[j].cpu(), want), j
    assert torch.equal(x[4].cpu(), crop_uint8(Image.fromarray(arrays[0]), pp))  # the PNG
    ok = batch["ok"].tolist()
    if not ok[5]:  # a decoder that refuses the truncated file: PIL's refusal is the reason
        assert batch["reason"][5]
    assert ok[:5] == [True] * 5 and ok[6]


def test_device_decode_path_on_cpu_tensors():
    _device_path_matches(torch.device("cpu"))


def test_resolve_decode():
    assert resolve_decode("auto", torch.device("cpu"), True) == "cpu"
    assert resolve_decode("auto", torch.device("cuda"), True) == "gpu"
    assert resolve_decode("auto", torch.device("cuda"), False) == "cpu"
    with pytest.raises(InvalidInput, match="needs a CUDA device"):
        resolve_decode("gpu", torch.device("cpu"), True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_decode_path_on_cuda():
    _device_path_matches(torch.device("cuda"))


def test_device_decode_worker_refuses_large_images_from_the_header():
    """decode: gpu's worker reads the header once: a JPEG over max_pixels is skipped with that reason,
    a small JPEG goes to the device, a PNG is decoded in the worker."""
    jpeg, png = _encode(_photo(40, 30, 0), "JPEG"), _encode(_photo(40, 30, 1), "PNG")
    ds = ExtractDataset(_Source([jpeg, png, jpeg]), PPS[2], draft=False, device_decode=True, max_pixels=40 * 30)
    small, not_jpeg = ds[0], ds[1]
    assert small["ok"] and small["jpeg"] == jpeg
    assert not_jpeg["ok"] and not_jpeg["jpeg"] == b"" and not_jpeg["x"].any()
    ds.max_pixels = 40 * 30 - 1
    big = ds[2]
    assert not big["ok"] and big["jpeg"] == b"" and "extract.max_pixels" in big["reason"]


def test_pass_order_is_calibrated_on_the_host_once_per_size():
    """The exact resize's per-size calibration never touches the tensor's device (on a GPU a probe
    there made every new size wait for the stream): a tensor on the meta device resizes, and the
    order is cached by sizes."""
    from rcdm.data import resample

    x = torch.empty(2, 3, 41, 57, dtype=torch.uint8, device="meta")
    assert resize(x, (23, 31), "bicubic").shape == (2, 3, 31, 23)
    assert ((57, 41), (23, 31), "bicubic") in resample._ORDER
