"""The representation prior's network and its diffusion over vectors.

The network is RCG's representation diffusion model (Li, Katabi & He 2023, ``rdm``): a linear
input layer, ``blocks`` residual blocks (LayerNorm, shift/scale/gate from the time embedding,
Linear-SiLU-Linear), and a modulated LayerNorm + Linear output. The diffusion is RCG's too
(its ``config/rdm/*.yaml``): DDPM over standardised h with the "linear" schedule of latent
diffusion (sqrt(beta) linear from sqrt(0.0015) to sqrt(0.0195) over 1000 steps) and the network
predicting x0, not the noise. Both matter for a wide vector: predicting the noise needs the
network to pass all D dimensions of x_t through (a width-512 MLP cannot carry 2048-d noise),
and turning a noise prediction into x0 divides its error by sqrt(alpha_bar), 5e-5 at t = T
under the cosine schedule; measured in docs/prior.md. Sampling is DDIM on ``steps`` evenly
spaced time steps with ``eta`` (1: ancestral-like, RCG's choice; 0: deterministic), the
predicted x0 clipped to the largest |standardised h| seen in training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rcdm.errors import InvalidInput
from torch import nn

__all__ = ["PriorSpec", "PriorMLP", "VectorDiffusion", "draw", "linear_alphas_cumprod"]


@dataclass(frozen=True)
class PriorSpec:
    """The prior's architecture and diffusion; saved in ``prior.json``."""

    dim: int
    width: int = 512
    blocks: int = 6
    timesteps: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PriorSpec:
        return cls(**{k: int(d[k]) for k in ("dim", "width", "blocks", "timesteps")})


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) time steps -> (N, dim), as guided-diffusion's."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(emb)[inv].chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class PriorMLP(nn.Module):
    """x0_theta(x_t, t): (N, dim), (N,) -> (N, dim)."""

    def __init__(self, spec: PriorSpec):
        super().__init__()
        self.spec = spec
        w = spec.width
        self.inp = nn.Linear(spec.dim, w)
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(ResBlock(w) for _ in range(spec.blocks))
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, spec.dim)
        # adaLN-zero: every block starts as the identity, the output at zero (RCG / DiT)
        for b in self.blocks:
            nn.init.zeros_(b.ada[-1].weight)
            nn.init.zeros_(b.ada[-1].bias)
        for m in (self.out_ada[-1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        # standardisation of h (the training store's per-dimension mean / std), saved with the weights
        self.register_buffer("mean", torch.zeros(spec.dim))
        self.register_buffer("std", torch.ones(spec.dim))
        # the largest |standardised h| in training: predicted x0 is clipped to it while sampling
        self.register_buffer("bound", torch.tensor(float("inf")))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The time embedding and the modulations depend on t only: computed once per distinct t
        # (while sampling every row shares one t, and the modulations are most of the weights).
        tu, inv = torch.unique(t, return_inverse=True)
        emb = self.time(timestep_embedding(tu, self.spec.width))
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, emb, inv)
        shift, scale = self.out_ada(emb)[inv].chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)


def linear_alphas_cumprod(timesteps: int, start: float = 0.0015, end: float = 0.0195) -> np.ndarray:
    """alpha_bar_t of latent diffusion's "linear" schedule (RCG's rdm): sqrt(beta) linear in t.

    The betas are scaled by 1000 / ``timesteps``, so that alpha_bar_T stays ~1e-4 whatever their number."""
    k = 1000 / timesteps
    betas = np.linspace(math.sqrt(start * k), math.sqrt(end * k), timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - np.minimum(betas, 0.999))


class VectorDiffusion:
    """DDPM over (N, D) vectors: the x0 loss and a DDIM sampler."""

    def __init__(self, timesteps: int):
        self.T = int(timesteps)
        self.abar = torch.from_numpy(linear_alphas_cumprod(self.T)).float()  # (T,)

    def loss(self, model: nn.Module, x0: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the predicted x0 at a uniform random t (RCG's l2 loss)."""
        n = x0.shape[0]
        t = torch.randint(0, self.T, (n,), device=x0.device, generator=gen)
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
        a = self.abar.to(x0.device)[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return ((model(xt, t) - x0) ** 2).mean()

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        n: int,
        *,
        steps: int = 100,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) on ``steps`` evenly spaced steps; (n, D) in model space."""
        steps = max(1, min(int(steps), self.T))
        ts = np.unique(np.linspace(0, self.T - 1, steps).round().astype(np.int64))[::-1]
        abar = self.abar.to(device)
        x = torch.randn((n, model.spec.dim), generator=generator, device="cpu").to(device)
        for i, t in enumerate(ts):
            a_t = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=device)
            x0 = model(x, torch.full((n,), int(t), device=device, dtype=torch.long)).clamp(-model.bound, model.bound)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
            dir_xt = (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            noise = torch.randn(x.shape, generator=generator, device="cpu").to(device)
            x = a_prev.sqrt() * x0 + dir_xt + sigma * noise
        return x


def draw(
    model: Any,
    n: int,
    *,
    seed: int = 0,
    steps: int | None = None,
    eta: float | None = None,
    device: Any = "cpu",
    meta: dict | None = None,
) -> np.ndarray:
    """``n`` representations from the prior, seeded: ``(n, D)`` float32 in the store's units."""
    if n < 1:
        raise InvalidInput(f"prior: the number of draws must be at least 1, got {n}")
    meta = meta or {}
    steps = int(steps or meta.get("sample_steps", 100))
    eta = float(meta.get("sample_eta", 1.0) if eta is None else eta)
    gen = torch.Generator().manual_seed(int(seed))
    diff = VectorDiffusion(model.spec.timesteps)
    z = diff.sample(model, n, steps=steps, eta=eta, generator=gen, device=device)
    h = z * model.std + model.mean
    return h.float().cpu().numpy()
