"""``rcdm.train.run``: the training loop (accelerate: one CPU process to multi-node DDP).

The step is DiT's: ``t ~ U{0..999}``, ``loss = diffusion.training_losses(model, x, t, {"cond": h})``
(the hybrid MSE + VLB loss of improved DDPM), AdamW at a constant lr, then the EMA update.
Progress is counted in images (kimg), so schedules do not depend on the batch size or the number
of GPUs. Re-running the same command resumes from the newest complete checkpoint with the same
data order, noise and loss sequence.

``run`` reads like EDM2's ``training_loop``: set up the processes and the run folder, seed, build
the model, resume, train, write the manifest. The order of its steps is the order of every random
draw (the UNet's initialisation, the data loaders' seeds, the noise), so moving one changes the
weights a run trains.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rcdm.config import TrainConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput, UserError, first_line
from rcdm.launch import launch_state, on_main, processes
from rcdm.model.config import UNetConfig
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
from rcdm.train.threads import apply_threads, loader_workers, resolve_threads, threads_restored
from rcdm.utils import atomic_write_json, now_iso

if TYPE_CHECKING:
    from rcdm.train.faithcheck import FaithCheck
    from rcdm.train.grid import GridMaker

# Separates the noise generators' seeds of consecutive micro-batches and of ranks.
_NOISE_STRIDE = 1_000_003


class NonFiniteLoss(UserError):
    """The loss became NaN or inf."""


class ProcessLost(UserError):
    """Another process of the launch stopped, or did not answer within train.pg_timeout_s."""


@dataclass
class _Run:
    """What a run is set up with: the config as resolved, the processes, the run folder, the
    store and the model config (``ucfg``: the one truth about the UNet from here on)."""

    cfg: TrainConfig  # train.threads resolved
    accelerator: Any
    mp: str  # mixed precision: "no", "bf16" or "fp16"
    device: torch.device
    world: int
    rank: int
    main: bool
    channels_last: bool
    workers: int  # the loader's worker processes
    batch_per_process: int  # micro-batch size on each rank
    total_nimg: int
    run_dir: RunDir
    store: FeatureStore
    ucfg: UNetConfig
    latest: Path | None  # the newest complete checkpoint: training resumes from it

    @property
    def rank_seed(self) -> int:
        """One seed per rank (DiT: global_seed * world_size + rank)."""
        return self.cfg.seed * self.world + self.rank

    @property
    def sample_mp(self) -> str:
        """The precision grids and checks sample in: bf16 when training in it, else fp32."""
        return "bf16" if self.mp == "bf16" else "no"

    def meta(self, kimg: float) -> dict:
        """``model.json`` at ``kimg``."""
        return model_setup.model_meta(self.ucfg, self.store, self.cfg, kimg)


@dataclass
class _Model:
    """What trains: the UNet, its EMAs, the optimizer and the diffusion, and the images."""

    net: torch.nn.Module  # the UNet whose weights are saved
    model: torch.nn.Module  # net as accelerate prepared it (DDP, compiled): the one called
    ema: EMA
    opt: torch.optim.Optimizer
    diffusion: Any
    dataset: ImageFeatureDataset


@dataclass
class _Loop:
    """What the steps share: the data, the noise generator, the monitors and the triggers."""

    batches: Iterator | None  # this rank's micro-batches; None once the loop is over
    noise_gen: torch.Generator
    layout: bool | None  # to_model_input's layout
    stats: Stats
    logger: Logger
    bar: Any  # tqdm
    grids: GridMaker | None  # on the main process with train.grid_kimg > 0
    check: FaithCheck | None  # on the main process when there is one
    ckpt_nimg: int  # every how many images: a checkpoint, a grid, a faithfulness check (0: never)
    grid_nimg: int
    eval_nimg: int
    last_good: Path | None  # the newest checkpoint written (or resumed from)
    t_log: float  # the time and the position of the last log record
    nimg_log: int


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


def _accelerator(cfg: TrainConfig, mixed_precision: str, compile: bool):
    """The Accelerator on the device this stage asks for (CUDA when there is one), whatever state an
    earlier stage of this process left; collectives wait ``train.pg_timeout_s`` for the others."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    cpu = not torch.cuda.is_available()
    launch_state("auto", cfg.pg_timeout_s)  # made anew if an earlier stage made it for the other device
    # run() may be called several times in one process (the pipeline, tests) with other
    # precisions; the process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=cpu,
        # prepare() compiles the model last (after DDP), the way accelerate supports it
        dynamo_backend=cfg.compile_backend if compile else "no",
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.pg_timeout_s))],
    )
    want = "cpu" if cpu else "cuda"
    if accelerator.device.type != want:  # launch_state's reset is what prevents it
        raise RuntimeError(f"rcdm train asked accelerate for {want} and was given {accelerator.device}")
    return accelerator


