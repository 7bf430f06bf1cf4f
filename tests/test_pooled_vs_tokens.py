"""rcdm analyze pooled-vs-tokens: pooled and token-conditioned samples side by side, with rank /
MRR of each model under both token distances (a tiny DINOv2 tokens store, untrained tiny UNets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store
from tests.synthetic_vit_ckpt import save_dinov2
from tests.test_vit_encoders import pp_for, randomized, tiny_spec


def _tokens_store(root: Path, layer: str = "tokens") -> tuple[Path, dict]:
    from rcdm.data.images import open_source
    from rcdm.encoders.build import encode, load_encoder

    weights = root / "dinov2.pth"
    if not weights.exists():
        save_dinov2(weights, randomized("vit_small_patch14_dinov2-tiny", 2))
    spec, pp = tiny_spec("dinov2-vits14"), pp_for(tiny_spec("dinov2-vits14"), grid=2)
    enc = load_encoder(spec, str(weights), layer, preprocess=pp)
    src = open_source(make_image_folder(root / "val", n_classes=2, per_class=3, size=(40, 40), seed=1))
    feats = encode(enc, [src.load(i) for i in range(len(src))], pp, both_views=True)
    info = enc.info()
    store = make_store(
        root / f"store-{layer}",
        feats,
        keys=[it.key for it in src.items],
        labels=src.labels(),
        encoder_info=info,
        preprocess=pp.to_dict(),
        source=src.describe(),
        dtype="float16",
    )
    return store, info


def _checkpoint(path: Path, info: dict, cond: str, seed: int) -> Path:
    import torch
    from rcdm.model.config import preset
    from rcdm.model.unet import UNetModel
    from rcdm.model.weights import save_weights

    t, d = info["tokens"]["count"], info["tokens"]["dim"]
    cfg = preset("tiny", cond=cond, cond_dim=t * d, cond_tokens=t, model_channels=32, image_size=16, xattn_dim=32)
    torch.manual_seed(seed)
    model = UNetModel(cfg)
    return save_weights(path, model.state_dict(), {"unet": cfg.to_dict(), "encoder": info, "kimg": 0.0})


def test_pooled_vs_tokens_side_by_side_with_both_rank_tables(tmp_path):
    from rcdm.analysis import analyze
    from rcdm.config import AnalyzeConfig

    store, info = _tokens_store(tmp_path)
    pooled = _checkpoint(tmp_path / "runs" / "pooled" / "ema.safetensors", info, "cbn", 0)
    tokens = _checkpoint(tmp_path / "runs" / "tokens" / "ema.safetensors", info, "xattn", 1)
    cfg = AnalyzeConfig(
        experiments=("pooled-vs-tokens",),
        checkpoints=(str(pooled), str(tokens)),
        train_store=str(store),
        val_store=str(store),
        out=str(tmp_path / "analysis"),
        n_images=2,
        n_samples=2,
        steps="2",
        batch_size=8,
        device="cpu",
    )
    analyze(cfg)
    out = tmp_path / "analysis" / "pooled-vs-tokens"
    numbers = json.loads((out / "pooled-vs-tokens.json").read_text())
    assert [m["model"] for m in numbers["models"]] == ["pooled", "tokens"]
    assert numbers["token_shape"] == [4, 32]
    for m in numbers["models"]:
        for dist in ("tokens", "pooled"):
            s = m["ranks"][dist]
            assert s["n"] == 4 and 1 <= s["mean_rank"] <= 6 and 0 < s["mrr"] <= 1
            assert all(1 <= r <= 6 for r in m["per_sample"][dist])
    from PIL import Image

    fig = Image.open(next(out.glob("*.png")))
    assert fig.size[0] > 5 * 64 and fig.size[1] >= 2 * 64  # image + 2 pooled + 2 token samples, 2 rows
    entry = json.loads((out / "entry.json").read_text())
    assert "MRR (token distance)" in json.dumps(entry) and "MRR (pooled distance)" in json.dumps(entry)


def test_pooled_vs_tokens_needs_a_tokens_store_and_both_models(tmp_path):
    from rcdm.analysis import analyze
    from rcdm.config import AnalyzeConfig

    store, info = _tokens_store(tmp_path)
    tokens = _checkpoint(tmp_path / "t" / "ema.safetensors", info, "xattn", 1)
    cfg = AnalyzeConfig(
        experiments=("pooled-vs-tokens",),
        checkpoints=(str(tokens),),
        train_store=str(store),
        val_store=str(store),
        out=str(tmp_path / "a"),
        n_images=1,
        n_samples=1,
        steps="2",
        device="cpu",
    )
    with pytest.raises(ValueError, match=r"needs a model trained with train.cond xattn .* found 1 token and 0 pooled"):
        analyze(cfg)
    cls_store, _ = _tokens_store(tmp_path, layer="cls")
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"holds 'cls' vectors; this analysis needs the patch tokens"):
        analyze(replace(cfg, val_store=str(cls_store), train_store=str(cls_store), out=str(tmp_path / "b")))
