"""rcdm pretrain (a small SimCLR encoder) and the encoder it ships: the training runs
deterministically from its seed, the shipped weights load strictly and are checked by sha256, and
the trunk and head are registry layers with the preprocessing they were trained with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.config import PretrainConfig
from rcdm.errors import InvalidInput

from tests.synthetic import make_image_folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "train", n_classes=2, per_class=4, size=(64, 64))


def _cfg(images: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(
        source=str(images),
        val=str(images),
        out=str(out),
        steps=2,
        batch_size=4,
        width=4,
        head_dim=8,
        threads=1,
        probe=False,
    )
    return PretrainConfig(**{**base, **kw})


def test_pretrain_is_deterministic_from_its_seed(images, tmp_path):
    from rcdm.train.pretrain import RECORD, pretrain

    a = pretrain(_cfg(images, tmp_path / "a"))
    b = pretrain(_cfg(images, tmp_path / "b"))
    c = pretrain(_cfg(images, tmp_path / "c", seed=1))
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    import json

    rec = json.loads((a.parent / RECORD).read_text())
    assert rec["settings"]["seed"] == 0 and len(rec["loss_curve"]) == 2 and np.isfinite(rec["final_loss"])
    with pytest.raises(FileExistsError, match="already holds a trained encoder"):
        pretrain(_cfg(images, tmp_path / "a"))


def test_the_views_are_simclrs_augmentations():
    from rcdm.train.pretrain import augment, nt_xent

    x = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    v1, v2 = augment(x, 32, g1), augment(x, 32, g2)
    assert v1.shape == (6, 3, 32, 32) and torch.equal(v1, v2) and v1.min() >= -1 and v1.max() <= 1
    z = torch.randn(8, 5)
    assert float(nt_xent(torch.cat([z[:4], z[:4]]), 0.1)) < float(nt_xent(z, 0.1))  # pairs that agree: low loss


def test_the_shipped_encoder_loads_strictly_and_is_checked(tmp_path, monkeypatch):
    from rcdm.encoders import build
    from rcdm.encoders.registry import REGISTRY

    spec = REGISTRY["simclr-mini"]
    trunk, head = build.load_encoder("simclr-mini"), build.load_encoder("simclr-mini", layer="head")
    assert (trunk.dim, head.dim) == (128, 64) and trunk.preprocess.crop == 32
    x = torch.zeros(2, 3, 32, 32)
    assert trunk(x).shape == (2, 128) and head(x).shape == (2, 64)
    # a changed shipped file is refused, naming the fix (the real check, on a changed copy)
    changed = tmp_path / "weights"
    changed.mkdir()
    data = bytearray(build.shipped_weights(spec).read_bytes())
    data[-1] ^= 1
    (changed / spec.shipped).write_bytes(bytes(data))
    monkeypatch.setattr(build, "shipped_folder", lambda: changed)
    with pytest.raises(InvalidInput, match="the packaged weights were changed"):
        build.load_encoder("simclr-mini")
    (changed / spec.shipped).unlink()
    with pytest.raises(FileNotFoundError, match="reinstall rcdm"):
        build.load_encoder("simclr-mini")


def test_a_trained_file_loads_with_the_rcdm_reader(images, tmp_path):
    from rcdm.encoders.build import load_encoder
    from rcdm.encoders.registry import REGISTRY, HeadSpec
    from rcdm.train.pretrain import pretrain

    path = pretrain(_cfg(images, tmp_path / "e", width=16, head_dim=64))
    enc = load_encoder(REGISTRY["simclr-mini"], str(path), layer="head")
    assert enc.dim == 64 and enc.weights_sha256 is not None
    small = pretrain(_cfg(images, tmp_path / "s"))  # width 4: another shape
    with pytest.raises(InvalidInput):  # a file of another width does not half-load
        load_encoder(REGISTRY["simclr-mini"], str(small))
    assert HeadSpec((128, 128, 64)) == REGISTRY["simclr-mini"].head
