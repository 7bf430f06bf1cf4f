"""The model a run folder (or a weights file) holds, loaded for use: ``load_model`` and
``load_for_sampling``, what sampling, the analyses and ``--init-from`` start from.

A run directory written by ``rcdm train``, or one of its ``checkpoints/step-N`` folders:
:class:`rcdm.run.rundir.RunDir` says which weights file (``RunDir.weights(ema)``) and gives its
``model.json`` (``{"unet": UNetConfig dict, "diffusion": {...}, "encoder": {...}, "preprocess":
{...}, "store_manifest_sha256", "ema_rates", "kimg"}``); a weights file itself is read by
:func:`rcdm.model.weights.load_file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rcdm.config import Sampler
from rcdm.errors import MissingInput
from rcdm.run.rundir import RunDir

__all__ = ["load_for_sampling", "load_model"]


def load_model(
    path: str | Path,
    *,
    ema: Any = "auto",
    device: Any = "cpu",
    trust_checkpoint: bool = False,
    image_size: int | None = None,
) -> tuple[Any, dict]:
    """(model in eval mode on ``device``, meta) from a run directory, a checkpoint folder, one of
    our safetensors files, or an official guided-diffusion / RCDM ``.pt`` state dict.

    ``ema``: "auto" (the run's EMA weights, else the raw model), "no" (the raw weights of a
    checkpoint folder), or a rate such as 0.9999. ``image_size`` is only needed for an official
    checkpoint of an unknown architecture.
    """
    from rcdm.model.weights import load_file, read_meta

    path = Path(path)
    if not path.exists():
        raise MissingInput(
            f"checkpoint {path} does not exist: pass a run directory, a .safetensors file or an "
            "official RCDM / ADM .pt file"
        )
    kw = dict(device=device, trust_checkpoint=trust_checkpoint, image_size=image_size)
    if not path.is_dir():
        # a weights file with no meta of its own, in a run / checkpoint folder: the folder's model.json
        folder = RunDir(path.parent)
        bare = path.suffix == ".safetensors" and folder.meta_file.is_file() and not read_meta(path)
        return load_file(path, meta=folder.meta() if bare else None, **kw)
    run = RunDir(path).current()  # stale or not, decided once: weights and meta of one folder
    weights = run.weights(ema)  # the one rule for which file a folder gives
    try:  # the run's model.json (its newest checkpoint's when the run-level files lag behind)
        meta = run.meta()
    except MissingInput:  # a folder of weights files without model.json
        meta = None
    return load_file(weights, meta=meta, **kw)


def load_for_sampling(
    checkpoint: str | Path,
    sampler: Sampler,
    *,
    ema: str = "auto",
    device: Any = "cpu",
    trust_checkpoint: bool = False,
    compile: bool | str = False,
    backend: str = "inductor",
    channels_last: bool | str = "auto",
) -> tuple[Any, Any, dict]:
    """Load (model, diffusion respaced to ``sampler.steps``, meta) from a run directory or weights
    file, refusing a guided sampler for a model trained without the null condition.

    The schedule and the chain's length come from the checkpoint's meta
    (:func:`rcdm.diffusion.generate.diffusion_for`). The model is put in eval mode on ``device``
    and prepared by :func:`rcdm.diffusion.generate.prepare_for_sampling` (``compile`` with
    ``backend``, ``channels_last``).
    """
    from rcdm.diffusion.generate import check_guidance, diffusion_for, prepare_for_sampling

    model, meta = load_model(str(checkpoint), ema=ema, device=str(device), trust_checkpoint=trust_checkpoint)
    check_guidance(sampler, meta, checkpoint)
    diffusion = diffusion_for(meta, sampler.steps)
    return prepare_for_sampling(model, device, compile, backend=backend, channels_last=channels_last), diffusion, meta
