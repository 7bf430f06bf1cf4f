"""Training throughput of the RCDM UNet: img/s, step time, peak memory and model FLOPs utilisation.

Synthetic data (no store needed); the step is the training loop's: hybrid loss, backward, grad
clipping, AdamW (fused on CUDA), EMA update. Prints one JSON object.

    python bench/train.py                                   # every preset (CUDA) / tiny (CPU)
    python bench/train.py --preset adm128 --batch-size 32 --compile on --channels-last on
    python bench/train.py --preset tiny --steps 3 --device cpu

MFU = (training FLOPs per step, counted with torch.utils.flop_counter on one real step, SDPA
included on every device) x steps/s / peak FLOP/s, reported twice: against a peak measured with
large matmuls in the training dtype (bf16 on CUDA, fp32 on CPU; or --peak-tflops) and against the
datasheet's dense bf16 peak (989 TFLOP/s for H100/H200 SXM; bench/flops.py). FLOPs are nominal
(direct convolution); on CPU oneDNN may use Winograd 3x3 convolutions, so CPU MFU can exceed 1.

``--compile`` and ``--channels-last`` default to ``auto``: what ``rcdm train`` resolves them to on
this device (rcdm.speed), with its input path (``to_model_input`` in the model's layout).
``first_step_s`` is the first warm-up step; with compile, ``compile_s`` = that step less a timed
step: the compile itself (``--compile-backend``: inductor, or aot_eager to run the compiled path on
a CPU without a C++ build). Point ``TORCHINDUCTOR_CACHE_DIR`` at a kept folder to time a warm cache.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from flops import count_cpu_sdpa, datasheet_tflops, measure_peak_tflops, sync

DEFAULT_BATCH = {"tiny": 8, "adm64": 64, "adm128": 32, "adm256": 16}


def bench_preset(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS, create_diffusion
    from rcdm.model.unet import UNetModel, count_parameters, preset
    from rcdm.speed import resolve_channels_last, resolve_compile
    from rcdm.train.data import input_layout, to_model_input

    ucfg = preset(name, cond=args.cond, cond_dim=args.cond_dim, image_size=args.resolution)
    batch = args.batch_size or DEFAULT_BATCH[name]
    bf16 = device.type == "cuda" and not args.fp32
    torch.manual_seed(0)
    net = UNetModel(ucfg).to(device)
    compiled = resolve_compile(args.compile, device)
    channels_last = resolve_channels_last(args.channels_last, compiled, device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    diffusion = create_diffusion(ucfg.schedule, steps=DIFFUSION_STEPS)
    model = torch.compile(net, backend=args.compile_backend) if compiled else net
    res = ucfg.image_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pixels = torch.randint(0, 256, (batch, res, res, 3), dtype=torch.uint8, device=device)
    layout = input_layout(channels_last, device)
    x = to_model_input(pixels, layout)  # (N, 3, H, W) in [-1, 1], as rcdm train
    h = torch.randn(batch, ucfg.cond_dim, device=device)  # (N, D)

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        noise = torch.randn(x.shape, device=device)
        noise = noise if layout is None else noise.contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_losses(model, x, t, {"cond": h}, noise=noise)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1e-4)

    flops_per_step = _step_flops(net, diffusion, x, h, bf16)
    opt.zero_grad(set_to_none=True)
    dt, first = _step_time(step, args.warmup, args.steps, device)
    peak_mem = _peak_memory_gb(device)
    achieved = flops_per_step / dt / 1e12
    return {
        "preset": name,
        "resolution": res,
        "params": count_parameters(net),
        "batch_size": batch,
        "mixed_precision": "bf16" if bf16 else "no",
        "compile": compiled,
        "compile_backend": args.compile_backend if compiled else None,
        "channels_last": channels_last,
        "steps": args.steps,
        "step_time_s": dt,
        "first_step_s": first,
        # the compile itself: the first (compiling) step less a compiled one (cuDNN autotuning included on CUDA)
        "compile_s": max(0.0, first - dt) if compiled and first is not None else None,
        "img_per_s": batch / dt,
        "peak_mem_gb": peak_mem,
        "train_gflop_per_img": flops_per_step / batch / 1e9,
        "achieved_tflops": achieved,
        "mfu": achieved / args.peak_tflops if args.peak_tflops else None,
        "mfu_datasheet": achieved / args.datasheet_tflops if args.datasheet_tflops else None,
    }


def _step_flops(net: torch.nn.Module, diffusion, x: torch.Tensor, h: torch.Tensor, bf16: bool) -> int:
    """FLOPs of one step (forward + backward; its gradients are left in ``net``), counted on the
    eager model (compile does not change the maths)."""
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_sdpa()
    t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=x.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        diffusion.training_losses(net, x, t, {"cond": h})["loss"].mean().backward()
    return counter.get_total_flops()


def _step_time(step, warmup: int, steps: int, device: torch.device) -> tuple[float, float | None]:
    """Seconds per ``step()`` over ``steps`` timed calls after ``warmup`` untimed ones (the peak
    memory is counted from the timed ones on CUDA), and the seconds of the first warm-up step
    (with compile: the compile; None without warm-up)."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        step()
        if i == 0:
            sync(device)
            first = time.perf_counter() - t0
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps, first


