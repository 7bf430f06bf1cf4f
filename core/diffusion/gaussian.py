"""Gaussian diffusion (Ho et al. 2020) with ADM's choices (Nichol & Dhariwal 2021).

Epsilon prediction, learned-range variance (the model's second half of channels v in [-1, 1]
interpolates log beta_t and log beta~_t), the hybrid loss L_simple + L_vlb (VLB with the mean
detached, in bits per dimension), timestep respacing, ancestral and DDIM sampling.

Schedules are float64 and extracted to float32 per timestep, as in guided-diffusion. A respaced
diffusion is a GaussianDiffusion over fewer steps with ``timestep_map`` giving the original step
the model is called with.

Opt-in additions, none of them in guided-diffusion (the paper's recipe is the defaults, and its
loss is unchanged bit for bit): v-prediction (``prediction="v"``, Salimans & Ho 2022), a schedule
rescaled to zero terminal SNR (:func:`rescale_zero_terminal_snr`, Lin et al. 2024) and min-SNR-gamma
loss weighting (Hang et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from rcdm.config import Steps
from rcdm.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from rcdm.diffusion.respace import respaced_betas, space_timesteps
from rcdm.diffusion.schedules import get_named_beta_schedule, rescale_zero_terminal_snr
from rcdm.errors import InvalidInput

__all__ = [
    "GaussianDiffusion",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule",
    "normal_kl",
    "sample_timesteps",
    "space_timesteps",
]

Model = Callable[..., torch.Tensor]


class GaussianDiffusion:
    """The forward process q and the learned reverse process p over ``len(betas)`` steps."""

    def __init__(
        self,
        betas: torch.Tensor | Sequence[float],
        learn_sigma: bool = True,
        timestep_map: Sequence[int] | None = None,
        fixed_variance: str = "large",
        prediction: str = "eps",
        original_steps: int | None = None,  # the chain timestep_map indexes (default: this one)
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if not (betas > 0).all() or not (betas <= 1).all():
            raise InvalidInput("betas must lie in (0, 1]")
        if fixed_variance not in ("large", "small"):
            raise InvalidInput(f"fixed_variance={fixed_variance!r}: expected 'large' or 'small'")
        if prediction not in ("eps", "v"):
            raise InvalidInput(f"prediction={prediction!r}: expected 'eps' or 'v'")
        self.prediction = prediction
        self.num_timesteps = int(betas.shape[0])
        self.learn_sigma, self.fixed_variance = learn_sigma, fixed_variance
        self.timestep_map = None if timestep_map is None else list(timestep_map)
        self.original_steps = int(original_steps or self.num_timesteps)
        if self.timestep_map is not None and len(self.timestep_map) != self.num_timesteps:
            raise InvalidInput("timestep_map needs one original step per step")

        # float64 schedule quantities (Ho et al. 2020, eqs. 4, 6, 7)
        alphas = 1.0 - betas
        acp = torch.cumprod(alphas, dim=0)
        acp_prev = torch.cat([acp.new_ones(1), acp[:-1]])
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        self._f64: dict[str, torch.Tensor] = {
            "betas": betas,
            "log_betas": torch.log(betas),
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": acp_prev,
            "sqrt_alphas_cumprod": acp.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1.0).sqrt(),
            "posterior_variance": post_var,
            # beta~_0 = 0: clip the log at beta~_1
            "posterior_log_variance_clipped": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "posterior_mean_coef1": betas * acp_prev.sqrt() / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp),
            # the "fixed large" variance uses beta~_1 at t = 0 so the decoder is not degenerate
            "fixed_large_variance": torch.cat([post_var[1:2], betas[1:]]),
            "p2_snr": acp / (1.0 - acp),  # signal-to-noise ratio of x_t
        }
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def __getattr__(self, name: str) -> torch.Tensor:
        # schedule quantities as float64 CPU tensors: diffusion.alphas_cumprod etc.
        f64 = self.__dict__.get("_f64", {})
        if name in f64:
            return f64[name]
        raise AttributeError(name)

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Schedule value at each sample's timestep, as float32 (N, 1, 1, 1) on t's device."""
        key = (name, str(t.device))
        buf = self._cache.get(key)
        if buf is None:
            buf = self._cache[key] = self._f64[name].to(device=t.device, dtype=torch.float32)
        return buf[t].view(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original step the model was trained with, for each (possibly respaced) step."""
        if self.timestep_map is None:
            return t
        key = ("timestep_map", str(t.device))
        tmap = self._cache.get(key)
        if tmap is None:
            tmap = self._cache[key] = torch.tensor(self.timestep_map, device=t.device)
        return tmap[t]

    # -- forward process --------------------------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """q(x_t | x_0) = N(sqrt(acp) x0, (1 - acp) I): (mean, variance, log_variance)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x0.ndim) * x0
        var = 1.0 - self._extract("alphas_cumprod", t, x0.ndim)
        return mean, var.expand_as(x0), torch.log(var).expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps (eq. 4)."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (
            self._extract("sqrt_alphas_cumprod", t, x0.ndim) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * noise
        )

    def q_posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0) = N(mu~, beta~ I) (eqs. 6, 7): (mean, variance, log_var_clipped)."""
        mean = (
            self._extract("posterior_mean_coef1", t, xt.ndim) * x0
            + self._extract("posterior_mean_coef2", t, xt.ndim) * xt
        )
        var = self._extract("posterior_variance", t, xt.ndim).expand_as(xt)
        log_var = self._extract("posterior_log_variance_clipped", t, xt.ndim).expand_as(xt)
        return mean, var, log_var

    def predict_xstart_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, xt.ndim) * xt
            - self._extract("sqrt_recipm1_alphas_cumprod", t, xt.ndim) * eps
        )

    def predict_eps_from_xstart(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor):
        return (self._extract("sqrt_recip_alphas_cumprod", t, xt.ndim) * xt - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, xt.ndim
        )

    # -- reverse process --------------------------------------------------------------------
    def p_mean_variance_from_output(
        self,
        model_output: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from the model's output (N, 2C or C, H, W): mean, variance, x0 guess."""
        model_output = model_output.float()
        c = xt.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * c:
                raise InvalidInput(
                    f"learned sigma needs {2 * c} output channels, the model gave {model_output.shape[1]}"
                )
            eps, v = model_output.split(c, dim=1)
            # learned range: log var = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2
            min_log = self._extract("posterior_log_variance_clipped", t, xt.ndim)
            max_log = self._extract("log_betas", t, xt.ndim)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
            var = torch.exp(log_var)
        else:
            eps = model_output
            name = "fixed_large_variance" if self.fixed_variance == "large" else "posterior_variance"
            var = self._extract(name, t, xt.ndim).expand_as(xt)
            log_var = (
                torch.log(var)
                if self.fixed_variance == "large"
                else self._extract("posterior_log_variance_clipped", t, xt.ndim).expand_as(xt)
            )
        if self.prediction == "v":  # x0 = sqrt(acp) xt - sqrt(1 - acp) v, eps = sqrt(1 - acp) xt + sqrt(acp) v
            a = self._extract("sqrt_alphas_cumprod", t, xt.ndim)
            s = self._extract("sqrt_one_minus_alphas_cumprod", t, xt.ndim)
            pred_xstart, eps = a * xt - s * eps, s * xt + a * eps
        else:
            pred_xstart = self.predict_xstart_from_eps(xt, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, xt, t)
        return {
            "mean": mean,
            "variance": var,
            "log_variance": log_var,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def p_mean_variance(
        self,
        model: Model,
        xt: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        out = model(xt, self.model_timesteps(t), **(model_kwargs or {}))
        return self.p_mean_variance_from_output(out, xt, t, clip_denoised)

    def p_sample(
        self,
        model: Model,
        xt: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} = mean + sigma z (no noise at t = 0)."""
        out = self.p_mean_variance(model, xt, t, clip_denoised, model_kwargs)
        sample = out["mean"]
        if noise is not None or (t != 0).any():
            noise = torch.randn_like(xt) if noise is None else noise
            nonzero = (t != 0).float().view(-1, *([1] * (xt.ndim - 1)))
            sample = sample + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(
        self,
        model: Model,
        xt: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12); eta = 0 is deterministic."""
        out = self.p_mean_variance(model, xt, t, clip_denoised, model_kwargs)
        # re-derive eps from the (possibly clipped) x0 guess, as guided-diffusion does
        if self.prediction == "v":  # the same eps, written so that it stays finite at SNR 0
            eps = (xt - self._extract("sqrt_alphas_cumprod", t, xt.ndim) * out["pred_xstart"]) / self._extract(
                "sqrt_one_minus_alphas_cumprod", t, xt.ndim
            )
        else:
            eps = self.predict_eps_from_xstart(xt, t, out["pred_xstart"])
        ab = self._extract("alphas_cumprod", t, xt.ndim)
        ab_prev = self._extract("alphas_cumprod_prev", t, xt.ndim)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        sample = out["pred_xstart"] * ab_prev.sqrt() + (1 - ab_prev - sigma**2).sqrt() * eps
        if eta > 0:
            noise = torch.randn_like(xt) if noise is None else noise
            nonzero = (t != 0).float().view(-1, *([1] * (xt.ndim - 1)))
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # -- training ---------------------------------------------------------------------------
    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_{t-1} per sample in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p) for t > 0, -log p(x_0|x_1)
        (discretised Gaussian) for t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, xt, t)
        out = self.p_mean_variance_from_output(model_output, xt, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]))
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        p2_gamma: float = 0.0,
        p2_k: float = 1.0,
        min_snr_gamma: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Hybrid loss per sample: {"loss": w mse + vb, "mse", "vb"}, each (N,) float32.

        mse = |eps - eps_theta|^2 (mean over dims); vb = L_vlb term with the predicted mean
        detached, so it trains only the variance (Nichol & Dhariwal 2021, sec. 3.1). Without
        learned sigma vb is 0. w = 1 / (p2_k + SNR_t)^p2_gamma is P2 weighting (Choi et al.,
        CVPR 2022): gamma > 0 moves weight from the nearly clean steps to the noisy ones where
        colour and layout (what h is about) are decided; gamma = 0 (default) is ADM's loss.
        With ``prediction="v"`` the regression target is v = sqrt(acp) eps - sqrt(1 - acp) x0.
        ``min_snr_gamma`` > 0 multiplies mse by min(SNR_t, gamma) / SNR_t (eps) or
        min(SNR_t, gamma) / (SNR_t + 1) (v): the min-SNR-gamma weighting (Hang et al. 2023).
        """
        noise = torch.randn_like(x0) if noise is None else noise
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.model_timesteps(t), **(model_kwargs or {})).float()
        c = x0.shape[1]
        eps = out[:, :c]
        if self.prediction == "v":
            target = (
                self._extract("sqrt_alphas_cumprod", t, x0.ndim) * noise.float()
                - self._extract("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * x0.float()
            )
        else:
            target = noise.float()
        mse = mean_flat((target - eps) ** 2)
        if self.learn_sigma:
            frozen = torch.cat([eps.detach(), out[:, c:]], dim=1)
            vb = self.vb_terms_bpd(frozen, x0.float(), xt.float(), t)
        else:
            vb = torch.zeros_like(mse)
        weighted = mse
        if p2_gamma:
            weighted = mse * self._extract("p2_snr", t, 1).add(p2_k).pow(-p2_gamma)
        if min_snr_gamma:
            snr = self._extract("p2_snr", t, 1)
            denom = snr + 1.0 if self.prediction == "v" else snr.clamp(min=1e-20)
            weighted = weighted * snr.clamp(max=min_snr_gamma) / denom
        return {"loss": weighted + vb, "mse": mse, "vb": vb}


def sample_timesteps(
    n: int,
    num_timesteps: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform timestep sampler: (n,) long in [0, num_timesteps) (all importance weights are 1)."""
    gen_device = generator.device if generator is not None else device
    t = torch.randint(0, num_timesteps, (n,), device=gen_device, generator=generator)
    return t.to(device)


