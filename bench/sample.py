"""Sampling throughput: raw UNet forwards/s and images/s for N-step sampling, printed as JSON.

    python bench/sample.py                                   # adm64, adm128, adm256 as rcdm sample runs them
    python bench/sample.py --presets adm128 --batch 64 --compile on --cuda-graphs
    python bench/sample.py --presets tiny --device cpu --sample-steps 5   # CPU smoke

By default it measures what ``rcdm sample`` runs: the model prepared by
``rcdm.diffusion.generate.prepare_for_sampling`` (on CUDA: compile, channels-last, cuDNN autotune,
TF32), fp32 weights under bf16 autocast on CUDA (``--dtype autocast``), ``sample.batch_size``,
and images/s through ``generate`` itself (per-sample generators and batched step noise included).
``--dtype bf16`` converts the weights to bf16 instead (what guided-diffusion's fp16 sampling did).
The warm-up uses the timed batch size. Reference point: guided-diffusion does 280 adm128
forwards/s on one H100 (fp16, batch 64); the target is >= 840.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from flops import sync


def _build(
    name: str, cond_dim: int, dtype: str, device: torch.device, compile_spec: bool | str, image_size: int | None = None
):
    from rcdm.diffusion.generate import prepare_for_sampling
    from rcdm.model.unet import UNetModel, count_parameters, preset
    from rcdm.speed import resolve_compile

    cfg = preset(name, cond="embed", cond_dim=cond_dim, image_size=image_size)
    model = UNetModel(cfg).eval().requires_grad_(False)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    n_params = count_parameters(model)
    model = prepare_for_sampling(model, device, compile_spec)
    return model, cfg, n_params, resolve_compile(compile_spec, device)


class _Net(torch.nn.Module):
    """The UNet as ``generate`` calls it: inputs cast to the weights' dtype, float32 out."""

    def __init__(self, model, cfg):
        super().__init__()
        self.m, self.cfg = model, cfg
        self.dtype = next(model.parameters()).dtype

    def forward(self, x, t, cond):
        return self.m(x.to(self.dtype), t, cond.to(self.dtype)).float()


def _precision(dtype: str, device: torch.device) -> str:
    return "bf16" if dtype == "autocast" and device.type == "cuda" else "no"


def bench_forward(
    net, cfg, batch: int, device: torch.device, iters: int, warmup: int, cuda_graphs: bool, cond_dim: int, mp: str
) -> tuple[float, float | None]:
    """Forwards per second (images through the UNet per second) at ``batch``, and the seconds of the
    first warm-up forward (a compiled model compiles there; None without warm-up)."""
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS
    from rcdm.diffusion.generate import _Autocast, resolve_precision

    fwd = _Autocast(net, device.type, resolve_precision(mp, device))  # generate()'s own wrapper
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g, device=device)
    t = torch.randint(0, DIFFUSION_STEPS, (batch,), generator=g, device=device)
    c = torch.randn(batch, cond_dim, generator=g, device=device)
    with torch.no_grad():
        if cuda_graphs and device.type == "cuda":
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(max(3, warmup)):
                    fwd(x, t, c)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fwd(x, t, c)

            def step():
                graph.replay()
        else:

            def step():
                fwd(x, t, c)

        first = None
        for i in range(warmup):
            t0 = time.perf_counter()
            step()
            if i == 0:
                sync(device)
                first = time.perf_counter() - t0
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        dt = time.perf_counter() - t0
    return batch * iters / dt, first


def bench_sampling(net, batch: int, steps: int, device: torch.device, mp: str, cond_dim: int) -> float:
    """Images per second for ancestral sampling with ``steps`` respaced steps, through ``generate``."""
    import numpy as np
    from rcdm.config import Sampler, Steps
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS, create_diffusion
    from rcdm.diffusion.generate import generate

    diffusion = create_diffusion(net.cfg.schedule, steps=DIFFUSION_STEPS, respacing=str(steps))
    warm = create_diffusion(net.cfg.schedule, steps=DIFFUSION_STEPS, respacing="2")
    conds = np.random.default_rng(0).standard_normal((batch, cond_dim)).astype(np.float32)
    seeds = np.arange(batch)
    kw: dict[str, Any] = dict(batch_size=batch, device=device, progress=False, mixed_precision=mp)
    generate(net, warm, conds, seeds, Sampler(Steps.parse("2")), **kw)  # warm-up at the timed batch size
    sync(device)
    t0 = time.perf_counter()
    generate(net, diffusion, conds, seeds, Sampler(Steps.parse(str(steps))), **kw)
    sync(device)
    return batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["adm64", "adm128", "adm256"])
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="per preset; default sample.batch_size (CPU: 2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--dtype",
        choices=["autocast", "bf16", "fp32"],
        default="autocast",
        help="autocast: as rcdm sample (bf16 autocast on CUDA, fp32 on CPU)",
    )
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: as rcdm sample (on CUDA)")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the forward from a CUDA graph (eager model)")
    ap.add_argument("--iters", type=int, default=None, help="timed forwards (default 20 on GPU, 2 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--sample-steps", type=int, default=100, help="respaced steps for images/s (0: skip)")
    ap.add_argument("--cond-dim", type=int, default=2048)
    ap.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)

    from rcdm.config import SampleConfig
    from rcdm.utils import pick_device

    device = pick_device(a.device)
    on_gpu = device.type == "cuda"
    iters = a.iters or (20 if on_gpu else 2)
    warmup = a.warmup if a.warmup is not None else (5 if on_gpu else 1)
    compile_spec: bool | str = {"on": True, "off": False}.get(a.compile, "auto")
    if a.cuda_graphs:
        compile_spec = False  # graphs capture the eager model here
    mp = _precision(a.dtype, device)
    results: list[dict] = []
    report = {
        "bench": "sample",
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "results": results,
    }
    for i, name in enumerate(a.presets):
        batch = a.batch[min(i, len(a.batch) - 1)] if a.batch else (SampleConfig().batch_size if on_gpu else 2)
        model, cfg, n_params, compiled = _build(name, a.cond_dim, a.dtype, device, compile_spec, a.image_size)
        net = _Net(model, cfg)
        fwd_s, first = bench_forward(net, cfg, batch, device, iters, warmup, a.cuda_graphs, a.cond_dim, mp)
        row: dict[str, Any] = {
            "preset": name,
            "image_size": cfg.image_size,
            "params": n_params,
            "batch": batch,
            "dtype": a.dtype,
            "compile": compiled,
            "cuda_graphs": a.cuda_graphs and on_gpu,
            "forwards_per_s": round(fwd_s, 2),
            "first_forward_s": None if first is None else round(first, 3),
            # the compile itself: the first (compiling) forward less a compiled one
            "compile_s": round(max(0.0, first - batch / fwd_s), 3) if compiled and first is not None else None,
        }
        results.append(row)
        _save(report, a.out)  # the forwards/s are on disk before the (longer) sampling run
        if a.sample_steps > 0:
            row["sample_steps"] = a.sample_steps
            row["images_per_s"] = round(bench_sampling(net, batch, a.sample_steps, device, mp, a.cond_dim), 4)
        if on_gpu:
            row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        _save(report, a.out)
        del model, net
        if on_gpu:
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))
    return report


def _save(report: dict, out: str | None) -> None:
    """Write the report so far to ``out`` (whole or not at all): a bench killed later keeps it."""
    if out:
        tmp = Path(f"{out}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out)


if __name__ == "__main__":
    main()
