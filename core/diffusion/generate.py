"""Generation: conditions + seeds -> uint8 images, one random generator per sample.

Every sample i gets its own ``torch.Generator`` seeded with ``seeds[i]``; it draws that sample's
initial noise x_T and every step's noise (:func:`sample_loop` takes the per-sample
generators). So sample i depends on ``(conds[i], seeds[i])`` only: not on the batch size, the
number of processes, or its position in the batch (EDM's convention). Results are reproducible
on one device type; the CPU and CUDA generators draw different numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rcdm.config import PAPER_DIFFUSION, Sampler, Steps
from rcdm.errors import InvalidInput
from rcdm.utils import seed_generator

__all__ = [
    "draw_noise",
    "prepare_for_sampling",
    "StepNoise",
    "sample_loop",
    "check_guidance",
    "generate",
    "diffusion_for",
    "model_image_shape",
    "to_uint8",
]


def draw_noise(
    generators: Sequence[torch.Generator] | None,
    shape: Sequence[int],
    device: torch.device | str,
    n: int | None = None,
) -> torch.Tensor:
    """(N, *shape) standard normal noise, row i drawn from generators[i] (on its own device).

    Without generators, N = n rows from the global RNG.
    """
    if generators is None:
        if n is None:
            raise InvalidInput("draw_noise needs generators or n")
        return torch.randn(n, *shape, device=device)
    rows = [torch.randn(*shape, generator=g, device=g.device) for g in generators]
    return torch.stack(rows).to(device)


# Steps of noise each per-sample generator draws in one call (StepNoise).
NOISE_CHUNK = 25


class StepNoise:
    """The per-step noise of a chain, row i from generators[i], drawn ``NOISE_CHUNK`` steps at a
    time: one launch per sample per 25 steps instead of one per sample per step.

    Row i still depends only on generators[i] (its seed). On a CPU the numbers are exactly those
    of one draw per step when a step's noise has a multiple of 16 values (torch's CPU normal
    sampler fills blocks of 16), as every UNet image has (3 x H x W, H and W multiples of 8);
    other shapes draw one step at a time, so CPU results never change. On CUDA a chunk is one
    Philox call, so its numbers differ from per-step calls (still a pure function of the seed).
    """

    def __init__(self, generators: Sequence[torch.Generator], shape: Sequence[int], device, draws: int):
        self.gens, self.shape, self.device, self.left = list(generators), tuple(shape), device, int(draws)
        numel = math.prod(self.shape)
        on_cuda = all(g.device.type == "cuda" for g in self.gens)
        self.chunk = NOISE_CHUNK if (on_cuda or numel % 16 == 0) else 1
        self.buf: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> torch.Tensor:
        """The next step's (N, *shape) noise."""
        if self.buf is None or self.pos == self.buf.shape[0]:
            k = max(1, min(self.chunk, self.left))
            rows = [torch.randn((k, *self.shape), generator=g, device=g.device) for g in self.gens]
            self.buf = torch.stack(rows, 1).to(self.device)  # (k, N, *shape)
            self.pos = 0
        z = self.buf[self.pos]
        self.pos += 1
        self.left -= 1
        return z


