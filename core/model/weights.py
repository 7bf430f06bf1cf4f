"""Model weights files: our safetensors + JSON files, official ``.pt`` files.

Formats read by :func:`load_file` (a run folder, which names one of these files and holds its
``model.json``, is read by :func:`rcdm.run.models.load_model`):

- one of our safetensors files: the meta dict is stored in the file's header (key
  ``rcdm_meta``) and beside it as ``<file>.json`` (:func:`meta_path`);
- an official guided-diffusion / RCDM ``.pt`` state dict (``rcdm_ema_dino_trunk.pt``, ADM
  ``256x256_diffusion_uncond.pt`` ...): read with ``weights_only=True``, architecture inferred
  from the keys and shapes.

Loading is strict everywhere: a missing, unexpected or mis-shaped key is a ``ValueError`` naming
it; nothing is ever left at its random initialisation.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rcdm.diffusion.gaussian import DIFFUSION_STEPS
from rcdm.errors import InvalidInput, first_line
from rcdm.model.config import UNetConfig, config_from_state_dict
from rcdm.model.unet import UNetModel
from rcdm.statedict import load_strict, strip_prefixes
from rcdm.torchload import load_weights_only
from rcdm.utils import atomic_write_json, read_json

META_KEY = "rcdm_meta"  # safetensors header entry holding the meta dict as JSON


# -- writing ---------------------------------------------------------------------------------
def meta_path(weights: str | Path) -> Path:
    """The JSON written beside a weights file: ``<file>.json`` (a run folder's weights files each
    have one; :class:`rcdm.run.rundir.RunDir` copies them together)."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".json")


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: dict) -> Path:
    """Write ``state_dict`` as safetensors at ``path`` and ``meta`` as ``<path>.json``.

    Both atomically (temporary name, then rename); the meta JSON is written first so a reader
    that finds the weights also finds their description. The meta is also stored inside the
    safetensors header, so the weights file alone is enough to rebuild the model.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        meta_json = json.dumps(meta)
    except TypeError as e:
        raise InvalidInput(f"checkpoint meta for {path} is not JSON-serialisable: {e}") from None
    tensors, storages = {}, set()
    for k, v in strip_prefixes(state_dict).items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (views of one flat buffer): copy those
        if ptr in storages or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.clone()
        storages.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    atomic_write_json(meta_path(path), meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={META_KEY: meta_json, "format": "pt"})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# -- strict state-dict loading ---------------------------------------------------------------
def load_state_dict_strict(
    model: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    assign: bool = False,
) -> torch.nn.Module:
    """Load ``sd`` into ``model`` (in place) or raise InvalidInput naming every bad key
    (:func:`rcdm.statedict.load_strict`, with the UNet's architecture in the hint).

    ``assign=True`` adopts the tensors themselves (for a model built on the meta device).
    """
    arch = getattr(model, "cfg", None)
    hint = (
        f"The model is {_describe(arch)}; the checkpoint was made for another architecture "
        "or conditioning: pick the matching preset / --cond, or let the architecture be "
        "inferred from the checkpoint"
        if isinstance(arch, UNetConfig)
        else ""
    )
    return load_strict(model, strip_prefixes(sd), source, hint=hint, assign=assign)


def _describe(cfg: UNetConfig) -> str:
    return (
        f"{cfg.image_size}px, {cfg.model_channels} channels, mult {list(cfg.channel_mult)}, "
        f"{cfg.num_res_blocks} res blocks, cond {cfg.cond!r} (dim {cfg.cond_dim})"
    )


# -- reading files ---------------------------------------------------------------------------
def read_official(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a guided-diffusion / RCDM ``.pt`` file, read without pickle."""
    path = Path(path)
    # the one rule for files that need pickle (UntrustedCheckpoint) and damaged files
    obj = load_weights_only(path, trust_checkpoint=trust_checkpoint, fix="download it again")
    sd = _unwrap(obj, path)
    return {k: v.float() if v.is_floating_point() else v for k, v in strip_prefixes(sd).items()}


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or one nested under a usual key ("state_dict", "model", "ema")."""
    if isinstance(obj, Mapping):
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return dict(obj)
        for key in ("ema", "state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return dict(inner)
        raise InvalidInput(f"{path} is not a model state dict (top-level keys: {', '.join(sorted(map(str, obj))[:8])})")
    raise InvalidInput(f"{path} holds a {type(obj).__name__}, not a model state dict")


def read_meta(path: str | Path) -> dict:
    """The meta of one of our safetensors files, without its tensors: the header's, else the JSON
    beside it ({} when it has neither)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise InvalidInput(f"{path} is truncated or not a safetensors file ({first_line(e)})") from None
    if META_KEY in header:
        return json.loads(header[META_KEY])
    return read_json(meta_path(path)) if meta_path(path).exists() else {}


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of one of our safetensors files (meta {} if it has none)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # one open: header and tensors
            header = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError) as e:
        raise InvalidInput(f"{path} is truncated or not a safetensors file ({first_line(e)})") from None
    meta: dict = {}
    if META_KEY in header:
        meta = json.loads(header[META_KEY])
    elif meta_path(path).exists():
        meta = read_json(meta_path(path))
    return sd, meta


def _official_meta(cfg: UNetConfig, path: Path) -> dict:
    meta: dict[str, Any] = {
        "unet": cfg.to_dict(),
        "diffusion": {"schedule": cfg.schedule, "steps": DIFFUSION_STEPS, "learn_sigma": cfg.learn_sigma},
        "encoder": None,  # official checkpoints do not record it
        "store_manifest_sha256": None,
        "ema_rate": None,
        "kimg": None,
        "source": {"kind": "official", "path": str(path)},
    }
    # rcdm_ema_{simclr,barlow,vicreg,dino}_{trunk,head}.pt name their encoder: a hint only
    # (rcdm.run.conditioning compares it with a store's encoder)
    m = re.match(r"rcdm_ema_([a-z]+?)(?:_(trunk|head))?\.pt$", path.name)
    if m:
        meta["encoder_hint"] = {"name": m.group(1), "layer": m.group(2) or "trunk"}
    return meta


def build_model(
    cfg: UNetConfig, sd: Mapping[str, torch.Tensor], source: str, device: str | torch.device = "cpu"
) -> UNetModel:
    """A UNetModel holding exactly ``sd`` (built on the meta device: no wasted random init)."""
    with torch.device("meta"):
        model = UNetModel(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in strip_prefixes(sd).items()}
    load_state_dict_strict(model, sd, source=source, assign=True)
    return model.to(device).eval()


def load_file(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    image_size: int | None = None,
    meta: dict | None = None,
) -> tuple[UNetModel, dict]:
    """(model in eval mode on ``device``, meta) from one of our safetensors files or an official
    guided-diffusion / RCDM ``.pt`` state dict. ``meta``: what the run folder holding the file says
    of it (``rcdm.run.models.load_model`` reads folders), over the file's own. ``image_size`` is only
    needed for an official checkpoint of an unknown architecture."""
    path = Path(path)
    if path.suffix != ".safetensors":
        sd = read_official(path, trust_checkpoint)
        try:
            cfg = config_from_state_dict(sd, image_size=image_size)
        except KeyError as e:
            raise InvalidInput(f"{path}: cannot infer the architecture, key {e} is missing") from None
        except ValueError as e:
            raise InvalidInput(f"{path}: {e} (load_model(..., image_size=N))") from None
        return build_model(cfg, sd, str(path), device), _official_meta(cfg, path)
    sd, own = read_safetensors(path)
    # the folder's model.json over the file's own record; the EMA rate is the file's
    meta = own if meta is None else {**own, **meta, "ema_rate": own.get("ema_rate")}
    if meta.get("unet"):
        cfg = UNetConfig.from_dict(meta["unet"])
    else:
        cfg = config_from_state_dict(sd, image_size=image_size)
        meta = {**meta, "unet": cfg.to_dict()}
    meta = {**meta, "source": {"kind": "rcdm", "path": str(path)}}
    return build_model(cfg, sd, str(path), device), meta