@holding_output_lock("rcdm train")  # one writer per run folder (rank 0 holds it for a launch)
def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the run directory."""
    _validate(cfg)
    with threads_restored():  # train.threads holds for training only, not the stages after it
        r = _setup(cfg)  # processes, threads, the store, the model config, the checkpoint to resume from
        if _finished(r):
            return r.run_dir.path
        with _peers(r):  # another process lost: one line, not a hang or gloo's traceback
            torch.manual_seed(r.rank_seed)  # the UNet's initialisation and every draw after it
            m = _build(r)  # model, EMA, optimizer, diffusion; the training images
            state = _resume(r, m)  # the state training resumes from; the run folder made ready
            last_good = _train(r, m, state)
            _finish(r, state, last_good)
    return r.run_dir.path


@contextlib.contextmanager
def _peers(r: _Run) -> Iterator[None]:
    """With several processes, a collective that failed because another process stopped (its
    connection closed) or did not come within train.pg_timeout_s becomes one line saying so."""
    try:
        yield
    except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors
        if r.world == 1 or not _collective_failed(e):
            raise
        why = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e, 160))  # gloo's source location first
        latest = r.run_dir.latest()
        resume = f"from {latest.name}" if latest is not None else "from the start (no checkpoint yet)"
        raise ProcessLost(
            f"process {r.rank} of {r.world} lost the others ({why}): another process stopped (its "
            f"own error says why), was killed, or did not reach this point within train.pg_timeout_s="
            f"{r.cfg.pg_timeout_s:g} s; re-run the same command to resume {resume}"
        ) from None


def _collective_failed(e: BaseException) -> bool:
    """Whether ``e`` is a failed collective of the process group (gloo / NCCL / the store)."""
    dist = getattr(torch, "distributed", None)
    if dist is not None and isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(w in text for w in ("gloo", "Connection closed by peer", "Connection reset by peer", "NCCL"))


def _setup(cfg: TrainConfig) -> _Run:
    """The accelerator, its device and the threads; the batch per process; then the store and the
    model config, checked against what the run folder already holds."""
    mp = _mixed_precision(cfg.mixed_precision)
    cuda = torch.cuda.is_available()
    compile_ = resolve_compile(cfg.compile, "cuda" if cuda else "cpu")  # auto: on CUDA, as bench/train.py
    accelerator = _accelerator(cfg, mp, compile_)
    device = accelerator.device
    enable_fast_math(device)  # cuDNN autotune + TF32 on CUDA
    channels_last = resolve_channels_last(cfg.channels_last, compile_, device)
    if accelerator.is_main_process:  # the device it runs on, first
        print(_describe(accelerator, mp, cfg.compile_backend if compile_ else None, channels_last))
    # torch threads: the cores this machine's processes share, minus their loader workers
    workers = loader_workers(cfg)  # the loader's; torch's threads leave them their cores on a GPU
    cfg = resolve_threads(cfg, int(os.environ.get("LOCAL_WORLD_SIZE") or 1), device.type, workers=workers)
    apply_threads(cfg.threads)  # on every device: the value config.yaml records is the one used
    batch_per_process = _batch_per_process(cfg, accelerator.num_processes)
    run_dir = RunDir(cfg.out)

    # Store and model config; a run folder that holds a run continues only that run.
    store = FeatureStore(cfg.store)
    model_setup.check_store(store, cfg)
    ucfg = model_setup.unet_config(cfg, store.dim, (store.token_shape or (0,))[0])
    run_dir.check_continues(model_setup.model_meta(ucfg, store, cfg, 0.0), store)
    latest = run_dir.latest()
    main = accelerator.is_main_process
    if main and run_dir.stale() is not None:  # killed before its newest checkpoint was published
        run_dir.publish(latest)
    return _Run(
        cfg=cfg,
        accelerator=accelerator,
        mp=mp,
        device=device,
        world=accelerator.num_processes,
        rank=accelerator.process_index,
        main=main,
        channels_last=channels_last,
        workers=workers,
        batch_per_process=batch_per_process,
        total_nimg=int(round(cfg.kimg * 1000)),
        run_dir=run_dir,
        store=store,
        ucfg=ucfg,
        latest=latest,
    )


def _describe(accelerator: Any, mp: str, backend: str | None, channels_last: bool) -> str:
    """The first line of a run: where it trains and how."""
    return (
        f"training on {accelerator.device} ({processes(accelerator.num_processes)}; precision {mp}; compile "
        f"{backend or 'off'}; {'channels-last' if channels_last else 'NCHW'})"
    )


def _batch_per_process(cfg: TrainConfig, world: int) -> int:
    """The micro-batch size on each rank: the batch split over processes and grad_accum."""
    per_step = world * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise InvalidInput(
            f"train.batch_size={cfg.batch_size} is not divisible by processes x grad_accum = "
            f"{world} x {cfg.grad_accum}; use a multiple of {per_step}"
        )
    return cfg.batch_size // per_step


def _finished(r: _Run) -> bool:
    """Whether the run folder holds this run finished (a re-run then has nothing to do)."""
    if r.latest is None or not r.run_dir.manifest.exists():
        return False
    nimg = RunDir.read_state(r.latest)["nimg"]
    if nimg < r.total_nimg:
        return False
    if r.main:
        print(f"run {r.run_dir.path} is finished ({nimg / 1000:g} kimg); nothing to do")
    return True


def _build(r: _Run) -> _Model:
    """Model, EMA, optimizer, diffusion (in that order: the UNet's initialisation draws from the
    seeded RNG), and the training images."""
    from rcdm.diffusion import gaussian

    cfg, fresh = r.cfg, r.latest is None
    net = model_setup.build_net(cfg, r.ucfg, r.store, fresh=fresh)
    # The training images, opened once: a fresh cond_image map is fitted on them (before the EMA
    # copies the weights), and the loader reads them.
    dataset = _images(r)
    model_setup.fit_and_freeze_cond_image(net, cfg, r.ucfg, dataset, fresh=fresh, workers=r.workers, show=r.main)
    net.to(r.device)
    if r.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema_rates, warmup=cfg.ema_warmup)
    opt = torch.optim.AdamW(
        net.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=r.device.type == "cuda",  # one kernel for all parameters
    )
    diffusion = gaussian.create_diffusion(
        r.ucfg.schedule,
        steps=gaussian.DIFFUSION_STEPS,
        prediction=cfg.prediction,
        zero_terminal_snr=cfg.zero_terminal_snr,
    )
    model, opt = r.accelerator.prepare(net, opt)
    return _Model(net=net, model=model, ema=ema, opt=opt, diffusion=diffusion, dataset=dataset)


def _images(r: _Run) -> ImageFeatureDataset:
    """The training images at the model's resolution, read through the image cache when it is
    wanted (decode + resize once, every process a share of the rows)."""
    cfg, size = r.cfg, r.ucfg.image_size
    dataset = ImageFeatureDataset(cfg.store, size, source=cfg.source, draft=cfg.draft)
    # decided once, by the main process (the free space it sees), so every process builds it or none
    if on_main(lambda: image_cache.wanted(cfg.image_cache, r.store, size, r.device, cfg.draft)):
        # every process decodes its share of the rows (ImageNet at 128 px: ~10 min on one)
        dataset.use_cache(image_cache.build(dataset, r.store, r.workers, show=r.main, rank=r.rank, world=r.world))
    return dataset


def _resume(r: _Run, m: _Model) -> TrainState:
    """The state training resumes from (the newest checkpoint's, or step 0); the run folder made
    ready for more training (its config, its log cut at that step, no manifest)."""
    background = r.cfg.checkpoint_async == "on" or (r.cfg.checkpoint_async == "auto" and r.device.type == "cuda")
    state = TrainState(r.accelerator, m.net, m.ema, seed=r.cfg.seed, batch_size=r.cfg.batch_size, background=background)
    if r.latest is not None:
        state.load(r.latest)
        if r.main:
            print(f"resuming {r.run_dir.path} from {r.latest.name} ({state.nimg / 1000:g} kimg)")
    if r.main:
        r.run_dir.path.mkdir(parents=True, exist_ok=True)
        save_resolved(r.cfg, r.run_dir.path)
        r.run_dir.truncate_log(state.step)
        r.run_dir.manifest.unlink(missing_ok=True)  # training more: not finished any more
    r.accelerator.wait_for_everyone()
    return state


def _train(r: _Run, m: _Model, state: TrainState) -> Path | None:
    """Optimizer steps until ``total_nimg`` images, each followed by what falls due (a log record,
    a checkpoint, a grid, a faithfulness check). Returns the newest checkpoint."""
    lp = _loop(r, m, state)
    try:
        while state.nimg < r.total_nimg:
            _step(r, m, state, lp)
            prev, state.nimg = state.nimg, state.nimg + r.cfg.batch_size
            lp.bar.update(r.cfg.batch_size)
            _after_step(r, m, state, lp, prev)
    finally:
        state.wait_for_writes()  # a checkpoint still being written in the background lands first
        lp.bar.close()
        lp.logger.close()
        lp.batches = None  # stops the loader's worker processes
    return lp.last_good


def _loop(r: _Run, m: _Model, state: TrainState) -> _Loop:
    """The data from the position reached, the grid maker and the faithfulness check, the
    monitors, the noise generator and the triggers' periods."""
    cfg = r.cfg
    # Data: this rank's share of one seeded stream, from the position reached.
    loader = make_loader(
        m.dataset,
        r.batch_per_process,
        seed=cfg.seed,
        rank=r.rank,
        world_size=r.world,
        start=state.nimg,
        workers=r.workers,
        pin_memory=r.device.type == "cuda",
    )
    batches = iter(loader)
    grids = _grid_maker(r, m.dataset)
    check, eval_nimg = _faith_check(r)

    # Main training loop.
    m.model.train()
    stats = Stats(r.device, m.diffusion.num_timesteps)
    logger = Logger(r.run_dir.log, r.run_dir.tensorboard, state.step, enabled=r.main)
    for record in state.rng_lost_records():  # resumed without a saved RNG state: say so in the log
        logger.write(record)
    noise_gen = torch.Generator(device=r.device)
    layout = input_layout(r.channels_last, r.device)  # one layout end to end (CPU + NCHW: the pixels' strides)

    from tqdm.auto import tqdm

    # counted in images; unit_scale shows thousands as "k" (kimg)
    bar = tqdm(total=r.total_nimg, initial=state.nimg, unit="img", unit_scale=True, disable=not r.main)
    return _Loop(
        batches=batches,
        noise_gen=noise_gen,
        layout=layout,
        stats=stats,
        logger=logger,
        bar=bar,
        grids=grids,
        check=check,
        ckpt_nimg=max(1, int(round(cfg.checkpoint_kimg * 1000))),
        grid_nimg=int(round(cfg.grid_kimg * 1000)) if cfg.grid_kimg > 0 else 0,
        eval_nimg=eval_nimg,
        last_good=r.latest,
        t_log=time.perf_counter(),
        nimg_log=state.nimg,
    )


def _grid_maker(r: _Run, dataset: ImageFeatureDataset) -> GridMaker | None:
    """Sample grids of fixed rows and seeds (main process, train.grid_kimg > 0), else None."""
    if not (r.main and r.cfg.grid_kimg > 0):
        return None
    from rcdm.train.grid import GridMaker

    cfg = r.cfg
    return GridMaker(dataset, r.meta(0.0), cfg.grid_images, cfg.grid_samples, cfg.grid_sampler, cfg.seed)


def _faith_check(r: _Run) -> tuple[FaithCheck | None, int]:
    """The faithfulness check on held-out conditions and every how many images it runs (main
    process; None and 0: none, and the main process says why)."""
    if not r.main:
        return None, 0
    from rcdm.train.faithcheck import check_nimg, make_check

    check, said = make_check(r.cfg, r.meta(0.0), r.device)
    print(said)
    return check, check_nimg(r.cfg) if check is not None else 0


def _step(r: _Run, m: _Model, state: TrainState, lp: _Loop) -> None:
    """One optimizer step: the gradients of grad_accum micro-batches, clipped; AdamW; the EMA
    update."""
    cfg = r.cfg
    state.step += 1
    for micro in range(cfg.grad_accum):
        _micro_batch(r, m, state, lp, micro)

    # Clip, step, average.
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    lp.stats.add_step(r.accelerator.clip_grad_norm_(m.model.parameters(), clip))
    m.opt.step()
    m.opt.zero_grad(set_to_none=True)
    m.ema.update(m.net, state.step)


def _check_conditions(h: torch.Tensor, rows: torch.Tensor, store: FeatureStore) -> None:
    """The batch's features (on the host, before the copy: no device sync) are finite, or the rows
    are named: a NaN condition would end as a "non-finite loss" blamed on the learning rate."""
    bad = ~torch.isfinite(h).reshape(len(h), -1).all(1)
    if bool(bad.any()):
        row = int(rows[bad][0])
        raise InvalidInput(
            f"{int(bad.sum())} training row(s) hold NaN or inf features (the first: row {row}, "
            f"{store.keys[row]!r}, of {store.path}); train on finite ones: `rcdm store verify` names the damaged "
            "shards, re-extract them"
        )


def _micro_batch(r: _Run, m: _Model, state: TrainState, lp: _Loop, micro: int) -> None:
    """The loss of the next micro-batch at its seeded t and noise; its gradient accumulated
    (DDP all-reduces on the last of the step's grad_accum)."""
    from rcdm.diffusion import gaussian

    cfg, device = r.cfg, r.device
    x, h, rows = next(lp.batches)
    _check_conditions(h, rows, r.store)
    x = to_model_input(x.to(device, non_blocking=True), lp.layout)  # (b, 3, H, W) in [-1, 1]
    h = h.to(device, non_blocking=True)  # (b, D)
    # t and noise depend on (seed, rank, step, micro) only: resuming redraws them
    lp.noise_gen.manual_seed((r.rank_seed * _NOISE_STRIDE + (state.step - 1) * cfg.grad_accum + micro) % (2**63))
    t = gaussian.sample_timesteps(x.shape[0], m.diffusion.num_timesteps, device, lp.noise_gen)
    noise = torch.randn(x.shape, device=device, generator=lp.noise_gen, dtype=x.dtype)
    if lp.layout:  # the model's channels-last (a fresh randn is already contiguous NCHW)
        noise = noise.contiguous(memory_format=torch.channels_last)
    kwargs = {"cond": h}
    if cfg.cond_drop > 0:  # classifier-free guidance: some samples see the null condition
        kwargs["cond_drop"] = torch.rand(x.shape[0], device=device, generator=lp.noise_gen) < cfg.cond_drop
    last = micro == cfg.grad_accum - 1
    with contextlib.nullcontext() if last else r.accelerator.no_sync(m.model):
        losses = m.diffusion.training_losses(
            m.model,
            x,
            t,
            kwargs,
            noise=noise,
            p2_gamma=cfg.p2_gamma,
            p2_k=cfg.p2_k,
            min_snr_gamma=cfg.min_snr_gamma,
        )
        r.accelerator.backward(losses["loss"].mean() / cfg.grad_accum)
    lp.stats.add_micro(losses, t, state.step)


def _after_step(r: _Run, m: _Model, state: TrainState, lp: _Loop, prev: int) -> None:
    """What falls due once the position moved from ``prev`` to ``state.nimg``: a log record, a
    checkpoint, a sample grid, a faithfulness check (each at the end of training too)."""
    cfg = r.cfg
    finished = state.nimg >= r.total_nimg
    save_now = _due(lp.ckpt_nimg, prev, state.nimg, finished)

    # Log: the only host sync of the step, every log_every steps.
    if state.step % cfg.log_every == 0 or save_now:
        _log(r, state, lp)

    # Checkpoint, and a sample grid from the first EMA.
    if save_now:
        lp.last_good = state.save(
            r.run_dir, r.meta(state.nimg / 1000), keep=cfg.keep_checkpoints, milestone_kimg=cfg.milestone_kimg
        )
    if _due(lp.grid_nimg, prev, state.nimg, finished):
        if lp.grids is not None:
            path = r.run_dir.grids / f"kimg-{state.nimg / 1000:09.3f}.png"
            lp.grids.make(m.ema.models[m.ema.rates[0]], r.device, r.sample_mp, path, kimg=state.nimg / 1000)
        r.accelerator.wait_for_everyone()
    # Faithfulness of the first EMA on the held-out conditions (main process; no sync:
    # the other ranks meet it at the next all-reduce).
    if _due(lp.eval_nimg, prev, state.nimg, finished):
        rec = lp.check.run(m.ema.models[m.ema.rates[0]], r.sample_mp)
        lp.logger.write(
            {"step": state.step, "kimg": state.nimg / 1000, "event": "faithfulness", **rec},
            tb_prefix="faithfulness",
        )
        lp.t_log += rec["eval_sec"]  # the check's time is not counted as training time


def _due(every_nimg: int, prev: int, nimg: int, finished: bool) -> bool:
    """Whether a thing done every ``every_nimg`` images (0: never) is due after the step from
    ``prev`` to ``nimg`` images: a multiple was crossed, or training finished."""
    return bool(every_nimg) and (finished or nimg // every_nimg > prev // every_nimg)


def _log(r: _Run, state: TrainState, lp: _Loop) -> None:
    """One ``log.jsonl`` record: the interval's means over every process, speed and memory."""
    cfg = r.cfg
    _check_finite(lp.stats, lp.last_good)
    means = lp.stats.collect(r.accelerator.reduce)
    now = time.perf_counter()
    rec = {
        "step": state.step,
        "kimg": state.nimg / 1000,
        **means,
        "img_per_s": (state.nimg - lp.nimg_log) / max(now - lp.t_log, 1e-9),
        "sec_per_step": (now - lp.t_log) / max((state.nimg - lp.nimg_log) / cfg.batch_size, 1),
        "mem_gb": memory_gb(r.device),
        "lr": cfg.lr,
        "time": now_iso(),
    }
    lp.t_log, lp.nimg_log = now, state.nimg
    lp.logger.write(rec)
    lp.bar.set_postfix(loss=f"{rec['loss']:.4f}")


def _finish(r: _Run, state: TrainState, last_good: Path | None) -> None:
    """Done: the run's manifest, last."""
    if r.main:
        record = {
            "stage": "train",
            "finished": now_iso(),
            "kimg": state.nimg / 1000,
            "step": state.step,
            "store": str(r.store.path),
            "store_manifest_sha256": r.store.manifest_sha256,
            "checkpoint": str(last_good) if last_good else None,
            "config": to_dict(r.cfg),
        }
        atomic_write_json(r.run_dir.manifest, record)
    r.accelerator.wait_for_everyone()
    r.accelerator.end_training()


def _check_finite(stats: Stats, last_good: Path | None) -> None:
    bad = stats.first_bad_step()
    if bad is not None:
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"the loss became NaN or inf at step {bad}; {where}. Lower train.lr, keep "
            "train.grad_clip > 0, or try train.mixed_precision=no, then re-run to resume from it"
        )
