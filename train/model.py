"""The model a run trains: its config from the preset and the store, the consistency checks
between the store, the run directory and ``--init-from``, and the initial weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rcdm.app.config import TrainConfig
from rcdm.diffusion.gaussian import DIFFUSION_STEPS
from rcdm.errors import InvalidInput, MissingInput
from rcdm.model.config import UNetConfig, preset
from rcdm.store import FeatureStore
from rcdm.utils import read_json

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
)


def unet_config(cfg: TrainConfig, cond_dim: int) -> UNetConfig:
    """The preset, conditioned on ``cond_dim``-d features, with the config's overrides."""
    return preset(
        cfg.preset,
        cond=cfg.cond,
        cond_dim=cond_dim,
        image_size=cfg.resolution,
        dropout=cfg.dropout,
        schedule=None if cfg.schedule == "default" else cfg.schedule,
        cond_norm=cfg.cond_norm,
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
    """``<run>/model.json``: everything needed to rebuild and use the model."""
    return {
        "unet": ucfg.to_dict(),
        "diffusion": {
            "schedule": ucfg.schedule,
            "steps": DIFFUSION_STEPS,
            "learn_sigma": ucfg.learn_sigma,
        },
        "encoder": store.encoder_info,
        "store_manifest_sha256": store.manifest_sha256,
        "ema_rates": list(cfg.ema_rates),
        "cond_drop": cfg.cond_drop,  # > 0: trained for classifier-free guidance
        "kimg": kimg,
    }


def check_run_dir(run: Path, meta: dict, store: FeatureStore) -> None:
    """A run directory that already holds a run must be the same model on the same store."""
    path = run / "model.json"
    if not path.exists():
        return
    old = read_json(path)
    fix = "use a new --out, or the store and settings the run was started with"
    if old.get("store_manifest_sha256") != meta["store_manifest_sha256"]:
        raise InvalidInput(
            f"run {run} was trained on a store with manifest sha256 "
            f"{str(old.get('store_manifest_sha256'))[:12]}..., but {store.path} has "
            f"{meta['store_manifest_sha256'][:12]}...; {fix}"
        )
    diff = _diff(old.get("unet", {}), meta["unet"])
    if diff:
        raise InvalidInput(f"run {run} holds a model with other settings ({diff}); {fix}")
    if list(old.get("ema_rates", [])) != meta["ema_rates"]:
        raise InvalidInput(
            f"run {run} keeps EMA rates {old.get('ema_rates')}, not {meta['ema_rates']}; {fix}"
        )


def _diff(a: dict, b: dict, fields: tuple[str, ...] | None = None) -> str:
    keys = fields or tuple(sorted(set(a) | set(b)))
    parts = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if _norm(a.get(k)) != _norm(b.get(k))]
    return ", ".join(parts)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def load_init(cfg: TrainConfig, ucfg: UNetConfig, store: FeatureStore) -> dict:
    """The state dict of ``cfg.init_from`` after checking it fits ``ucfg`` and the store.

    Accepts an official RCDM / ADM ``.pt``, one of our safetensors files, or a run directory
    (``rcdm.model.weights.load_model`` reads all three; official checkpoints carry no encoder).
    """
    from rcdm.model.weights import load_model

    path = Path(cfg.init_from)
    if not path.exists():
        raise MissingInput(f"--init-from {path} does not exist")
    model, meta = load_model(str(path), ema="auto", device="cpu", trust_checkpoint=cfg.trust_checkpoint)
    theirs = meta.get("unet") or model.cfg.to_dict()
    if theirs.get("cond") != "none" and int(theirs.get("cond_dim", 0)) != store.dim:
        raise InvalidInput(
            f"--init-from {path} is conditioned on {theirs.get('cond_dim')}-d features, but store "
            f"{store.path} has {store.dim}-d features ({store.encoder_info.get('name')}/"
            f"{store.layer}); use a store made with the checkpoint's encoder and layer"
        )
    enc = meta.get("encoder")
    if enc:
        mine = store.encoder_info
        for key in ("name", "layer"):
            if enc.get(key) is not None and enc.get(key) != mine.get(key):
                raise InvalidInput(
                    f"--init-from {path} was trained on encoder {enc.get('name')}/"
                    f"{enc.get('layer')}, but store {store.path} holds {mine.get('name')}/"
                    f"{mine.get('layer')}; use a store made with the checkpoint's encoder and layer"
                )
    diff = _diff(theirs, ucfg.to_dict(), _ARCH_FIELDS)
    if diff:
        raise InvalidInput(
            f"--init-from {path} has another architecture than preset {cfg.preset!r} with "
            f"cond {cfg.cond!r} ({diff}); pick the matching --preset / --cond"
        )
    return model.state_dict()
