"""The token layout of the feature store: `rcdm extract --layer tokens` with a (tiny) ViT writes
each view's patch grid flat in float16, the manifest records the grid, view 1 is the grid of the
flipped input, and both store formats read it back; pooled features are the token mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm import store as S
from rcdm.encoders.build import load_encoder

from tests.extract_setup import extract_cfg
from tests.synthetic import make_image_folder
from tests.synthetic_vit_ckpt import save_dinov2
from tests.test_vit_encoders import pp_for, randomized, tiny_spec


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "train", n_classes=2, per_class=2, size=(40, 32))


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> Path:
    return save_dinov2(tmp_path_factory.mktemp("w") / "dinov2.pth", randomized("vit_small_patch14_dinov2-tiny", 1))


def _tiny_loader(monkeypatch, path: Path):
    """``dinov2-vits14`` loads its tiny variant from ``path`` (the extraction is the real one)."""
    import rcdm.encoders.build

    real = rcdm.encoders.build.load_encoder
    spec = tiny_spec("dinov2-vits14")

    def load(name, weights=None, layer="trunk", **kw):
        kw.pop("preprocess", None)
        return real(spec, str(path), layer, preprocess=pp_for(spec, grid=3), **kw)

    monkeypatch.setattr(rcdm.encoders.build, "load_encoder", load)
    return spec


@pytest.mark.parametrize("fmt", ["h5", "wds"])
def test_tokens_store_round_trip_with_the_flipped_grid(fmt, images, vit_file, tmp_path, monkeypatch):
    import rcdm.extract

    spec = _tiny_loader(monkeypatch, vit_file)
    out = rcdm.extract.run(extract_cfg(images, tmp_path / "s", encoder="dinov2-vits14", layer="tokens", format=fmt))
    st = S.FeatureStore(out)
    assert st.layer == "tokens" and st.dtype == "float16"
    assert st.tokens["grid"] == [3, 3] and st.token_shape == (9, 32) and st.dim == 9 * 32
    assert st.encoder_info["patch_size"] == 14
    assert "3x3 grid of 32-d tokens" in S.info(out) and S.verify(out) == []
    assert st.tokens is st.tokens  # the layout is built once, not on every row's token_grid

    enc = load_encoder(spec, str(vit_file), "tokens", preprocess=pp_for(spec, grid=3))
    pooled = load_encoder(spec, str(vit_file), "mean", preprocess=pp_for(spec, grid=3))
    from rcdm.data.images import encoder_input
    from rcdm.data.images import open_source as open_images

    src = open_images(images)
    x = torch.stack([encoder_input(src.load(src.index_of(k)), enc.preprocess) for k in st.keys])
    with torch.no_grad():
        want = torch.stack([enc(x), enc(x.flip(-1))], 1).numpy()  # (N, 2, T * D)
        want_mean = pooled(x).numpy()
    feats = st.features(None)
    np.testing.assert_allclose(feats, want, rtol=2e-3, atol=2e-3)  # float16 storage
    grid = st.token_grid(0, view=1)
    assert grid.shape == (3, 3, 32)
    np.testing.assert_allclose(grid, want[0, 1].reshape(3, 3, 32), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(st.pooled_features(), want_mean, rtol=3e-3, atol=3e-3)
    assert st.pooled_features(None).shape == (len(st), 2, 32)


def test_a_vector_store_has_no_token_grid(images, vit_file, tmp_path, monkeypatch):
    import rcdm.extract

    _tiny_loader(monkeypatch, vit_file)
    out = rcdm.extract.run(extract_cfg(images, tmp_path / "c", encoder="dinov2-vits14", layer="cls"))
    st = S.FeatureStore(out)
    assert st.tokens is None and st.token_shape is None and st.dim == 32
    np.testing.assert_array_equal(st.pooled_features(), st.features())
    with pytest.raises(ValueError, match="holds 'cls' vectors, not a token grid"):
        st.token_grid(0)


def test_a_token_layout_that_does_not_fit_the_rows_is_refused(images, vit_file, tmp_path, monkeypatch):
    import rcdm.extract
    from rcdm.errors import InvalidInput

    _tiny_loader(monkeypatch, vit_file)
    out = rcdm.extract.run(extract_cfg(images, tmp_path / "s", encoder="dinov2-vits14", layer="tokens"))
    m = S.FeatureStore(out).manifest
    m["tokens"]["dim"] = 31  # 9 x 31 values per view, but the rows hold 9 x 32
    S.write_manifest(out, m)
    st = S.FeatureStore(out)
    with pytest.raises(InvalidInput, match="token layout .* does not match its 288-d rows; re-extract"):
        st.token_grid(0)
