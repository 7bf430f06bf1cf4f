"""``rcdm sample``: checkpoint + conditions -> samples.npz, index.jsonl, grids, manifest.

Work is cut into chunks of ``chunk_size`` samples (``<out>/partial/chunk-NNNNN.npy``); under
``accelerate launch`` process r takes chunks r, r + P, r + 2P, ... Each sample has its own seed,
so the images do not depend on how the work is split. A re-run with the same configuration skips
finished chunks; ``manifest.json`` is written last, as the finished marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from rcdm.app.config import SampleConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput, MissingInput, OutputExists, UserError
from rcdm.utils import atomic_write_json, now_iso, read_json, sha256_file

from . import outputs as O
from .conds import ConditionSet, build

FORMAT_VERSION = 1
# Fields that do not change the images (they may differ between a run and its resume).
_NOT_IN_FINGERPRINT = {"out", "batch_size", "device", "overwrite", "compile", "grid_rows", "grid_conditions"}


def weights_file(checkpoint: str | Path) -> Path | None:
    """The weights file behind a run directory or a file path (None when not found)."""
    p = Path(checkpoint)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "ema.safetensors").exists():
            return p / "ema.safetensors"
        found = sorted(p.glob("*.safetensors"))
        return found[0] if found else None
    return None


def check_checkpoint_store(meta: dict, store: Any, checkpoint: str) -> None:
    """The checkpoint must be conditioned on representations like the store's (same dim, and the
    same encoder and layer when the checkpoint records them)."""
    from rcdm.model.weights import encoder_hint_conflict

    unet = meta.get("unet") or {}
    cond, cond_dim = unet.get("cond", "embed"), unet.get("cond_dim")
    if cond == "none":
        raise InvalidInput(f"checkpoint {checkpoint} is unconditional (cond 'none'); rcdm sample needs an RCDM model")
    if cond_dim is not None and int(cond_dim) != int(store.dim):
        raise InvalidInput(
            f"checkpoint {checkpoint} is conditioned on {cond_dim}-d representations but the store "
            f"{store.path} holds {store.dim}-d features ({store.encoder_info.get('name')}, layer "
            f"{store.layer}); pass the --store made with the encoder and layer the model was trained on"
        )
    enc = meta.get("encoder") or {}
    mine = store.encoder_info
    named = encoder_hint_conflict(meta, mine)  # official rcdm_ema_<encoder>_<layer>.pt file names
    if named:
        raise InvalidInput(
            f"checkpoint {checkpoint} is named for encoder {named} but "
            f"the store {store.path} was made with {mine.get('name')} ({mine.get('layer')}); pass a "
            "store extracted with that encoder and layer"
        )
    for field in ("name", "layer", "weights_sha256"):
        a, b = enc.get(field), mine.get(field)
        if a is not None and b is not None and a != b:
            raise InvalidInput(
                f"checkpoint {checkpoint} was trained on encoder {field} {a!r} but the store "
                f"{store.path} has {b!r}; use a store extracted with the same encoder"
            )


def fingerprint(cfg: SampleConfig, store: Any, ckpt_file: Path | None) -> str:
    """Identity of the samples a configuration produces, to refuse mixing runs on resume."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    d["store_manifest_sha256"] = store.manifest_sha256
    if ckpt_file is not None:
        st = ckpt_file.stat()
        d["checkpoint_file"] = [str(ckpt_file.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _validate(cfg: SampleConfig) -> None:
    for name in ("n_per_condition", "batch_size", "chunk_size", "grid_rows", "grid_conditions"):
        if getattr(cfg, name) < 1:
            raise InvalidInput(f"sample.{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.eta < 0:
        raise InvalidInput(f"sample.eta must be >= 0 (0: deterministic DDIM), got {cfg.eta}")
    if cfg.condition == "interpolate" and cfg.interp_steps < 2:
        raise InvalidInput(f"sample.interp_steps must be at least 2, got {cfg.interp_steps}")
    if cfg.checkpoint is None or cfg.out is None or cfg.store is None:
        raise InvalidInput("sample.checkpoint, sample.out and sample.store must be set (resolve the config)")


def _prepare_out(out: Path, fp: str, overwrite: bool) -> str:
    """'done' (finished with this configuration), 'resume' or 'fresh'."""
    plan_path = out / "partial" / "plan.json"
    done_path = out / "manifest.json"
    if done_path.exists():
        if read_json(done_path).get("fingerprint") == fp and not overwrite:
            return "done"
    elif plan_path.exists() and read_json(plan_path).get("fingerprint") == fp:
        return "resume"
    if (done_path.exists() or plan_path.exists()) and not overwrite:
        raise OutputExists(
            f"{out} holds samples made with a different configuration; choose another --out or "
            "pass --set sample.overwrite=true to replace them"
        )
    if overwrite:
        for name in ("partial", "manifest.json", "samples.npz", "index.jsonl", "conds.npy", "interpolation.png"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in out.glob("grid-*.png"):
            p.unlink()
    return "fresh"


def run(cfg: SampleConfig) -> Path:
    """Sample images for ``cfg.condition``; returns the sample directory."""
    import torch
    from accelerate import PartialState
    from rcdm.diffusion.generate import check_guidance, generate, load_for_sampling
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device

    _validate(cfg)
    sampler = cfg.sampler
    ddim = sampler.ddim
    # On a machine without CUDA (or with --device cpu), accelerate only joins the processes that
    # torchrun / accelerate launch started when asked for CPU explicitly.
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != state.num_processes:  # each process would redo all the work and race on files
        raise UserError(
            f"launched as {world} processes but accelerate sees {state.num_processes}; "
            "use `accelerate launch` or torchrun with a working distributed setup"
        )
    # accelerate launch gives each process its device; a single process uses cfg.device.
    device = state.device if state.num_processes > 1 else pick_device(cfg.device)
    out = Path(cfg.out)
    store = FeatureStore(cfg.store)
    ckpt_file = weights_file(cfg.checkpoint)
    if ckpt_file is None and not Path(cfg.checkpoint).exists():
        raise MissingInput(f"checkpoint {cfg.checkpoint} does not exist; pass --checkpoint RUN_DIR or a weights file")
    fp = fingerprint(cfg, store, ckpt_file)

    # Every process agrees on the plan: the main process decides and writes it, the others read.
    status = _on_main(state, lambda: _prepare_out(out, fp, cfg.overwrite))
    if (out / "manifest.json").exists() and read_json(out / "manifest.json").get("fingerprint") == fp:
        return out

    model, diffusion, meta = load_for_sampling(
        cfg.checkpoint, cfg.steps, ema=cfg.ema, device=device,
        trust_checkpoint=cfg.trust_checkpoint, compile=cfg.compile,
    )
    check_checkpoint_store(meta, store, cfg.checkpoint)
    check_guidance(cfg.guidance, meta, cfg.checkpoint)

    def plan_conditions() -> ConditionSet:
        save_resolved(cfg, out)
        cs = build(cfg, store, device)
        if status == "fresh" or not (out / "conds.npy").exists():
            O.save_npy(out / "conds.npy", cs.vectors)  # (C, D) float32
        atomic_write_json(
            out / "partial" / "plan.json",
            {"fingerprint": fp, "n_conditions": len(cs.conditions), "fixed_noise": cs.fixed_noise_groups},
        )
        return cs

    cs: ConditionSet | None = _on_main(state, plan_conditions, share=False)
    conds = np.load(out / "conds.npy")  # (C, D)
    plan = read_json(out / "partial" / "plan.json")
    k = cfg.n_per_condition
    cond_index, seeds = O.assign_seeds(len(conds), k, cfg.seed, plan["fixed_noise"])
    n = len(seeds)
    c_, h, w = _image_shape(model)

    # This process's chunks; finished ones (from an earlier run) are skipped.
    n_chunks = (n + cfg.chunk_size - 1) // cfg.chunk_size
    mine = [c for c in range(n_chunks) if c % state.num_processes == state.process_index]
    todo = []
    for c in mine:
        s, e = c * cfg.chunk_size, min(n, (c + 1) * cfg.chunk_size)
        if O.load_chunk(O.chunk_path(out, c), (e - s, h, w, c_)) is None:
            todo.append(c)
    print(
        f"process {state.process_index}: {n} images ({len(conds)} conditions x {k}) in {n_chunks} "
        f"chunks; this process has {len(mine)}, {len(mine) - len(todo)} already done"
    )
    from tqdm.auto import tqdm

    for c in tqdm(todo, desc=f"chunks (process {state.process_index})", disable=not todo):
        s, e = c * cfg.chunk_size, min(n, (c + 1) * cfg.chunk_size)
        imgs = generate(
            model, diffusion, conds[cond_index[s:e]], seeds[s:e],
            ddim=sampler.ddim, eta=sampler.eta, clip_denoised=cfg.clip_denoised, batch_size=cfg.batch_size,
            device=device, progress=True, mixed_precision=cfg.mixed_precision, guidance=sampler.guidance,
        )
        O.save_npy(O.chunk_path(out, c), imgs)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    state.wait_for_everyone()
    if not state.is_main_process:
        return out

    # Assemble, write the outputs, and the manifest last.
    samples = np.empty((n, h, w, c_), dtype=np.uint8)
    for c in range(n_chunks):
        s, e = c * cfg.chunk_size, min(n, (c + 1) * cfg.chunk_size)
        arr = O.load_chunk(O.chunk_path(out, c), (e - s, h, w, c_))
        if arr is None:  # another process failed to write its part
            raise UserError(f"chunk {c} is missing from {out / 'partial'}; re-run the same command to finish it")
        samples[s:e] = arr
    assert cs is not None
    O.save_npz(out / "samples.npz", samples)
    O.write_index(out / "index.jsonl", cs, cond_index, seeds, k)
    grids = O.write_grids(out, cs, samples, k, cfg.grid_rows, cfg.grid_conditions)
    files = ["samples.npz", "index.jsonl", "conds.npy", "config.yaml"] + [p.name for p in grids]
    if cfg.condition == "interpolate":
        files.append(O.write_strip(out, cs, samples, k).name)
    manifest = _manifest(cfg, store, meta, ckpt_file, fp, ddim, n, len(conds), h, state.num_processes, out, files)
    atomic_write_json(out / "manifest.json", manifest)
    shutil.rmtree(out / "partial", ignore_errors=True)  # samples.npz now holds every chunk
    return out


def _on_main(state: Any, fn: Any, share: bool = True) -> Any:
    """Run ``fn`` on the main process only; the others wait. An error on the main process is
    raised on every process (instead of leaving them waiting at a barrier); with ``share`` the
    result is sent to all of them."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as e:  # re-raised below, after telling the other processes
            error = e
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        msg = [None if error is None else f"{type(error).__name__}: {error}", result if share else None]
        broadcast_object_list(msg, from_process=0)
        if error is None and msg[0] is not None:
            raise RuntimeError(f"the main process failed: {msg[0]}")
        if not state.is_main_process:
            result = msg[1]
    if error is not None:
        raise error
    return result


def _image_shape(model: Any) -> tuple[int, int, int]:
    from rcdm.diffusion.generate import model_image_shape

    return model_image_shape(model)


def _manifest(
    cfg: SampleConfig, store: Any, meta: dict, ckpt_file: Path | None, fp: str, ddim: bool,
    n: int, n_cond: int, size: int, n_proc: int, out: Path, files: list[str],
) -> dict:
    run_manifest = Path(cfg.checkpoint) / "manifest.json"
    from rcdm.utils import tool_version

    return {
        "format_version": FORMAT_VERSION,
        "stage": "sample",
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_weights": str(ckpt_file) if ckpt_file else None,
        "checkpoint_sha256": sha256_file(ckpt_file) if ckpt_file else None,
        "run_manifest_sha256": sha256_file(run_manifest) if run_manifest.is_file() else None,
        "train_store_manifest_sha256": meta.get("store_manifest_sha256"),
        "store": str(cfg.store),
        "store_manifest_sha256": store.manifest_sha256,
        "encoder": store.encoder_info,
        "unet": meta.get("unet"),
        "condition": cfg.condition,
        "sampler": "ddim" if ddim else "ancestral",
        "steps": str(cfg.steps),
        "eta": cfg.eta if ddim else None,
        "guidance": cfg.guidance,
        "clip_denoised": cfg.clip_denoised,
        "mixed_precision": cfg.mixed_precision,
        "seed": cfg.seed,
        "n_conditions": n_cond,
        "n_per_condition": cfg.n_per_condition,
        "n_samples": n,
        "image_size": size,
        "num_processes": n_proc,
        "fingerprint": fp,
        "files": {f: sha256_file(out / f) for f in files},
        "config": to_dict(cfg),
        "tool_version": tool_version(),
        "created": now_iso(),
    }
