"""What the extraction tests share: a tiny seeded encoder (loop mechanics without RN50's cost),
the fixture that makes ``encoder="tiny"`` load it, and a small extraction config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rcdm.config import ExtractConfig


def extract_cfg(images: Path, out: Path, **kw) -> ExtractConfig:
    """2 items per shard and per batch, no workers, on the CPU; random-rn50 unless ``encoder``."""
    base = dict(
        encoder="random-rn50", source=str(images), out=str(out), shard_size=2, batch_size=2, workers=0, device="cpu"
    )
    base.update(kw)
    return ExtractConfig(**base)


class TinyEncoder(torch.nn.Module):
    """A seeded 8-d conv encoder with the Encoder interface: loop-mechanics tests without RN50's cost."""

    def __init__(self, layer: str = "trunk", seed: int = 0):
        from rcdm.data.images import PREPROCESS

        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 16, stride=16)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()
        self.name, self.layer, self.dim, self.seed = "tiny", layer, 8, seed
        self.preprocess = PREPROCESS["rcdm"]
        self.weights_sha256 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 224, 224) -> (N, 8)
        return self.conv(x).mean((2, 3))

    def info(self) -> dict:
        return {
            "name": "tiny",
            "arch": "conv",
            "layer": self.layer,
            "dim": 8,
            "weights": None,
            "weights_sha256": None,
            "seed": self.seed,
        }


@pytest.fixture(name="tiny")
def tiny_encoder(monkeypatch):
    """Make ``encoder="tiny"`` a registry entry that loads TinyEncoder (other entries load as usual)."""
    import rcdm.encoders.build
    from rcdm.encoders.registry import REGISTRY, EncoderSpec

    real = rcdm.encoders.build.load_encoder
    monkeypatch.setitem(
        REGISTRY, "tiny", EncoderSpec("tiny", "conv", None, None, "rcdm", None, "TinyEncoder (tests)", trunk_dim=8)
    )

    def load(spec, weights=None, layer="trunk", **kw):  # extraction passes the registry entry
        if getattr(spec, "name", spec) != "tiny":
            return real(spec, weights, layer, **kw)
        enc = TinyEncoder(layer, kw.get("seed", 0))
        if kw.get("preprocess") not in (None, "default"):
            from rcdm.data.images import PREPROCESS

            enc.preprocess = PREPROCESS[kw["preprocess"]]
        return enc

    monkeypatch.setattr(rcdm.encoders.build, "load_encoder", load)
