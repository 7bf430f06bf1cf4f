"""``rcdm train-prior``: fit the representation prior (:mod:`rcdm.prior`) to a feature store.

The store's features (view 0) are standardised per dimension with their own mean / std (kept in
the network's buffers), then the MLP learns to denoise them: AdamW, a 100-step linear warm-up
then a cosine decay of the learning rate to 0 at ``prior.iters``, an EMA of the weights (what is
saved and sampled). Everything fits in memory: a 1.28M x 2048 float32 store is 10 GB. The
defaults (width 512, 6 blocks, batch 128, 2000 steps: 11M parameters) train a 2048-d prior in
about 5 CPU minutes on one thread; docs/prior.md has the measurements and the ImageNet-scale
settings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from rcdm.config import PriorConfig, save_resolved
from rcdm.errors import InvalidInput, OutputExists
from rcdm.run.lock import holding_output_lock
from rcdm.train.ema import EMA
from rcdm.utils import now_iso

__all__ = ["train_prior"]


def _check(cfg: PriorConfig) -> None:
    if not cfg.store or not cfg.out:
        raise InvalidInput("train-prior needs prior.store and prior.out (--store, --out)")


def lr_at(lr: float, step: int, iters: int, warmup: int = 100) -> float:
    """A linear warm-up over ``warmup`` steps, then a cosine decay from ``lr`` to 0 at ``iters``."""
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / iters))


@holding_output_lock("rcdm train-prior")  # one writer per prior folder
def train_prior(cfg: PriorConfig) -> Path:
    """Train on ``cfg.store``, write ``cfg.out`` (see :mod:`rcdm.run.priordir`); returns the folder."""
    import torch
    from rcdm.prior.model import PriorMLP, PriorSpec, VectorDiffusion
    from rcdm.run.priordir import is_prior, save_prior
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device
    from tqdm.auto import tqdm

    _check(cfg)
    out = Path(cfg.out)  # type: ignore[arg-type]
    if is_prior(out) and not cfg.overwrite:
        raise OutputExists(f"{out} already holds a trained prior; pass --overwrite to replace it, or another --out")
    store = FeatureStore(cfg.store)
    x_all = _rows(store)  # (N, D) float32, finite, its own copy: standardised in place
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = PriorMLP(PriorSpec(dim=store.dim, width=cfg.width, blocks=cfg.blocks, timesteps=cfg.timesteps))
    model.mean.copy_(x_all.mean(0))
    model.std.copy_(x_all.std(0).clamp_min(1e-6))
    x_all = x_all.sub_(model.mean).div_(model.std).to(device)
    model.bound.fill_(float(x_all.abs().max()))
    model.to(device).train()
    ema = EMA(model, (cfg.ema_rate,))  # warm-up: min(rate, (1 + step) / (10 + step))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    diff = VectorDiffusion(cfg.timesteps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    pick = torch.Generator().manual_seed(cfg.seed + 1)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.iters), desc="train-prior", unit="step")
    for step in bar:
        idx = torch.randint(0, len(x_all), (min(cfg.batch_size, len(x_all)),), generator=pick).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg.lr, step, cfg.iters)
        loss = diff.loss(model, x_all[idx], gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"train-prior: the loss became {loss.item()} at step {step}; lower prior.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, step)  # the 0-based step: the rates the prior has always used
        losses.append(float(loss.detach()))
        if step % 50 == 0 and bar.disable is False:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    meta = _meta(cfg, store, len(x_all), losses, time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    return save_prior(out, ema.models[cfg.ema_rate].cpu(), meta)


def _rows(store):
    """The store's view-0 features as a float32 tensor: finite (a NaN would end as a NaN loss
    blamed on the lr), at least two rows."""
    import torch

    x_all = torch.from_numpy(store.features(view=0))  # (N, D)
    if not bool(torch.isfinite(x_all).all()):
        bad = (~torch.isfinite(x_all).all(1)).nonzero().flatten()
        raise InvalidInput(
            f"{len(bad)} row(s) of the store {store.path} hold NaN or inf features (the first: "
            f"{store.keys[int(bad[0])]!r}); train the prior on finite ones: `rcdm store verify` names the damaged shards"
        )
    if len(x_all) < 2:
        raise InvalidInput(f"train-prior needs at least 2 store rows, {store.path} has {len(x_all)}")
    return x_all


def _meta(cfg: PriorConfig, store, n_train: int, losses: list[float], seconds: float) -> dict:
    """What prior.json records beside the network: the store, the training settings, the loss curve."""
    every = max(1, cfg.iters // 100)
    curve = [[i, float(np.mean(losses[i : i + every]))] for i in range(0, len(losses), every)]
    return {
        "store": str(store.path.resolve()),
        "store_manifest_sha256": store.manifest_sha256,
        "encoder": {**store.encoder_info, "layer": store.layer},
        "n_train": int(n_train),
        "iters": cfg.iters,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "lr_schedule": "warm-up 100, cosine",
        "ema_rate": cfg.ema_rate,
        "seed": cfg.seed,
        "sample_steps": cfg.sample_steps,
        "sample_eta": cfg.sample_eta,
        "final_loss": curve[-1][1],
        "loss_curve": curve,
        "seconds": round(seconds, 2),
        "created": now_iso(),
    }
