"""Conditions for sampling: pure functions on representations h = f(x).

Everything here is numpy in, numpy out, with no I/O, so each operation can be checked by hand.
Shapes: a representation is ``(D,)``; a set of them ``(N, D)``; all float32.

The operations are the ones the RCDM paper (Bordes, Balestriero & Vincent, TMLR 2022) uses:
linear interpolation between two representations, a kernel density estimate of the store for
unconditional sampling (appendix B), class means, representation algebra, and the
nearest-neighbour manipulation of section 5 (dimensions non-zero in at least m of the k
neighbours are zeroed or replaced by a target's values).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from rcdm.errors import InvalidInput

__all__ = [
    "interpolate",
    "kde_sample",
    "class_mean",
    "algebra",
    "knn",
    "knn_store",
    "active_mask",
    "common_dims",
    "manipulate",
]


def _vec(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise InvalidInput(f"{name} must be one representation of shape (D,), got shape {a.shape}")
    return a


def interpolate(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The full linear path from ``a`` (alpha = 0) to ``b`` (alpha = 1) in ``n`` points.

    Returns ``(n, D)``: row i is ``(1 - alpha_i) a + alpha_i b`` with ``alpha_i = i / (n - 1)``,
    so the first row is exactly ``a`` and the last exactly ``b``.
    """
    a, b = _vec(a, "a"), _vec(b, "b")
    if a.shape != b.shape:
        raise InvalidInput(f"cannot interpolate between shapes {a.shape} and {b.shape}")
    if n < 2:
        raise InvalidInput(f"interpolation needs at least 2 points (both ends), got n={n}")
    alpha = np.linspace(0.0, 1.0, n, dtype=np.float64)[:, None]  # (n, 1)
    path = (1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)
    return path.astype(np.float32)


