"""Training throughput of the RCDM UNet: img/s, step time, peak memory and model FLOPs utilisation.

Synthetic data (no store needed); the step is the training loop's: hybrid loss, backward, grad
clipping, AdamW (fused on CUDA), EMA update. Prints one JSON object.

    python bench/train.py                                   # every preset (CUDA) / tiny (CPU)
    python bench/train.py --preset adm128 --batch-size 32 --compile --channels-last
    python bench/train.py --preset tiny --steps 3 --device cpu

MFU = (training FLOPs per step, counted with torch.utils.flop_counter on one real step) x
steps/s / peak FLOP/s. The peak is measured with large matmuls in the training dtype (bf16 on
CUDA, fp32 on CPU), or given with --peak-tflops. FLOPs are nominal (direct convolution); on CPU
oneDNN may use Winograd 3x3 convolutions, which do fewer multiplies, so CPU MFU can exceed 1.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

DEFAULT_BATCH = {"tiny": 8, "adm64": 64, "adm128": 32, "adm256": 16}


def measure_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Achieved matmul TFLOP/s: the practical peak for MFU."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    iters = 20 if device.type == "cuda" else 3
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):  # the best of a few trials: a shared machine only ever slows it down
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preset(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS, create_diffusion
    from rcdm.model.unet import UNetModel, count_parameters, preset

    ucfg = preset(name, cond=args.cond, cond_dim=args.cond_dim, image_size=args.resolution)
    batch = args.batch_size or DEFAULT_BATCH[name]
    bf16 = device.type == "cuda" and not args.fp32
    torch.manual_seed(0)
    net = UNetModel(ucfg).to(device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    diffusion = create_diffusion(ucfg.schedule, steps=DIFFUSION_STEPS)
    model = torch.compile(net) if args.compile else net
    res = ucfg.image_size
    x = torch.rand(batch, 3, res, res, device=device) * 2 - 1  # (N, 3, H, W) in [-1, 1]
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    h = torch.randn(batch, ucfg.cond_dim, device=device)  # (N, D)

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_losses(model, x, t, {"cond": h})["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1e-4)

    # FLOPs of one step, counted on the eager model (compile does not change the maths)
    from torch.utils.flop_counter import FlopCounterMode

    t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        diffusion.training_losses(net, x, t, {"cond": h})["loss"].mean().backward()
    flops_per_step = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # the process's peak resident set (KiB on Linux)
        import resource

        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    achieved = flops_per_step / dt / 1e12
    return {
        "preset": name,
        "resolution": res,
        "params": count_parameters(net),
        "batch_size": batch,
        "mixed_precision": "bf16" if bf16 else "no",
        "compile": args.compile,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "step_time_s": dt,
        "img_per_s": batch / dt,
        "peak_mem_gb": peak_mem,
        "train_gflop_per_img": flops_per_step / batch / 1e9,
        "achieved_tflops": achieved,
        "mfu": achieved / args.peak_tflops if args.peak_tflops else None,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=list(DEFAULT_BATCH), help="repeatable; default: all on CUDA, tiny on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="per step; default per preset")
    p.add_argument("--resolution", type=int, default=None, help="default: the preset's")
    p.add_argument("--cond", choices=["embed", "cbn"], default="embed")
    p.add_argument("--cond-dim", type=int, default=2048)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 20 on CUDA, 5 on CPU")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile needs a few)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--peak-tflops", type=float, default=None, help="default: measured matmul peak")
    args = p.parse_args(argv)
    from rcdm.utils import pick_device

    device = pick_device(args.device)
    if args.steps is None:
        args.steps = 20 if device.type == "cuda" else 5
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    presets = args.preset or (list(DEFAULT_BATCH) if device.type == "cuda" else ["tiny"])
    bf16 = device.type == "cuda" and not args.fp32
    if args.peak_tflops is None:
        args.peak_tflops = measure_peak_tflops(device, torch.bfloat16 if bf16 else torch.float32)
    results = []
    for name in presets:
        try:
            results.append(bench_preset(name, args, device))
        except torch.cuda.OutOfMemoryError as e:  # report and go on to the next preset
            results.append({"preset": name, "error": f"out of memory: {str(e)[:200]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "peak_tflops": args.peak_tflops,
        "results": results,
    }
    print(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))
    return report


if __name__ == "__main__":
    main()
