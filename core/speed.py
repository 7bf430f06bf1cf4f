"""The ``auto`` speed settings every stage and bench shares, so the benches measure what the stages run.

On a CUDA device: cuDNN autotuning and TF32 matmuls/convolutions on, ``torch.compile`` on,
channels-last only with compile (eager GroupNorm on CUDA works in NCHW, so an eager channels-last
model pays a layout copy around every norm), DataLoader workers sized to the machine. On a CPU
every ``auto`` resolves to the plain setting (no compile, NCHW), so CPU results do not change.
"""

from __future__ import annotations

import os

__all__ = ["auto_workers", "enable_fast_math", "resolve_compile", "resolve_channels_last"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; the machine's count where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def auto_workers(spec: int | str, cap: int = 16) -> int:
    """``auto`` -> the CPU cores this process may use, minus one for the main process (capped)."""
    if spec != "auto":
        return int(spec)
    return max(1, min(cap, usable_cores() - 1))


def enable_fast_math(device) -> None:
    """cuDNN autotuning and TF32 on a CUDA device (the benches' settings); nothing on a CPU."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_compile(spec: bool | str, device) -> bool:
    """``auto`` -> compile on CUDA, not on a CPU."""
    if spec == "auto":
        return getattr(device, "type", str(device)).startswith("cuda")
    return bool(spec)


def resolve_channels_last(spec: bool | str, compiled: bool, device) -> bool:
    """``auto`` -> channels-last on CUDA when compiled (inductor fuses the norms' layout), else NCHW."""
    if spec == "auto":
        return compiled and getattr(device, "type", str(device)).startswith("cuda")
    return bool(spec)
