"""Conditioning on patch tokens: cross-attention (cond xattn) in the UNet's attention blocks,
pooled (token-mean) conditioning on the same store, and the errors for a mismatched store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.model.config import config_from_state_dict, preset
from rcdm.model.unet import UNetModel

from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store
from tests.train_setup import RES, read_log, train_cfg

T, D = 4, 8  # a 2x2 grid of 8-d tokens


def token_store(tmp: Path, name: str = "tokens", layer: str = "tokens", seed: int = 0) -> Path:
    """4 images and a store of their (random, distinct) token grids, or of their token means."""
    from rcdm.data.images import open_source

    images = tmp / "images"
    if not images.exists():
        make_image_folder(images, n_classes=2, per_class=2, size=(40, 36), seed=seed)
    src = open_source(images)
    rng = np.random.default_rng(seed)
    grids = rng.standard_normal((len(src), 2, T, D)).astype(np.float32) * 2
    info = {"name": "synthetic-vit", "arch": "none", "layer": layer, "weights": None, "weights_sha256": None}
    if layer == "tokens":
        feats = grids.reshape(len(src), 2, T * D)
        info["tokens"] = {"grid": [2, 2], "count": T, "dim": D}
    else:
        feats = grids.mean(2)
    return make_store(
        tmp / name,
        feats,
        keys=[it.key for it in src.items],
        labels=[it.label for it in src.items],
        encoder_info=info,
        source=src.describe(),
        dtype="float32",
    )


def test_xattn_attends_to_the_tokens_and_round_trips_its_config():
    cfg = preset("tiny", cond="xattn", cond_dim=T * D, cond_tokens=T, image_size=RES, xattn_dim=32)
    torch.manual_seed(0)
    net = UNetModel(cfg).eval()
    with torch.no_grad():  # ADM's zero-initialised outputs made random, but the cross-attentions'
        for name, p in net.named_parameters():
            if not p.any() and ".cross." not in name:
                p.normal_(std=0.1)
    crosses = [m for m in net.modules() if type(m).__name__ == "CrossAttention"]
    assert len(crosses) == sum(type(m).__name__ == "AttentionBlock" for m in net.modules()) > 0
    x, t = torch.randn(2, 3, RES, RES), torch.tensor([10, 500])
    h = torch.randn(2, T * D)
    with torch.no_grad():
        base = net(x, t, h)
        assert torch.equal(base, net(x, t, torch.randn(2, T * D)))  # zero-initialised outputs: no effect yet
        for m in crosses:
            torch.nn.init.normal_(m.proj_out.weight, std=0.2)
        a, b = net(x, t, h), net(x, t, h.view(2, T, D).flip(1).reshape(2, -1))
    assert not torch.allclose(a, base) and not torch.allclose(a, b)  # the tokens and their order matter
    again = config_from_state_dict(net.state_dict(), image_size=RES)
    assert (again.cond, again.cond_tokens, again.cond_dim, again.xattn_dim) == ("xattn", T, T * D, 32)
    with pytest.raises(ValueError, match=r"expects 32 \(4 tokens of 8\)"):
        net(x, t, torch.randn(2, D))


def test_pooled_conditioning_on_tokens_is_the_token_mean():
    pooled = UNetModel(preset("tiny", cond="cbn", cond_dim=D, image_size=RES)).eval()
    on_tokens = UNetModel(preset("tiny", cond="cbn", cond_dim=T * D, cond_tokens=T, image_size=RES)).eval()
    on_tokens.load_state_dict(pooled.state_dict())  # same weights: cbn_shared takes one D-d vector
    x, t, h = torch.randn(2, 3, RES, RES), torch.tensor([3, 700]), torch.randn(2, T, D)
    with torch.no_grad():
        torch.testing.assert_close(on_tokens(x, t, h.reshape(2, -1)), pooled(x, t, h.mean(1)))
    with pytest.raises(ValueError, match=r"cond='xattn' attends to a patch-token grid.*--layer tokens"):
        preset("tiny", cond="xattn", cond_dim=D)


def test_xattn_training_overfits_a_handful_of_images(tmp_path):
    import rcdm.train
    from rcdm.run.models import load_model

    store = token_store(tmp_path)
    run = tmp_path / "run"
    cfg = train_cfg(store, run, cond="xattn", kimg=0.160, checkpoint_kimg=0.160, lr=2e-3, ema_rates=(0.9,))
    rcdm.train.run(cfg)
    log = read_log(run)
    first, last = np.mean([r["mse"] for r in log[:8]]), np.mean([r["mse"] for r in log[-8:]])
    assert last < 0.6 * first, (first, last)
    model, meta = load_model(str(run))
    assert meta["unet"]["cond"] == "xattn" and meta["unet"]["cond_tokens"] == T and meta["encoder"]["layer"] == "tokens"
    # pooled conditioning stays available on the same store
    pooled_run = tmp_path / "pooled"
    rcdm.train.run(train_cfg(store, pooled_run, cond="embed", kimg=0.008))
    _, pmeta = load_model(str(pooled_run))
    assert pmeta["unet"]["cond_tokens"] == T and pmeta["unet"]["cond_dim"] == T * D


def test_tokens_store_given_to_a_pooled_model_and_the_reverse(tmp_path):
    from rcdm.run.conditioning import check_conditioning
    from rcdm.store import FeatureStore

    tokens, pooled = FeatureStore(token_store(tmp_path)), FeatureStore(token_store(tmp_path, "cls", layer="cls"))
    pooled_meta = {"unet": {"cond": "embed", "cond_dim": D}, "encoder": dict(pooled.encoder_info)}
    with pytest.raises(
        ValueError,
        match=r"trained on pooled 'cls' vectors, but the store .* holds a patch-token "
        r"grid \(layer 'tokens'\): pass a store extracted with --layer cls, or train a model",
    ):
        check_conditioning(pooled_meta, tokens, what="checkpoint runs/a")
    token_meta = {"unet": {"cond": "xattn", "cond_dim": T * D}, "encoder": dict(tokens.encoder_info)}
    with pytest.raises(
        ValueError,
        match=r"trained on a patch-token grid .* holds pooled 'cls' vectors: pass a "
        r"store extracted with --layer tokens",
    ):
        check_conditioning(token_meta, pooled, what="checkpoint runs/b")
    import rcdm.train

    with pytest.raises(ValueError, match=r"cond='xattn' attends to a patch-token grid"):
        rcdm.train.run(train_cfg(pooled.path, tmp_path / "bad", cond="xattn"))
    # end to end: `rcdm sample --store` with a tokens store for a model trained on pooled vectors
    import rcdm.sample
    from rcdm.config import SampleConfig

    run = rcdm.train.run(train_cfg(pooled.path, tmp_path / "pooled-run", kimg=0.004))
    with pytest.raises(ValueError, match=r"checkpoint .* trained on pooled 'cls' vectors, but the store .*--layer cls"):
        rcdm.sample.run(
            SampleConfig(
                checkpoint=str(run),
                store=str(tokens.path),
                out=str(tmp_path / "s"),
                subset=2,
                n_per_condition=1,
                steps="2",
                device="cpu",
            )
        )
