"""Faithfulness while training: every ``train.eval_kimg``, sample a fixed held-out set of
conditions with the EMA model, re-encode the samples and log mean rank / MRR (and chance).

The conditions are ``train.eval_conditions`` rows of ``train.val_store`` picked with
``train.seed``; each gets one sample from a fixed seed, so successive checks differ only by the
weights. Ranks are those of ``rcdm evaluate`` (:mod:`rcdm.faithfulness`): the condition's rank
among every row of the validation store, by the distance of the re-encoded sample. With a null
condition (``train.cond_drop`` > 0) the check runs unguided and at ``train.eval_guidance``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rcdm.config import Sampler, TrainConfig
from rcdm.errors import MissingInput
from rcdm.faithfulness import (
    chance_mean_rank,
    chance_mrr,
    prepare_reference,
    rank_summary,
    reencode_ranks,
)

# Separates the check's sample seeds from the grids' (seed * 1_000_003 + i).
_SEED_OFFSET = 500_000


def check_nimg(cfg: TrainConfig) -> int:
    """Images between checks: ``eval_kimg``, or ``checkpoint_kimg`` when 0."""
    kimg = cfg.eval_kimg if cfg.eval_kimg > 0 else cfg.checkpoint_kimg
    return max(1, int(round(kimg * 1000)))


def samplers(cfg: TrainConfig) -> list[Sampler]:
    """The check's samplers: unguided always; and guided, in ``eval_guidance_interval``, when the
    model has a null condition."""
    g = cfg.grid_guidance if cfg.eval_guidance is None else cfg.eval_guidance
    scales = [1.0] + ([float(g)] if cfg.cond_drop > 0 and g != 1.0 else [])
    return [Sampler(cfg.eval_steps, guidance=s, guidance_interval=cfg.eval_guidance_interval) for s in scales]


def keys_for(g: float) -> str:
    """Log-key suffix of a guidance scale: "" unguided, "_g5" for guidance 5."""
    return "" if g == 1.0 else f"_g{g:g}".replace(".", "p")


class FaithCheck:
    """The fixed conditions, seeds, encoder and reference features of one run's check."""

    def __init__(self, cfg: TrainConfig, meta: dict, device: torch.device) -> None:
        from rcdm.diffusion.generate import diffusion_for
        from rcdm.encoders.build import encoder_from_info
        from rcdm.run.conditioning import check_conditioning
        from rcdm.store import FeatureStore

        path = Path(str(cfg.val_store))
        if not path.exists():
            raise MissingInput(
                f"train.val_store {path} does not exist; pass an extracted validation store, or "
                "turn the check off with --set train.eval_conditions=0"
            )
        store = FeatureStore(path)
        check_conditioning(meta, store, what=f"the run (train.val_store {path})")
        features = store.features(view=0)  # (N, D) float32
        n = min(max(1, cfg.eval_conditions), len(store))
        rng = np.random.default_rng(cfg.seed)
        self.rows = np.sort(rng.choice(len(store), n, replace=False))  # (n,) held-out rows
        self.conds = features[self.rows]  # (n, D)
        # On the device and centred once, not again at every check (50k x 2048: a 400 MB copy).
        self.reference = prepare_reference(features, device)
        self.seeds = cfg.seed * 1_000_003 + _SEED_OFFSET + np.arange(n)
        self.preprocess = store.preprocess
        self.encoder = encoder_from_info(store.encoder_info, trust_checkpoint=cfg.trust_checkpoint).to(device).eval()
        store.close()
        self.diffusion = diffusion_for(meta, cfg.eval_steps)
        self.samplers = samplers(cfg)
        self.device = device
        self.store_path = str(path)

    def describe(self) -> str:
        gs = ", ".join("unguided" if not s.guided else f"guidance {s.guidance:g}" for s in self.samplers)
        return (
            f"faithfulness check: {len(self.rows)} conditions of {self.store_path} "
            f"(N = {len(self.reference)}), {self.diffusion.num_timesteps} steps, {gs}"
        )

    @torch.no_grad()
    def run(self, model: torch.nn.Module, mixed_precision: str) -> dict:
        """``{"eval_mean_rank": ..., "eval_mrr": ..., "eval_mrr_g5": ..., "eval_chance_mrr": ...}``."""
        from rcdm.diffusion.generate import generate

        t0 = time.perf_counter()
        out: dict = {}
        n_ref = len(self.reference)
        for sampler in self.samplers:
            images = generate(
                model,
                self.diffusion,
                self.conds,
                self.seeds,
                sampler,
                batch_size=64,
                device=self.device,
                progress=False,
                mixed_precision=mixed_precision,
            )
            ranks = reencode_ranks(self.encoder, images, self.preprocess, self.reference, self.rows, device=self.device)
            s = rank_summary(ranks, n_ref)
            out[f"eval_mean_rank{keys_for(sampler.guidance)}"] = s["mean_rank"]
            out[f"eval_mrr{keys_for(sampler.guidance)}"] = s["mrr"]
        out.update(
            eval_chance_mean_rank=chance_mean_rank(n_ref),
            eval_chance_mrr=chance_mrr(n_ref),
            eval_n=len(self.rows),
            eval_N=n_ref,
            eval_sec=time.perf_counter() - t0,
        )
        return out


def make_check(cfg: TrainConfig, meta: dict, device: torch.device) -> tuple[FaithCheck | None, str]:
    """The run's check, or None and why not (said once in the training output). A store derived
    from data.val that was not extracted is skipped; one given explicitly must exist."""
    if cfg.eval_conditions <= 0:
        return None, "faithfulness check off (train.eval_conditions=0)"
    if not cfg.val_store:
        return None, "no faithfulness check during training: no train.val_store (set it, or data.val)"
    derived = cfg.derived("val_store", unknown=False)
    if derived and not Path(cfg.val_store).exists():
        return (
            None,
            f"no faithfulness check during training: {cfg.val_store} (derived from data.val) is not extracted yet",
        )
    check = FaithCheck(cfg, meta, device)
    return check, check.describe()
