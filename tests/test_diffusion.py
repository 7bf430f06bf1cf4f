"""The diffusion process against closed forms; respacing; samplers; per-sample seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rcdm.config import Sampler, Steps
from rcdm.diffusion.gaussian import (
    GaussianDiffusion,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    normal_kl,
    sample_timesteps,
    space_timesteps,
)
from rcdm.diffusion.generate import draw_noise, sample_loop
from rcdm.model.unet import UNetModel, preset

T = 1000


def linear_acp(t: int) -> float:
    """alpha-bar of Ho et al.'s linear schedule, computed from scratch."""
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(t + 1)]
    return math.prod(1 - b for b in betas)


def test_schedules() -> None:
    lin = get_named_beta_schedule("linear", T)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    assert get_named_beta_schedule("linear", 100)[0].item() == pytest.approx(1e-3)
    cos = get_named_beta_schedule("cosine", T)
    acp = torch.cumprod(1 - cos, 0)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert acp[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    assert cos.max().item() <= 0.999
    with pytest.raises(ValueError, match="unknown beta schedule"):
        get_named_beta_schedule("quadratic")


def test_q_sample_closed_form() -> None:
    d = create_diffusion("linear")
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 250, 999])
    xt = d.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = linear_acp(ti)
        torch.testing.assert_close(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])
    mean, var, log_var = d.q_mean_variance(x0, t)
    assert var[2, 0, 0, 0].item() == pytest.approx(1 - linear_acp(999), rel=1e-5)
    torch.testing.assert_close(log_var, var.log())


def test_posterior_is_bayes_rule() -> None:
    """q(x_{t-1}|x_t,x_0) from the product of q(x_{t-1}|x_0) and q(x_t|x_{t-1})."""
    d = create_diffusion("cosine")
    x0, xt = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([1, 600])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        beta = d.betas[ti].item()
        a_prev = d.alphas_cumprod[ti - 1].item()
        precision = 1 / (1 - a_prev) + (1 - beta) / beta
        post_var = 1 / precision
        post_mean = post_var * (math.sqrt(a_prev) * x0[i] / (1 - a_prev) + math.sqrt(1 - beta) * xt[i] / beta)
        torch.testing.assert_close(mean[i], post_mean, rtol=1e-5, atol=1e-5)
        assert var[i, 0, 0, 0].item() == pytest.approx(post_var, rel=1e-5)
        assert log_var[i, 0, 0, 0].item() == pytest.approx(math.log(post_var), rel=1e-5)
    # t = 0: variance 0, log variance clipped at beta~_1
    _, var0, log_var0 = d.q_posterior_mean_variance(x0, xt, torch.tensor([0, 0]))
    assert var0.abs().max().item() == 0.0
    assert log_var0[0, 0, 0, 0].item() == pytest.approx(math.log(d.posterior_variance[1].item()), rel=1e-5)


def test_normal_kl_matches_torch_distributions() -> None:
    m1, m2 = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()),
        torch.distributions.Normal(m2, (0.5 * lv2).exp()),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


def test_discretized_log_likelihood() -> None:
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 8-bit values in [-1, 1]
    mean = torch.full_like(bins, 0.3)
    log_scale = torch.full_like(bins, math.log(0.1))
    logp = discretized_gaussian_log_likelihood(bins, mean, log_scale)
    # the bins partition the real line: probabilities sum to one
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    # against the exact normal CDF (ADM uses the tanh approximation, good to ~1e-3)
    edges_hi = torch.special.ndtr((bins + 1 / 255 - 0.3) / 0.1)
    edges_lo = torch.special.ndtr((bins - 1 / 255 - 0.3) / 0.1)
    exact = torch.where(bins > 0.999, 1 - edges_lo, torch.where(bins < -0.999, edges_hi, edges_hi - edges_lo))
    assert (logp.exp() - exact).abs().max().item() < 2e-3
    with pytest.raises(ValueError, match="shapes differ"):
        discretized_gaussian_log_likelihood(bins, mean[:3], log_scale)


def test_space_timesteps() -> None:
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    s100 = space_timesteps(1000, "100")
    assert len(s100) == 100 and min(s100) == 0 and max(s100) == 999
    assert space_timesteps(1000, "1000") == set(range(1000))
    assert space_timesteps(10, [2, 3]) == {0, 4, 5, 7, 9}
    assert space_timesteps(10, "2,3") == {0, 4, 5, 7, 9}
    for bad, msg in [
        ("ddimx", "ddimN"),
        ("ddim400", "constant stride"),
        ("a,b", "steps per section"),
        ("2000", "cannot take"),
    ]:
        with pytest.raises(ValueError, match=msg):
            space_timesteps(1000, bad)


