"""Representation-prior training and drawing speed (rcdm train-prior's loop and sampler), as JSON.

    python bench/prior.py                       # the prior.* defaults on 2048-d features, CPU
    python bench/prior.py --width 1536 --blocks 12 --batch 1024 --iters 40000 --device cuda  # ImageNet scale
    python bench/prior.py --threads 1           # a shared CPU: one thread can beat two (no oversubscription)

Times ``--steps`` optimiser steps of the network on random 2048-d features (after 3 warm-up
steps) and ``--draws`` draws with ``prior.sample_steps`` DDIM steps, and extrapolates the time of
``--iters`` (default ``prior.iters``) steps: what "CPU minutes for a 2048-d store" means on this
machine. ``matmul_gflops`` (a 2048^2 float32 matmul's rate here) and ``step_gflop`` (6 x batch x
parameters) put the step time in proportion when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from rcdm.config import PriorConfig


def main() -> None:
    d = PriorConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--blocks", type=int, default=d.blocks)
    ap.add_argument("--batch", type=int, default=d.batch_size)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--draws", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=d.sample_steps)
    ap.add_argument("--iters", type=int, default=d.iters)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from rcdm.prior.model import PriorMLP, PriorSpec, VectorDiffusion

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = PriorMLP(PriorSpec(dim=a.dim, width=a.width, blocks=a.blocks)).to(dev)
    diff = VectorDiffusion(1000)
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr)
    x = torch.randn(a.batch, a.dim, device=dev)

    def step() -> None:
        loss = diff.loss(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    m = torch.randn(2048, 2048, device=dev)
    for _ in range(2):
        m @ m
    t0 = time.perf_counter()
    for _ in range(5):
        m @ m
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    gflops = 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9  # this machine's matmul rate, for ratios
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    per_step = (time.perf_counter() - t0) / a.steps
    model.eval()
    t0 = time.perf_counter()
    diff.sample(model, a.draws, steps=a.sample_steps, device=dev)
    draw_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench": "prior",
                "device": str(dev),
                "threads": torch.get_num_threads(),
                "cpu": platform.processor(),
                "dim": a.dim,
                "width": a.width,
                "blocks": a.blocks,
                "batch": a.batch,
                "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "matmul_gflops": round(gflops, 1),
                "step_gflop": round(6 * a.batch * sum(p.numel() for p in model.parameters()) / 1e9, 1),
                "seconds_per_step": round(per_step, 4),
                "iters": a.iters,
                "estimated_training_minutes": round(per_step * a.iters / 60, 2),
                "draws": a.draws,
                "sample_steps": a.sample_steps,
                "draw_seconds": round(draw_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
