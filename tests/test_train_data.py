"""Stage 2 data: the seeded image stream, the flip that picks view 1, webdataset pixels, the EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rcdm.config import TrainConfig
from rcdm.data.images import adm_center_crop, open_source
from rcdm.train.data import ImageFeatureDataset, StreamSampler, epoch_order

from tests.synthetic_store import make_store
from tests.train_setup import DIM, RES, train_store


def global_items(n: int, seed: int, start: int, count: int) -> list[tuple[int, bool]]:
    """The reference stream built from ``epoch_order`` alone: global positions
    ``start .. start+count-1`` as (row, flip) pairs."""
    out: list[tuple[int, bool]] = []
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for g in range(start, start + count):
        e, i = divmod(g, n)
        if e not in cache:
            cache.clear()
            cache[e] = epoch_order(n, seed, e)
        perm, flip = cache[e]
        out.append((int(perm[i]), bool(flip[i])))
    return out


def test_stream_is_pure_disjoint_and_resumable():
    n, seed = 7, 3
    stream = global_items(n, seed, 0, 40)
    # every epoch is a permutation of the rows
    for e in range(5):
        assert sorted(r for r, _ in stream[e * n : (e + 1) * n]) == list(range(n))
    flips = [f for _, f in stream]
    assert 0 < sum(flips) < len(flips)
    # rank r of 2 takes global positions r, r + 2, ...: disjoint, and together the whole stream
    it0, it1 = iter(StreamSampler(n, seed, 0, 2)), iter(StreamSampler(n, seed, 1, 2))
    r0 = [next(it0) for _ in range(20)]
    r1 = [next(it1) for _ in range(20)]
    assert r0 == stream[0::2] and r1 == stream[1::2]
    # resuming at position 10 continues the same stream
    it = iter(StreamSampler(n, seed, 0, 1, start=10))
    assert [next(it) for _ in range(30)] == stream[10:40]
    with pytest.raises(ValueError, match="multiple of world size"):
        StreamSampler(n, seed, 0, 4, start=6)


def test_flip_picks_view_one(tmp_path):
    store = train_store(tmp_path)
    ds = ImageFeatureDataset(store, RES)
    src = open_source(tmp_path / "images")
    from rcdm.store import FeatureStore

    fs = FeatureStore(store)
    for row in range(len(fs)):
        feat, key, _ = fs[row]
        x0, h0, r0 = ds[(row, False)]
        x1, h1, r1 = ds[(row, True)]
        assert r0 == r1 == row
        # the image is the source image of this key, ADM-cropped to the model resolution
        expect = adm_center_crop(src.load(src.index_of(key)), RES)
        assert np.array_equal(x0.numpy(), expect)
        assert np.array_equal(x1.numpy(), expect[:, ::-1])
        assert np.allclose(h0.numpy(), feat[0]) and np.allclose(h1.numpy(), feat[1])
        assert x0.shape == (RES, RES, 3) and x0.dtype == torch.uint8


def test_wds_store_with_images_reads_its_own_pixels(tmp_path):
    from tests.synthetic import jpeg_bytes, random_image

    rng = np.random.default_rng(0)
    imgs = [random_image(rng, (30, 30)) for _ in range(3)]
    feats = rng.standard_normal((3, 2, DIM)).astype(np.float32)
    store = make_store(tmp_path / "wds", feats, fmt="wds", images=[jpeg_bytes(im) for im in imgs], dtype="float32")
    ds = ImageFeatureDataset(store, RES)
    x, h, _ = ds[(1, True)]
    from rcdm.data.images import decode_image

    expect = adm_center_crop(decode_image(jpeg_bytes(imgs[1])), RES)[:, ::-1]
    assert np.array_equal(x.numpy(), expect)
    assert np.allclose(h.numpy(), feats[1, 1])


def test_missing_source_is_a_clear_error(tmp_path):
    store = train_store(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"rcdm train --source PATH` \(train.source"):
        ImageFeatureDataset(store, RES, source=str(tmp_path / "nowhere"))


def test_ema_update_matches_closed_form():
    from rcdm.train.ema import EMA, ema_rate_at

    net = torch.nn.Linear(3, 2)
    ema = EMA(net, (0.9, 0.5), warmup=False)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, step=1)
    for rate, m in ema.models.items():
        for k, v in m.state_dict().items():
            assert torch.allclose(v, rate * start[k] + (1 - rate) * (start[k] + 1.0))
    assert ema_rate_at(0.9999, 1, True) == pytest.approx(2 / 11)
    assert ema_rate_at(0.9999, 10**7, True) == 0.9999 and ema_rate_at(0.9999, 1, False) == 0.9999
    with pytest.raises(ValueError, match=r"train.ema_rates must be in \[0, 1\), got \[1.5\]"):  # the schema's bound
        TrainConfig(ema_rates=(1.5,))
