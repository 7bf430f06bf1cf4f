"""Image sources, decoding and preprocessing (rcdm.data.images)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rcdm.data.images import (
    PREPROCESS,
    Item,
    Preprocess,
    UnreadableImage,
    adm_center_crop,
    decode_image,
    encoder_input,
    from_model_range,
    open_source,
    to_model_range,
)

from tests.synthetic import corrupt_jpeg, jpeg_bytes, make_image_folder, random_image


def _write_tar(path: Path, samples: list[tuple[str, bytes, int | None]]) -> Path:
    """A webdataset tar: per sample KEY.jpg and, if a label is given, KEY.cls."""
    with tarfile.open(path, "w") as tf:
        for key, data, label in samples:
            fields = [("jpg", data)] + ([("cls", str(label).encode())] if label is not None else [])
            for ext, payload in fields:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return path


def _imgs(n: int, seed: int = 0, size=(40, 32)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [random_image(rng, size) for _ in range(n)]


# ---------------------------------------------------------------- sources


def test_folder_source_keys_labels_and_bytes(tmp_path):
    root = make_image_folder(tmp_path / "train", n_classes=3, per_class=2)
    src = open_source(root)
    assert src.kind == "folder"
    assert src.classes == ["cls_0", "cls_1", "cls_2"]
    assert [it.key for it in src.items] == [f"cls_{c}/img_{i:03d}" for c in range(3) for i in range(2)]
    assert src.labels().tolist() == [0, 0, 1, 1, 2, 2]
    i = src.index_of("cls_1/img_001")
    assert src.items[i] == Item("cls_1/img_001", 1, str(root / "cls_1" / "img_001.jpg"))
    assert src.read_bytes(i) == (root / "cls_1" / "img_001.jpg").read_bytes()
    img = src.load(i)
    assert img.mode == "RGB" and img.size == (48, 40)
    d = src.describe()
    assert d["kind"] == "folder" and d["n_items"] == 6 and d["split"] == "train"
    with pytest.raises(KeyError, match="nope"):
        src.index_of("nope")
    # stable: reopening gives the same order
    assert open_source(root).items == src.items


def test_folder_duplicate_keys_refused(tmp_path):
    root = make_image_folder(tmp_path / "d", n_classes=1, per_class=1)
    random_image(np.random.default_rng(0)).save(root / "cls_0" / "img_000.png")
    with pytest.raises(ValueError, match="cls_0/img_000"):
        open_source(root)


def test_list_source(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_classes=2, per_class=2)
    lst = tmp_path / "list.txt"
    abs_path = root / "cls_1" / "img_001.jpg"
    lst.write_text(
        f"# a comment\nimgs/cls_0/img_000.jpg\t7\nimgs/cls_0/img_001.jpg 3\n\nimgs/cls_1/img_000.jpg\n{abs_path}\n"
    )
    src = open_source(lst)
    assert src.kind == "list"
    assert [it.key for it in src.items] == [
        "imgs/cls_0/img_000",
        "imgs/cls_0/img_001",
        "imgs/cls_1/img_000",
        str(abs_path.with_suffix("")),
    ]
    assert src.labels().tolist() == [7, 3, -1, -1]
    assert src.load(0).size == (48, 40)
    assert src.read_bytes(3) == abs_path.read_bytes()


def test_wds_sources_single_folder_and_brace(tmp_path):
    imgs = _imgs(5)
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_tar(shards / "part-000.tar", [(f"s{i:02d}", jpeg_bytes(imgs[i]), i) for i in range(3)])
    _write_tar(shards / "part-001.tar", [(f"s{i:02d}", jpeg_bytes(imgs[i]), None) for i in (3, 4)])

    one = open_source(shards / "part-000.tar")
    assert one.kind == "wds" and [it.key for it in one.items] == ["s00", "s01", "s02"]
    assert one.labels().tolist() == [0, 1, 2]
    assert one.read_bytes(1) == jpeg_bytes(imgs[1])

    folder = open_source(shards)
    brace = open_source(str(shards / "part-{000..001}.tar"))
    globbed = open_source(str(shards / "part-*.tar"))
    for src in (folder, brace, globbed):
        assert [it.key for it in src.items] == [f"s{i:02d}" for i in range(5)]
        assert src.labels().tolist() == [0, 1, 2, -1, -1]
        assert src.items[4].tar == str(shards / "part-001.tar")
        # decoding the member bytes gives the image that was written
        ref = decode_image(jpeg_bytes(imgs[4]))
        assert np.array_equal(np.asarray(src.load(4)), np.asarray(ref))
    assert folder.describe()["n_tars"] == 2
    # sources travel to DataLoader workers by pickle
    import pickle

    again = pickle.loads(pickle.dumps(brace))
    assert again.items == brace.items and again.read_bytes(3) == jpeg_bytes(imgs[3])


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        open_source(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        open_source(tmp_path / "empty")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="empty"):
        open_source(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="pattern"):
        open_source(str(tmp_path / "x-{0..3}.tar"))
    with pytest.raises(ValueError, match="unknown kind"):
        open_source(Path(__file__))


def test_corrupt_and_missing_images_raise_unreadable(tmp_path):
    root = make_image_folder(tmp_path / "d", n_classes=1, per_class=2)
    corrupt_jpeg(root / "cls_0" / "img_001.jpg")
    src = open_source(root)
    assert src.load(0).size == (48, 40)
    with pytest.raises(UnreadableImage) as e:
        src.load(1)
    assert e.value.key == "cls_0/img_001"
    (root / "cls_0" / "img_000.jpg").unlink()  # vanished after the source was opened
    with pytest.raises(UnreadableImage, match="img_000"):
        src.load(0)
    with pytest.raises(UnreadableImage):
        decode_image(b"not an image at all")


def test_draft_decoding_keeps_shorter_side():
    img = _imgs(1, size=(1000, 750))[0]
    data = jpeg_bytes(img)
    full = decode_image(data)
    drafted = decode_image(data, draft=(224, 224))
    assert full.size == (1000, 750)
    # libjpeg scales by 1/2 (500x375); 1/4 would make the shorter side 188 < 224
    assert drafted.size == (500, 375)
    assert min(drafted.size) >= 224


# ---------------------------------------------------------------- preprocessing


def test_presets_and_roundtrip():
    assert PREPROCESS["rcdm"].value_range == (-1.0, 1.0)
    assert PREPROCESS["rcdm"].mean == (0.0, 0.0, 0.0) and PREPROCESS["rcdm"].std == (1.0, 1.0, 1.0)
    assert PREPROCESS["imagenet"].resize == 256 and PREPROCESS["imagenet"].crop == 224
    for pp in PREPROCESS.values():
        assert Preprocess.from_dict(pp.to_dict()) == pp
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(224, 224, "nearest", (0, 1), (0, 0, 0), (1, 1, 1))


def test_encoder_input_values():
    # a constant image: every pixel maps through the value range and mean/std exactly
    img = Image.new("RGB", (300, 260), (255, 0, 51))
    x = encoder_input(img, PREPROCESS["rcdm"])
    assert PREPROCESS["rcdm"].resize_rule == "adm"
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor(1.0)) and torch.allclose(x[1], torch.tensor(-1.0))
    assert torch.allclose(x[2], torch.tensor(51 / 255 * 2 - 1))
    y = encoder_input(img, PREPROCESS["imagenet"])
    assert torch.allclose(y[0], torch.tensor((1.0 - 0.485) / 0.229))
    assert torch.allclose(y[1], torch.tensor((0.0 - 0.456) / 0.224))


def test_encoder_input_matches_torchvision():
    import torchvision.transforms as T

    img = _imgs(1, seed=3, size=(333, 250))[0]
    tv = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    assert torch.allclose(encoder_input(img, PREPROCESS["imagenet"]), tv(img), atol=1e-6)


def test_rcdm_preset_is_rcdm_code():
    # the official RCDM data loader: center_crop_arr(img, 224).astype(float32) / 127.5 - 1
    img = _imgs(1, seed=4, size=(500, 375))[0]
    ref = adm_center_crop(img, 224).astype(np.float32) / 127.5 - 1
    x = encoder_input(img, PREPROCESS["rcdm"])
    assert torch.equal(x, torch.from_numpy(ref).permute(2, 0, 1))
    with pytest.raises(ValueError, match="bicubic"):
        Preprocess(224, 224, "bilinear", (-1, 1), (0, 0, 0), (1, 1, 1), "adm")


def test_adm_center_crop():
    img = _imgs(1, seed=2, size=(600, 260))[0]
    out = adm_center_crop(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # the rule by hand: 600x260 -> box 300x130 -> box 150x65 (halve while the shorter side is
    # >= 2 * 64 = 128) -> bicubic to round(150 * 64 / 65) = 148 x 64 -> center crop
    ref = img.resize((300, 130), Image.BOX).resize((150, 65), Image.BOX)
    ref = ref.resize((148, 64), Image.BICUBIC)
    ref_arr = np.asarray(ref)[:, (148 - 64) // 2 : (148 - 64) // 2 + 64]
    assert np.array_equal(out, ref_arr)
    # an image already at the size is returned unchanged
    small = _imgs(1, seed=5, size=(64, 64))[0]
    assert np.array_equal(adm_center_crop(small, 64), np.asarray(small))


def test_model_range_roundtrip():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = to_model_range(a)
    assert x.shape == (2, 3, 5, 7) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(from_model_range(x), a)
    assert to_model_range(a[0]).shape == (1, 3, 5, 7)
    assert from_model_range(torch.full((3, 2, 2), 5.0)).max() == 255
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(a.astype(np.float32))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_16_bit_images_are_scaled_to_8_bits():
    """16-bit grey levels k * 257 are the 8-bit levels k (not clipped to white above 255)."""
    levels = np.array([[0, 1, 64, 128, 200, 255]], dtype=np.uint16)
    x16 = levels * 257  # (1, 6) in [0, 65535]
    cases = {
        "PNG I;16": Image.frombytes("I;16", (6, 1), x16.astype("<u2").tobytes()),
        "TIFF I;16B": Image.frombytes("I;16B", (6, 1), x16.astype(">u2").tobytes()),
        "PPM I": Image.fromarray(x16.astype(np.int32)),  # 16-bit PGM opens as mode I
    }
    for name, img in cases.items():
        data = _encoded(img, name.split()[0])
        assert Image.open(io.BytesIO(data)).mode == name.split()[1], name
        rgb = np.asarray(decode_image(data))  # (1, 6, 3) uint8
        assert rgb.dtype == np.uint8 and rgb.shape == (1, 6, 3)
        np.testing.assert_array_equal(rgb[..., 0], levels, err_msg=name)
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    # in-between values round to the nearest 8-bit level; a mode-I image outside 16 bits uses its range
    mid = Image.frombytes("I;16", (3, 1), np.array([128, 385, 65407], "<u2").tobytes())
    np.testing.assert_array_equal(np.asarray(decode_image(_encoded(mid, "PNG")))[0, :, 0], [0, 1, 255])
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(decode_image(_encoded(wide, "TIFF")))[0, :, 0], [0, 128, 255])


def test_images_over_the_pixel_budget_are_refused_before_decoding(monkeypatch):
    import warnings

    from PIL import ImageFile

    huge = _encoded(Image.new("L", (11000, 11000), 128), "PNG")  # 121 Mpx in ~140 KB
    assert len(huge) < 300_000
    loaded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loaded.append(self.size) or real_load(self))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(UnreadableImage, match=r"11000x11000.*121\.0 Mpx.*max_pixels"):
            decode_image(huge, key="huge", max_pixels=64_000_000)
    assert loaded == []  # the header was read, the pixels never decoded
    assert decode_image(jpeg_bytes(random_image(np.random.default_rng(0))), max_pixels=48 * 40).size == (48, 40)
    with pytest.raises(UnreadableImage, match="max_pixels"):
        decode_image(jpeg_bytes(random_image(np.random.default_rng(0))), max_pixels=48 * 40 - 1)
    # past PIL's own decompression-bomb limit the image is unreadable, not an error of the run
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImage, match="DecompressionBomb"):
        decode_image(huge, key="huge", max_pixels=None)


def test_unreadable_reason_has_no_python_object_address():
    from rcdm.data.decode import UnreadableImage, decode_image

    with pytest.raises(UnreadableImage) as info:
        decode_image(b"not an image at all", key="cls_0/bad")
    assert "cannot identify image file" in info.value.reason and " at 0x" not in info.value.reason
    assert "object" not in str(info.value)
