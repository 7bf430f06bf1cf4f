"""`rcdm evaluate` refuses a reference store whose features are another representation than the
one the samples were conditioned on (encoder seed, weights, layer, preprocessing, input size):
the same comparison as `rcdm train` and `rcdm sample` (rcdm.run.conditioning), made before any
work and before any output."""

from __future__ import annotations

import numpy as np
import pytest
from rcdm.analysis import evaluate
from rcdm.errors import InvalidInput

from tests.synthetic_store import RCDM_PREPROCESS, make_store
from tests.test_evaluate import RES, cfg_for, write_samples

DIM = 2048
INFO = {
    "name": "random-rn50",
    "arch": "resnet50",
    "layer": "trunk",
    "dim": DIM,
    "weights": None,
    "weights_sha256": None,
    "seed": 0,
}


def _case(tmp_path, encoder: dict, preprocess: dict | None):
    """A reference store made with INFO and the rcdm preprocessing; samples conditioned on
    ``encoder`` / ``preprocess`` (None: an older sample set that does not record it)."""
    rng = np.random.default_rng(0)
    n = 3
    feats = rng.normal(size=(n, DIM)).astype(np.float32)
    store = make_store(tmp_path / "store", feats, encoder_info=INFO)
    rows = [{"sample": i, "condition": i, "kind": "store", "key": f"item_{i:05d}", "seed": i} for i in range(n)]
    images = rng.integers(0, 256, size=(n, RES, RES, 3), dtype=np.uint8)
    extra = {} if preprocess is None else {"preprocess": preprocess}
    samples = write_samples(tmp_path / "samples", images, rows, feats, encoder=encoder, **extra)
    return samples, store


@pytest.mark.parametrize(
    "encoder, preprocess, named",
    [
        ({**INFO, "seed": 1}, RCDM_PREPROCESS, "random encoder seed 1 vs 0"),
        ({**INFO, "seed": 1}, None, "random encoder seed"),
        ({**INFO, "layer": "head"}, RCDM_PREPROCESS, "layer 'head' vs 'trunk'"),
        (INFO, {**RCDM_PREPROCESS, "crop": 112, "resize": 112}, "input size 112 vs 224"),
        (INFO, {**RCDM_PREPROCESS, "value_range": [0.0, 1.0]}, "value range"),
    ],
)
def test_a_reference_store_of_another_representation_is_refused(tmp_path, monkeypatch, encoder, preprocess, named):
    import rcdm.encoders.build

    monkeypatch.setattr(rcdm.encoders.build, "encoder_from_info", lambda *a, **k: pytest.fail("the encoder was built"))
    samples, store = _case(tmp_path, encoder, preprocess)
    with pytest.raises(InvalidInput) as e:
        evaluate(cfg_for(samples, store, tmp_path / "eval"))
    msg = str(e.value)
    assert named in msg and str(store) in msg and "rcdm extract" in msg, msg
    assert not (tmp_path / "eval").exists()


def test_the_same_representation_is_accepted(tmp_path, monkeypatch):
    import rcdm.encoders.build

    class Built(Exception):
        pass

    def built(*a, **k):
        raise Built  # the checks passed: evaluation went on to rebuild the encoder

    monkeypatch.setattr(rcdm.encoders.build, "encoder_from_info", built)
    for preprocess in (RCDM_PREPROCESS, None):  # None: a sample set that predates the field
        samples, store = _case(tmp_path / str(preprocess is None), INFO, preprocess)
        with pytest.raises(Built):
            evaluate(cfg_for(samples, store, tmp_path / "eval"))


def test_the_sampler_records_the_store_preprocessing(ckpt, store_dir, tmp_path):
    """The sample manifest has the conditioning store's preprocess beside its encoder."""
    import rcdm.sample
    from rcdm.run.sampleset import read_samples
    from rcdm.store import FeatureStore

    from tests.sample_setup import run_cfg

    out = rcdm.sample.run(run_cfg(ckpt, store_dir, tmp_path / "samples", indices=(0,), n_per_condition=1))
    m = read_samples(out).manifest
    assert m["preprocess"] == FeatureStore(store_dir).manifest["preprocess"] and m["encoder"]["name"] == "synthetic"
