"""How many torch CPU threads a training process uses (``train.threads``).

Torch's default (one thread per core) fights with the data loader's worker processes on a small
shared machine: five CPU steps took 264 s with two threads on a busy 2-core machine, 51 s with
one. ``train.threads = 0`` (auto) gives torch, on a CPU device, the usable cores not busy with
other processes (the loader's workers sleep while the CPU computes), and on a GPU the cores
minus the loader's workers; at least one. The value used, and why, is written to the run's
``config.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

from rcdm.config import TrainConfig
from rcdm.speed import auto_workers, usable_cores


def auto_threads(workers: int, cores: int | None = None, busy: float = 0.0, device: str = "cpu") -> int:
    """Torch threads for ``cores`` cores of which ``busy`` are taken by other processes, at least 1.

    On a CPU device the UNet's compute is the bottleneck and the loader's workers sleep almost all
    the time (the demo: 0.9% of a core), so torch gets every core not busy elsewhere; a busy
    machine gets fewer threads (the issue's 2-core case: 264 s with two threads, 51 s with one).
    On a GPU (torch threads only run host-side work) each loader worker keeps a core."""
    cores = usable_cores() if cores is None else cores
    if device != "cpu":
        return max(1, cores - max(0, workers))
    return max(1, cores - int(round(max(0.0, busy))))


def busy_cores(processes: int = 1) -> float:
    """Cores other processes keep busy: the 1-minute load average less this machine's training
    processes (which are running when it is read). 0 where the load average is unknown."""
    try:
        return max(0.0, os.getloadavg()[0] - processes)
    except (AttributeError, OSError):
        return 0.0


def resolve_threads(
    cfg: TrainConfig, processes: int = 1, device: str = "cpu", busy: float | None = None, workers: int | None = None
) -> TrainConfig:
    """``cfg`` with ``threads`` set to the number used (auto: :func:`auto_threads` over the cores
    this machine's ``processes`` share), its origin recorded. ``workers``: the loader's worker
    count, as the loop resolved it (default: :func:`loader_workers`)."""
    if cfg.threads > 0:
        return cfg
    processes = max(1, processes)
    cores = max(1, usable_cores() // processes)
    workers = loader_workers(cfg) if workers is None else workers
    busy = busy_cores(processes) / processes if busy is None else busy
    n = auto_threads(workers, cores, busy, device)
    why = (
        f"{cores} usable cores, {busy:.1f} busy with other processes"
        if device == "cpu"
        else f"{cores} usable cores - {workers} loader workers"
    )
    return dataclasses.replace(cfg, threads=n, origin={**cfg.origin, "threads": f"auto: {why}"})


def loader_workers(cfg: TrainConfig) -> int:
    """The training loader's worker processes (``train.workers`` may be "auto")."""
    return auto_workers(cfg.workers, cap=8)


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Torch's thread count as it was, after the block: a stage's ``train.threads`` never reaches
    the stages after it in the same process (``rcdm demo`` trained on 1 thread while another job
    ran, then sampled and analysed on 1 thread on an idle machine)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        apply_threads(before)


def apply_threads(n: int) -> None:
    """Set torch's intra-op thread count (CPU work only; CUDA kernels are not affected)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
