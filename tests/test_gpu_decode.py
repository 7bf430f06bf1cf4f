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

from tests.extract_setup import tiny_encoder  # noqa: F401 (the fixture `tiny`)

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
    blobs.append(_encode(np.asarray(Image.fromarray(arrays[3]).convert("L")), "JPEG"))  # one channel (mode L)
    ds = ExtractDataset(_Source(blobs), pp, draft=False, device_decode=True)
    batch = collate([ds[i] for i in range(len(blobs))])
    # the PNG is decoded by the worker; the truncated JPEG is refused there, on every path (jpeg_incomplete)
    assert [bool(j) for j in batch["jpeg"]] == [True, True, True, True, False, False, True]
    x = batch["x"].to(device)
    decode_on_device(batch, pp, device, x)
    for j in (0, 1, 2, 3, 6):  # the same decoded pixels through the CPU path's crop
        pixels = decode_jpeg(
            torch.frombuffer(bytearray(blobs[j]), dtype=torch.uint8), mode=ImageReadMode.RGB, device=device
        )
        want = crop_uint8(Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()), pp)
        assert torch.equal(x[j].cpu(), want), j
    assert torch.equal(x[4].cpu(), crop_uint8(Image.fromarray(arrays[0]), pp))  # the PNG
    assert batch["ok"].tolist() == [True] * 5 + [False, True]
    assert batch["reason"][5].startswith("truncated JPEG")


def _smooth() -> np.ndarray:
    """A smooth 64 x 48 RGB image (JPEG keeps its colours to a few levels)."""
    rng = np.random.default_rng(5)
    return np.asarray(Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((64, 48), Image.BICUBIC))


def _jpeg_modes() -> dict[str, bytes]:
    """Real JPEGs of the modes a dataset holds: one channel (mode L), CMYK (PIL writes Adobe-marker
    CMYK, stored inverted), and RGB carrying an ICC profile (a small synthetic sRGB profile standing
    in for Adobe RGB: neither path applies a profile, so which one it is does not matter)."""
    from PIL import ImageCms

    a = _smooth()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    blobs = {}
    for name, img, kw in [
        ("L", Image.fromarray(a).convert("L"), {}),
        ("CMYK", Image.fromarray(a).convert("CMYK"), {}),
        ("RGB+ICC", Image.fromarray(a), {"icc_profile": icc}),
    ]:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92, **kw)
        blobs[name] = buf.getvalue()
    with Image.open(io.BytesIO(blobs["CMYK"])) as img:
        assert img.mode == "CMYK" and "adobe" in img.info  # a real Adobe CMYK JPEG, not RGB saved again
    with Image.open(io.BytesIO(blobs["RGB+ICC"])) as img:
        assert img.info["icc_profile"] == icc
    return blobs


def _modes_match(device: torch.device, exact: bool) -> None:
    """Each mode comes out as 3-channel RGB of the file's size on both paths, with close values
    (equal when the device decoder is libjpeg-turbo on the CPU). CMYK / YCCK JPEGs go through PIL
    on every path (the device decoders' CMYK conversions differ); ICC profiles are applied on none."""
    from rcdm.data.decode import decode_image
    from rcdm.extract.gpudecode import device_decoder

    pp = PPS[2]
    blobs = _jpeg_modes()
    names = list(blobs)
    src = _Source(list(blobs.values()))
    ds = ExtractDataset(src, pp, draft=False, device_decode=True)
    batch = collate([ds[i] for i in range(len(names))])
    assert {n: bool(j) for n, j in zip(names, batch["jpeg"], strict=True)} == {
        "L": True,
        "CMYK": False,
        "RGB+ICC": True,
    }
    x = batch["x"].to(device)
    decode_on_device(batch, pp, device, x)
    assert batch["ok"].all()
    host = ExtractDataset(src, pp, draft=False)  # decode: cpu
    a = _smooth()
    plain = np.asarray(decode_image(_encode(a, "JPEG", quality=92)))  # the RGB file without its profile
    for j, (name, data) in enumerate(blobs.items()):
        img = decode_image(data)
        assert img.mode == "RGB" and img.size == (64, 48), name
        if name != "CMYK":  # what the device decoder makes of the file itself
            t = device_decoder([torch.frombuffer(bytearray(data), dtype=torch.uint8)], device)[0]
            assert t.shape == (3, 48, 64) and t.dtype == torch.uint8, name
        cpu = host[j]["x"]
        assert cpu.shape == x[j].shape == (3, pp.crop, pp.crop), name
        diff = (x[j].cpu().int() - cpu.int()).abs().float()
        assert torch.equal(x[j].cpu(), cpu) if exact else diff.mean() <= 1.5, (name, diff.mean(), diff.max())
        rgb = np.asarray(img).astype(int)
        if name == "L":  # one channel, replicated
            assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
            assert torch.equal(x[j][0], x[j][1]) and torch.equal(x[j][1], x[j][2])
        else:  # colours, not inverted (Adobe CMYK): close to the encoded pixels
            assert np.abs(rgb - a).mean() < 3, (name, np.abs(rgb - a).mean())
        if name == "RGB+ICC":  # the profile is not applied: the pixels of the same file without it
            assert np.array_equal(rgb, plain)


