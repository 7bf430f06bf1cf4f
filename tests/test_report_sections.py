"""The report's sections beyond the experiments' figures, end to end on tiny synthetic data
(random-rn50 on 32 px images, an untrained tiny UNet): the evaluation's faithfulness in every
space with the retrieval baseline, the learned prior against KDE, and the invariance scores; then
the whole report in a real browser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store
from tests.test_report_browser import check_in_browser, chromium_missing


def pp32():
    from rcdm.data.images import Preprocess

    return Preprocess(32, 32, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def store_of(src_dir: Path, out: Path, enc) -> Path:
    from rcdm.data.images import open_source
    from rcdm.encoders.build import encode

    src = open_source(src_dir)
    feats = encode(enc, [src.load(i) for i in range(len(src))], pp32(), both_views=True)
    return make_store(
        out,
        feats,
        keys=[it.key for it in src.items],
        labels=src.labels(),
        encoder_info={**enc.info(), "preprocess": pp32().to_dict()},
        preprocess=pp32().to_dict(),
        source=src.describe(),
        dtype="float32",
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import rcdm.sample
    import torch
    from rcdm.analysis import analyze, evaluate
    from rcdm.config import AnalyzeConfig, EvaluateConfig, PriorConfig, SampleConfig
    from rcdm.encoders.build import load_encoder
    from rcdm.model.config import preset
    from rcdm.model.unet import UNetModel
    from rcdm.model.weights import save_weights
    from rcdm.train.prior import train_prior

    root = tmp_path_factory.mktemp("sections")
    tr_dir = make_image_folder(root / "img" / "train", n_classes=2, per_class=4, size=(40, 40), seed=0)
    va_dir = make_image_folder(root / "img" / "val", n_classes=2, per_class=3, size=(40, 40), seed=1)
    enc0, enc1 = load_encoder("random-rn50", seed=0), load_encoder("random-rn50", seed=1)
    train, val = store_of(tr_dir, root / "train", enc0), store_of(va_dir, root / "val", enc0)
    val2 = store_of(va_dir, root / "val2", enc1)
    info = {**enc0.info(), "preprocess": pp32().to_dict()}
    ucfg = preset("tiny", cond="embed", cond_dim=int(info["dim"]), model_channels=32, image_size=16)
    torch.manual_seed(0)
    ck = save_weights(
        root / "run" / "ema.safetensors",
        UNetModel(ucfg).state_dict(),
        {"unet": ucfg.to_dict(), "encoder": info, "kimg": 0.0},
    )
    samples = rcdm.sample.run(
        SampleConfig(
            checkpoint=str(ck),
            store=str(val),
            out=str(root / "samples"),
            subset=2,
            n_per_condition=2,
            steps="2",
            device="cpu",
            mixed_precision="no",
        )
    )
    ev = evaluate(
        EvaluateConfig(
            samples=str(samples),
            reference=str(val),
            out=str(root / "eval"),
            fid="off",
            device="cpu",
            second_references=(str(val2),),
            train_store=str(train),
        )
    )
    prior = train_prior(
        PriorConfig(
            store=str(train),
            out=str(root / "prior"),
            width=32,
            blocks=2,
            iters=20,
            timesteps=50,
            sample_steps=5,
            device="cpu",
        )
    )
    cfg = AnalyzeConfig(
        experiments=("invariance",),
        checkpoints=(str(ck),),
        train_store=str(train),
        val_store=str(val),
        out=str(root / "analysis"),
        evaluations=(str(ev.parent),),
        prior=str(prior),
        second_store=str(val2),
        n_images=1,
        n_samples=2,
        steps="2",
        transforms=("hflip", "vshift"),
        device="cpu",
    )
    return {"report": analyze(cfg), "out": root / "analysis", "metrics": json.loads(ev.read_text())}


@pytest.mark.slow
def test_the_evaluation_section_has_every_space_and_the_retrieval_baseline(world):
    page = world["report"].read_text()
    for words in ("Faithfulness in each encoder&#x27;s space", "Diversity for a fixed h", "retrieval baseline"):
        assert words in page, words
    sp = world["metrics"]["faithfulness"]["spaces"]
    assert [s["space"] for s in sp] == ["conditioning", "second", "pixels"] and np.isfinite(sp[1]["mean_rank"])


@pytest.mark.slow
def test_the_prior_section_sets_prior_and_kde_beside_held_out_data(world):
    page = world["report"].read_text()
    assert "learned prior vs KDE" in page and "nearest-entry distance" in page
    prior = json.loads((world["out"] / "prior" / "prior.json").read_text())["statistics"]
    assert set(prior) == {"prior", "kde", "validation (real, held out)"}
    assert all(s["nearest_train_mean"] >= 0 and s["spread"] > 0 for s in prior.values())


@pytest.mark.slow
def test_the_invariance_section_scores_h_and_the_samples(world):
    page = world["report"].read_text()
    assert "(a) How far each augmentation moves h" in page and "(b) How far the samples move" in page
    inv = json.loads((world["out"] / "invariance" / "invariance.json").read_text())
    d = inv["images"][0]["transforms"]["vshift"]
    assert d["trunk_score"] == pytest.approx(d["trunk_distance"] / d["trunk_nn_distance"])
    assert inv["second_store"].endswith("val2")


@pytest.mark.slow
def test_the_report_with_these_sections_opens_in_a_browser(world):
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    info = check_in_browser(world["report"])
    assert info["sections"] == 3 and info["images"] >= 3  # evaluation, prior, invariance
