"""``rcdm.train.run``: the training loop (accelerate: one CPU process to multi-node DDP).

The step is DiT's: ``t ~ U{0..999}``, ``loss = diffusion.training_losses(model, x, t, {"cond": h})``
(the hybrid MSE + VLB loss of improved DDPM), AdamW at a constant lr, then the EMA update.
Progress is counted in images (kimg), so schedules do not depend on the batch size or the number
of GPUs. Re-running the same command resumes from the newest complete checkpoint with the same
data order, noise and loss sequence.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rcdm.app.config import TrainConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput, UserError
from rcdm.store import FeatureStore
from rcdm.train import model as model_setup
from rcdm.train import state as ckpt
from rcdm.train.data import ImageFeatureDataset, make_loader, to_model_input
from rcdm.train.ema import EMA, rate_tag
from rcdm.train.monitor import Logger, Stats, memory_gb
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
    for name in ("kimg", "checkpoint_kimg"):
        if getattr(cfg, name) <= 0:
            raise InvalidInput(f"train.{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.log_every < 1:
        raise InvalidInput("train.batch_size, train.grad_accum and train.log_every must be >= 1")
    if not 0.0 <= cfg.cond_drop < 1.0:
        raise InvalidInput(f"train.cond_drop must be in [0, 1) (0.1 is usual for guidance), got {cfg.cond_drop}")
    if cfg.p2_gamma < 0 or cfg.p2_k < 0:
        raise InvalidInput(f"train.p2_gamma and train.p2_k must be >= 0, got {cfg.p2_gamma} and {cfg.p2_k}")
    if cfg.grid_guidance != 1.0:
        from rcdm.diffusion.generate import check_guidance

        check_guidance(cfg.grid_guidance, {"cond_drop": cfg.cond_drop}, f"train.out {cfg.out}")


def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the run directory."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    _validate(cfg)
    mp = _mixed_precision(cfg.mixed_precision)
    # run() may be called several times in one process (the pipeline, tests) with other
    # precisions; the process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=mp,
        cpu=not torch.cuda.is_available(),
        # prepare() compiles the model last (after DDP), the way accelerate supports it
        dynamo_backend="inductor" if cfg.compile else "no",
    )
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    main = accelerator.is_main_process
    per_step = world * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise InvalidInput(
            f"train.batch_size={cfg.batch_size} is not divisible by processes x grad_accum = "
            f"{world} x {cfg.grad_accum}; use a multiple of {per_step}"
        )
    batch_per_process = cfg.batch_size // per_step  # micro-batch size on each rank
    out = Path(cfg.out)

    # ---- store, model config, consistency with the run directory and --init-from
    store = FeatureStore(cfg.store)
    model_setup.check_store(store, cfg)
    ucfg = model_setup.unet_config(cfg, store.dim)
    total_nimg = int(round(cfg.kimg * 1000))
    meta = model_setup.model_meta(ucfg, store, cfg, kimg=0.0)
    model_setup.check_run_dir(out, meta, store)
    latest = ckpt.latest_checkpoint(out)
    if latest is not None and (out / "manifest.json").exists():
        done = ckpt.read_state(latest)
        if done["nimg"] >= total_nimg:
            if main:
                print(f"run {out} is finished ({done['nimg'] / 1000:g} kimg); nothing to do")
            return out

    # ---- seeds: one per rank (DiT: global_seed * world_size + rank)
    rank_seed = cfg.seed * world + rank
    torch.manual_seed(rank_seed)

    # ---- model, EMA, optimizer
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS, create_diffusion, sample_timesteps
    from rcdm.model.unet import UNetModel

    net = UNetModel(ucfg)
    if latest is None and cfg.init_from:
        from rcdm.model.weights import load_state_dict_strict

        load_state_dict_strict(net, model_setup.load_init(cfg, ucfg, store))
    if latest is None and hasattr(net, "cond_norm") and not cfg.init_from:
        # both views: the model sees either, as the flip picks one
        net.cond_norm.set_statistics(torch.from_numpy(store.features(None).reshape(-1, store.dim)))
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema_rates, warmup=cfg.ema_warmup)
    opt = torch.optim.AdamW(
        net.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",  # one kernel for all parameters
    )
    diffusion = create_diffusion(ucfg.schedule, steps=DIFFUSION_STEPS)
    model, opt = accelerator.prepare(net, opt)
    # We write the weights ourselves (safetensors + meta json): accelerate keeps only the
    # optimizer, scaler and RNG states.
    accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())

    # ---- resume
    step, nimg = 0, 0
    if latest is not None:
        step, nimg = _load_checkpoint(latest, accelerator, net, ema, cfg)
        if main:
            print(f"resuming {out} from {latest.name} ({nimg / 1000:g} kimg)")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, out)
        ckpt.truncate_log(out / "log.jsonl", step)
        (out / "manifest.json").unlink(missing_ok=True)  # training more: not finished any more
    accelerator.wait_for_everyone()

    # ---- data
    dataset = ImageFeatureDataset(cfg.store, ucfg.image_size, source=cfg.source)
    loader = make_loader(
        dataset,
        batch_per_process,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        start=nimg,
        workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    grids = None
    if main and cfg.grid_kimg > 0:
        from rcdm.train.grid import GridMaker

        grids = GridMaker(
            dataset, meta, cfg.grid_images, cfg.grid_samples, cfg.grid_sampler, cfg.seed
        )

    model.train()
    stats = Stats(device, diffusion.num_timesteps)
    logger = Logger(out, step, enabled=main)
    noise_gen = torch.Generator(device=device)
    ckpt_nimg = max(1, int(round(cfg.checkpoint_kimg * 1000)))
    grid_nimg = int(round(cfg.grid_kimg * 1000)) if cfg.grid_kimg > 0 else 0
    last_good = latest
    meta_fn = lambda kimg: model_setup.model_meta(ucfg, store, cfg, kimg)  # noqa: E731

    from tqdm.auto import tqdm

    # counted in images; unit_scale shows thousands as "k" (kimg)
    bar = tqdm(total=total_nimg, initial=nimg, unit="img", unit_scale=True, disable=not main)
    t_log, nimg_log = time.perf_counter(), nimg
    try:
        while nimg < total_nimg:
            step += 1
            # ---- one optimiser step: grad_accum micro-batches per rank
            for micro in range(cfg.grad_accum):
                x, h, _rows = next(batches)
                x = to_model_input(x.to(device, non_blocking=True))  # (b, 3, H, W) in [-1, 1]
                h = h.to(device, non_blocking=True)  # (b, D)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # t and noise depend on (seed, rank, step, micro) only: resuming redraws them
                noise_gen.manual_seed(
                    (rank_seed * _NOISE_STRIDE + (step - 1) * cfg.grad_accum + micro) % (2**63)
                )
                t = sample_timesteps(x.shape[0], diffusion.num_timesteps, device, noise_gen)
                noise = torch.randn(x.shape, device=device, generator=noise_gen, dtype=x.dtype)
                kwargs = {"cond": h}
                if cfg.cond_drop > 0:  # classifier-free guidance: some samples see the null condition
                    kwargs["cond_drop"] = torch.rand(x.shape[0], device=device, generator=noise_gen) < cfg.cond_drop
                sync = micro == cfg.grad_accum - 1
                ctx = accelerator.no_sync(model) if not sync and world > 1 else _null()
                with ctx:
                    losses = diffusion.training_losses(
                        model, x, t, kwargs, noise=noise, p2_gamma=cfg.p2_gamma, p2_k=cfg.p2_k
                    )
                    loss = losses["loss"].mean() / cfg.grad_accum
                    accelerator.backward(loss)
                stats.add_micro(losses, t, step)
            clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
            stats.add_step(grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(net, step)
            prev, nimg = nimg, nimg + cfg.batch_size
            bar.update(cfg.batch_size)

            finished = nimg >= total_nimg
            save_now = finished or nimg // ckpt_nimg > prev // ckpt_nimg
            # ---- log (the only host sync of the step, every log_every steps)
            if step % cfg.log_every == 0 or save_now:
                _check_finite(stats, last_good)
                rec = stats.collect(accelerator.reduce)
                now = time.perf_counter()
                rec = {
                    "step": step,
                    "kimg": nimg / 1000,
                    **rec,
                    "img_per_s": (nimg - nimg_log) / max(now - t_log, 1e-9),
                    "sec_per_step": (now - t_log) / max((nimg - nimg_log) / cfg.batch_size, 1),
                    "mem_gb": memory_gb(device),
                    "lr": cfg.lr,
                    "time": now_iso(),
                }
                t_log, nimg_log = now, nimg
                logger.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if save_now:
                last_good = _save_checkpoint(out, accelerator, net, ema, step, nimg, meta_fn, cfg)
            if grid_nimg and (finished or nimg // grid_nimg > prev // grid_nimg):
                if grids is not None:
                    first = ema.models[cfg.ema_rates[0]]
                    grid_mp = "bf16" if mp == "bf16" else "no"
                    grids.make(first, device, grid_mp, out / "grids" / f"kimg-{nimg / 1000:09.3f}.png")
                accelerator.wait_for_everyone()
    finally:
        bar.close()
        logger.close()
        del batches  # stops the loader's worker processes

    if main:
        atomic_write_json(
            out / "manifest.json",
            {
                "stage": "train",
                "finished": now_iso(),
                "kimg": nimg / 1000,
                "step": step,
                "store": str(store.path),
                "store_manifest_sha256": store.manifest_sha256,
                "checkpoint": str(last_good) if last_good else None,
                "config": to_dict(cfg),
            },
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def _check_finite(stats: Stats, last_good: Path | None) -> None:
    bad = stats.first_bad_step()
    if bad is not None:
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"the loss became NaN or inf at step {bad}; {where}. Lower train.lr, keep "
            "train.grad_clip > 0, or try train.mixed_precision=no, then re-run to resume from it"
        )


def _save_checkpoint(
    out: Path, accelerator, net: torch.nn.Module, ema: EMA, step: int, nimg: int, meta_fn, cfg: TrainConfig
) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically, then the run-level EMA and model.json."""
    main = accelerator.is_main_process
    tmp = ckpt.checkpoints_dir(out) / f".{ckpt.checkpoint_name(step)}.tmp"
    if main:
        tmp = ckpt.begin_checkpoint(out, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "accelerate"))  # optimizer, scaler, RNG of every rank
    accelerator.wait_for_everyone()  # every rank's RNG file is in tmp before it is renamed
    final = ckpt.checkpoints_dir(out) / ckpt.checkpoint_name(step)
    if main:
        from rcdm.model.weights import save_weights

        meta = meta_fn(nimg / 1000)
        sd = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
        save_weights(tmp / "model.safetensors", sd, {**meta, "ema_rate": None})
        for rate, m in ema.models.items():
            save_weights(tmp / f"ema-{rate_tag(rate)}.safetensors", _cpu(m), {**meta, "ema_rate": rate})
        atomic_write_json(tmp / "model.json", meta)
        state = {
            "step": step,
            "nimg": nimg,  # the data position: global stream index of the next image
            "kimg": nimg / 1000,
            "seed": cfg.seed,  # the stream and the noise are functions of it
            "batch_size": cfg.batch_size,
            "time": now_iso(),
        }
        final = ckpt.commit_checkpoint(tmp, state)
        # run level: the first EMA rate's weights, what sampling loads by default
        first = cfg.ema_rates[0]
        save_weights(out / "ema.safetensors", _cpu(ema.models[first]), {**meta, "ema_rate": first})
        atomic_write_json(out / "model.json", meta)
        ckpt.prune_checkpoints(out, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


def _cpu(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in m.state_dict().items()}


def _load_checkpoint(path: Path, accelerator, net: torch.nn.Module, ema: EMA, cfg: TrainConfig) -> tuple[int, int]:
    """Restore model, EMA, optimizer and RNG from ``path``; returns (step, nimg)."""
    from rcdm.model.weights import load_state_dict_strict
    from safetensors.torch import load_file

    device = accelerator.device
    st = ckpt.read_state(path)
    if int(st.get("seed", cfg.seed)) != cfg.seed:
        raise InvalidInput(
            f"checkpoint {path} was trained with train.seed={st['seed']}, not {cfg.seed}: resuming "
            "would change the data order and noise; use the run's seed or a new --out"
        )
    load_state_dict_strict(net, load_file(str(path / "model.safetensors"), device=str(device)))
    sds = {}
    for rate in cfg.ema_rates:
        f = path / f"ema-{rate_tag(rate)}.safetensors"
        if not f.exists():
            raise InvalidInput(
                f"checkpoint {path} has no EMA for rate {rate}; re-run with the run's ema_rates "
                "or start a new run (--out)"
            )
        sds[rate] = load_file(str(f), device=str(device))
    ema.load_state_dicts(sds)
    accelerator.load_state(str(path / "accelerate"))
    return int(st["step"]), int(st["nimg"])
