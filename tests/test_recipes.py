"""The opt-in recipe options change the loss / sampler exactly as their formulas say, and the
paper's recipe is unchanged bit for bit (its loss on a fixed batch equals the one recorded
before the options existed, tests/data/paper_loss_reference.npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.config import Sampler, Steps
from rcdm.diffusion.gaussian import (
    create_diffusion,
    get_named_beta_schedule,
    rescale_zero_terminal_snr,
)
from rcdm.errors import InvalidInput

REF = Path(__file__).parent / "data" / "paper_loss_reference.npz"


def _fixed():
    ref = np.load(REF)
    x0, noise, t, w = (torch.from_numpy(ref[k]) for k in ("x0", "noise", "t", "w"))

    def model(xt, ts, **kw):  # the deterministic "network" the reference was made with
        out = torch.einsum("oc,nchw->nohw", w, xt)
        return torch.tanh(out + ts.float().view(-1, 1, 1, 1) / 1000.0)

    return ref, x0, noise, t, model


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("p2", [0.0, 1.0])
def test_paper_recipe_loss_unchanged_bit_for_bit(schedule, p2):
    ref, x0, noise, t, model = _fixed()
    assert "before recipe options" in str(ref["source"])
    d = create_diffusion(schedule)  # the defaults: eps, the schedule as published, no min-SNR
    out = d.training_losses(model, x0, t, {}, noise=noise, p2_gamma=p2, p2_k=1.0)
    for k in ("loss", "mse", "vb"):
        assert np.array_equal(out[k].numpy(), ref[f"{schedule}_p2{p2:g}_{k}"]), k
    # the options at their neutral values are the same computation
    again = create_diffusion(schedule, prediction="eps", zero_terminal_snr=False).training_losses(
        model, x0, t, {}, noise=noise, p2_gamma=p2, min_snr_gamma=0.0
    )
    assert torch.equal(again["loss"], out["loss"])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_gamma_weights_mse_by_its_formula(prediction):
    _, x0, noise, t, model = _fixed()
    d = create_diffusion("linear", prediction=prediction)
    plain = d.training_losses(model, x0, t, {}, noise=noise)
    gamma = 5.0
    weighted = d.training_losses(model, x0, t, {}, noise=noise, min_snr_gamma=gamma)
    snr = (d.alphas_cumprod / (1 - d.alphas_cumprod))[t].float()
    w = torch.minimum(snr, torch.tensor(gamma)) / (snr + 1 if prediction == "v" else snr)
    torch.testing.assert_close(weighted["loss"], plain["mse"] * w + plain["vb"])
    assert torch.equal(weighted["mse"], plain["mse"])  # the logged mse stays unweighted
    assert (w[snr > gamma] < 1).all() and (w[snr <= gamma] == (1 if prediction == "eps" else w[snr <= gamma])).all()


def test_v_prediction_target_and_inversion():
    _, x0, noise, t, _ = _fixed()
    d = create_diffusion("linear", prediction="v")
    a = d.alphas_cumprod[t].sqrt().float().view(-1, 1, 1, 1)
    s = (1 - d.alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1)
    v = a * noise - s * x0  # the closed-form target
    oracle = lambda xt, ts, **kw: torch.cat([v, torch.zeros_like(v)], 1)  # noqa: E731
    out = d.training_losses(oracle, x0, t, {}, noise=noise)
    assert out["mse"].abs().max() < 1e-10
    zero = lambda xt, ts, **kw: torch.zeros(x0.shape[0], 6, 8, 8)  # noqa: E731
    torch.testing.assert_close(d.training_losses(zero, x0, t, {}, noise=noise)["mse"], (v**2).mean((1, 2, 3)))
    # from v the model's x0 and eps are the true ones
    xt = d.q_sample(x0, t, noise)
    pm = d.p_mean_variance_from_output(torch.cat([v, torch.zeros_like(v)], 1), xt, t, clip_denoised=False)
    torch.testing.assert_close(pm["pred_xstart"], x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pm["eps"], noise, atol=1e-5, rtol=1e-5)


def test_zero_terminal_snr_schedule():
    betas = get_named_beta_schedule("linear", 1000)
    z = rescale_zero_terminal_snr(betas)
    ab0, abz = torch.cumprod(1 - betas, 0), torch.cumprod(1 - z, 0)
    assert abz[-1].abs() < 1e-30 and z[-1] == 1.0  # SNR(T) = 0: x_T is pure noise
    torch.testing.assert_close(abz[0], ab0[0])  # the first step is kept
    # sqrt(alpha_bar) is an affine map of the original's, as Lin et al.'s Algorithm 1
    f, l_ = ab0[0].sqrt(), ab0[-1].sqrt()
    torch.testing.assert_close(abz.sqrt(), (ab0.sqrt() - l_) * f / (f - l_))
    with pytest.raises(InvalidInput, match="prediction 'v'"):
        create_diffusion("linear", zero_terminal_snr=True)
    # v-prediction samples from SNR 0 without inf / nan (an oracle of a point mass at 0.3)
    d = create_diffusion("linear", respacing="trailing5", prediction="v", zero_terminal_snr=True)
    assert d.timestep_map[-1] == 999 and d.alphas_cumprod[-1] == 0

    def oracle(xt, ts, **kw):
        ab = torch.cumprod(1 - z, 0)[ts].float().view(-1, 1, 1, 1)
        x0 = torch.full_like(xt, 0.3)
        eps = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
        return torch.cat([ab.sqrt() * eps - (1 - ab).sqrt() * x0, torch.zeros_like(xt)], 1)

    x = torch.randn(2, 3, 4, 4)
    for i in reversed(range(d.num_timesteps)):
        x = d.ddim_sample(oracle, x, torch.full((2,), i))["sample"]
        assert torch.isfinite(x).all()
    torch.testing.assert_close(x, torch.full_like(x, 0.3), atol=1e-4, rtol=0)


def test_trailing_spacing():
    st = Steps.parse("trailing50")
    assert str(st) == "trailing50" and Sampler(st).ddim  # implies DDIM, like ddimN
    kept = st.timesteps(1000)
    assert kept == sorted((np.round(np.arange(1000, 0, -1000 / 50)) - 1).astype(int).tolist())
    assert kept[-1] == 999 and kept[0] == 19 and Steps.parse("ddim50").timesteps(1000)[-1] == 980
    with pytest.raises(InvalidInput, match="trailingN"):
        Steps.parse("trailingx")


def test_guidance_interval():
    from rcdm.diffusion.generate import generate
    from rcdm.model.config import preset
    from rcdm.model.unet import UNetModel

    torch.manual_seed(0)
    m = UNetModel(preset("tiny", cond="embed", cond_dim=4, image_size=8, model_channels=32)).eval()
    with torch.no_grad():  # ADM zero-initialises its output layers: make h matter
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    d = create_diffusion("linear", respacing="ddim5")  # original steps 0, 200, ..., 800
    conds, seeds = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32), [1, 2]

    def run(g, gi=(0.0, 1.0)):
        return generate(
            m, d, conds, seeds, Sampler(Steps.parse("ddim5"), guidance=g, guidance_interval=gi), progress=False
        )

    plain, full = run(1.0), run(3.0)
    assert np.array_equal(run(3.0, (0.0, 1.0)), full)  # the default interval guides every step
    assert np.array_equal(run(3.0, (0.9, 1.0)), plain)  # no step inside: the conditional model only
    part = run(3.0, (0.3, 1.0))  # guided at 400, 600, 800 only
    assert not np.array_equal(part, plain) and not np.array_equal(part, full)
    with pytest.raises(InvalidInput, match="guidance_interval"):
        Sampler(Steps.parse("10"), guidance=2.0, guidance_interval=(0.7, 0.2))
    # a 500-step chain (model.json's diffusion.steps): t / 500, not t / 1000 (review B #6)
    d = create_diffusion("linear", steps=500, respacing="ddim5")  # original steps 0, 100, ..., 400
    assert d.original_steps == 500
    plain = run(1.0)
    assert not np.array_equal(run(3.0, (0.5, 1.0)), plain)  # 300 and 400 are guided


def test_guidance_rescale_is_lin_et_al_formula():
    """phi g std(c) / std(g) + (1 - phi) g per sample, on the first C channels only; phi 0 is the
    plain guided prediction, bit for bit; the label and the range check name it."""
    from rcdm.diffusion.generate import _Guided

    torch.manual_seed(0)
    out_c, out_u = torch.randn(2, 6, 4, 4) * 2.0, torch.randn(2, 6, 4, 4)

    def fake(x, t, cond, cond_drop):  # first half conditional, second null, as _Guided asks
        return torch.where(cond_drop.view(-1, 1, 1, 1), torch.cat([out_u, out_u]), torch.cat([out_c, out_c]))

    x, t, h = torch.zeros(2, 3, 4, 4), torch.tensor([5, 5]), torch.zeros(2, 4)
    g = out_u[:, :3] + 3.0 * (out_c[:, :3] - out_u[:, :3])

    def guided(rescale: float = 0.0) -> _Guided:
        return _Guided(fake, Sampler(Steps.parse("10"), guidance=3.0, guidance_rescale=rescale))

    assert torch.equal(guided()(x, t, h)[:, :3], g)
    assert torch.equal(guided(0.0)(x, t, h), guided()(x, t, h))
    got = guided(0.7)(x, t, h)
    for i in range(2):
        want = 0.7 * g[i] * out_c[i, :3].std() / g[i].std() + 0.3 * g[i]
        assert torch.allclose(got[i, :3], want, atol=1e-6)
    assert torch.equal(got[:, 3:], out_c[:, 3:])  # the learned variance stays the conditional one's
    full = guided(1.0)(x, t, h)[:, :3]
    assert torch.allclose(full.std(dim=(1, 2, 3)), out_c[:, :3].std(dim=(1, 2, 3)), atol=1e-5)
    assert (
        Sampler(Steps.parse("trailing50"), guidance=1.5, guidance_rescale=0.7).label()
        == "trailing50, guidance 1.5 rescaled 0.7"
    )
    with pytest.raises(InvalidInput, match="guidance_rescale must be in"):
        Sampler(Steps.parse("10"), guidance=2.0, guidance_rescale=1.5)


def test_cond_both_uses_embedding_and_cbn():
    from rcdm.model.config import config_from_state_dict, preset
    from rcdm.model.unet import UNetModel

    cfg = preset("tiny", cond="both", cond_dim=6, image_size=16, model_channels=32)
    torch.manual_seed(0)
    m = UNetModel(cfg).eval()
    with torch.no_grad():  # ADM zero-initialises its output layers: make h matter
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    sd = m.state_dict()
    assert "ssl_emb.weight" in sd and "cbn_shared.weight" in sd
    with pytest.warns(UserWarning, match="unknown architecture"):  # tiny is not an ADM preset
        assert config_from_state_dict(sd, image_size=16).cond == "both"
    x, t, h = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.randn(2, 6)
    with torch.no_grad():
        base = m(x, t, cond=h)
        torch.nn.init.zeros_(m.ssl_emb.weight)
        torch.nn.init.zeros_(m.ssl_emb.bias)
        no_emb = m(x, t, cond=h)
        assert not torch.allclose(base, no_emb)  # h reaches the net through the embedding
        assert not torch.allclose(no_emb, m(x, t, cond=h + 1))  # and through the cbn norms


def test_named_recipe_fills_unset_fields_and_records_them(tmp_path, monkeypatch):
    from rcdm.app.load import load_config
    from rcdm.config import RECIPES, TrainConfig, dump_yaml

    monkeypatch.chdir(tmp_path)  # no pipeline.yaml here
    paper = load_config().train
    for key in RECIPES["fast"]:
        assert getattr(paper, key) == getattr(TrainConfig(), key)  # the default stays the paper's
    fast = load_config(overrides=["train.recipe=fast", "train.min_snr_gamma=2"]).train
    for key, value in RECIPES["fast"].items():
        if key != "min_snr_gamma":
            assert getattr(fast, key) == value and fast.origin[key] == "recipe fast"
    assert fast.min_snr_gamma == 2.0  # a value set by a layer wins over the recipe
    assert "recipe fast" in dump_yaml(fast)


def test_the_report_names_the_training_recipe(tmp_path):
    from rcdm.analysis.recipe import recipe_label

    paper, fast = tmp_path / "paper", tmp_path / "fast" / "checkpoints" / "step-0000010"
    paper.mkdir()
    fast.mkdir(parents=True)
    (paper / "config.yaml").write_text("preset: adm128\ncond: embed\nprediction: eps\nrecipe: paper\n")
    (tmp_path / "fast" / "config.yaml").write_text(
        "preset: tiny\ncond: embed\ncond_norm: standardize\ncond_image: 32\ncond_drop: 0.1\nrecipe: fast\n"
        "prediction: v\nzero_terminal_snr: true\nmin_snr_gamma: 5.0\np2_gamma: 0.0\n"
    )
    assert recipe_label(paper) == "recipe paper: the paper's; h enters by embed"
    assert recipe_label(fast) == (  # a checkpoint folder inside the run finds the run's config
        "recipe fast: v-prediction, zero-terminal-SNR schedule, min-SNR-5 weighting; standardised h "
        "enters by embed and a fitted 32x32 image of h as input channels; 10% null condition "
        "(rcdm additions, docs/recipes.md)"
    )
    assert recipe_label(tmp_path / "weights.safetensors") is None  # no run config: no row
