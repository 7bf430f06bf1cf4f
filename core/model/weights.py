"""Model weights on disk: our safetensors + JSON files, run directories, official ``.pt`` files.

Formats read by :func:`load_model`:

- a run directory written by ``rcdm train``: ``<run>/model.json`` (``{"unet": UNetConfig dict,
  "diffusion": {...}, "encoder": {...}, "store_manifest_sha256", "ema_rates", "kimg"}``) beside
  ``<run>/ema.safetensors``; also a checkpoint folder ``checkpoints/step-N/`` with
  ``model.safetensors`` and ``ema-<rate>.safetensors``;
- one of our safetensors files: the meta dict is stored in the file's header (key
  ``rcdm_meta``) and beside it as ``<file>.json``;
- an official guided-diffusion / RCDM ``.pt`` state dict (``rcdm_ema_dino_trunk.pt``, ADM
  ``256x256_diffusion_uncond.pt`` ...): read with ``weights_only=True``, architecture inferred
  from the keys and shapes.

Loading is strict everywhere: a missing, unexpected or mis-shaped key is a ``ValueError`` naming
it; nothing is ever left at its random initialisation.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rcdm.diffusion.gaussian import DIFFUSION_STEPS
from rcdm.errors import InvalidInput, MissingInput
from rcdm.model.config import UNetConfig, config_from_state_dict
from rcdm.model.unet import UNetModel
from rcdm.utils import atomic_write_json, read_json, state_dict_diff

META_KEY = "rcdm_meta"  # safetensors header entry holding the meta dict as JSON
RUN_META = "model.json"
RUN_WEIGHTS = "ema.safetensors"
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


# -- writing ---------------------------------------------------------------------------------
def meta_path(weights: str | Path) -> Path:
    """The JSON written beside a weights file: ``<file>.json``."""
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
def strip_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes from every key."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def state_dict_problems(model: torch.nn.Module, sd: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between ``sd`` and the model's own state dict (empty: fits)."""
    missing, unexpected, misshaped = state_dict_diff(model.state_dict(), sd)
    shapes = [f"{k}: checkpoint {theirs} vs model {ours}" for k, theirs, ours in misshaped]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped: {_listing(shapes, 4)}")
    return problems


def load_state_dict_strict(
    model: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    assign: bool = False,
) -> torch.nn.Module:
    """Load ``sd`` into ``model`` (in place) or raise ``ValueError`` naming every bad key.

    ``assign=True`` adopts the tensors themselves (for a model built on the meta device).
    """
    sd = strip_prefixes(sd)
    problems = state_dict_problems(model, sd)
    if problems:
        arch = getattr(model, "cfg", None)
        hint = (
            f" The model is {_describe(arch)}; the checkpoint was made for another architecture "
            "or conditioning: pick the matching preset / --cond, or let the architecture be "
            "inferred from the checkpoint."
            if isinstance(arch, UNetConfig)
            else ""
        )
        raise InvalidInput(f"{source} does not fit the model: " + "; ".join(problems) + "." + hint)
    model.load_state_dict(sd, strict=True, assign=assign)
    return model


def _describe(cfg: UNetConfig) -> str:
    return (
        f"{cfg.image_size}px, {cfg.model_channels} channels, mult {list(cfg.channel_mult)}, "
        f"{cfg.num_res_blocks} res blocks, cond {cfg.cond!r} (dim {cfg.cond_dim})"
    )


