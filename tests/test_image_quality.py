"""What FID / IS and FD stand on besides the maths (test_metrics.py) and the network
(test_inception.py): the Inception weights found or why not, the cached reference statistics
and the refusal of a cache of another set, the reference images FID and FD read (the same evenly
spaced subset, unreadable ones skipped), and FD's extractors, offline."""

from __future__ import annotations

import numpy as np
import pytest
from rcdm.analysis.evaluation import fd as fdmod
from rcdm.analysis.evaluation.fid import expected_meta, load_reference_stats, plan_fid, save_reference_stats
from rcdm.analysis.evaluation.inception import INCEPTION_FILENAME, INCEPTION_URL

from tests.evaluation_setup import RES
from tests.synthetic import make_image_folder


# --------------------------------------------------------------------------- Inception weights
def test_missing_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    want = tmp_path / "empty_home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError) as e:
        plan_fid("on", None, allow_download=False)
    assert str(want) in str(e.value) and INCEPTION_URL in str(e.value)
    weights, why = plan_fid("auto", None, allow_download=False)
    assert weights is None and str(want) in why
    assert plan_fid("off", None, False) == (None, "evaluate.fid=off")
    with pytest.raises(FileNotFoundError, match="inception_weights points to"):
        plan_fid("auto", str(tmp_path / "nope.pth"), allow_download=False)


# ----------------------------------------------------------------- FID reference statistics
def test_reference_stats_cache_refuses_another_resolution_or_set(tmp_path):
    path = tmp_path / "fid-ref-64.npz"
    meta = expected_meta(tmp_path / "val", 64, "abc", None)
    save_reference_stats(path, np.zeros(2048), np.eye(2048), {**meta, "n": 5})
    mu, sigma, got = load_reference_stats(path, meta)
    assert got["n"] == 5 and sigma.shape == (2048, 2048)
    with pytest.raises(ValueError, match="resolution=64"):
        load_reference_stats(path, expected_meta(tmp_path / "val", 32, "abc", None))
    with pytest.raises(ValueError, match="source="):
        load_reference_stats(path, expected_meta(tmp_path / "other", 64, "abc", None))
    with pytest.raises(ValueError, match="weights_sha256"):
        load_reference_stats(path, expected_meta(tmp_path / "val", 64, "def", None))
    assert load_reference_stats(tmp_path / "absent.npz", meta) is None


def test_reference_stats_subset_and_unreadable_images(tmp_path):
    from rcdm.analysis.evaluation.fid import compute_reference_stats

    from tests.synthetic import corrupt_jpeg

    val = make_image_folder(tmp_path / "val", n_classes=2, per_class=3)  # 6 images, 2 classes
    corrupt_jpeg(val / "cls_1" / "img_002.jpg")  # the last one
    seen = []

    def fake_inception(images, batch_size):  # (B, H, W, 3) -> pool (B, 2048): records inputs
        seen.append(images.shape)
        pool = np.repeat(images.reshape(len(images), -1)[:, :8].astype(np.float64), 256, axis=1)
        return pool, np.zeros((len(images), 1008))

    mu, sigma, info = compute_reference_stats(fake_inception, val, RES, limit=3, batch_size=2)
    # Evenly spaced subset 0, 2, 5 of the sorted set (spanning both classes); 5 is unreadable.
    assert info["n"] == 2 and info["n_unreadable"] == 1 and "img_002" in info["unreadable"][0]
    assert all(s[1:] == (RES, RES, 3) for s in seen)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)


# ------------------------------------------------------------------------ FD / precision-recall
def test_fd_extractors_offline_message_and_compute(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    run, skipped = fdmod.plan_fd("auto", ("dinov2-vit-b-14", "vgg16"))
    assert run == [] and "dinov2_vitb14_pretrain.pth" in skipped["dinov2-vit-b-14"]["how_to_enable"]
    assert "fd_extractors=[]" in skipped["vgg16"]["how_to_enable"]
    assert fdmod.plan_fd("off", ("vgg16",))[1]["vgg16"]["reason"] == "evaluate.fid=off"
    with pytest.raises(ValueError, match="unknown extractor 'nope'"):
        fdmod.plan_fd("auto", ("nope",))
    vgg = tmp_path / "home" / "hub" / "checkpoints" / fdmod.VGG16_FILE
    vgg.parent.mkdir(parents=True)
    vgg.write_bytes(b"x")
    assert fdmod.plan_fd("auto", ("vgg16",))[0] == ["vgg16"]
    # the computation, with a stand-in extractor (mean colour of 4x4 blocks)
    rng = np.random.default_rng(0)
    fake, real = rng.integers(0, 256, (12, 8, 8, 3), np.uint8), rng.integers(0, 256, (16, 8, 8, 3), np.uint8)
    blocks = lambda name: lambda x: x.reshape(len(x), 2, 4, 2, 4, 3).mean((2, 4)).reshape(len(x), -1) / 255  # noqa: E731
    out = fdmod.compute(["vgg16"], fake, real, batch_size=5, device="cpu", extractor=blocks)["vgg16"]
    want = fdmod.fd_and_pr(blocks("")(fake), blocks("")(real))
    assert out["fd"] == pytest.approx(want["fd"]) and out["precision"] == want["precision"]
    assert out["n_reference"] == 16 and out["feature_dim"] == 12
    streamed = fdmod.compute(["vgg16"], fake, iter([real[:7], real[7:]]), batch_size=5, device="cpu", extractor=blocks)
    assert streamed["vgg16"] == out


def test_fd_streams_fids_reference_images(tmp_path):
    """FD reads the reference set as FID does (same evenly spaced subset, unreadable ones skipped),
    in batches; fewer than 2 readable images is an error naming the set."""
    from rcdm.analysis.evaluation.fid import reference_batches
    from rcdm.data.images import adm_center_crop, open_source

    from tests.synthetic import corrupt_jpeg

    val = make_image_folder(tmp_path / "val", n_classes=2, per_class=3)
    corrupt_jpeg(val / "cls_1" / "img_002.jpg")  # the last image
    skipped: list[str] = []
    fid_batches = list(reference_batches(val, RES, 3, 1, skipped))
    fd_batches = list(fdmod.reference_images(str(val), RES, 3, 1))
    src = open_source(val)
    want = np.stack([adm_center_crop(src.load(i), RES) for i in (0, 2)])  # 0, 2, 5 with 5 unreadable
    assert [len(b) for b in fd_batches] == [1, 1] and len(skipped) == 1
    np.testing.assert_array_equal(np.concatenate(fd_batches), want)
    np.testing.assert_array_equal(np.concatenate(fid_batches), want)
    assert [len(b) for b in fdmod.reference_images(str(val), RES, None, 4)] == [4, 1]
    with pytest.raises(ValueError, match="at least 2 readable reference images in"):
        list(fdmod.reference_images(str(val), RES, 1, 4))
