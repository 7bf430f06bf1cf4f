"""How many torch CPU threads a training process uses (``train.threads``).

Torch's default (one thread per core) fights with the data loader's worker processes on a small
shared machine: five CPU steps took 264 s with two threads on a busy 2-core machine, 51 s with
one. ``train.threads = 0`` (auto) gives torch the usable cores minus the loader's workers, at
least one; the value used is written to the run's ``config.yaml``.
"""

from __future__ import annotations

import dataclasses

from rcdm.app.config import TrainConfig
from rcdm.errors import InvalidInput
from rcdm.speed import auto_workers, usable_cores


def auto_threads(workers: int, cores: int | None = None) -> int:
    """``cores - workers``, at least 1: each loader worker gets a core, torch the rest."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores - max(0, workers))


def resolve_threads(cfg: TrainConfig, processes: int = 1) -> TrainConfig:
    """``cfg`` with ``threads`` set to the number used (auto: the cores shared by the
    ``processes`` of this machine, minus each one's loader workers), its origin recorded."""
    if cfg.threads < 0:
        raise InvalidInput(f"train.threads must be >= 0 (0: auto), got {cfg.threads}")
    if cfg.threads > 0:
        return cfg
    cores = max(1, usable_cores() // max(1, processes))
    workers = auto_workers(cfg.workers, cap=8)  # the loader's (train.workers may be "auto")
    n = auto_threads(workers, cores)
    origin = {**cfg.origin, "threads": f"auto: {cores} usable cores - {workers} loader workers"}
    return dataclasses.replace(cfg, threads=n, origin=origin)


def apply_threads(n: int) -> None:
    """Set torch's intra-op thread count (CPU work only; CUDA kernels are not affected)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
