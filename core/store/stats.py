"""Per-dimension statistics of a whole store, in one streamed pass (a shard in memory at a time).

Training standardises its condition with the store's mean and standard deviation over both views,
and train-prior its features with those of view 0. Stores whose rows fit in
:data:`IN_MEMORY_BYTES` of float32 keep the arithmetic they always had (the whole matrix, torch's
float32 reductions: the same bits as before); larger ones (ImageNet's 1.28M x 2 x 2048 is 21 GB of
float32) are reduced shard by shard in float64 with Chan et al.'s pairwise update of the mean and
the sum of squared deviations, which agrees with the in-memory float32 result to float32 rounding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IN_MEMORY_BYTES", "fits_in_memory", "streamed_moments"]

IN_MEMORY_BYTES = 1 << 30  # float32 rows read whole below this; streamed above


def fits_in_memory(store, view: int | None, budget: int = IN_MEMORY_BYTES) -> bool:
    """Whether ``store.features(view)`` as float32 is at most ``budget`` bytes."""
    views = len(store.views) if view is None else 1
    return rows_fit(len(store) * views, store.dim, budget)


def rows_fit(rows: int, dim: int, budget: int = IN_MEMORY_BYTES) -> bool:
    """Whether ``rows`` x ``dim`` float32 values are at most ``budget`` bytes."""
    return rows * dim * 4 <= budget


def streamed_moments(store, view: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` (D,) float64 over every row of ``view`` (``None``: every view's rows), the
    std unbiased (n - 1, as torch's ``std``), reading one shard at a time."""
    n, mean, m2 = 0, np.zeros(store.dim), np.zeros(store.dim)
    for _, block in store.iter_features(view):
        x = block.reshape(-1, store.dim).astype(np.float64)
        nb, mb = len(x), x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta**2 * (n * nb / total)
        n = total
    std = np.sqrt(m2 / (n - 1)) if n > 1 else np.full(store.dim, np.nan)
    return mean, std
