"""The training image cache (rcdm.train.cache): the decoding path's pixels, decoded once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rcdm.config import TrainConfig
from rcdm.errors import InvalidInput
from rcdm.store import FeatureStore
from rcdm.train import cache as C
from rcdm.train.data import ImageFeatureDataset

from tests.train_setup import RES, train_store


def test_cache_holds_exactly_the_decoded_rows_and_is_reused(tmp_path):
    store_path = train_store(tmp_path, per_class=3)
    store = FeatureStore(store_path)
    ds = ImageFeatureDataset(store_path, RES)
    want = [ds[(row, flip)] for row in range(ds.n) for flip in (False, True)]
    d = C.build(ds, store, workers=0, show=False)
    assert d == C.cache_dir(store_path, RES) and d.parent == store_path.parent
    meta = json.loads((d / "meta.json").read_text())
    assert meta["rows"] == ds.n and meta["resolution"] == RES and meta["store_manifest_sha256"] == store.manifest_sha256
    ds.use_cache(d)
    got = [ds[(row, flip)] for row in range(ds.n) for flip in (False, True)]
    for (xa, ha, ra), (xb, hb, rb) in zip(want, got, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ha, hb) and ra == rb
    stamp = (d / "images.npy").stat().st_mtime_ns
    assert C.build(ImageFeatureDataset(store_path, RES), store, workers=0, show=False) == d
    assert (d / "images.npy").stat().st_mtime_ns == stamp  # reused, not rewritten
    (d / "meta.json").write_text(json.dumps({**meta, "store_manifest_sha256": "other"}))
    C.build(ImageFeatureDataset(store_path, RES), store, workers=0, show=False)  # stale: rebuilt
    assert json.loads((d / "meta.json").read_text()) == meta
    assert not list(store_path.parent.glob("*.tmp-*"))


def test_cache_wanted_on_cuda_only_by_default(tmp_path):
    store = FeatureStore(train_store(tmp_path))
    assert not C.wanted("auto", store, RES, torch.device("cpu"))
    assert C.wanted("auto", store, RES, torch.device("cuda"))
    assert C.wanted("on", store, RES, torch.device("cpu"))
    assert not C.wanted("off", store, RES, torch.device("cuda"))
    with pytest.raises(InvalidInput, match="needs"):
        C.wanted("on", store, 10**6, torch.device("cpu"))  # 3 TB per image: never fits
    with pytest.raises(InvalidInput, match="train.image_cache: 'yes' is not allowed"):  # the schema's choices
        TrainConfig(image_cache="yes")


def test_draft_decoding_is_opt_in_and_close(tmp_path):
    """draft=True: libjpeg DCT scaling before ADM's rule (JPEG sources only), near the exact pixels."""
    from PIL import Image

    from tests.synthetic_store import make_store

    rng = np.random.default_rng(0)
    folder = tmp_path / "jpegs" / "c0"
    folder.mkdir(parents=True)
    for i in range(2):
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((160, 120), Image.BICUBIC).save(folder / f"im{i}.jpg", quality=95)
    from rcdm.data.images import open_source

    src = open_source(tmp_path / "jpegs")
    feats = rng.standard_normal((2, 2, 4)).astype(np.float32)
    store = make_store(
        tmp_path / "store",
        feats,
        keys=[it.key for it in src.items],
        labels=[0, 0],
        source=src.describe(),
        dtype="float32",
    )
    exact, draft = ImageFeatureDataset(store, RES), ImageFeatureDataset(store, RES, draft=True)
    for row in range(2):
        a, b = exact.load_image(row).astype(int), draft.load_image(row).astype(int)
        assert a.shape == b.shape == (RES, RES, 3)
        assert np.abs(a - b).mean() < 3.0
