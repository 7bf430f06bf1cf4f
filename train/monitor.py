"""Training statistics kept on the device, and the log writers (log.jsonl, TensorBoard).

The step adds into device tensors only; the host reads them every ``log_every`` steps (the one
synchronisation point), so logging does not slow the step down.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path

import torch

# Sums kept per log interval: loss, mse, vb, samples, grad norm, optimiser steps.
_LOSS, _MSE, _VB, _N, _GN, _STEPS = range(6)


class Stats:
    """Device-side running sums over one log interval, plus the first non-finite step."""

    def __init__(self, device: torch.device, num_timesteps: int) -> None:
        self.device = device
        self.num_timesteps = num_timesteps
        self.sums = torch.zeros(6, device=device, dtype=torch.float64)
        self.q_sum = torch.zeros(4, device=device, dtype=torch.float64)  # loss by t quartile
        self.q_cnt = torch.zeros(4, device=device, dtype=torch.float64)
        self.count = 0  # samples added since the last collect (this process)
        # The first optimiser step whose loss was not finite (-1: none yet); never reset.
        self.bad_step = torch.full((), -1, device=device, dtype=torch.int64)

    @torch.no_grad()
    def add_micro(self, losses: dict[str, torch.Tensor], t: torch.Tensor, step: int) -> None:
        """Add one micro-batch's per-sample ``losses`` (``t``: its timesteps); ``step`` 1-based."""
        loss = losses["loss"].detach().double()
        part = torch.stack([loss.sum(), losses["mse"].detach().double().sum(), losses["vb"].detach().double().sum()])
        self.sums[:3] += part
        self.count += loss.numel()  # on the host: a device scalar made from it would sync
        q = (t * 4 // self.num_timesteps).clamp_(0, 3)
        self.q_sum.index_add_(0, q, loss)
        self.q_cnt.index_add_(0, q, torch.ones_like(loss))
        finite = torch.isfinite(loss).all()
        self.bad_step = torch.where((self.bad_step < 0) & ~finite, torch.full_like(self.bad_step, step), self.bad_step)

    @torch.no_grad()
    def add_step(self, grad_norm: torch.Tensor | float) -> None:
        gn = torch.as_tensor(grad_norm, device=self.device, dtype=torch.float64)
        self.sums[_GN] += gn
        self.sums[_STEPS] += 1

    def first_bad_step(self) -> int | None:
        """The first step with a non-finite loss (a host sync)."""
        s = int(self.bad_step.item())
        return s if s >= 0 else None

    def collect(self, reduce) -> dict[str, float]:
        """Means over the interval across processes (``reduce``: sum over ranks), then reset.

        The gradient norm is the same on every rank after the all-reduce, so it is not summed.
        """
        self.sums[_N] = float(self.count)
        self.count = 0
        packed = torch.cat([self.sums[:4], self.q_sum, self.q_cnt])
        packed = reduce(packed).double().cpu()
        sums, q_sum, q_cnt = packed[:4], packed[4:8], packed[8:12]
        local = self.sums.cpu()
        n = max(float(sums[_N]), 1.0)
        out = {
            "loss": float(sums[_LOSS]) / n,
            "mse": float(sums[_MSE]) / n,
            "vb": float(sums[_VB]) / n,
            "grad_norm": float(local[_GN]) / max(float(local[_STEPS]), 1.0),
        }
        for i in range(4):
            c = float(q_cnt[i])
            out[f"loss_q{i}"] = float(q_sum[i]) / c if c else float("nan")
        self.sums.zero_()
        self.q_sum.zero_()
        self.q_cnt.zero_()
        return out


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Logger:
    """Appends to ``log`` (``<run>/log.jsonl``) and writes TensorBoard scalars to
    ``tensorboard`` (``<run>/tb``; None: none), on the main process only."""

    def __init__(self, log: Path, tensorboard: Path | None, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = log
        self.tb = None
        if enabled and tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step drops events a killed run wrote after its last checkpoint
                self.tb = SummaryWriter(str(tensorboard), purge_step=resume_step + 1)
        self.t_last = time.perf_counter()

    def write(self, record: dict, tb_prefix: str = "train") -> None:
        if not self.enabled:
            return
        # JSON has no NaN: an empty timestep quartile is written as null
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = int(record["step"])
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{tb_prefix}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
