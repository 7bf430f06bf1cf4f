"""``rcdm train-prior``: fit the representation prior (:mod:`rcdm.prior`) to a feature store.

The store's features (view 0) are standardised per dimension with their own mean / std (kept in
the network's buffers), then the MLP learns to denoise them: AdamW, a 100-step linear warm-up
then a cosine decay of the learning rate to 0 at ``prior.iters``, an EMA of the weights (what is
saved and sampled). A store larger than 1 GiB of float32 (ImageNet's 1.28M x 2048 is 10 GB) is
streamed (:class:`PriorRows`): one pass for its statistics, its rows gathered per batch from a
memory-mapped scratch copy. The
defaults (width 512, 6 blocks, batch 128, 2000 steps: 11M parameters) train a 2048-d prior in
about 5 CPU minutes on one thread; docs/prior.md has the measurements and the ImageNet-scale
settings.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
from rcdm.config import PriorConfig, save_resolved
from rcdm.errors import InvalidInput, OutputExists
from rcdm.run.lock import holding_output_lock
from rcdm.store.stats import IN_MEMORY_BYTES, fits_in_memory, streamed_moments
from rcdm.train.ema import EMA
from rcdm.utils import now_iso

__all__ = ["train_prior"]


def _check(cfg: PriorConfig) -> None:
    if not cfg.store or not cfg.out:
        raise InvalidInput("train-prior needs prior.store and prior.out (--store, --out)")


def _fit(cfg: PriorConfig, model, rows: PriorRows, device) -> tuple[EMA, list[float]]:
    """``cfg.iters`` steps of AdamW on seeded batches of ``rows``; the EMA and the loss of each step."""
    import torch
    from rcdm.prior.model import VectorDiffusion
    from tqdm.auto import tqdm

    ema = EMA(model, (cfg.ema_rate,))  # warm-up: min(rate, (1 + step) / (10 + step))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    diff = VectorDiffusion(cfg.timesteps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    pick = torch.Generator().manual_seed(cfg.seed + 1)
    losses: list[float] = []
    bar = tqdm(range(cfg.iters), desc="train-prior", unit="step")
    for step in bar:
        idx = torch.randint(0, len(rows), (min(cfg.batch_size, len(rows)),), generator=pick).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg.lr, step, cfg.iters)
        loss = diff.loss(model, rows.batch(idx), gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"train-prior: the loss became {loss.item()} at step {step}; lower prior.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, step)  # the 0-based step: the rates the prior has always used
        losses.append(float(loss.detach()))
        if step % 50 == 0 and bar.disable is False:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return ema, losses


def lr_at(lr: float, step: int, iters: int, warmup: int = 100) -> float:
    """A linear warm-up over ``warmup`` steps, then a cosine decay from ``lr`` to 0 at ``iters``."""
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / iters))


@holding_output_lock("rcdm train-prior")  # one writer per prior folder
def train_prior(cfg: PriorConfig) -> Path:
    """Train on ``cfg.store``, write ``cfg.out`` (see :mod:`rcdm.run.priordir`); returns the folder."""
    import torch
    from rcdm.prior.model import PriorMLP, PriorSpec
    from rcdm.run.priordir import is_prior, save_prior
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device

    _check(cfg)
    out = Path(cfg.out)  # type: ignore[arg-type]
    if is_prior(out) and not cfg.overwrite:
        raise OutputExists(f"{out} already holds a trained prior; pass --overwrite to replace it, or another --out")
    store = FeatureStore(cfg.store)
    device = pick_device(cfg.device)
    rows = PriorRows(store, out, device)  # finite, at least two; in memory or streamed by size
    torch.manual_seed(cfg.seed)
    model = PriorMLP(PriorSpec(dim=store.dim, width=cfg.width, blocks=cfg.blocks, timesteps=cfg.timesteps))
    rows.standardise(model)  # sets model.mean / std / bound
    model.to(device).train()
    t0 = time.perf_counter()
    with contextlib.closing(rows):  # the streamed rows' scratch file goes, whatever happens
        ema, losses = _fit(cfg, model, rows, device)
    meta = _meta(cfg, store, len(rows), losses, time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    return save_prior(out, ema.models[cfg.ema_rate].cpu(), meta)


class PriorRows:
    """The prior's training rows (view 0), standardised: finite, at least two.

    A store whose rows fit :data:`~rcdm.store.stats.IN_MEMORY_BYTES` of float32 is held whole, as
    it always was. A larger one (ImageNet's 1.28M x 2048: 10 GB) is streamed: its statistics in
    one pass (:func:`~rcdm.store.stats.streamed_moments`), its rows copied once, in the store's
    dtype, into one memory-mapped scratch file in the output folder (one file handle; 5 GB of
    float16 at ImageNet's size, in the page cache rather than in the process), each batch gathered
    from it and standardised: the values the in-memory rows give."""

    def __init__(self, store, out: Path, device, in_memory_bytes: int | None = None) -> None:
        import torch

        self.store, self.device, self.scratch = store, device, None
        self.n = len(store)
        if self.n < 2:
            raise InvalidInput(f"train-prior needs at least 2 store rows, {store.path} has {self.n}")
        self.whole = None
        if fits_in_memory(store, 0, IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes):
            self.whole = torch.from_numpy(store.features(view=0))  # (N, D) float32, standardised in place
            _check_finite(store, self.whole)
            return
        out.mkdir(parents=True, exist_ok=True)
        self.scratch = out / SCRATCH
        self.rows = np.lib.format.open_memmap(self.scratch, mode="w+", dtype=store.dtype, shape=(self.n, store.dim))
        try:
            for s, block in store.iter_features(view=0):
                _check_finite(store, torch.from_numpy(block), s)
                self.rows[s : s + len(block)] = block  # the stored values: float16 -> float32 -> float16 is exact
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self.n

    def standardise(self, model) -> None:
        """Set ``model``'s mean, std and bound (the largest standardised magnitude) from the rows."""
        import torch

        if self.whole is not None:
            model.mean.copy_(self.whole.mean(0))
            model.std.copy_(self.whole.std(0).clamp_min(1e-6))
            self.whole = self.whole.sub_(model.mean).div_(model.std).to(self.device)
            model.bound.fill_(float(self.whole.abs().max()))
            return
        mean, std = streamed_moments(self.store, 0)
        model.mean.copy_(torch.from_numpy(mean))
        model.std.copy_(torch.from_numpy(std).float().clamp_min(1e-6))
        self.mean, self.std = model.mean.clone(), model.std.clone()
        bound = 0.0
        for s in range(0, self.n, 65536):
            x = torch.from_numpy(self.rows[s : s + 65536].astype(np.float32))
            bound = max(bound, float(x.sub_(self.mean).div_(self.std).abs().max()))
        model.bound.fill_(bound)

    def batch(self, idx):
        """The standardised rows ``idx`` (a tensor on the device), (B, D) float32 on the device."""
        import torch

        if self.whole is not None:
            return self.whole[idx]
        x = torch.from_numpy(self.rows[idx.cpu().numpy()].astype(np.float32))
        return x.sub_(self.mean).div_(self.std).to(self.device)

    def close(self) -> None:
        """Remove the scratch file (the rows stay in the store)."""
        if self.scratch is not None:
            self.rows = None
            self.scratch.unlink(missing_ok=True)


SCRATCH = ".prior-rows.npy"  # the streamed rows' scratch file in --out, removed when training ends


def _check_finite(store, x, first_row: int = 0) -> None:
    """Rows ``x`` (from ``first_row``) are finite: a NaN would end as a NaN loss blamed on the lr."""
    import torch

    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x).all(1)).nonzero().flatten()
        raise InvalidInput(
            f"{len(bad)} row(s) of the store {store.path} hold NaN or inf features (the first: "
            f"{store.keys[first_row + int(bad[0])]!r}); train the prior on finite ones: `rcdm store verify` names the "
            "damaged shards"
        )


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