def test_respacing_matches_guided_diffusion_for_every_count() -> None:
    """Every count 1..1000, several section lists and DDIM strides, against the steps that
    guided-diffusion's own ``space_timesteps`` keeps (tests/data/respacing_reference.npz was
    generated by running it, at the commit named in the file's ``source``)."""
    ref = np.load(Path(__file__).parent / "data" / "respacing_reference.npz")
    assert "guided-diffusion" in str(ref["source"])
    deltas, start, differ = ref["counts_deltas"].astype(np.int64), 0, []
    for count in range(1, 1001):
        want = np.cumsum(deltas[start : start + count]).tolist()
        start += count
        if sorted(space_timesteps(1000, str(count))) != want:
            differ.append(count)
    assert start == len(deltas)
    assert differ == [], f"{len(differ)} counts differ from guided-diffusion, e.g. {differ[:5]}"
    specs = [k for k in ref.files if k.startswith("spec ")]
    assert len(specs) >= 10
    for key in specs:
        assert sorted(space_timesteps(1000, key[5:])) == ref[key].tolist(), key
    # the example of the issue: rounding at an exact half
    assert 499 in space_timesteps(1000, "21") and 500 not in space_timesteps(1000, "21")


def test_steps_parse_round_trip() -> None:
    for text in ("100", "ddim50", "10,15,20"):
        assert str(Steps.parse(text)) == text
    assert Steps.parse(100) == Steps.parse("100") and Steps.parse("ddim25").ddim_stride
    assert Sampler(Steps.parse("ddim50")).ddim  # DDIM striding always uses the DDIM update
    assert Sampler(Steps.parse("100"), guidance=5).label() == "ancestral, 100 steps, guidance 5"
    for bad in ("", "ddim", "ddim0", "0", "-3", "1.5", True):
        with pytest.raises(ValueError, match="steps"):
            Steps.parse(bad)


def test_respaced_diffusion_keeps_alphas_cumprod() -> None:
    base = create_diffusion("linear")
    for spec in ("100", "ddim25", "10,20,30"):
        d = create_diffusion("linear", respacing=spec)
        kept = sorted(space_timesteps(1000, spec))
        assert d.num_timesteps == len(kept) and d.timestep_map == kept
        torch.testing.assert_close(d.alphas_cumprod, base.alphas_cumprod[kept])
        t = torch.arange(d.num_timesteps)
        assert d.model_timesteps(t).tolist() == kept
    assert create_diffusion("linear", respacing="1000").timestep_map is None


def test_learned_range_variance_endpoints() -> None:
    d = create_diffusion("linear")
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([5, 700])
    eps = torch.randn_like(x)
    hi = d.p_mean_variance_from_output(torch.cat([eps, torch.ones_like(x)], 1), x, t, False)
    lo = d.p_mean_variance_from_output(torch.cat([eps, -torch.ones_like(x)], 1), x, t, False)
    for i, ti in enumerate(t.tolist()):
        assert hi["log_variance"][i, 0, 0, 0].item() == pytest.approx(math.log(d.betas[ti].item()), rel=1e-5)
        assert lo["log_variance"][i, 0, 0, 0].item() == pytest.approx(
            d.posterior_log_variance_clipped[ti].item(), rel=1e-5
        )
    # x0 guess from eps: x0 = (x - sqrt(1-acp) eps) / sqrt(acp)
    a = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(hi["pred_xstart"], (x - (1 - a).sqrt() * eps) / a.sqrt(), rtol=1e-4, atol=1e-4)


class Oracle(torch.nn.Module):
    """Predicts the exact eps for data concentrated at the point x_star (the model is called with
    original timesteps: a respaced diffusion must map them)."""

    def __init__(self, x_star: torch.Tensor, v: float = 0.0) -> None:
        super().__init__()
        self.x_star, self.v, self.base = x_star, v, create_diffusion("linear")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        a = self.base.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x_star) / (1 - a).sqrt()
        return torch.cat([eps, torch.full_like(eps, self.v)], 1)


@pytest.mark.parametrize("spec,ddim", [("ddim10", True), ("20", False), ("ddim10", False)])
def test_samplers_recover_a_point_mass(spec: str, ddim: bool) -> None:
    x_star = torch.rand(1, 3, 4, 4) * 1.6 - 0.8
    d = create_diffusion("linear", respacing=spec)
    # the sampler's update rule (its steps are the diffusion's respacing, already applied)
    out = sample_loop(Oracle(x_star), d, None, torch.randn(3, 3, 4, 4), Sampler(Steps.parse("10"), ddim=ddim))
    torch.testing.assert_close(out, x_star.expand(3, -1, -1, -1), atol=1e-4, rtol=0)


