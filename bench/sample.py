"""Sampling throughput: raw UNet forwards/s and images/s for N-step sampling, printed as JSON.

    python bench/sample.py                                   # adm64, adm128, adm256 on the GPU
    python bench/sample.py --presets adm128 --batch 64 --compile --cuda-graphs
    python bench/sample.py --presets tiny --device cpu --dtype fp32 --sample-steps 5   # CPU smoke

The reference point (DESIGN.md): guided-diffusion does 280 adm128 forwards/s on one H100 (fp16,
batch 64); the target is >= 840. ``--dtype bf16`` converts the weights to bf16 (no per-op casts);
``autocast`` runs fp32 weights under bf16 autocast (what ``rcdm sample`` does by default).
Images/s is measured through ``rcdm.diffusion.generate.generate`` (per-sample generators included).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, cond_dim: int, dtype: str, device: torch.device, compile_mode: str | None):
    from rcdm.model.unet import UNetModel, count_parameters, preset

    cfg = preset(name, cond="embed", cond_dim=cond_dim)
    model = UNetModel(cfg).to(device).eval().requires_grad_(False)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    if compile_mode:
        model = torch.compile(model, mode=compile_mode)
    return model, cfg, n_params


def _forward_fn(model, dtype: str, device: torch.device):
    """forward(x, t, cond) in the requested precision, always returning float32."""
    in_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32

    def fwd(x, t, c):
        if dtype == "autocast":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(x, t, c).float()
        return model(x.to(in_dtype), t, c.to(in_dtype)).float()

    return fwd


def bench_forward(
    fwd, cfg, batch: int, device: torch.device, iters: int, warmup: int, cuda_graphs: bool, cond_dim: int
) -> float:
    """Forwards per second (images through the UNet per second) at ``batch``."""
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, DIFFUSION_STEPS, (batch,), generator=g, device=device)
    c = torch.randn(batch, cond_dim, generator=g, device=device)
    with torch.no_grad():
        if cuda_graphs and device.type == "cuda":
            # Capture one forward into a CUDA graph (static inputs), then replay it.
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

        for _ in range(warmup):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        dt = time.perf_counter() - t0
    return batch * iters / dt


def bench_sampling(model, cfg, batch: int, steps: int, device: torch.device, mixed_precision: str, cond_dim: int) -> float:
    """Images per second for ancestral sampling with ``steps`` respaced steps."""
    import numpy as np
    from rcdm.diffusion.gaussian import DIFFUSION_STEPS, create_diffusion
    from rcdm.diffusion.generate import generate

    class _Wrap(torch.nn.Module):  # generate() reads .cfg for the image size
        def __init__(self, m, c):
            super().__init__()
            self.m, self.cfg = m, c

        def forward(self, x, t, cond):
            p = next(self.m.parameters())
            return self.m(x.to(p.dtype), t, cond.to(p.dtype)).float()

    diffusion = create_diffusion(cfg.schedule, steps=DIFFUSION_STEPS, respacing=str(steps))
    conds = np.random.default_rng(0).standard_normal((batch, cond_dim)).astype(np.float32)
    seeds = np.arange(batch)
    kw: dict[str, Any] = dict(batch_size=batch, device=device, progress=False, mixed_precision=mixed_precision)
    generate(_Wrap(model, cfg), diffusion, conds[: min(batch, 2)], seeds[:2], **kw)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    generate(_Wrap(model, cfg), diffusion, conds, seeds, **kw)
    _sync(device)
    return batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["adm64", "adm128", "adm256"])
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="per preset; default 64 (adm256: 16; CPU: 2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=["bf16", "autocast", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the forward from a CUDA graph")
    ap.add_argument("--iters", type=int, default=None, help="timed forwards (default 20 on GPU, 2 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--sample-steps", type=int, default=100, help="respaced steps for images/s (0: skip)")
    ap.add_argument("--cond-dim", type=int, default=2048)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)

    from rcdm.utils import pick_device

    device = pick_device(a.device)
    on_gpu = device.type == "cuda"
    dtype = a.dtype or ("bf16" if on_gpu else "fp32")
    iters = a.iters or (20 if on_gpu else 2)
    warmup = a.warmup if a.warmup is not None else (5 if on_gpu else 1)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    results = []
    for i, name in enumerate(a.presets):
        default_batch = (16 if name == "adm256" else 64) if on_gpu else 2
        batch = a.batch[min(i, len(a.batch) - 1)] if a.batch else default_batch
        mode = None
        if a.compile:
            mode = "max-autotune-no-cudagraphs" if on_gpu else "default"
        model, cfg, n_params = _build(name, a.cond_dim, dtype, device, mode)
        fwd = _forward_fn(model, dtype, device)
        row: dict[str, Any] = {
            "preset": name,
            "image_size": cfg.image_size,
            "params": n_params,
            "batch": batch,
            "dtype": dtype,
            "compile": a.compile,
            "cuda_graphs": a.cuda_graphs and on_gpu,
            "forwards_per_s": round(bench_forward(fwd, cfg, batch, device, iters, warmup, a.cuda_graphs, a.cond_dim), 2),
        }
        if a.sample_steps > 0:
            mp = "bf16" if dtype == "autocast" else "no"
            row["sample_steps"] = a.sample_steps
            row["images_per_s"] = round(bench_sampling(model, cfg, batch, a.sample_steps, device, mp, a.cond_dim), 4)
        results.append(row)
        del model, fwd
        if on_gpu:
            torch.cuda.empty_cache()
    report = {
        "bench": "sample",
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
