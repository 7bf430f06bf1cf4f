"""Classifier-free guidance (train.cond_drop, sample.guidance) and P2 loss weighting (train.p2_gamma)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rcdm.config import Sampler, Steps
from rcdm.diffusion.gaussian import create_diffusion
from rcdm.diffusion.generate import _Guided, check_guidance, generate
from rcdm.model.config import preset
from rcdm.model.unet import UNetModel

DIM = 8


def _model(seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    m = UNetModel(preset("tiny", cond="embed", cond_dim=DIM, model_channels=32, image_size=16)).eval()
    # zero-initialised output layers would make every prediction 0: randomise them
    with torch.no_grad():
        for p in m.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    return m


def test_cond_drop_replaces_the_condition_by_the_null_one():
    m = _model()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    h = torch.randn(3, DIM)
    drop = torch.tensor([False, True, True])
    with torch.no_grad():
        out = m(x, t, cond=h, cond_drop=drop)
        plain = m(x, t, cond=h)
        null = m(x, t, cond=torch.zeros_like(h))
    assert torch.allclose(out[0], plain[0], atol=1e-5)
    assert torch.allclose(out[1:], null[1:], atol=1e-5)
    assert not torch.allclose(out[1:], plain[1:], atol=1e-3)  # the condition did matter


def test_guided_prediction_is_the_cfg_combination():
    m = _model()
    x, t, h = torch.randn(2, 3, 16, 16), torch.tensor([300, 700]), torch.randn(2, DIM)
    with torch.no_grad():
        c = m(x, t, cond=h)
        u = m(x, t, cond=h, cond_drop=torch.ones(2, dtype=torch.bool))
        for w in (0.0, 1.0, 3.0):
            g = _Guided(m, Sampler(Steps.parse("10"), guidance=w))(x, t, h)
            assert g.shape == c.shape
            assert torch.allclose(g[:, :3], u[:, :3] + w * (c[:, :3] - u[:, :3]), atol=1e-5)
            assert torch.allclose(g[:, 3:], c[:, 3:], atol=1e-5)  # variance: the conditional one
        assert torch.allclose(_Guided(m, Sampler(Steps.parse("10"), guidance=1.0))(x, t, h), c, atol=1e-5)


def test_generate_with_guidance_differs_and_is_reproducible():
    m = _model()
    diff = create_diffusion("linear", 1000, "ddim5")
    conds, seeds = np.random.default_rng(0).standard_normal((2, DIM)).astype(np.float32), [1, 2]
    kw = dict(progress=False)
    plain = generate(m, diff, conds, seeds, Sampler(Steps.parse("ddim5")), **kw)
    guided = Sampler(Steps.parse("ddim5"), guidance=3.0)
    g1 = generate(m, diff, conds, seeds, guided, **kw)
    g2 = generate(m, diff, conds, seeds, guided, batch_size=1, **kw)
    assert np.array_equal(g1, g2)
    assert not np.array_equal(plain, g1)
    assert np.array_equal(plain, generate(m, diff, conds, seeds, Sampler(Steps.parse("ddim5"), guidance=1.0), **kw))


def test_guidance_needs_a_model_trained_with_cond_drop():
    steps = Steps.parse("10")
    check_guidance(Sampler(steps), {}, "run")  # no guidance: any model
    check_guidance(Sampler(steps, guidance=2.0), {"cond_drop": 0.1}, "run")
    with pytest.raises(ValueError, match=r"train.cond_drop=0; sample with guidance 1, or train with"):
        check_guidance(Sampler(steps, guidance=2.0), {"cond_drop": 0.0}, "runs/x")
    with pytest.raises(ValueError, match="guidance must be >= 0"):  # the scale: the sampler's own check
        Sampler(steps, guidance=-1.0)


def test_p2_weighting_scales_the_mse_by_snr():
    diff = create_diffusion("linear", 1000)
    m = _model()
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    t = torch.tensor([0, 100, 500, 999])
    noise = torch.randn_like(x0)
    kw = dict(model_kwargs={"cond": torch.randn(4, DIM)}, noise=noise)
    with torch.no_grad():
        base = diff.training_losses(m, x0, t, **kw)
        p2 = diff.training_losses(m, x0, t, p2_gamma=1.0, p2_k=1.0, **kw)
    acp = diff.alphas_cumprod[t]
    w = (1.0 / (1.0 + acp / (1.0 - acp))).float()
    assert torch.allclose(p2["mse"], base["mse"]) and torch.allclose(p2["vb"], base["vb"])
    assert torch.allclose(p2["loss"], w * base["mse"] + base["vb"], rtol=1e-5)
    assert torch.allclose(base["loss"], base["mse"] + base["vb"])
    assert w[0] < 1e-3 and w[-1] > 0.99  # nearly clean steps weigh little, pure noise fully


def test_training_with_cond_drop_records_it(tmp_path):
    import rcdm.train

    from tests.train_setup import train_cfg as _cfg
    from tests.train_setup import train_store as _store

    store = _store(tmp_path)
    run = tmp_path / "run"
    rcdm.train.run(
        _cfg(
            store,
            run,
            kimg=0.016,
            cond_drop=0.5,
            p2_gamma=1.0,
            grid_kimg=0.016,
            grid_guidance=2.0,
            grid_images=1,
            grid_samples=1,
            grid_steps=2,
        )
    )
    assert len(list((run / "grids").glob("*.png"))) == 1
    meta = json.loads((run / "model.json").read_text())
    assert meta["cond_drop"] == 0.5
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(np.isfinite(r["loss"]) for r in log)


def test_every_label_is_the_samplers_own():
    """A sample set records its sampler whole; evaluation and the report name it with
    Sampler.label(), read back with Sampler.from_dict: the one wording."""
    from rcdm.config import Sampler, Steps

    for sampler in (
        Sampler(Steps.parse("ddim25")),
        Sampler(Steps.parse("100"), guidance=3.0),
        Sampler(Steps.parse("trailing50"), guidance=1.5, guidance_interval=(0.2, 0.8), guidance_rescale=0.7),
    ):
        assert Sampler.from_dict(sampler.to_dict()) == sampler
    assert Sampler.from_dict({"steps": "ddim25"}).label() == "ddim25"  # a newer option's default: what it did
    assert Sampler.from_dict({"steps": "100", "guidance": 3}).label() == "ancestral, 100 steps, guidance 3"
    both = Sampler.from_dict(
        {"steps": "trailing50", "guidance": 1.5, "guidance_interval": [0.2, 0.8], "guidance_rescale": 0.7}
    )
    assert both.label() == "trailing50, guidance 1.5 in t/T [0.2, 0.8] rescaled 0.7"
    with pytest.raises(ValueError, match=r"sampler: unknown sampler option\(s\) \['guidnace'\]"):
        Sampler.from_dict({"steps": "100", "guidnace": 2})


def test_bad_guidance_settings_fail_before_training(tmp_path):
    import rcdm.train

    from tests.train_setup import train_cfg as _cfg
    from tests.train_setup import train_store as _store

    store = _store(tmp_path)
    with pytest.raises(ValueError, match="train.cond_drop=0"):
        rcdm.train.run(_cfg(store, tmp_path / "a", grid_guidance=3.0))
    with pytest.raises(ValueError, match=r"cond_drop must be in \[0, 1\)"):
        rcdm.train.run(_cfg(store, tmp_path / "b", cond_drop=1.0))
    with pytest.raises(ValueError, match="train.p2_gamma must be >= 0, got -1.0"):
        rcdm.train.run(_cfg(store, tmp_path / "c", p2_gamma=-1.0))
    assert not (tmp_path / "a").exists()  # nothing written