def test_jpeg_modes_on_both_paths_on_cpu():
    _modes_match(torch.device("cpu"), exact=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jpeg_modes_on_both_paths_on_cuda():
    _modes_match(torch.device("cuda"), exact=False)


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


# --- One rule for damaged files on every decode path (issue 21) -----------------------------------


def _like_nvjpeg(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """A CPU stand-in for nvjpeg's leniency: a JPEG whose data ends early still decodes, the missing
    rows grey (what nvjpeg does with a truncated file; libjpeg-turbo in PIL refuses it)."""
    from PIL import ImageFile

    out = []
    before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
    try:
        for t in tensors:
            img = Image.open(io.BytesIO(t.numpy().tobytes()))
            out.append(_chw(np.array(img.convert("RGB"))).to(device))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
    return out


def _torchvision_cpu(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's decode_jpeg on CPU tensors (libjpeg-turbo: refuses a truncated file)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


def _damaged_folder(root) -> None:
    d = root / "cls_0"
    d.mkdir(parents=True)
    good = _encode(_photo(64, 48, 0), "JPEG", quality=90)
    (d / "a_good.jpg").write_bytes(good)
    (d / "b_half.jpg").write_bytes(good[: len(good) // 2])  # a download cut at half its bytes
    (d / "c_text.jpg").write_bytes(b"not an image at all\n" * 20)
    (d / "d_good.jpg").write_bytes(_encode(_photo(48, 64, 1), "JPEG", quality=80, progressive=True))


@pytest.mark.parametrize("stand_in", [_like_nvjpeg, _torchvision_cpu], ids=["nvjpeg-like", "torchvision-cpu"])
def test_damaged_files_give_the_same_store_on_every_decode_path(tmp_path, tiny, monkeypatch, capsys, stand_in):
    """A good JPEG, a truncated one and a non-image: the same keys stored, the same failures with the
    same reasons, the same report, with decode: cpu and with the device path (its decoder replaced
    by a CPU stand-in)."""
    import rcdm.extract
    import rcdm.extract.gpudecode as gd
    import rcdm.extract.loop as loop
    from rcdm import store as S

    from tests.extract_setup import extract_cfg

    _damaged_folder(tmp_path / "img")
    cpu = rcdm.extract.run(extract_cfg(tmp_path / "img", tmp_path / "cpu", encoder="tiny", decode="cpu"))
    cpu_err = capsys.readouterr().err
    monkeypatch.setattr(loop, "resolve_decode", lambda spec, device, uint8: spec)  # decode: gpu on the CPU
    monkeypatch.setattr(gd, "device_decoder", stand_in)
    dev = rcdm.extract.run(extract_cfg(tmp_path / "img", tmp_path / "dev", encoder="tiny", decode="gpu"))
    dev_err = capsys.readouterr().err
    a, b = S.FeatureStore(cpu), S.FeatureStore(dev)
    assert a.manifest["extract_config"]["decode"] == "cpu" and b.manifest["extract_config"]["decode"] == "gpu"
    assert a.keys == b.keys == ["cls_0/a_good", "cls_0/d_good"]
    assert [(f["key"], f["reason"]) for f in a.failed] == [(f["key"], f["reason"]) for f in b.failed]
    assert [f["key"] for f in a.failed] == ["cls_0/b_half", "cls_0/c_text"]
    assert "truncated" in a.failed[0]["reason"]
    assert "2 unreadable image(s) skipped" in cpu_err and "2 unreadable image(s) skipped" in dev_err


def _pil_loads(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:
        return False


def test_the_damage_rule_refuses_every_cut_jpeg_from_its_header():
    """jpeg_incomplete (decoding nothing) refuses a JPEG cut at any length: baseline, progressive,
    restart markers, an EXIF segment, greyscale, CMYK; bytes after the end-of-image marker (EOI) are
    allowed. It is PIL's full load() plus one check: PIL refuses every cut but those that lose only
    the EOI itself (it reads a greyscale file without it), which the rule refuses too, so that
    nvjpeg's leniency cannot decide either."""
    from rcdm.data.decode import UnreadableImage, jpeg_incomplete, open_image

    img = Image.fromarray(_photo(72, 54, 0))
    exif = Image.Exif()
    exif[0x010E] = "an image description long enough to matter " * 3
    blobs = [
        _encode(np.asarray(img), "JPEG", quality=90),
        _encode(np.asarray(img), "JPEG", quality=75, progressive=True),
        _encode(np.asarray(img), "JPEG", restart_marker_blocks=2),
        _encode(np.asarray(img), "JPEG", exif=exif.tobytes()),
        _encode(np.asarray(img.convert("L")), "JPEG"),
    ]
    buf = io.BytesIO()
    img.convert("CMYK").save(buf, format="JPEG")
    blobs.append(buf.getvalue())
    for data in blobs:
        assert jpeg_incomplete(data) is None and jpeg_incomplete(data + b"\0\0trailer") is None
        assert _pil_loads(data + b"\0\0trailer")
        for cut in [*range(4, len(data), 23), *range(len(data) - 6, len(data))]:
            assert jpeg_incomplete(data[:cut]) is not None, (cut, len(data))
            assert not _pil_loads(data[:cut]) or cut >= len(data) - 2, (cut, len(data))
        with pytest.raises(UnreadableImage, match="truncated JPEG"):
            open_image(data[: len(data) // 2])  # the header's check, before any decoding