DIFFUSION_STEPS = 1000  # the chain every RCDM / ADM model is trained on (recorded in model.json)


def create_diffusion(
    schedule: str = "linear",
    steps: int = DIFFUSION_STEPS,
    respacing: Steps | str | None = None,
    learn_sigma: bool = True,
    prediction: str = "eps",
    zero_terminal_snr: bool = False,
) -> GaussianDiffusion:
    """The ``steps``-step diffusion of ``schedule``, respaced to ``respacing`` ("", "100", "ddim50",
    "trailing25", "10,20,30"; "" keeps every step); optionally v-predicting and rescaled to zero
    terminal SNR (which needs v-prediction)."""
    betas = get_named_beta_schedule(schedule, steps)
    if zero_terminal_snr:
        if prediction != "v":
            raise InvalidInput("a zero-terminal-SNR schedule needs prediction 'v' (eps is undefined at SNR 0)")
        betas = rescale_zero_terminal_snr(betas)
    if not respacing:
        return GaussianDiffusion(betas, learn_sigma, prediction=prediction)
    use = space_timesteps(steps, respacing)
    if len(use) == steps:
        return GaussianDiffusion(betas, learn_sigma, prediction=prediction)
    new_betas, tmap = respaced_betas(torch.cumprod(1.0 - betas, dim=0), use)
    return GaussianDiffusion(new_betas, learn_sigma, timestep_map=tmap, prediction=prediction, original_steps=steps)
