"""The prior's output folder (``rcdm train-prior``), one owner: ``prior.safetensors`` (the EMA
network, with the standardisation buffers ``mean`` / ``std``), ``prior.json`` (architecture,
training settings, the store it was trained on and its encoder, the loss curve) and
``config.yaml``. ``prior.json`` is written last: a folder with it is complete.

    save_prior(out, model, meta)         load_prior(path) -> (model, meta)
    check_store(meta, store, where)      its draws live in the store's representation space

Drawing from the loaded network is :func:`rcdm.prior.model.draw`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rcdm.errors import InvalidInput, MissingInput
from rcdm.run.conditioning import Conditioning, mismatches
from rcdm.utils import atomic_write_json, read_json

__all__ = ["WEIGHTS", "META", "save_prior", "load_prior", "is_prior", "check_store"]

WEIGHTS = "prior.safetensors"
META = "prior.json"
FORMAT = "rcdm-prior/2"  # 2: x0 prediction, linear schedule (1 predicted the noise, cosine schedule)


def is_prior(path: str | Path) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / WEIGHTS).is_file()


def save_prior(out: str | Path, model: Any, meta: dict) -> Path:
    """Write the weights, then ``prior.json`` (the finished marker). Returns the folder."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    tmp = out / (WEIGHTS + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out / WEIGHTS)
    atomic_write_json(out / META, {"format": FORMAT, "spec": model.spec.to_dict(), **meta})
    return out


def load_prior(path: str | Path, device: Any = "cpu") -> tuple[Any, dict]:
    """(PriorMLP in eval mode, meta) of a ``rcdm train-prior`` folder."""
    from rcdm.prior.model import PriorMLP, PriorSpec
    from rcdm.statedict import load_strict
    from safetensors.torch import load_file

    path = Path(path)
    if not is_prior(path):
        raise MissingInput(
            f"{path} is not a representation prior (no {META} and {WEIGHTS}); train one with "
            f"`rcdm train-prior --store STORE --out {path}`"
        )
    meta = read_json(path / META)
    if meta.get("format") != FORMAT:
        raise InvalidInput(
            f"{path / META} has format {meta.get('format')!r}, expected {FORMAT!r} (a prior of an older rcdm, "
            f"which predicted the noise); retrain it: `rcdm train-prior --out {path} --overwrite`"
        )
    model = PriorMLP(PriorSpec.from_dict(meta["spec"]))
    load_strict(model, load_file(str(path / WEIGHTS)), f"prior {path}")
    return model.to(device).eval(), meta


def check_store(meta: dict, store: Any, where: str) -> None:
    """The prior's draws live in ``store``'s space: :func:`rcdm.run.conditioning.mismatches`
    (dimension, encoder, architecture, layer, weights, random seed; the preprocessing when the
    prior records it) finds nothing that differs."""

    enc = meta.get("encoder") or {}
    theirs = Conditioning(dim=int(meta["spec"]["dim"]), encoder=enc, preprocess=meta.get("preprocess"))
    ours = Conditioning.of_store(store)
    found = mismatches(theirs, ours)
    if found:
        raise InvalidInput(
            f"the prior {where} was trained on {theirs.dim}-d {enc.get('name')}/{enc.get('layer')} features, "
            f"but the store {store.path} holds {ours.dim}-d {ours.encoder.get('name')}/{ours.encoder.get('layer')} "
            f"({', '.join(map(str, found))}); train a prior on a store of the checkpoint's encoder and layer"
        )
