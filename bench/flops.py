"""FLOP counting and peaks shared by the benches.

``torch.utils.flop_counter`` counts SDPA only for the CUDA kernels (flash / memory-efficient /
cuDNN); the CPU's fused kernel counted 0, so CPU MFU left attention out. :func:`count_cpu_sdpa`
registers the same formulas for the CPU kernel and its backward, so every device counts
attention the same way. Datasheet peaks are dense (no sparsity) bf16 tensor-core figures.
"""

from __future__ import annotations

import time

import torch

# Dense bf16 TFLOP/s from NVIDIA's datasheets, matched on the device name.
DATASHEET_BF16_TFLOPS = {
    "H200": 989.4,  # SXM; NVL 835
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # SXM
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}


def datasheet_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak for a device name (None when unknown, e.g. a CPU)."""
    for key, value in DATASHEET_BF16_TFLOPS.items():  # most specific first
        if key in device_name:
            return value
    return None


_registered = False


def count_cpu_sdpa() -> None:
    """Give the CPU flash-attention kernels the FLOP formulas the CUDA ones have (idempotent)."""
    global _registered
    if _registered:
        return
    from torch.utils.flop_counter import (
        register_flop_formula,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
        def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
            return sdpa_flop_count(query.shape, key.shape, value.shape)

        @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
        def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    _registered = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """Achieved matmul TFLOP/s (best of a few trials): the practical peak for MFU."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    iters = 20 if device.type == "cuda" else 3
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):  # a shared machine only ever slows it down
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12)
    return best
