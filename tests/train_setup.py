"""What the training tests share: a tiny image folder with its store, and a tiny training config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rcdm.config import TrainConfig
from rcdm.data.images import open_source

from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store

ROOT = Path(__file__).resolve().parents[1]
RES = 16  # model resolution in the tests
DIM = 8  # feature dimension


def train_store(
    tmp: Path,
    name: str = "store",
    dim: int = DIM,
    encoder: str = "synthetic",
    layer: str = "trunk",
    n_classes: int = 2,
    per_class: int = 2,
    seed: int = 0,
) -> Path:
    """An image folder and a store whose keys are its images; view 1 differs from view 0."""
    images = tmp / "images"
    if not images.exists():
        make_image_folder(images, n_classes=n_classes, per_class=per_class, size=(40, 36), seed=seed)
    src = open_source(images)
    rng = np.random.default_rng(seed)
    n = len(src)
    feats = rng.standard_normal((n, 2, dim)).astype(np.float32)
    feats[:, 1] += 10.0  # view 1 (hflip) is recognisable
    return make_store(
        tmp / name,
        feats,
        keys=[it.key for it in src.items],
        labels=[it.label for it in src.items],
        encoder_info={
            "name": encoder,
            "arch": "none",
            "layer": layer,
            "dim": dim,
            "weights": None,
            "weights_sha256": None,
        },
        source=src.describe(),
        dtype="float32",
    )


def train_cfg(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        store=str(store),
        out=str(out),
        preset="tiny",
        resolution=RES,
        kimg=0.032,  # 8 steps of 4 images
        batch_size=4,
        lr=1e-3,
        checkpoint_kimg=0.016,
        grid_kimg=0.0,
        log_every=1,
        workers=0,
        ema_rates=(0.999, 0.9),
        mixed_precision="no",
    )
    base.update(kw)
    return TrainConfig(**base)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
