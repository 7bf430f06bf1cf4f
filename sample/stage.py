"""``rcdm sample``: checkpoint + conditions -> a sample set (``rcdm.run.sampleset``) and grids.

Work is cut into chunks of ``chunk_size`` samples (resumable files under ``<out>/partial/``);
under ``accelerate launch`` process r takes chunks r, r + P, r + 2P, ... Each sample has its own
seed, so the images do not depend on how the work is split. A re-run with the same configuration
skips finished chunks; the manifest is written last, as the finished marker.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcdm.config import SampleConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput, MissingInput, OutputExists, UserError
from rcdm.launch import launch_state, on_main, processes
from rcdm.run.conditioning import check_conditioning
from rcdm.run.lock import holding_output_lock
from rcdm.run.rundir import RunDir
from rcdm.run.sampleset import Chunks, SampleSetWriter, assign_seeds
from rcdm.utils import sha256_file

from . import outputs as O
from .conds import ConditionSet, build

# Fields that do not change the images (they may differ between a run and its resume).
# (how fast, not which samples: the speed settings, like compile's backend and the weights' layout)
_NOT_IN_FINGERPRINT = {
    "out",
    "batch_size",
    "device",
    "overwrite",
    "compile",
    "compile_backend",
    "channels_last",
    "grid_rows",
    "grid_conditions",
}


def weights_file(checkpoint: str | Path, ema: str = "auto") -> Path:
    """The weights file ``load_model(checkpoint, ema=ema)`` loads: a file itself, or the one a
    run / checkpoint folder gives (``RunDir.weights``)."""
    p = Path(checkpoint)
    if p.is_dir():
        return RunDir(p).weights(ema)
    if p.is_file():
        return p
    raise MissingInput(f"checkpoint {checkpoint} does not exist; pass --checkpoint RUN_DIR or a weights file")


def _precision(cfg: SampleConfig, device: Any) -> str:
    """The precision ``cfg.mixed_precision`` resolves to on ``device``: ``torch.bfloat16`` or ``fp32``."""
    import torch
    from rcdm.diffusion.generate import resolve_precision

    return str(resolve_precision(cfg.mixed_precision, torch.device(device)) or "fp32")


def fingerprint(cfg: SampleConfig, store: Any, ckpt_file: Path | None, device: Any = "cpu") -> str:
    """Identity of the samples a configuration produces, to refuse mixing runs on resume.

    The device type and the precision it resolves to are part of it: ``mixed_precision: auto`` is
    bf16 on CUDA and fp32 on a CPU, so a set begun on one must not be finished on the other."""
    import torch

    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    dev = torch.device(device)
    d["device_type"] = dev.type
    d["precision"] = _precision(cfg, dev)
    if cfg.condition != "prior":  # the prior's settings change nothing for another condition
        d.pop("prior", None), d.pop("prior_n", None)
    d["store_manifest_sha256"] = store.manifest_sha256
    if ckpt_file is not None:
        st = ckpt_file.stat()
        d["checkpoint_file"] = [str(ckpt_file.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _validate(cfg: SampleConfig) -> None:
    if cfg.checkpoint is None or cfg.out is None or cfg.store is None:
        raise InvalidInput("sample.checkpoint, sample.out and sample.store must be set (resolve the config)")
    cfg.check()  # each key's bounds were checked when the section was made; here the rules between keys


def _prepare_out(writer: SampleSetWriter, fp: str, overwrite: bool) -> str:
    """'done' (finished with this configuration), 'resume' or 'fresh'."""
    done, plan = writer.finished(), writer.plan()
    if done is not None:
        if done.get("fingerprint") == fp and not overwrite:
            return "done"
    elif plan is not None and plan.get("fingerprint") == fp:
        return "resume"
    if (done is not None or plan is not None) and not overwrite:
        raise OutputExists(
            f"{writer.path} holds samples made with a different configuration (the device type and precision "
            "count: resume on the device it was begun on); choose another --out or "
            "pass --set sample.overwrite=true to replace them"
        )
    if overwrite:
        writer.clear()
    return "fresh"


@dataclass
class _Job:
    """One sampling job as every process sees it: where, what from, and the plan's counts."""

    cfg: SampleConfig
    state: Any  # accelerate's PartialState
    device: Any  # torch.device
    writer: SampleSetWriter
    store: Any  # FeatureStore
    ckpt_file: Path
    fingerprint: str