def _peak_memory_gb(device: torch.device) -> float:
    """The peak memory in GiB: allocated on CUDA, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss: KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", action="append", choices=list(DEFAULT_BATCH), help="repeatable; default: all on CUDA, tiny on CPU"
    )
    p.add_argument("--batch-size", type=int, default=None, help="per step; default per preset")
    p.add_argument("--resolution", type=int, default=None, help="default: the preset's")
    p.add_argument("--cond", choices=["embed", "cbn"], default="embed")
    p.add_argument("--cond-dim", type=int, default=2048)
    p.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto", help="torch.compile; auto: as rcdm train (on CUDA)"
    )
    p.add_argument(
        "--compile-backend",
        choices=["inductor", "aot_eager", "eager"],
        default="inductor",
        help="torch.compile's backend, as train.compile_backend (aot_eager: the compiled path on a CPU, no C++ build)",
    )
    p.add_argument(
        "--channels-last", choices=["auto", "on", "off"], default="auto", help="auto: as rcdm train (CUDA + compile)"
    )
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 20 on CUDA, 5 on CPU")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (compile needs a few; the first is reported)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--peak-tflops", type=float, default=None, help="default: measured matmul peak")
    p.add_argument(
        "--datasheet-tflops", type=float, default=None, help="default: the device's dense bf16 datasheet peak"
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.compile = {"on": True, "off": False}.get(args.compile, "auto")
    args.channels_last = {"on": True, "off": False}.get(args.channels_last, "auto")
    from rcdm.utils import pick_device

    device = pick_device(args.device)
    if args.steps is None:
        args.steps = 20 if device.type == "cuda" else 5
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    from rcdm.speed import enable_fast_math

    enable_fast_math(device)  # what rcdm train sets: cuDNN autotune + TF32 on CUDA
    presets = args.preset or (list(DEFAULT_BATCH) if device.type == "cuda" else ["tiny"])
    bf16 = device.type == "cuda" and not args.fp32
    if args.peak_tflops is None:
        args.peak_tflops = measure_peak_tflops(device, torch.bfloat16 if bf16 else torch.float32)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.datasheet_tflops is None:
        args.datasheet_tflops = datasheet_tflops(dev_name)
    results = []
    for name in presets:
        try:
            results.append(bench_preset(name, args, device))
        except torch.cuda.OutOfMemoryError as e:  # report and go on to the next preset
            results.append({"preset": name, "error": f"out of memory: {str(e)[:200]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {
        "bench": "train",
        "device": dev_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "peak_tflops": args.peak_tflops,
        "datasheet_tflops": args.datasheet_tflops,
        "results": results,
    }
    text = json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
