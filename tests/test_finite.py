"""A number is never printed from data that is not finite: extraction stops at the first batch of
non-finite features (naming the encoder, layer and dtype, and float32 when that would hold them),
and ranks treat a NaN distance as the worst rank, never the best."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rcdm.extract
from rcdm.errors import InvalidInput

from tests.extract_setup import TinyEncoder, extract_cfg, tiny_encoder  # noqa: F401 (the fixture `tiny`)
from tests.synthetic import make_image_folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "train", n_classes=2, per_class=2, size=(40, 32))


def _scaled(monkeypatch, factor: float) -> None:
    """TinyEncoder's features times ``factor`` (1e9: beyond float16; nan: NaN)."""
    real = TinyEncoder.forward
    monkeypatch.setattr(TinyEncoder, "forward", lambda self, x: real(self, x) * factor)


def test_features_beyond_float16_stop_the_extraction_and_name_float32(tiny, images, tmp_path, monkeypatch):
    _scaled(monkeypatch, 1e9)
    out = tmp_path / "store"
    with pytest.raises(
        InvalidInput, match=r"encoder tiny \(trunk\) gave non-finite float16 features.*extract.dtype=float32"
    ):
        rcdm.extract.run(extract_cfg(images, out, encoder="tiny"))
    assert not list(out.glob("shard-*.h5")) and not (out / "manifest.json").exists()
    store = rcdm.extract.run(extract_cfg(images, tmp_path / "f32", encoder="tiny", dtype="float32"))
    from rcdm.store import FeatureStore

    assert np.isfinite(FeatureStore(store).features(None)).all()


def test_nan_features_stop_the_extraction(tiny, images, tmp_path, monkeypatch):
    _scaled(monkeypatch, float("nan"))
    with pytest.raises(InvalidInput, match=r"gave non-finite float16 features .* the encoder itself gave NaN"):
        rcdm.extract.run(extract_cfg(images, tmp_path / "store", encoder="tiny"))


def test_a_nan_distance_is_the_worst_rank_not_the_best():
    from rcdm.faithfulness import nearest_neighbour_ranks

    ref = np.eye(4, dtype=np.float32)  # (N, D)
    queries = ref.copy()
    queries[1] = np.nan  # a sample whose re-encoding is not finite
    ranks = nearest_neighbour_ranks(queries, ref, np.arange(4))
    assert ranks.tolist() == [1, 4, 1, 1]  # NaN: behind every reference row (N = 4), never rank 1
    outside = nearest_neighbour_ranks(queries[[1]], ref, np.array([-1]), ref[[1]])
    assert outside.tolist() == [5]  # a condition outside the set: behind N + 1


def test_verify_names_a_fix_that_works_for_non_finite_features(tmp_path):
    """--repair re-encodes a shard, so for features the encoder made non-finite it would write
    them again: verify says to re-extract with float32 (or without mixed precision) instead."""
    from click.testing import CliRunner
    from rcdm.app.cli import cli
    from rcdm.store import REPAIR, verify

    from tests.synthetic_store import make_store

    feats = np.ones((4, 3), np.float32)
    feats[1] = 1e9  # beyond float16: stored as inf
    store = make_store(tmp_path / "s", feats, shard_size=2)
    (problem,) = verify(store)
    assert "non-finite" in problem and "extract.dtype=float32" in problem
    r = CliRunner().invoke(cli, ["store", "verify", str(store)])
    assert r.exit_code == 1 and "extract.dtype=float32" in r.output and REPAIR not in r.output


def test_sample_refuses_conditions_that_are_not_finite(tmp_path):
    """NaN conditions gave all-black samples with exit 0."""
    import rcdm.sample
    from rcdm.model.weights import save_weights

    from tests.sample_setup import D, run_cfg, tiny_model
    from tests.synthetic_store import make_store

    feats = np.ones((4, D), np.float32)
    feats[2, 3] = np.nan
    store = make_store(tmp_path / "store", feats)
    model = tiny_model()
    ckpt = save_weights(tmp_path / "ema.safetensors", model.state_dict(), {"unet": model.cfg.to_dict(), "kimg": 0})
    with pytest.raises(InvalidInput, match=r"1 of the 2 conditions hold NaN or inf \(the first: .*item_00002"):
        rcdm.sample.run(run_cfg(ckpt, store, tmp_path / "s", indices=(1, 2)))
    assert not (tmp_path / "s" / "samples.npz").exists()


def _nan_store(tmp_path):
    """The training store of tests/train_setup.py with one NaN feature in row 2."""
    import h5py
    from rcdm.utils import sha256_file, with_checksum

    from tests.train_setup import train_store

    store = train_store(tmp_path)
    with h5py.File(store / "shard-00000.h5", "a") as f:
        f["feat"][2, 0, 1] = np.nan
    import json

    m = json.loads((store / "manifest.json").read_text())  # a store made this way (no extraction refused it)
    m["shards"][0]["sha256"] = sha256_file(store / "shard-00000.h5")
    (store / "manifest.json").write_text(json.dumps(with_checksum(m)))
    return store


def test_training_names_the_rows_that_are_not_finite(tmp_path):
    """A NaN in the store ended in "the loss became NaN ... lower train.lr"; now the rows are named."""
    import rcdm.train

    from tests.train_setup import train_cfg

    store = _nan_store(tmp_path)
    with pytest.raises(
        InvalidInput, match=r"training row\(s\) hold NaN or inf features \(the first: row 2, 'cls_1/img_000'"
    ):
        rcdm.train.run(train_cfg(store, tmp_path / "run", workers=0))
    from rcdm.config import PriorConfig
    from rcdm.train.prior import train_prior

    with pytest.raises(
        InvalidInput, match=r"1 row\(s\) of the store .* hold NaN or inf features \(the first: 'cls_1/img_000'\)"
    ):
        train_prior(PriorConfig(store=str(store), out=str(tmp_path / "prior"), iters=2, device="cpu"))