@holding_output_lock("rcdm sample")  # one writer per sample folder (rank 0 holds it for a launch)
def run(cfg: SampleConfig) -> Path:
    """Sample images for ``cfg.condition``; returns the sample directory."""
    _validate(cfg)
    job = _job(cfg)
    # Every process agrees on the plan: the main process decides and writes it, the others read.
    status = on_main(lambda: _prepare_out(job.writer, job.fingerprint, cfg.overwrite))
    if (job.writer.finished() or {}).get("fingerprint") == job.fingerprint:
        return job.writer.path
    model, diffusion, meta = _load(job)
    cs: ConditionSet | None = on_main(lambda: _plan_conditions(job, status), share=False)
    conds = job.writer.read_conds()  # (C, D)
    plan = job.writer.plan()
    assert plan is not None
    cond_index, seeds = assign_seeds(len(conds), cfg.n_per_condition, cfg.seed, plan["fixed_noise"])
    chunks = Chunks(len(seeds), cfg.chunk_size, _image_shape(model))
    _sample_chunks(job, model, diffusion, conds[cond_index], seeds, chunks)
    del model
    _release(job)
    if not job.state.is_main_process:
        return job.writer.path
    assert cs is not None
    _finish(job, cs, meta, chunks, cond_index, seeds)
    return job.writer.path


