"""The Inception network of FID / IS: torch-fidelity's, given weights read once, without pickle.

torch-fidelity's constructor loads a weights file with ``torch.load(weights_only=False)``; rcdm
reads and checks the file itself (weights-only) and hands torch-fidelity's model that state dict,
whose outputs are then torch-fidelity's own. The stand-in weights are evaluation_setup's
He-initialised state dict; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rcdm.analysis.evaluation.fid import fid_and_is
from rcdm.analysis.evaluation.inception import INCEPTION_FILENAME, InceptionV3

from tests.evaluation_setup import RES, make_inception_weights
from tests.synthetic import make_image_folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_inception_weights(tmp_path_factory.mktemp("inception") / "w.pth")


@pytest.fixture
def loads(monkeypatch):
    """Every torch.load call as (file, weights_only); Inception at 107 px (speed only)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 107)
    calls, real = [], torch.load

    def recording(f, *args, **kwargs):
        calls.append((str(f), kwargs.get("weights_only")))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    return calls


def test_fid_reads_the_inception_file_once_weights_only(weights, loads, tmp_path):
    ref = make_image_folder(tmp_path / "ref", n_classes=2, per_class=2, size=(40, 36))
    samples = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    out = fid_and_is(
        samples,
        weights=weights,
        reference_images=str(ref),
        stats_path=tmp_path / "stats.npz",
        limit=None,
        splits=2,
        method="eigh",
        batch_size=4,
        device="cpu",
        trust_checkpoint=False,
    )
    assert loads == [(str(weights), True)]
    assert np.isfinite(out["fid"]["value"]) and np.isfinite(out["is"]["mean"])


def test_the_model_holds_exactly_the_checked_weights(weights, loads):
    sd = torch.load(weights, weights_only=True)
    model = InceptionV3(weights).model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert loads == [(str(weights), True)] * 2  # the test's own read, then rcdm's one
    # trusted (pickle allowed): still one read of the file
    loads.clear()
    InceptionV3(weights, trust_checkpoint=True)
    assert [f for f, _ in loads] == [str(weights)]


def test_a_file_that_is_not_inception_is_refused_before_torch_fidelity(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth is not torch-fidelity's Inception-v3"):
        InceptionV3(tmp_path / "other.pth")
    bad = {k: v for k, v in torch.load(make_inception_weights(tmp_path / "w.pth"), weights_only=True).items()}
    bad["fc.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "misshaped.pth")
    with pytest.raises(ValueError, match=r"misshaped\.pth does not match torch-fidelity's Inception-v3.*fc\.weight"):
        InceptionV3(tmp_path / "misshaped.pth")


def test_wrapper_matches_torch_fidelity_extractor(use_torch_home):
    from torch_fidelity.utils import create_feature_extractor

    w = use_torch_home / "hub" / "checkpoints" / INCEPTION_FILENAME
    x = np.random.default_rng(0).integers(0, 256, size=(2, RES, RES, 3), dtype=np.uint8)
    pool, logits = InceptionV3(w)(x, batch_size=1)  # two batches of one
    fe = create_feature_extractor(
        "inception-v3-compat",
        ["2048", "logits_unbiased"],
        cuda=False,
        feature_extractor_weights_path=str(w),
    )
    with torch.no_grad():
        ref_pool, ref_logits = fe(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    np.testing.assert_allclose(pool, ref_pool.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-5, atol=1e-5)
    assert pool.std() > 0


def test_weights_that_need_pickle_are_refused(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": object()}, bad)
    with pytest.raises(ValueError, match="trust_checkpoint"):
        InceptionV3(bad)