def kde_sample(
    feats: np.ndarray,
    n: int,
    sigma: float = 0.01,
    seed: int = 0,
    *,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` representations from p(h) = 1/N sum_n N(h; f(x_n), sigma^2 I).

    ``sigma`` is the kernel's *standard deviation* (the paper's appendix B uses 0.01): pick ``n``
    rows uniformly with replacement, add ``sigma`` times standard normal noise. Seeded, so the
    same ``seed`` gives the same draws. Returns ``(n, D)`` (and the picked rows ``(n,)`` when
    ``return_index``).
    """
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise InvalidInput(f"kde_sample needs a non-empty (N, D) feature matrix, got shape {feats.shape}")
    idx, noise = kde_draw(feats.shape[0], feats.shape[1], n, sigma, seed)
    out = kde_points(feats[idx], noise, sigma)
    return (out, idx) if return_index else out


def kde_draw(n_rows: int, dim: int, n: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kde_sample`'s random part: the ``(n,)`` rows picked of ``n_rows`` and the ``(n, dim)``
    standard normal noise; with :func:`kde_points` on those rows alone (a store's ``gather``), the
    draws of :func:`kde_sample` without the whole matrix."""
    if n_rows < 1:
        raise InvalidInput("kde_sample needs a non-empty (N, D) feature matrix, got 0 rows")
    if n < 1:
        raise InvalidInput(f"kde_sample: n must be at least 1, got {n}")
    if sigma < 0:
        raise InvalidInput(f"kde_sample: sigma is a standard deviation and must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_rows, size=n)  # (n,)
    return idx, rng.standard_normal((n, dim))  # (n, D)


def kde_points(centres: np.ndarray, noise: np.ndarray, sigma: float) -> np.ndarray:
    """The KDE draws ``(n, D)`` float32 around ``centres`` (the picked rows, float32)."""
    return (np.asarray(centres, dtype=np.float32).astype(np.float64) + sigma * noise).astype(np.float32)


def class_mean(feats: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """Mean representation ``(D,)`` of the rows whose label is ``label``."""
    feats = np.asarray(feats, dtype=np.float32)
    labels = np.asarray(labels)
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise InvalidInput(f"class_mean needs feats (N, D) and labels (N,), got {feats.shape} and {labels.shape}")
    return feats[class_rows(labels, label)].astype(np.float64).mean(axis=0).astype(np.float32)


def class_rows(labels: np.ndarray, label: int) -> np.ndarray:
    """The rows (ascending) whose label is ``label``, or ``InvalidInput`` naming the labels there are;
    ``class_mean(feats[rows], labels[rows], label)`` is ``class_mean(feats, labels, label)``."""
    labels = np.asarray(labels)
    rows = np.flatnonzero(labels == label)
    if not len(rows):
        known = sorted(int(v) for v in np.unique(labels))
        raise InvalidInput(
            f"no entry has label {label}; labels present: {known[:20]}{' ...' if len(known) > 20 else ''}"
        )
    return rows


def algebra(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Representation algebra ``a - b + c`` (e.g. "this image, minus its class, plus another")."""
    a, b, c = _vec(a, "a"), _vec(b, "b"), _vec(c, "c")
    if not (a.shape == b.shape == c.shape):
        raise InvalidInput(f"algebra needs equal shapes, got {a.shape}, {b.shape}, {c.shape}")
    return (a - b + c).astype(np.float32)


KNN_CHUNK = 65536  # rows of feats :func:`knn` compares at a time


def knn(
    feats: np.ndarray,
    query: np.ndarray,
    k: int,
    *,
    exclude: int | None = None,
    chunk: int = KNN_CHUNK,
) -> np.ndarray:
    """Indices of the ``k`` rows of ``feats`` nearest to ``query`` (Euclidean), nearest first.

    ``query`` is ``(D,)`` (returns ``(k,)``) or ``(Q, D)`` (returns ``(Q, k)``). ``exclude`` drops
    one row (the query's own row when it comes from ``feats``). Ties keep the lower index first.
    """
    feats = np.asarray(feats, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    single = q.ndim == 1
    q2 = q[None] if single else q  # (Q, D)
    if feats.ndim != 2 or q2.ndim != 2 or q2.shape[1] != feats.shape[1]:
        raise InvalidInput(f"knn: feats (N, D) and query (D,) or (Q, D) needed, got {feats.shape}, {q.shape}")
    n_avail = feats.shape[0] - (1 if exclude is not None else 0)
    if not 1 <= k <= n_avail:
        raise InvalidInput(f"knn: k={k} but only {n_avail} candidate rows are available")
    order = knn_streamed(((s, feats[s : s + chunk]) for s in range(0, feats.shape[0], chunk)), q2, k, exclude=exclude)
    return order[0] if single else order


def knn_store(store: Any, queries: np.ndarray, k: int, *, exclude: int | None = None) -> np.ndarray:
    """:func:`knn_streamed` over view 0 of a feature store, read ``KNN_CHUNK`` rows at a time
    (ImageNet's training store is 10 GB of float32: it is never held): ``(Q, k)`` for ``(Q, D)``
    queries, :func:`knn`'s answer."""
    return knn_streamed(store.iter_features(0, KNN_CHUNK), queries, k, exclude=exclude)


def knn_streamed(blocks, query: np.ndarray, k: int, *, exclude: int | None = None) -> np.ndarray:
    """:func:`knn` of ``(Q, D)`` queries over ``blocks`` of rows, ``(first row, (n, D))`` in row order
    (``FeatureStore.iter_features(0, KNN_CHUNK)``: the same blocks knn cuts, the same answer): the
    ``(Q, k)`` nearest rows, nearest first, ties to the lower index, holding one block and the
    ``k`` best so far. Raises when fewer than ``k`` candidate rows came."""
    q2 = np.asarray(query, dtype=np.float32)
    qq = (q2.astype(np.float64) ** 2).sum(1)[:, None]
    best_d = np.zeros((len(q2), 0))
    best_i = np.zeros((len(q2), 0), np.int64)
    rows = 0
    for s, block in blocks:
        # Squared distances ||f||^2 - 2 f.q + ||q||^2 in float64, a block of rows at a time.
        f = np.asarray(block, dtype=np.float32).astype(np.float64)
        del block  # a 2048-d block of KNN_CHUNK rows is 512 MB as float32, 1 GB as float64
        # each row's sum of squares on its own (the same bits), without a (n, D) temporary of f**2
        f_sq = np.concatenate([(f[a : a + 4096] ** 2).sum(1) for a in range(0, len(f), 4096)] or [np.zeros(0)])
        d2 = f_sq[None] - 2.0 * q2.astype(np.float64) @ f.T + qq
        rows += len(f)
        if exclude is not None and s <= exclude < s + len(f):
            d2[:, exclude - s] = np.inf
        d = np.concatenate([best_d, d2], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(f)), d2.shape)], axis=1)
        keep = np.argsort(d, axis=1, kind="stable")[:, :k]  # earlier rows first: ties keep the lower index
        best_d, best_i = np.take_along_axis(d, keep, 1), np.take_along_axis(i, keep, 1)
        del f, d2, d, i  # before the next block is read: one block's float64 copy at a time
    n_avail = rows - int(exclude is not None and 0 <= exclude < rows)
    if n_avail < k:
        raise InvalidInput(f"knn: k={k} but only {n_avail} candidate rows are available")
    return best_i


