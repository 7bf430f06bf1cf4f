"""The model a run trains: its config from the preset and the store, its ``model.json``, the
checks of the store and ``--init-from``, the initial weights, and the ``cond_image`` map fitted
and frozen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rcdm.config import PAPER_DIFFUSION, TrainConfig
from rcdm.diffusion.gaussian import DIFFUSION_STEPS
from rcdm.errors import InvalidInput, MissingInput
from rcdm.model.config import UNetConfig, preset
from rcdm.run.conditioning import check_conditioning
from rcdm.store import FeatureStore
from rcdm.store.stats import IN_MEMORY_BYTES, fits_in_memory, streamed_moments
from rcdm.train import condimage

if TYPE_CHECKING:
    from rcdm.train.data import ImageFeatureDataset

# Fields that fix the weights' shapes: an --init-from checkpoint must agree on all of them.
_ARCH_FIELDS = (
    "image_size",
    "model_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_resolutions",
    "in_channels",
    "out_channels",
    "use_scale_shift_norm",
    "resblock_updown",
    "cond",
    "cond_dim",
    "cbn_dim",
    "cond_norm",
    "cond_tokens",
    "xattn_dim",
    "cond_image",
)


def unet_config(cfg: TrainConfig, cond_dim: int, cond_tokens: int = 0) -> UNetConfig:
    """The preset, conditioned on ``cond_dim``-d features (a tokens store: ``cond_tokens``
    tokens stored flat), with the config's overrides."""
    return preset(
        cfg.preset,
        cond=cfg.cond,
        cond_dim=cond_dim,
        cond_tokens=cond_tokens,
        image_size=cfg.resolution,
        dropout=cfg.dropout,
        schedule=None if cfg.schedule == "default" else cfg.schedule,
        cond_norm=cfg.cond_norm,
        cond_image=cfg.cond_image,
    )


def check_store(store: FeatureStore, cfg: TrainConfig) -> None:
    """Refuse a store made with another encoder / layer than the config asks for."""
    if cfg.encoder is not None or cfg.layer is not None:
        try:
            store.check_compatible(encoder=cfg.encoder, layer=cfg.layer)
        except ValueError as e:
            raise InvalidInput(
                f"{e}; train.encoder={cfg.encoder!r} train.layer={cfg.layer!r} ask for another "
                "store: pass the store made with them, or change train.encoder / train.layer"
            ) from None


def model_meta(ucfg: UNetConfig, store: FeatureStore, cfg: TrainConfig, kimg: float) -> dict:
    """``<run>/model.json``: everything needed to rebuild and use the model, and what its
    conditions are (the store's encoder and preprocessing: ``rcdm.run.conditioning``)."""
    return {
        "unet": ucfg.to_dict(),
        "diffusion": {
            "schedule": ucfg.schedule,
            "steps": DIFFUSION_STEPS,
            "learn_sigma": ucfg.learn_sigma,
            **recipe_meta(cfg),
        },
        "encoder": store.encoder_info,
        "preprocess": store.manifest.get("preprocess"),
        "store_manifest_sha256": store.manifest_sha256,
        "ema_rates": list(cfg.ema_rates),
        "cond_drop": cfg.cond_drop,  # > 0: trained for classifier-free guidance
        "kimg": kimg,
    }


def recipe_meta(cfg: TrainConfig) -> dict:
    """The diffusion options a sampler must know, recorded only when they depart from the
    paper's (so a paper-recipe run's model.json is what it always was)."""
    return {k: getattr(cfg, k) for k, paper in PAPER_DIFFUSION.items() if getattr(cfg, k) != paper}


def _diff(a: dict, b: dict, fields: tuple[str, ...]) -> str:
    keys = fields
    parts = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if _norm(a.get(k)) != _norm(b.get(k))]
    return ", ".join(parts)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def build_net(cfg: TrainConfig, ucfg: UNetConfig, store: FeatureStore, fresh: bool):
    """The UNet to train. A fresh run starts from ``--init-from`` or, for a model that
    standardises its condition, with the store's feature statistics; a resumed one gets its
    weights from the checkpoint."""
    from rcdm.model.unet import UNetModel
    from rcdm.model.weights import load_state_dict_strict

    net = UNetModel(ucfg)
    if fresh and cfg.init_from:
        load_state_dict_strict(net, load_init(cfg, ucfg, store))
    elif fresh and hasattr(net, "cond_norm"):
        # both views: the model sees either, as the flip picks one
        net.cond_norm.set_moments(*condition_statistics(store))
    return net


def condition_statistics(
    store: FeatureStore, in_memory_bytes: int = IN_MEMORY_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) (D,) float32 of the store's features over both views: the model sees either,
    as the flip picks one. A store larger than ``in_memory_bytes`` of float32 is streamed
    (:mod:`rcdm.store.stats`); a smaller one is reduced whole, as it always was."""
    if not fits_in_memory(store, None, in_memory_bytes):
        mean, std = streamed_moments(store, None)
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    feats = torch.from_numpy(store.features(None).reshape(-1, store.dim))
    return feats.mean(0), feats.std(0)


def fit_and_freeze_cond_image(
    net: torch.nn.Module,
    cfg: TrainConfig,
    ucfg: UNetConfig,
    dataset: ImageFeatureDataset,
    fresh: bool,
    workers: int,
    show: bool,
) -> None:
    """The ``cond_image`` map of the UNet ``build_net`` made (when ``ucfg.cond_image``): fitted on
    the training images ``dataset`` (``rcdm.train.condimage``; ``workers`` loader processes) in a
    fresh run that ``--init-from`` does not give it, then frozen in every run. ``show``: the
    main process, which shows the fit's progress and says what it fitted. Call it before the
    EMA copies the weights and before the optimizer is made (it takes the trainable parameters)."""
    if condimage.wanted(ucfg, fresh=fresh, init_from=cfg.init_from):
        said = condimage.fit(net, dataset, cfg.seed, workers, show=show)
        if show:
            print(said)
    if ucfg.cond_image:
        # the fitted map stays fixed: Adam at the UNet's learning rate turned the fitted image into
        # noise in a few hundred steps and lost what it knew (docs/recipes.md)
        net.cond_image_map.requires_grad_(False)


def load_init(cfg: TrainConfig, ucfg: UNetConfig, store: FeatureStore) -> dict:
    """The state dict of ``cfg.init_from`` after checking it fits ``ucfg`` and the store.

    Accepts an official RCDM / ADM ``.pt``, one of our safetensors files, or a run directory
    (``rcdm.run.models.load_model`` reads all three; official checkpoints carry no encoder).
    """
    from rcdm.run.models import load_model

    path = Path(cfg.init_from)
    if not path.exists():
        raise MissingInput(f"--init-from {path} does not exist")
    model, meta = load_model(str(path), ema="auto", device="cpu", trust_checkpoint=cfg.trust_checkpoint)
    # its conditioning layers were trained on its store's features: this store must hold the same
    check_conditioning(meta, store, what=f"--init-from {path}")
    theirs = meta.get("unet") or model.cfg.to_dict()
    diff = _diff(theirs, ucfg.to_dict(), _ARCH_FIELDS)
    if diff:
        raise InvalidInput(
            f"--init-from {path} has another architecture than preset {cfg.preset!r} with "
            f"cond {cfg.cond!r} ({diff}); pick the matching --preset / --cond"
        )
    return model.state_dict()
