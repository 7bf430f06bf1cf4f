"""`rcdm evaluate`'s checks before any work: every bad input stops it before the encoder is built
and before any output (no manifest, no metrics), with a message naming the fix.

The sample set's own damage (test_sampleset.py has each case), the conditioning dimension, a
reference store of another representation than the samples' (encoder seed, weights, layer,
preprocessing, input size: the same comparison as `rcdm train` and `rcdm sample`,
rcdm.run.conditioning), a named training store of another encoder, missing Inception or encoder
weights, stale FID reference statistics, missing reference images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rcdm.analysis import evaluate
from rcdm.analysis.evaluation.fid import expected_meta, save_reference_stats
from rcdm.analysis.evaluation.inception import INCEPTION_FILENAME
from rcdm.errors import InvalidInput
from rcdm.run.evaldir import EvalDir

from tests.evaluation_setup import RES, cfg_for, simple_case, write_samples
from tests.synthetic import make_image_folder
from tests.synthetic_store import RCDM_PREPROCESS, make_store


# ------------------------------------------------------------------------------ the inputs
def test_bad_sample_files(tmp_path):
    """The sample set's own checks are in test_sampleset.py: evaluate stops on them first."""
    samples, store, images, rows, feats = simple_case(tmp_path)
    out = tmp_path / "eval"
    cfg = cfg_for(samples, store, out)
    np.savez(samples / "samples.npz", images[::-1].copy())  # changed after the sampler wrote it
    with pytest.raises(ValueError, match="has changed since"):
        evaluate(cfg)
    write_samples(samples, images, rows, feats)
    (samples / "conds.npy").unlink()
    with pytest.raises(FileNotFoundError, match="conds.npy"):
        evaluate(cfg)
    (samples / "manifest.json").unlink()  # the sample set's finished marker
    with pytest.raises(FileNotFoundError, match="did not finish"):
        evaluate(cfg)
    assert not EvalDir(out).manifest.exists()


def test_condition_dimension_must_match_reference(tmp_path):
    samples, store, images, rows, feats = simple_case(tmp_path)
    write_samples(samples, images, rows, np.zeros((len(images), 5), np.float32))
    with pytest.raises(ValueError, match="conditioned on 5-d"):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))


def test_fid_on_without_weights_stops_before_any_output(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    samples, store, *_ = simple_case(tmp_path)
    out = tmp_path / "eval"
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILENAME):
        evaluate(cfg_for(samples, store, out, fid="on", reference_images=str(tmp_path)))
    assert not EvalDir(out).manifest.exists() and not EvalDir(out).metrics_file.exists()


def test_stale_reference_stats_refused_before_work(tmp_path, use_torch_home):
    from rcdm.utils import sha256_file

    samples, store, *_ = simple_case(tmp_path)
    val = make_image_folder(tmp_path / "val", n_classes=1, per_class=2)
    cache = tmp_path / "ref.npz"
    wsha = sha256_file(use_torch_home / "hub" / "checkpoints" / INCEPTION_FILENAME)
    save_reference_stats(cache, np.zeros(2048), np.eye(2048), expected_meta(val, 64, wsha, None))
    cfg = cfg_for(samples, store, tmp_path / "eval", fid="on", reference_images=str(val), fid_stats_cache=str(cache))
    with pytest.raises(ValueError, match="resolution=64"):
        evaluate(cfg)


def test_missing_reference_images_stop_before_work(tmp_path, use_torch_home):
    samples, store, *_ = simple_case(tmp_path)
    cfg = cfg_for(samples, store, tmp_path / "eval", fid="auto", reference_images=str(tmp_path / "no_such_val"))
    with pytest.raises(FileNotFoundError, match="no_such_val"):
        evaluate(cfg)
    assert not EvalDir(tmp_path / "eval").manifest.exists()


def test_missing_encoder_weights_stop_before_output(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 8)).astype(np.float32)
    info = {
        "name": "supervised-rn50",
        "arch": "resnet50",
        "layer": "trunk",
        "dim": 8,
        "weights": str(tmp_path / "gone.pth"),
        "weights_sha256": "0" * 64,
    }
    store = make_store(tmp_path / "store", feats, encoder_info=info)
    rows = [{"sample": i, "condition": i, "kind": "store", "key": f"item_{i:05d}", "seed": i} for i in range(6)]
    images = rng.integers(0, 256, size=(6, RES, RES, 3), dtype=np.uint8)
    samples = write_samples(tmp_path / "samples", images, rows, feats)
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()


def test_a_named_train_store_of_another_encoder_is_refused(tmp_path):
    samples, store, *_ = simple_case(tmp_path)
    other = make_store(tmp_path / "other", np.zeros((3, 9), np.float32))
    cfg = cfg_for(samples, store, tmp_path / "eval", train_store=str(other))
    cfg = dataclasses.replace(cfg, origin={"train_store": "--set evaluate.train_store"})
    with pytest.raises(ValueError, match="retrieval baseline needs the training store"):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()  # refused before any output


# ------------------------------------------------------------------ the representation
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
    n = 6
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


def test_a_reference_store_too_small_for_rank_mrr_is_refused(tmp_path):
    """Against one reference every sample ranks first: it printed "No better than chance ... train
    longer"; now it says rank / MRR needs at least MIN_REFERENCES references."""
    from rcdm.analysis.evaluation.checks import MIN_REFERENCES

    samples, store, images, rows, feats = simple_case(tmp_path, n=1)
    with pytest.raises(ValueError, match=rf"holds 1 row\(s\): rank / MRR needs at least {MIN_REFERENCES} references"):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))


def test_non_finite_rows_are_refused_before_any_number(tmp_path):
    """NaN conditions or reference rows never become a verdict ("Faithful: MRR 1.000" came from NaN)."""
    samples, store, images, rows, feats = simple_case(tmp_path)
    bad = feats.copy()
    bad[3, 2] = np.nan
    write_samples(samples, images, rows, bad)
    with pytest.raises(
        ValueError, match=r"1 of the 12 conditioning vectors .* hold NaN or inf \(the first: 'item_00003'\)"
    ):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))
    assert not EvalDir(tmp_path / "eval").metrics_file.exists()


def test_a_sample_set_rewritten_during_evaluation_is_not_reported(tmp_path, monkeypatch):
    """evaluate checks at its end that the sample set is still the one it read."""
    import rcdm.analysis.evaluation.stage as stage

    samples, store, images, rows, feats = simple_case(tmp_path)
    real = stage.metrics_of

    def resample(*args, **kw):  # another `rcdm sample` rewrites the set meanwhile
        write_samples(samples, images[::-1].copy(), rows, feats)
        return real(*args, **kw)

    monkeypatch.setattr(stage, "metrics_of", resample)
    monkeypatch.setattr(stage, "open_encoders", lambda *a: None)
    monkeypatch.setattr(stage, "rank_samples", lambda *a: _fake_ranking(len(images)))
    monkeypatch.setattr(stage, "faithfulness_spaces", lambda *a: {})
    with pytest.raises(ValueError, match="changed while it was evaluated"):
        evaluate(cfg_for(samples, store, tmp_path / "eval"))
    assert not EvalDir(tmp_path / "eval").manifest.exists()


def _fake_ranking(n: int):
    from rcdm.analysis.evaluation.ranking import Ranking

    ranks, inside = np.ones(n, np.int64), np.ones(n, bool)
    return Ranking({}, ranks, inside, np.zeros((n, 8), np.float32), np.arange(n), np.zeros((n, 8), np.float32))