def sample_loop(
    model: torch.nn.Module,
    diffusion: Any,
    cond: torch.Tensor | None,
    noise: torch.Tensor,
    sampler: Sampler,
    *,
    generators: Sequence[torch.Generator] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the reverse chain from x_T = noise (N, C, H, W) to x_0 in [-1, 1] (float32), with the
    sampler's update rule (ancestral, or DDIM with its eta) and clipping; ``diffusion`` is already
    respaced to ``sampler.steps`` and ``model`` already guided (:func:`generate` does both).

    With ``generators`` (one per sample) every random draw of sample i comes from generators[i],
    so a sample depends only on its own condition and seed, not on its batch or position.
    """
    n = noise.shape[0]
    if generators is not None and len(generators) != n:
        raise InvalidInput(f"{len(generators)} generators for {n} samples: pass one per sample")
    if cond is not None and cond.shape[0] != n:
        raise InvalidInput(f"{cond.shape[0]} conditions for {n} noise images")
    kwargs = {} if cond is None else {"cond": cond}
    x = noise.float()
    steps = list(range(diffusion.num_timesteps))[::-1]
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling", leave=False)
    stochastic = not sampler.ddim or sampler.eta > 0
    bank = StepNoise(generators, x.shape[1:], x.device, diffusion.num_timesteps - 1) if generators is not None else None
    with torch.no_grad():
        for i in steps:
            t = torch.full((n,), i, device=x.device, dtype=torch.long)
            z = None
            if stochastic and i > 0:
                z = bank.next() if bank is not None else draw_noise(None, x.shape[1:], x.device, n)
            if sampler.ddim:
                out = diffusion.ddim_sample(model, x, t, z, sampler.clip_denoised, kwargs, sampler.eta)
            else:
                out = diffusion.p_sample(model, x, t, z, sampler.clip_denoised, kwargs)
            x = out["sample"]
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [-1, 1] -> ``(N, H, W, 3)`` uint8 (the project's one rule, in images)."""
    from rcdm.data.images import from_model_range

    return from_model_range(x)


def model_image_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``model`` generates, from its ``UNetConfig``."""
    # a DDP / accelerate wrapper keeps the UNet in .module
    cfg = getattr(model, "cfg", None) or getattr(getattr(model, "module", None), "cfg", None)
    if cfg is None:
        raise InvalidInput("the model has no .cfg (UNetConfig); cannot tell the image size to sample")
    return int(getattr(cfg, "in_channels", 3)), int(cfg.image_size), int(cfg.image_size)


class _Autocast(torch.nn.Module):
    """Runs the UNet under bf16 autocast and hands float32 back to the diffusion maths, which
    stays in float32 (the posterior needs the precision)."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype | None):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype
        self.cfg = getattr(model, "cfg", None) or getattr(getattr(model, "module", None), "cfg", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        ctx = torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with ctx:
            out = self.model(x, t, *args, **kwargs)
        return out.float()


class _Guided(torch.nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022): eps = eps_u + w (eps_c - eps_u), with eps_u
    the model's prediction under the null condition. One forward on the doubled batch; the
    learned variance channels are the conditional prediction's.

    The sampler's ``guidance_interval`` (lo, hi), an rcdm addition: guide only the steps whose
    original timestep t has lo <= t / T <= hi (guidance in a limited interval, Kynkaanniemi et al.
    2024), T = ``num_timesteps`` the model's chain; elsewhere the plain conditional prediction, one
    forward. (0, 1), the default, guides every step.

    Its ``guidance_rescale`` phi > 0 (Lin et al. 2024, sec. 3.4; an rcdm addition): the guided
    prediction g becomes phi g std(c) / std(g) + (1 - phi) g, c the conditional prediction and std
    over each sample's pixels, which keeps guidance from over-exposing (0, the default: off)."""

    def __init__(self, model: torch.nn.Module, sampler: Sampler, num_timesteps: int = 1000):
        super().__init__()
        self.model, self.sampler, self.num_timesteps = model, sampler, num_timesteps
        self.scale, self.rescale = float(sampler.guidance), float(sampler.guidance_rescale)
        self.interval = (float(sampler.guidance_interval[0]), float(sampler.guidance_interval[1]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        lo, hi = self.interval
        if lo > 0.0 or hi < 1.0:
            frac = t.float() / self.num_timesteps
            inside = (frac >= lo) & (frac <= hi)
            if not bool(inside.any()):
                return self.model(x, t, cond=cond)
            if not bool(inside.all()):  # rows of one batch share t in sampling; mixed only in tests
                return torch.where(inside.view(-1, 1, 1, 1), self._guided(x, t, cond), self.model(x, t, cond=cond))
        return self._guided(x, t, cond)

    def _guided(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        drop = torch.arange(2 * n, device=x.device) >= n  # first half conditional, second null
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), cond=torch.cat([cond, cond]), cond_drop=drop)
        out_c, out_u = out[:n], out[n:]
        c = x.shape[1]
        eps = out_u[:, :c] + self.scale * (out_c[:, :c] - out_u[:, :c])
        if self.rescale:
            dims = tuple(range(1, eps.ndim))
            ratio = out_c[:, :c].std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True).clamp_min(1e-12)
            eps = self.rescale * eps * ratio + (1.0 - self.rescale) * eps
        return torch.cat([eps, out_c[:, c:]], dim=1)


def check_guidance(sampler: Sampler, meta: dict, checkpoint: str | Path) -> None:
    """A guided sampler needs a model trained with the null condition (``train.cond_drop`` > 0).
    (The scale itself is checked by the sampler.)"""
    if sampler.guided and not float(meta.get("cond_drop") or 0.0) > 0:
        raise InvalidInput(
            f"guidance {sampler.guidance:g} needs a model trained with the null condition, but {checkpoint} was "
            "trained with train.cond_drop=0; sample with guidance 1, or train with "
            "--set train.cond_drop=0.1 (or more)"
        )


def resolve_precision(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """'auto' -> bf16 on CUDA, full precision on CPU; 'bf16' / 'fp16' / 'no' as asked."""
    if mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision in ("no", "none", "fp32"):
        return None
    raise InvalidInput(f"mixed_precision must be 'auto', 'no', 'bf16' or 'fp16', got {mixed_precision!r}")


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    diffusion: Any,
    conds: np.ndarray | torch.Tensor,
    seeds: Sequence[int] | np.ndarray,
    sampler: Sampler,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    mixed_precision: str = "no",
) -> np.ndarray:
    """Sample one image per ``(conds[i], seeds[i])`` with ``sampler``; returns ``(N, H, W, 3)`` uint8.

    ``conds`` is ``(N, D)``; ``seeds`` ``(N,)`` ints; ``diffusion`` is the model's, respaced to
    ``sampler.steps`` (:func:`diffusion_for`). The model should already be on ``device`` and in
    eval mode. A guided sampler applies classifier-free guidance (the model must have been trained
    with ``train.cond_drop`` > 0; see :func:`check_guidance`), in its interval, rescaled as it says
    (:class:`_Guided`).
    """
    device = torch.device(device)
    conds_t = torch.as_tensor(np.asarray(conds, dtype=np.float32) if not torch.is_tensor(conds) else conds)
    conds_t = conds_t.float()
    seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
    if conds_t.ndim != 2 or conds_t.shape[0] != len(seeds):
        raise InvalidInput(
            f"generate needs conds (N, D) and N seeds, got conds {tuple(conds_t.shape)} and {len(seeds)} seeds"
        )
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, got {batch_size}")
    c, h, w = model_image_shape(model)
    n = len(seeds)
    out = np.empty((n, h, w, c), dtype=np.uint8)
    if n == 0:
        return out
    net = _Autocast(model, device.type, resolve_precision(mixed_precision, device))
    if sampler.guided:
        net = _Guided(net, sampler, diffusion.original_steps)

    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sampling", unit="batch", total=(n + batch_size - 1) // batch_size)
    for s in starts:
        e = min(n, s + batch_size)
        # One generator per sample: it draws x_T here and the noise of every step in sample_loop.
        gens = [seed_generator(seed, device) for seed in seeds[s:e]]
        noise = torch.stack([torch.randn((c, h, w), generator=g, device=device) for g in gens])
        x = sample_loop(net, diffusion, conds_t[s:e].to(device), noise, sampler, generators=gens)  # (b, C, H, W)
        out[s:e] = to_uint8(x)
    return out


def diffusion_for(meta: dict, steps: Steps | str) -> Any:
    """The respaced diffusion a model samples with: its schedule and its number of training
    steps from its ``model.json`` (``meta["diffusion"]``), respaced to ``steps``."""
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS, create_diffusion

    # the opt-in recipe options are recorded only when a run used them: absent means the paper's
    recorded = {**PAPER_DIFFUSION, **(meta.get("diffusion") or {})}
    schedule = recorded.get("schedule") or (meta.get("unet") or {}).get("schedule") or "linear"
    # weights with no meta at all: every RCDM / ADM model has a 1000-step chain
    num = int(recorded.get("steps") or DIFFUSION_STEPS)
    return create_diffusion(
        schedule,
        steps=num,
        respacing=Steps.parse(steps),
        learn_sigma=recorded.get("learn_sigma", True),
        prediction=recorded["prediction"],
        zero_terminal_snr=bool(recorded["zero_terminal_snr"]),
    )


def prepare_for_sampling(
    model: torch.nn.Module,
    device: torch.device | str,
    compile: bool | str = False,
    *,
    backend: str = "inductor",
    channels_last: bool | str = "auto",
) -> torch.nn.Module:
    """Eval mode on ``device`` with the ``auto`` speed settings (``rcdm.speed``): on CUDA cuDNN
    autotune + TF32, compile (with ``backend``), and channels-last when compiled; on a CPU none of
    them unless asked (``compile=True, backend="aot_eager", channels_last=True``: the GPU's path).
    ``bench/sample.py`` times models prepared here, so it measures what ``rcdm sample`` runs."""
    from rcdm.speed import enable_fast_math, resolve_channels_last, resolve_compile

    device = torch.device(device)
    model = model.to(device).eval()
    enable_fast_math(device)
    compiled = resolve_compile(compile, device)
    if resolve_channels_last(channels_last, compiled, device):
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        model = torch.compile(model, backend=backend)  # attribute lookups (.cfg) pass through to the module
    return model