def active_mask(x: np.ndarray, *, threshold: float = 0.0, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Which entries of ``x`` (``(D,)`` or ``(k, D)``) are *active*: above ``thresholds`` (one per
    dimension, ``(D,)``) when given, else non-zero (``|x_d| > threshold``, the paper's rule)."""
    x = np.asarray(x, dtype=np.float32)
    return x > thresholds if thresholds is not None else np.abs(x) > threshold


def common_dims(
    neighbour_feats: np.ndarray, m: int, *, threshold: float = 0.0, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """Dimensions that are active (:func:`active_mask`: non-zero, ``|h_d| > threshold``, or above
    the per-dimension ``thresholds``) in at least ``m`` of the neighbours.

    ``neighbour_feats`` is ``(k, D)``; returns the sorted dimension indices ``(n_dims,)`` int64.
    """
    nf = np.asarray(neighbour_feats, dtype=np.float32)
    if nf.ndim != 2:
        raise InvalidInput(f"common_dims needs (k, D) neighbour features, got shape {nf.shape}")
    if not 1 <= m <= nf.shape[0]:
        raise InvalidInput(f"common_dims: m={m} must be between 1 and the number of neighbours k={nf.shape[0]}")
    counts = active_mask(nf, threshold=threshold, thresholds=thresholds).sum(axis=0)  # (D,)
    return np.flatnonzero(counts >= m).astype(np.int64)


def manipulate(
    h: np.ndarray,
    dims: np.ndarray,
    mode: Literal["zero", "replace"] = "zero",
    target: np.ndarray | None = None,
) -> np.ndarray:
    """Set dimensions ``dims`` of ``h`` (``(D,)`` or ``(N, D)``) to zero or to ``target``'s values.

    Returns a new array; ``h`` is not modified.
    """
    out = np.array(h, dtype=np.float32, copy=True)
    dims = np.asarray(dims, dtype=np.int64)
    if dims.size and (dims.min() < 0 or dims.max() >= out.shape[-1]):
        raise InvalidInput(f"manipulate: dimensions must be in [0, {out.shape[-1]}), got {dims.min()}..{dims.max()}")
    if mode == "zero":
        out[..., dims] = 0.0
    elif mode == "replace":
        if target is None:
            raise InvalidInput("manipulate mode 'replace' needs a target representation")
        t = np.asarray(target, dtype=np.float32)
        if t.shape[-1] != out.shape[-1]:
            raise InvalidInput(f"manipulate: target has dim {t.shape[-1]}, h has {out.shape[-1]}")
        out[..., dims] = t[..., dims]
    else:
        raise InvalidInput(f"manipulate mode must be 'zero' or 'replace', got {mode!r}")
    return out