# -- reading files ---------------------------------------------------------------------------
def read_official(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a guided-diffusion / RCDM ``.pt`` file, read without pickle."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path} is empty: the download or copy did not finish")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise InvalidInput(
                f"{path} is truncated or not a PyTorch checkpoint ({_first_line(e)})"
            ) from None
        if not trust_checkpoint:
            raise InvalidInput(
                f"{path} holds pickled Python objects, not only tensors, and loading it would run "
                "code from the file. Pass --trust-checkpoint (trust_checkpoint=True) only if you "
                "trust its source."
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - any failure here means an unreadable file
            raise InvalidInput(f"{path} could not be read ({_first_line(e2)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise InvalidInput(
            f"{path} is truncated or not a PyTorch checkpoint ({_first_line(e)}); download it again"
        ) from None
    sd = _unwrap(obj, path)
    return {k: v.float() if v.is_floating_point() else v for k, v in strip_prefixes(sd).items()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or one nested under a usual key ("state_dict", "model", "ema")."""
    if isinstance(obj, Mapping):
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return dict(obj)
        for key in ("ema", "state_dict", "model", "net"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(torch.is_tensor(v) for v in inner.values())
            ):
                return dict(inner)
        raise InvalidInput(
            f"{path} is not a model state dict (top-level keys: {_listing(sorted(map(str, obj)))})"
        )
    raise InvalidInput(f"{path} holds a {type(obj).__name__}, not a model state dict")


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of one of our safetensors files (meta {} if it has none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        sd = load_file(str(path), device="cpu")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise InvalidInput(
            f"{path} is truncated or not a safetensors file ({_first_line(e)})"
        ) from None
    meta: dict = {}
    if META_KEY in header:
        meta = json.loads(header[META_KEY])
    elif meta_path(path).exists():
        meta = read_json(meta_path(path))
    elif (path.parent / RUN_META).exists():
        meta = read_json(path.parent / RUN_META)
    return sd, meta


def _ema_file(folder: Path, ema: Any) -> Path:
    """The weights file in a run / checkpoint folder for the ``ema`` choice."""
    have = sorted(p.name for p in folder.glob("*.safetensors"))
    want_raw = ema in (False, "no", "none", "raw", "model")
    if ema in ("auto", True, "yes") or ema is None:
        if (folder / RUN_WEIGHTS).exists():
            return folder / RUN_WEIGHTS
        emas = sorted(folder.glob("ema-*.safetensors"))
        rates = (
            read_json(folder / RUN_META).get("ema_rates") if (folder / RUN_META).exists() else None
        )
        if emas and rates:  # the run's first EMA rate, as the run-level ema.safetensors
            return _ema_file(folder, rates[0])
        if emas:
            return emas[0]
        if (folder / "model.safetensors").exists():
            return folder / "model.safetensors"
    elif want_raw:
        if (folder / "model.safetensors").exists():
            return folder / "model.safetensors"
    else:
        try:
            rate = float(ema)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"ema={ema!r}: expected 'auto', 'no' or an EMA rate like 0.9999"
            ) from None
        for p in folder.glob("ema-*.safetensors"):
            m = re.fullmatch(r"ema-(.+)\.safetensors", p.name)
            if m and _float_or_none(m.group(1)) == rate:
                return p
        if (folder / RUN_WEIGHTS).exists() and meta_rate(folder / RUN_WEIGHTS) == rate:
            return folder / RUN_WEIGHTS
    raise MissingInput(
        f"no weights for ema={ema!r} in {folder} (it has: {', '.join(have) or 'no .safetensors files'}); "
        "pass a run directory written by rcdm train, a checkpoints/step-N folder, or a weights file"
    )


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def meta_rate(weights: Path) -> float | None:
    p = meta_path(weights)
    return read_json(p).get("ema_rate") if p.exists() else None


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
    m = re.match(r"rcdm_ema_([a-z]+?)(?:_(trunk|head))?\.pt$", path.name)
    if m:
        meta["encoder_hint"] = {"name": m.group(1), "layer": m.group(2) or "trunk"}
    return meta


def encoder_hint_conflict(meta: Mapping[str, Any], info: Mapping[str, Any]) -> str | None:
    """For an official checkpoint named for an encoder (``rcdm_ema_dino_trunk.pt``), a description
    of that encoder when it is not the one ``info`` describes; None when they agree or there is
    no hint. Checkpoints that record their encoder are checked against it instead."""
    hint = meta.get("encoder_hint") or {}
    if not hint or meta.get("encoder"):
        return None
    same = str(info.get("name", "")).startswith(str(hint.get("name"))) and hint.get("layer") == info.get("layer")
    return None if same else f"{hint.get('name')} ({hint.get('layer')})"


def build_model(
    cfg: UNetConfig, sd: Mapping[str, torch.Tensor], source: str, device: str | torch.device = "cpu"
) -> UNetModel:
    """A UNetModel holding exactly ``sd`` (built on the meta device: no wasted random init)."""
    with torch.device("meta"):
        model = UNetModel(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in strip_prefixes(sd).items()}
    load_state_dict_strict(model, sd, source=source, assign=True)
    return model.to(device).eval()


def load_model(
    path: str | Path,
    *,
    ema: Any = "auto",
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    image_size: int | None = None,
) -> tuple[UNetModel, dict]:
    """(model in eval mode on ``device``, meta) from a run directory, a checkpoint folder, one of
    our safetensors files, or an official guided-diffusion / RCDM ``.pt`` state dict.

    ``ema``: "auto" (the run's EMA weights, else the raw model), "no" (the raw weights of a
    checkpoint folder), or a rate such as 0.9999. ``image_size`` is only needed for an official
    checkpoint of an unknown architecture.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInput(
            f"checkpoint {path} does not exist: pass a run directory, a .safetensors file or an "
            "official RCDM / ADM .pt file"
        )
    if path.is_dir():
        weights = _ema_file(path, ema)
        sd, meta = read_safetensors(weights)
        if (path / RUN_META).exists():
            meta = {**meta, **read_json(path / RUN_META), "ema_rate": meta.get("ema_rate")}
    elif path.suffix == ".safetensors":
        weights = path
        sd, meta = read_safetensors(path)
    else:
        sd = read_official(path, trust_checkpoint)
        try:
            cfg = config_from_state_dict(sd, image_size=image_size)
        except KeyError as e:
            raise InvalidInput(f"{path}: cannot infer the architecture, key {e} is missing") from None
        except ValueError as e:
            raise InvalidInput(f"{path}: {e} (load_model(..., image_size=N))") from None
        return build_model(cfg, sd, str(path), device), _official_meta(cfg, path)

    if meta.get("unet"):
        cfg = UNetConfig.from_dict(meta["unet"])
    else:
        cfg = config_from_state_dict(sd, image_size=image_size)
        meta = {**meta, "unet": cfg.to_dict()}
    meta = {**meta, "source": {"kind": "rcdm", "path": str(weights)}}
    return build_model(cfg, sd, str(weights), device), meta
