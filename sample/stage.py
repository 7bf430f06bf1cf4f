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
from pathlib import Path
from typing import Any

from rcdm.config import SampleConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput, MissingInput, OutputExists, UserError
from rcdm.launch import launch_state, on_main
from rcdm.run.conditioning import check_conditioning
from rcdm.run.lock import holding_output_lock
from rcdm.run.rundir import RunDir
from rcdm.run.sampleset import Chunks, SampleSetWriter, assign_seeds
from rcdm.utils import sha256_file

from . import outputs as O
from .conds import ConditionSet, build

# Fields that do not change the images (they may differ between a run and its resume).
_NOT_IN_FINGERPRINT = {"out", "batch_size", "device", "overwrite", "compile", "grid_rows", "grid_conditions"}


def weights_file(checkpoint: str | Path, ema: str = "auto") -> Path:
    """The weights file ``load_model(checkpoint, ema=ema)`` loads: a file itself, or the one a
    run / checkpoint folder gives (``RunDir.weights``)."""
    p = Path(checkpoint)
    if p.is_dir():
        return RunDir(p).weights(ema)
    if p.is_file():
        return p
    raise MissingInput(f"checkpoint {checkpoint} does not exist; pass --checkpoint RUN_DIR or a weights file")


def fingerprint(cfg: SampleConfig, store: Any, ckpt_file: Path | None) -> str:
    """Identity of the samples a configuration produces, to refuse mixing runs on resume."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    if cfg.condition != "prior":  # the prior's settings draw nothing otherwise (and older sets lack them)
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
            f"{writer.path} holds samples made with a different configuration; choose another --out or "
            "pass --set sample.overwrite=true to replace them"
        )
    if overwrite:
        writer.clear()
    return "fresh"


@holding_output_lock("rcdm sample")  # one writer per sample folder (rank 0 holds it for a launch)
def run(cfg: SampleConfig) -> Path:
    """Sample images for ``cfg.condition``; returns the sample directory."""
    import torch
    from rcdm.diffusion.generate import check_guidance, generate, load_for_sampling
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device

    _validate(cfg)
    sampler = cfg.sampler
    ddim = sampler.ddim
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
    out = Path(cfg.out)
    writer = SampleSetWriter(out)
    store = FeatureStore(cfg.store)
    ckpt_file = weights_file(cfg.checkpoint, cfg.ema)
    fp = fingerprint(cfg, store, ckpt_file)

    # Every process agrees on the plan: the main process decides and writes it, the others read.
    status = on_main(lambda: _prepare_out(writer, fp, cfg.overwrite))
    if (writer.finished() or {}).get("fingerprint") == fp:
        return out

    model, diffusion, meta = load_for_sampling(
        cfg.checkpoint,
        cfg.steps,
        ema=cfg.ema,
        device=device,
        trust_checkpoint=cfg.trust_checkpoint,
        compile=cfg.compile,
    )
    assert meta["source"]["path"] == str(ckpt_file), (meta["source"], ckpt_file)  # hashed = loaded
    check_conditioning(meta, store, what=f"checkpoint {cfg.checkpoint}")
    check_guidance(cfg.guidance, meta, cfg.checkpoint)

    def plan_conditions() -> ConditionSet:
        save_resolved(cfg, out)
        cs = build(cfg, store, device)
        if status == "fresh" or not writer.has_conds():
            writer.write_conds(cs.vectors)  # (C, D) float32
        writer.write_plan({"fingerprint": fp, "n_conditions": len(cs.conditions), "fixed_noise": cs.fixed_noise_groups})
        return cs

    cs: ConditionSet | None = on_main(plan_conditions, share=False)
    conds = writer.read_conds()  # (C, D)
    plan = writer.plan()
    assert plan is not None
    k = cfg.n_per_condition
    cond_index, seeds = assign_seeds(len(conds), k, cfg.seed, plan["fixed_noise"])
    n = len(seeds)
    c_, h, w = _image_shape(model)
    chunks = Chunks(n, cfg.chunk_size, (h, w, c_))
    n_chunks = len(chunks)

    # This process's chunks; finished ones (from an earlier run) are skipped.
    mine = [c for c in range(n_chunks) if c % state.num_processes == state.process_index]
    todo = [c for c in mine if writer.read_chunk(chunks, c) is None]
    print(
        f"process {state.process_index}: {n} images ({len(conds)} conditions x {k}) in {n_chunks} "
        f"chunks; this process has {len(mine)}, {len(mine) - len(todo)} already done"
    )
    from tqdm.auto import tqdm

    for c in tqdm(todo, desc=f"chunks (process {state.process_index})", disable=not todo):
        s, e = chunks.bounds(c)
        imgs = generate(
            model,
            diffusion,
            conds[cond_index[s:e]],
            seeds[s:e],
            ddim=sampler.ddim,
            eta=sampler.eta,
            clip_denoised=cfg.clip_denoised,
            batch_size=cfg.batch_size,
            device=device,
            progress=True,
            mixed_precision=cfg.mixed_precision,
            guidance=sampler.guidance,
            guidance_interval=sampler.guidance_interval,
            guidance_rescale=sampler.guidance_rescale,
        )
        writer.write_chunk(chunks, c, imgs)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    state.wait_for_everyone()
    if not state.is_main_process:
        return out

    # The pictures (from the chunks: all samples are never in memory at once), then the sample
    # set's data files and its manifest last.
    assert cs is not None
    shown = writer.read_range(chunks, 0, n if cfg.condition == "interpolate" else min(n, cfg.grid_conditions * k))
    kimg = f", {meta['kimg']:g} kimg" if isinstance(meta.get("kimg"), (int, float)) else ""
    title = f"{cfg.checkpoint}{kimg}; sampler {sampler.label()}" + ("" if sampler.guided else ", no guidance")
    pictures = [p.name for p in O.write_grids(out, cs, shown, k, cfg.grid_rows, cfg.grid_conditions, title)]
    if cfg.condition == "interpolate":
        pictures.append(O.write_strip(out, cs, shown, k).name)
    record = _manifest(cfg, store, meta, ckpt_file, fp, ddim, state.num_processes)
    writer.finish(chunks, cs.index_rows(cond_index, seeds, k), record, ["config.yaml", *pictures])
    return out


def _image_shape(model: Any) -> tuple[int, int, int]:
    from rcdm.diffusion.generate import model_image_shape

    return model_image_shape(model)


def _manifest(
    cfg: SampleConfig, store: Any, meta: dict, ckpt_file: Path | None, fp: str, ddim: bool, n_proc: int
) -> dict:
    """What the sampler records in the sample set's manifest (the writer adds the counts, the
    image size, the files' sha256 and the format version)."""
    run_manifest = RunDir(cfg.checkpoint).manifest
    return {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_weights": str(ckpt_file) if ckpt_file else None,
        "checkpoint_sha256": sha256_file(ckpt_file) if ckpt_file else None,
        "run_manifest_sha256": sha256_file(run_manifest) if run_manifest.is_file() else None,
        "train_store_manifest_sha256": meta.get("store_manifest_sha256"),
        "store": str(cfg.store),
        "store_manifest_sha256": store.manifest_sha256,
        "encoder": store.encoder_info,
        "preprocess": store.manifest.get("preprocess"),
        "unet": meta.get("unet"),
        **({"diffusion": meta["diffusion"]} if meta.get("diffusion") else {}),  # the recipe's options, as model.json
        "condition": cfg.condition,
        "sampler": "ddim" if ddim else "ancestral",
        "steps": str(cfg.steps),
        "eta": cfg.eta if ddim else None,
        "guidance": cfg.guidance,
        **({"guidance_interval": list(cfg.guidance_interval)} if tuple(cfg.guidance_interval) != (0.0, 1.0) else {}),
        **({"guidance_rescale": cfg.guidance_rescale} if cfg.guidance_rescale else {}),
        "clip_denoised": cfg.clip_denoised,
        "mixed_precision": cfg.mixed_precision,
        "seed": cfg.seed,
        "n_per_condition": cfg.n_per_condition,
        "num_processes": n_proc,
        "fingerprint": fp,
        "config": to_dict(cfg),
    }