def _job(cfg: SampleConfig) -> _Job:
    """The launch (one process, or this process of an ``accelerate launch``), its device, the
    output, the conditions' store and the weights file the samples come from."""
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device

    # On a machine without CUDA (or with --device cpu), accelerate only joins the processes that
    # torchrun / accelerate launch started when asked for CPU explicitly.
    state = launch_state(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != state.num_processes:  # each process would redo all the work and race on files
        raise UserError(
            f"launched as {world} processes but accelerate sees {state.num_processes}; "
            "use `accelerate launch` or torchrun with a working distributed setup"
        )
    # accelerate launch gives each process its device; a single process uses cfg.device.
    device = state.device if state.num_processes > 1 else pick_device(cfg.device)
    store = FeatureStore(cfg.store)
    ckpt_file = weights_file(cfg.checkpoint, cfg.ema)
    fp = fingerprint(cfg, store, ckpt_file, device)
    if state.is_main_process:  # where it runs, first
        print(f"sampling on {device} ({processes(state.num_processes)}; precision {_precision(cfg, device)})")
    return _Job(cfg, state, device, SampleSetWriter(Path(cfg.out)), store, ckpt_file, fp)


def _load(job: _Job) -> tuple[Any, Any, dict]:
    """The model (checked against the store's representation and the sampler) and its diffusion."""
    from rcdm.run.models import load_for_sampling

    cfg = job.cfg
    model, diffusion, meta = load_for_sampling(
        cfg.checkpoint,
        cfg.sampler,
        ema=cfg.ema,
        device=job.device,
        trust_checkpoint=cfg.trust_checkpoint,
        compile=cfg.compile,
        backend=cfg.compile_backend,
        channels_last=cfg.channels_last,
    )
    assert meta["source"]["path"] == str(job.ckpt_file), (meta["source"], job.ckpt_file)  # hashed = loaded
    check_conditioning(meta, job.store, what=f"checkpoint {cfg.checkpoint}")
    return model, diffusion, meta


def _plan_conditions(job: _Job, status: str) -> ConditionSet:
    """(main process) The conditions, written once with the plan the other processes read."""
    save_resolved(job.cfg, job.writer.path)
    cs = build(job.cfg, job.store, job.device)
    check_finite_conditions(cs)
    if status == "fresh" or not job.writer.has_conds():
        job.writer.write_conds(cs.vectors)  # (C, D) float32
    job.writer.write_plan(
        {"fingerprint": job.fingerprint, "n_conditions": len(cs.conditions), "fixed_noise": cs.fixed_noise_groups}
    )
    return cs


def check_finite_conditions(cs: ConditionSet) -> None:
    """Conditions that are not finite (a damaged store row, an encoder's overflow) give black images
    that nothing would flag: refused, naming the first of them."""
    import numpy as np

    bad = [c for c in cs.conditions if not np.isfinite(c.vector).all()]
    if bad:
        raise InvalidInput(
            f"{len(bad)} of the {len(cs.conditions)} conditions hold NaN or inf (the first: {bad[0].description or bad[0].key}); "
            "sample from finite representations: `rcdm store verify` names the store's damaged shards"
        )


def _sample_chunks(job: _Job, model: Any, diffusion: Any, conds: Any, seeds: Any, chunks: Chunks) -> None:
    """This process's chunks (r, r + P, ...), skipping those an earlier run finished."""
    from rcdm.diffusion.generate import generate
    from tqdm.auto import tqdm

    cfg, rank, world = job.cfg, job.state.process_index, job.state.num_processes
    mine = [c for c in range(len(chunks)) if c % world == rank]
    todo = [c for c in mine if job.writer.read_chunk(chunks, c) is None]
    print(
        f"process {rank}: {len(seeds)} images ({len(seeds) // cfg.n_per_condition} conditions x "
        f"{cfg.n_per_condition}) in {len(chunks)} chunks; this process has {len(mine)}, "
        f"{len(mine) - len(todo)} already done"
    )
    for c in tqdm(todo, desc=f"chunks (process {rank})", disable=not todo):
        s, e = chunks.bounds(c)
        imgs = generate(
            model,
            diffusion,
            conds[s:e],
            seeds[s:e],
            cfg.sampler,
            batch_size=cfg.batch_size,
            device=job.device,
            progress=True,
            mixed_precision=cfg.mixed_precision,
        )
        job.writer.write_chunk(chunks, c, imgs)


def _release(job: _Job) -> None:
    """Free the device's cache, then wait until every process has written its chunks."""
    if job.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    job.state.wait_for_everyone()


def _finish(job: _Job, cs: ConditionSet, meta: dict, chunks: Chunks, cond_index: Any, seeds: Any) -> None:
    """(main process) The pictures (from the chunks: all samples are never in memory at once),
    then the sample set's data files and its manifest last."""
    cfg, out, k = job.cfg, job.writer.path, job.cfg.n_per_condition
    n = len(seeds)
    shown = job.writer.read_range(chunks, 0, n if cfg.condition == "interpolate" else min(n, cfg.grid_conditions * k))
    kimg = f", {meta['kimg']:g} kimg" if isinstance(meta.get("kimg"), (int, float)) else ""
    sampler = cfg.sampler
    title = f"{cfg.checkpoint}{kimg}; sampler {sampler.label()}" + ("" if sampler.guided else ", no guidance")
    pictures = [p.name for p in O.write_grids(out, cs, shown, k, cfg.grid_rows, cfg.grid_conditions, title)]
    if cfg.condition == "interpolate":
        pictures.append(O.write_strip(out, cs, shown, k).name)
    record = _manifest(job, meta)
    job.writer.finish(chunks, cs.index_rows(cond_index, seeds, k), record, ["config.yaml", *pictures])


def _image_shape(model: Any) -> tuple[int, int, int]:
    """(H, W, C) of the model's images, the chunks' shape."""
    from rcdm.diffusion.generate import model_image_shape

    c, h, w = model_image_shape(model)
    return h, w, c


def _manifest(job: _Job, meta: dict) -> dict:
    """What the sampler records in the sample set's manifest (the writer adds the counts, the
    image size, the files' sha256 and the format version)."""
    cfg, store, ckpt_file = job.cfg, job.store, job.ckpt_file
    run_manifest = RunDir(cfg.checkpoint).manifest
    return {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_weights": str(ckpt_file),
        "checkpoint_sha256": sha256_file(ckpt_file),
        "run_manifest_sha256": sha256_file(run_manifest) if run_manifest.is_file() else None,
        "train_store_manifest_sha256": meta.get("store_manifest_sha256"),
        "store": str(cfg.store),
        "store_manifest_sha256": store.manifest_sha256,
        "encoder": store.encoder_info,
        "preprocess": store.manifest.get("preprocess"),
        "unet": meta.get("unet"),
        **({"diffusion": meta["diffusion"]} if meta.get("diffusion") else {}),  # the recipe's options, as model.json
        "condition": cfg.condition,
        "sampler": cfg.sampler.to_dict(),  # read back with Sampler.from_dict
        "mixed_precision": cfg.mixed_precision,
        "seed": cfg.seed,
        "n_per_condition": cfg.n_per_condition,
        "num_processes": job.state.num_processes,
        "fingerprint": job.fingerprint,
        "config": to_dict(cfg),
    }
