"""``rcdm.train.run``: the training loop (accelerate: one CPU process to multi-node DDP).

The step is DiT's: ``t ~ U{0..999}``, ``loss = diffusion.training_losses(model, x, t, {"cond": h})``
(the hybrid MSE + VLB loss of improved DDPM), AdamW at a constant lr, then the EMA update.
Progress is counted in images (kimg), so schedules do not depend on the batch size or the number
of GPUs. Re-running the same command resumes from the newest complete checkpoint with the same
data order, noise and loss sequence.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
from rcdm.config import TrainConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput, UserError
from rcdm.launch import on_main
from rcdm.run.lock import holding_output_lock
from rcdm.run.rundir import RunDir
from rcdm.speed import enable_fast_math, resolve_channels_last, resolve_compile
from rcdm.store import FeatureStore
from rcdm.train import cache as image_cache
from rcdm.train import model as model_setup
from rcdm.train.checkpoint import TrainState
from rcdm.train.data import ImageFeatureDataset, input_layout, make_loader, to_model_input
from rcdm.train.ema import EMA
from rcdm.train.monitor import Logger, Stats, memory_gb
from rcdm.train.threads import apply_threads, loader_workers, resolve_threads
from rcdm.utils import atomic_write_json, now_iso

# Separates the noise generators' seeds of consecutive micro-batches and of ranks.
_NOISE_STRIDE = 1_000_003


class NonFiniteLoss(UserError):
    """The loss became NaN or inf."""


def _mixed_precision(spec: str) -> str:
    if spec == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if spec == "fp16" and not torch.cuda.is_available():
        raise InvalidInput("train.mixed_precision=fp16 needs a GPU; use 'no' (or 'bf16') on a CPU")
    return spec


def _validate(cfg: TrainConfig) -> None:
    if not cfg.store or not cfg.out:
        raise InvalidInput("train.store and train.out must be set (resolve the config first)")
    cfg.check()  # each key's bounds were checked when the section was made; here the rules between keys


def _accelerator(mixed_precision: str, compile: bool):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # run() may be called several times in one process (the pipeline, tests) with other
    # precisions; the process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=not torch.cuda.is_available(),
        # prepare() compiles the model last (after DDP), the way accelerate supports it
        dynamo_backend="inductor" if compile else "no",
    )


@holding_output_lock("rcdm train")  # one writer per run folder (rank 0 holds it for a launch)
def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the run directory."""
    from rcdm.diffusion import gaussian

    _validate(cfg)
    mp = _mixed_precision(cfg.mixed_precision)
    cuda = torch.cuda.is_available()
    compile_ = resolve_compile(cfg.compile, "cuda" if cuda else "cpu")  # auto: on CUDA, as bench/train.py
    accelerator = _accelerator(mp, compile_)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    enable_fast_math(device)  # cuDNN autotune + TF32 on CUDA
    channels_last = resolve_channels_last(cfg.channels_last, compile_, device)
    main = accelerator.is_main_process
    # torch threads: the cores this machine's processes share, minus their loader workers
    workers = loader_workers(cfg)  # the loader's; torch's threads leave them their cores on a GPU
    cfg = resolve_threads(cfg, int(os.environ.get("LOCAL_WORLD_SIZE") or 1), device.type, workers=workers)
    apply_threads(cfg.threads)  # on every device: the value config.yaml records is the one used
    per_step = world * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise InvalidInput(
            f"train.batch_size={cfg.batch_size} is not divisible by processes x grad_accum = "
            f"{world} x {cfg.grad_accum}; use a multiple of {per_step}"
        )
    batch_per_process = cfg.batch_size // per_step  # micro-batch size on each rank
    total_nimg = int(round(cfg.kimg * 1000))
    run_dir = RunDir(cfg.out)

    # Store and model config; a run folder that holds a run continues only that run.
    store = FeatureStore(cfg.store)
    model_setup.check_store(store, cfg)
    ucfg = model_setup.unet_config(cfg, store.dim, (store.token_shape or (0,))[0])
    meta_at = lambda kimg: model_setup.model_meta(ucfg, store, cfg, kimg)  # noqa: E731
    run_dir.check_continues(meta_at(0.0), store)
    latest = run_dir.latest()
    if main and run_dir.stale() is not None:  # killed before its newest checkpoint was published
        run_dir.publish(latest)
    if latest is not None and run_dir.manifest.exists() and RunDir.read_state(latest)["nimg"] >= total_nimg:
        if main:
            print(f"run {run_dir.path} is finished ({RunDir.read_state(latest)['nimg'] / 1000:g} kimg); nothing to do")
        return run_dir.path

    # Seeds: one per rank (DiT: global_seed * world_size + rank).
    rank_seed = cfg.seed * world + rank
    torch.manual_seed(rank_seed)

    # Model, EMA, optimizer, diffusion; then the state training resumes from.
    net = model_setup.build_net(cfg, ucfg, store, fresh=latest is None)
    # The training images, opened once: a fresh cond_image map is fitted on them (before the EMA
    # copies the weights), and the loader below reads them.
    dataset = ImageFeatureDataset(cfg.store, ucfg.image_size, source=cfg.source, draft=cfg.draft)
    if image_cache.wanted(cfg.image_cache, store, ucfg.image_size, device, cfg.draft):  # decode + resize once
        dataset.use_cache(on_main(lambda: image_cache.build(dataset, store, workers, show=main)))
    model_setup.fit_and_freeze_cond_image(net, cfg, ucfg, dataset, fresh=latest is None, workers=workers, show=main)
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema_rates, warmup=cfg.ema_warmup)
    opt = torch.optim.AdamW(
        net.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",  # one kernel for all parameters
    )
    diffusion = gaussian.create_diffusion(
        ucfg.schedule,
        steps=gaussian.DIFFUSION_STEPS,
        prediction=cfg.prediction,
        zero_terminal_snr=cfg.zero_terminal_snr,
    )
    model, opt = accelerator.prepare(net, opt)
    state = TrainState(accelerator, net, ema, seed=cfg.seed, batch_size=cfg.batch_size)
    if latest is not None:
        state.load(latest)
        if main:
            print(f"resuming {run_dir.path} from {latest.name} ({state.nimg / 1000:g} kimg)")
    if main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir.path)
        run_dir.truncate_log(state.step)
        run_dir.manifest.unlink(missing_ok=True)  # training more: not finished any more
    accelerator.wait_for_everyone()

    # Data: this rank's share of one seeded stream, from the position reached.
    loader = make_loader(
        dataset,
        batch_per_process,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        start=state.nimg,
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    grids = None
    if main and cfg.grid_kimg > 0:
        from rcdm.train.grid import GridMaker

        grids = GridMaker(dataset, meta_at(0.0), cfg.grid_images, cfg.grid_samples, cfg.grid_sampler, cfg.seed)
    check = None
    if main:
        from rcdm.train.faithcheck import check_nimg, make_check

        check, said = make_check(cfg, meta_at(0.0), device)
        print(said)

    # Main training loop.
    model.train()
    stats = Stats(device, diffusion.num_timesteps)
    logger = Logger(run_dir.log, run_dir.tensorboard, state.step, enabled=main)
    for record in state.rng_lost_records():  # resumed without a saved RNG state: say so in the log
        logger.write(record)
    noise_gen = torch.Generator(device=device)
    layout = input_layout(channels_last, device)  # one layout end to end (CPU + NCHW: the pixels' strides)
    ckpt_nimg = max(1, int(round(cfg.checkpoint_kimg * 1000)))
    grid_nimg = int(round(cfg.grid_kimg * 1000)) if cfg.grid_kimg > 0 else 0
    eval_nimg = check_nimg(cfg) if check is not None else 0
    last_good = latest

    from tqdm.auto import tqdm

    # counted in images; unit_scale shows thousands as "k" (kimg)
    bar = tqdm(total=total_nimg, initial=state.nimg, unit="img", unit_scale=True, disable=not main)
    t_log, nimg_log = time.perf_counter(), state.nimg
    try:
        while state.nimg < total_nimg:
            state.step += 1

            # Accumulate gradients over grad_accum micro-batches; DDP all-reduces on the last.
            for micro in range(cfg.grad_accum):
                x, h, _rows = next(batches)
                x = to_model_input(x.to(device, non_blocking=True), layout)  # (b, 3, H, W) in [-1, 1]
                h = h.to(device, non_blocking=True)  # (b, D)
                # t and noise depend on (seed, rank, step, micro) only: resuming redraws them
                noise_gen.manual_seed((rank_seed * _NOISE_STRIDE + (state.step - 1) * cfg.grad_accum + micro) % (2**63))
                t = gaussian.sample_timesteps(x.shape[0], diffusion.num_timesteps, device, noise_gen)
                noise = torch.randn(x.shape, device=device, generator=noise_gen, dtype=x.dtype)
                if layout:  # the model's channels-last (a fresh randn is already contiguous NCHW)
                    noise = noise.contiguous(memory_format=torch.channels_last)
                kwargs = {"cond": h}
                if cfg.cond_drop > 0:  # classifier-free guidance: some samples see the null condition
                    kwargs["cond_drop"] = torch.rand(x.shape[0], device=device, generator=noise_gen) < cfg.cond_drop
                last = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    losses = diffusion.training_losses(
                        model,
                        x,
                        t,
                        kwargs,
                        noise=noise,
                        p2_gamma=cfg.p2_gamma,
                        p2_k=cfg.p2_k,
                        min_snr_gamma=cfg.min_snr_gamma,
                    )
                    accelerator.backward(losses["loss"].mean() / cfg.grad_accum)
                stats.add_micro(losses, t, state.step)

            # Clip, step, average.
            clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            stats.add_step(accelerator.clip_grad_norm_(model.parameters(), clip))
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(net, state.step)
            prev, state.nimg = state.nimg, state.nimg + cfg.batch_size
            bar.update(cfg.batch_size)
            finished = state.nimg >= total_nimg
            save_now = finished or state.nimg // ckpt_nimg > prev // ckpt_nimg

            # Log: the only host sync of the step, every log_every steps.
            if state.step % cfg.log_every == 0 or save_now:
                _check_finite(stats, last_good)
                means = stats.collect(accelerator.reduce)
                now = time.perf_counter()
                rec = {
                    "step": state.step,
                    "kimg": state.nimg / 1000,
                    **means,
                    "img_per_s": (state.nimg - nimg_log) / max(now - t_log, 1e-9),
                    "sec_per_step": (now - t_log) / max((state.nimg - nimg_log) / cfg.batch_size, 1),
                    "mem_gb": memory_gb(device),
                    "lr": cfg.lr,
                    "time": now_iso(),
                }
                t_log, nimg_log = now, state.nimg
                logger.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")

            # Checkpoint, and a sample grid from the first EMA.
            if save_now:
                last_good = state.save(
                    run_dir, meta_at(state.nimg / 1000), keep=cfg.keep_checkpoints, milestone_kimg=cfg.milestone_kimg
                )
            if grid_nimg and (finished or state.nimg // grid_nimg > prev // grid_nimg):
                if grids is not None:
                    grid_mp = "bf16" if mp == "bf16" else "no"
                    path = run_dir.grids / f"kimg-{state.nimg / 1000:09.3f}.png"
                    grids.make(ema.models[ema.rates[0]], device, grid_mp, path, kimg=state.nimg / 1000)
                accelerator.wait_for_everyone()
            # Faithfulness of the first EMA on the held-out conditions (main process; no sync:
            # the other ranks meet it at the next all-reduce).
            if eval_nimg and (finished or state.nimg // eval_nimg > prev // eval_nimg):
                rec = check.run(ema.models[ema.rates[0]], "bf16" if mp == "bf16" else "no")
                logger.write(
                    {"step": state.step, "kimg": state.nimg / 1000, "event": "faithfulness", **rec},
                    tb_prefix="faithfulness",
                )
                t_log += rec["eval_sec"]  # the check's time is not counted as training time
    finally:
        state.wait_for_writes()  # a checkpoint still being written in the background lands first
        bar.close()
        logger.close()
        del batches  # stops the loader's worker processes

    # Done: the run's manifest, last.
    if main:
        record = {
            "stage": "train",
            "finished": now_iso(),
            "kimg": state.nimg / 1000,
            "step": state.step,
            "store": str(store.path),
            "store_manifest_sha256": store.manifest_sha256,
            "checkpoint": str(last_good) if last_good else None,
            "config": to_dict(cfg),
        }
        atomic_write_json(run_dir.manifest, record)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir.path


def _check_finite(stats: Stats, last_good: Path | None) -> None:
    bad = stats.first_bad_step()
    if bad is not None:
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"the loss became NaN or inf at step {bad}; {where}. Lower train.lr, keep "
            "train.grad_clip > 0, or try train.mixed_precision=no, then re-run to resume from it"
        )