def test_training_losses() -> None:
    d = create_diffusion("linear")
    x0 = (torch.randint(0, 256, (4, 3, 4, 4)) / 127.5 - 1).float()
    noise, t = torch.randn_like(x0), torch.tensor([0, 1, 500, 999])
    x_t = d.q_sample(x0, t, noise)

    # a model predicting the true eps: mse = 0, and vb is the KL / decoder NLL of that mean
    class Perfect(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, tt, cond=None):
            assert torch.equal(x, x_t)
            return torch.cat([noise, self.v.expand_as(noise)], 1)

    model = Perfect()
    terms = d.training_losses(model, x0, t, {}, noise)
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (4,)
    assert terms["mse"].abs().max().item() < 1e-10
    # closed form: the model's mean equals the true posterior mean; KL from the variances only
    true_mean, _, true_lv = d.q_posterior_mean_variance(x0, x_t, t)
    lv = 0.5 * d.log_betas[t].float() + 0.5 * d.posterior_log_variance_clipped[t].float()  # v = 0
    kl = 0.5 * (-1 + lv - true_lv[:, 0, 0, 0] + (true_lv[:, 0, 0, 0] - lv).exp()) / math.log(2)
    torch.testing.assert_close(terms["vb"][1:], kl[1:], rtol=1e-4, atol=1e-6)
    nll = -discretized_gaussian_log_likelihood(x0[:1], true_mean[:1], torch.full_like(x0[:1], 0.5 * lv[0].item()))
    assert terms["vb"][0].item() == pytest.approx(nll.mean().item() / math.log(2), rel=1e-4)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_vb_does_not_train_the_mean() -> None:
    d = create_diffusion("linear")
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    out = torch.randn(2, 6, 4, 4, requires_grad=True)
    terms = d.training_losses(lambda x, t, **k: out, x0, torch.tensor([3, 400]))
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert grad[:, :3].abs().max() == 0 and grad[:, 3:].abs().max() > 0


def test_sample_timesteps_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, 10, generator=g)
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9
    counts = torch.bincount(t, minlength=10).float()
    assert (counts / 2000 - 1).abs().max() < 0.1


def _tiny_model() -> UNetModel:
    model = UNetModel(preset("tiny", cond="cbn", cond_dim=8, model_channels=32, image_size=16))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3 / math.sqrt(p[0].numel() if p.ndim > 1 else 1))
    return model.eval()


def test_ddim_eta0_is_deterministic_and_uses_no_generator_draws() -> None:
    model, d = _tiny_model(), create_diffusion("linear", respacing="ddim4")
    noise, h = torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    ddim4 = Sampler(Steps.parse("ddim4"), eta=0.0)
    a = sample_loop(model, d, h, noise, ddim4, generators=gens)
    b = sample_loop(model, d, h, noise.clone(), ddim4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the generators were not advanced
    assert torch.equal(
        torch.randn(3, generator=gens[0]),
        torch.randn(3, generator=torch.Generator().manual_seed(1)),
    )
    # eta > 0 is stochastic
    c = sample_loop(
        model, d, h, noise, Sampler(Steps.parse("ddim4"), eta=1.0), generators=[torch.Generator().manual_seed(5)] * 2
    )
    assert (c - a).abs().max() > 1e-3
    assert a.abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize("ddim,eta", [(False, 0.0), (True, 0.5)])
def test_sample_depends_on_its_seed_only(ddim: bool, eta: float) -> None:
    model, d = _tiny_model(), create_diffusion("linear", respacing="4")
    conds = torch.randn(3, 8)

    def run(seeds: list[int], rows: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        noise = draw_noise(gens, (3, 16, 16), "cpu")
        return sample_loop(model, d, conds[rows], noise, Sampler(Steps.parse("4"), ddim=ddim, eta=eta), generators=gens)

    batch = run([11, 22, 33], [0, 1, 2])
    alone = run([22], [1])
    swapped = run([33, 22], [2, 1])
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(swapped[1:2], alone, atol=1e-5, rtol=1e-4)
    assert (batch[0] - batch[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="one per sample"):
        sample_loop(
            model, d, conds, torch.randn(3, 3, 16, 16), Sampler(Steps.parse("4")), generators=[torch.Generator()]
        )


def test_fixed_variance_without_learned_sigma() -> None:
    d = GaussianDiffusion(get_named_beta_schedule("linear", T), learn_sigma=False)
    x = torch.randn(1, 3, 2, 2)
    out = d.p_mean_variance_from_output(torch.zeros_like(x), x, torch.tensor([10]), False)
    assert out["variance"][0, 0, 0, 0].item() == pytest.approx(d.betas[10].item(), rel=1e-5)
    terms = d.training_losses(lambda xx, tt, **k: torch.zeros_like(xx), x, torch.tensor([10]))
    assert terms["vb"].item() == 0 and terms["loss"].item() == pytest.approx(terms["mse"].item())
