"""What the sampling tests share: a tiny untrained RCDM, a 12-row store with images, the
checkpoint the way training saves it, and a sample config for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.config import SampleConfig
from rcdm.model.unet import UNetModel, preset

from tests.synthetic import jpeg_bytes, random_image
from tests.synthetic_store import make_store

D = 16  # conditioning dimension of the test model and stores
N_ROWS = 12


def tiny_model(cond_dim: int = D) -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(preset("tiny", cond="embed", cond_dim=cond_dim, model_channels=32)).eval()
    # An untrained UNet ends in a zero conv (eps = 0): perturb it so samples depend on the noise.
    with torch.no_grad():
        for p in model.out.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def model() -> UNetModel:
    return tiny_model()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """12 rows of 16-d features (some exact zeros, like post-ReLU features), labels 0..2, with
    image bytes (wds) so grids can show the conditioning images."""
    rng = np.random.default_rng(0)
    feats = np.abs(rng.standard_normal((N_ROWS, D))).astype(np.float32)
    feats[rng.random((N_ROWS, D)) < 0.4] = 0.0
    imgs = [jpeg_bytes(random_image(rng, (40, 36))) for _ in range(N_ROWS)]
    labels = np.arange(N_ROWS) % 3
    keys = [f"cls_{lab}/img_{i:03d}" for i, lab in enumerate(labels)]
    return make_store(tmp_path_factory.mktemp("store") / "val", feats, keys=keys, labels=labels, fmt="wds", images=imgs)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model) -> Path:
    """An untrained tiny RCDM saved the way training saves its EMA weights."""
    from rcdm.model.weights import save_weights

    path = tmp_path_factory.mktemp("ckpt") / "ema.safetensors"
    meta = {"unet": model.cfg.to_dict(), "encoder": None, "store_manifest_sha256": None, "ema_rate": 0.9999, "kimg": 0}
    save_weights(path, model.state_dict(), meta)
    return path


def run_cfg(ckpt, store_dir, out, **kw) -> SampleConfig:
    base = dict(
        checkpoint=str(ckpt),
        store=str(store_dir),
        out=str(out),
        condition="store",
        indices=(0, 5, 7),
        n_per_condition=2,
        steps="3",
        chunk_size=4,
        batch_size=3,
        device="cpu",
        mixed_precision="no",
        seed=0,
    )
    base.update(kw)
    return SampleConfig(**base)
