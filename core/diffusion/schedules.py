"""Noise schedules as float64 betas: guided-diffusion's named ones, and the zero-terminal-SNR
rescaling (Lin et al. 2024), an opt-in addition."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from rcdm.errors import InvalidInput

__all__ = ["betas_for_alpha_bar", "get_named_beta_schedule", "rescale_zero_terminal_snr"]


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> torch.Tensor:
    """beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), clipped at max_beta."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def get_named_beta_schedule(name: str, num_timesteps: int = 1000) -> torch.Tensor:
    """(T,) float64 betas. ``linear``: Ho et al. scaled to T steps; ``cosine``: Nichol & Dhariwal."""
    if name == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        return betas_for_alpha_bar(num_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise InvalidInput(f"unknown beta schedule {name!r}: expected 'linear' or 'cosine'")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last step has SNR 0 (Lin et al. 2024, Algorithm 1): sqrt(alpha_bar) is shifted
    so its last value is 0 and scaled so its first is unchanged. Needs v-prediction (eps cannot
    be predicted from pure noise)."""
    ab_sqrt = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
    ab_sqrt = (ab_sqrt - last) * first / (first - last)
    ab = ab_sqrt**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas
