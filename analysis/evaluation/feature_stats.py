"""Statistics of sample and reference features in one space, beyond rank / MRR: pure, over plain
(N, D) arrays (any representation space: the conditioning encoder's, a second encoder's,
Inception / DINOv2 features, flattened pixels).

- top-k retrieval accuracy from ranks, and its chance level k / N;
- cosine similarity of each sample to its conditioning image, and the chance level (the mean
  cosine of random pairs of reference images);
- the retrieval baseline: the nearest training image to each condition, used as the "sample";
- diversity: mean pairwise distance of the samples of one condition, beside random pairs;
- precision / recall of generated against real features (Kynkaanniemi et al. 2019, k-NN radii);
- colour kept: the spread of mean colour within a condition's samples against between conditions.

Arrays in, numbers out; no I/O and no model. Rank itself is
:func:`rcdm.analysis.evaluation.metrics.nearest_neighbour_ranks`.
"""

from __future__ import annotations

import numpy as np
from rcdm.errors import InvalidInput

__all__ = [
    "topk_accuracy",
    "cosine_to_targets",
    "random_pair_indices",
    "random_pair_cosine",
    "random_pair_distance",
    "nearest_block_rows",
    "nearest_rows",
    "nearest_rows_streamed",
    "mean_pairwise_distance",
    "group_diversity",
    "precision_recall",
    "colour_spread",
]


def _2d(x: np.ndarray, what: str, dtype: type = np.float64) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 2:
        raise InvalidInput(f"{what} must be an (N, D) array, got shape {a.shape}")
    return a


def topk_accuracy(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5), n_reference: int | None = None) -> dict:
    """``{"top1": fraction of ranks <= 1, ...}``; with ``n_reference`` also ``chance_top1 = 1 / N``."""
    r = np.asarray(ranks)
    out: dict = {}
    for k in ks:
        out[f"top{k}"] = float((r <= k).mean()) if r.size else None
        if n_reference:
            out[f"chance_top{k}"] = min(k, n_reference) / n_reference
    return out


def cosine_to_targets(queries: np.ndarray, reference: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cos(queries[m], reference[target[m]]) for each m: ``(M,)`` float64 (0 for a zero vector)."""
    q, r = _2d(queries, "queries"), _2d(reference, "reference")
    t = np.asarray(target, dtype=np.int64)
    if t.shape != (len(q),) or (t < 0).any() or (t >= len(r)).any():
        raise InvalidInput(f"cosine: target must be {len(q)} rows of the {len(r)}-row reference")
    a, b = q, r[t]
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def random_pair_indices(n: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` random pairs (i, j) of distinct rows of an n-row set, seeded."""
    if n < 2:
        raise InvalidInput(f"random pairs need at least 2 rows, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # uniform over the other rows
    return i, j


def random_pair_cosine(reference: np.ndarray, pairs: int = 10000, seed: int = 0) -> float:
    """Mean cosine similarity of random pairs of distinct reference rows: the chance level of
    :func:`cosine_to_targets`."""
    r = _2d(reference, "reference")
    i, j = random_pair_indices(len(r), pairs, seed)
    return float(cosine_to_targets(r[i], r, j).mean())


def random_pair_distance(x: np.ndarray, pairs: int = 10000, seed: int = 0) -> float:
    """Mean Euclidean distance of random pairs of distinct rows of ``x (N, D)``."""
    a = _2d(x, "x")
    i, j = random_pair_indices(len(a), pairs, seed)
    return float(np.linalg.norm(a[i] - a[j], axis=1).mean())


def nearest_rows(queries: np.ndarray, feats: np.ndarray, block_bytes: int = 1 << 28) -> tuple[np.ndarray, np.ndarray]:
    """For each query (M, D) the nearest row of ``feats (N, D)`` by Euclidean distance (the first
    on ties) and that distance: ``(M,)`` int64, ``(M,)`` float64. Blocks of (queries, rows) stay
    under ``block_bytes``; float32 (a training store of 1.28M x 2048 is not copied to float64).
    The retrieval baseline takes ``feats`` = the training store and ``queries`` = the conditions,
    streamed a block at a time (:func:`nearest_rows_streamed`)."""
    f = _2d(feats, "feats", np.float32)
    fb = nearest_block_rows(len(queries), block_bytes)
    return nearest_rows_streamed(queries, ((s, f[s : s + fb]) for s in range(0, len(f), fb)))


def nearest_block_rows(n_queries: int, block_bytes: int = 1 << 28) -> int:
    """How many rows of ``feats`` :func:`nearest_rows` compares with the queries at a time."""
    return max(1, block_bytes // (4 * max(1, min(n_queries, 1024))))


def nearest_rows_streamed(queries: np.ndarray, blocks, device=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_rows` over ``blocks``, an iterable of ``(first row, (n, D) rows)`` in row
    order (``FeatureStore.iter_features(0, nearest_block_rows(M))``: the same blocks, so the same
    result): memory of one block, whatever the number of rows. With a torch ``device`` the
    distances are computed there (:func:`_nearest_rows_torch`: the same float32 arithmetic, no TF32;
    the retrieval baseline's 50k x 1.28M x 2048 is 2.6e14 flops, a device's work)."""
    q = _2d(queries, "queries", np.float32)
    if device is not None:
        return _nearest_rows_torch(q, blocks, device)
    qb = max(1, min(len(q), 1024))
    best = np.full(len(q), np.inf, dtype=np.float64)
    idx = np.zeros(len(q), np.int64)
    for s, block in blocks:
        part = _2d(block, "feats", np.float32)
        if q.shape[1] != part.shape[1]:
            raise InvalidInput(f"nearest rows: queries are {q.shape[1]}-d, feats {part.shape[1]}-d")
        p_sq = (part * part).sum(1)
        for t in range(0, len(q), qb):
            b = q[t : t + qb]
            d2 = (b * b).sum(1)[:, None] + p_sq[None] - 2.0 * b @ part.T
            j = d2.argmin(1)
            v = d2[np.arange(len(b)), j]
            better = v < best[t : t + qb]  # strict: the first row wins ties
            best[t : t + qb][better] = v[better]
            idx[t : t + qb][better] = s + j[better]
    return idx, np.sqrt(np.maximum(best, 0.0))


def _nearest_rows_torch(q: np.ndarray, blocks, device) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_rows_streamed`'s arithmetic in torch on ``device``: the queries held there,
    each block moved there once; float32 matmuls with TF32 off (TF32's 10-bit mantissa would change
    which row is nearest)."""
    import torch

    dev = torch.device(device)
    tq = torch.from_numpy(q).to(dev)
    q_sq = (tq * tq).sum(1)
    qb = max(1, min(len(q), 1024))
    best = torch.full((len(q),), float("inf"), dtype=torch.float32, device=dev)
    idx = torch.zeros(len(q), dtype=torch.int64, device=dev)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for s, block in blocks:
            part = torch.from_numpy(_2d(block, "feats", np.float32)).to(dev)
            if q.shape[1] != part.shape[1]:
                raise InvalidInput(f"nearest rows: queries are {q.shape[1]}-d, feats {part.shape[1]}-d")
            p_sq = (part * part).sum(1)
            for t in range(0, len(q), qb):
                d2 = q_sq[t : t + qb, None] + p_sq[None] - 2.0 * tq[t : t + qb] @ part.T
                v, j = d2.min(1)  # the first minimum on ties
                better = v < best[t : t + qb]  # strict: the first row wins ties
                best[t : t + qb] = torch.where(better, v, best[t : t + qb])
                idx[t : t + qb] = torch.where(better, s + j, idx[t : t + qb])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return idx.cpu().numpy(), np.sqrt(np.maximum(best.cpu().numpy().astype(np.float64), 0.0))


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs i < j of the rows of ``x (K, D)`` (nan for K < 2)."""
    a = _2d(x, "x")
    if len(a) < 2:
        return float("nan")
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    return float(d[np.triu_indices(len(a), 1)].mean())


def group_diversity(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean pairwise distance within each group (the samples of one condition), in the order of
    ``np.unique(groups)``: ``(G,)``; groups of one sample are left out."""
    a, g = _2d(x, "x"), np.asarray(groups)
    if g.shape != (len(a),):
        raise InvalidInput(f"diversity: groups must have shape ({len(a)},), got {g.shape}")
    vals = [mean_pairwise_distance(a[g == k]) for k in np.unique(g)]
    return np.array([v for v in vals if np.isfinite(v)], dtype=np.float64)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0)


def _knn_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row."""
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        out[s : s + chunk] = np.sort(_sq_dists(x[s : s + chunk], x), axis=1)[:, k]  # col 0: itself
    return out


def _inside_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    for s in range(0, len(points), chunk):
        inside[s : s + chunk] = (_sq_dists(points[s : s + chunk], centres) <= radii[None]).any(1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision = the fraction of fake
    points inside some real point's k-NN ball, recall = the fraction of real points inside some
    fake point's k-NN ball (torch-fidelity's ``prc`` defaults: k = 3, Euclidean). Computed a
    ``chunk`` of rows at a time."""
    r, f = _2d(real, "real"), _2d(fake, "fake")
    if len(r) <= k or len(f) <= k:
        raise InvalidInput(
            f"precision / recall with k={k} needs more than {k} real and fake points, got {len(r)} and {len(f)}"
        )
    precision = float(_inside_any_ball(f, r, _knn_radii(r, k, chunk), chunk).mean())
    recall = float(_inside_any_ball(r, f, _knn_radii(f, k, chunk), chunk).mean())
    return {"precision": precision, "recall": recall, "k": k, "n_real": len(r), "n_fake": len(f)}


def colour_spread(images: np.ndarray, groups: np.ndarray) -> dict:
    """How much of its colour a representation keeps (RGB in [0, 1]): ``within``, the spread of
    the mean colour of each condition's samples (the RMS over conditions of their standard
    deviation, over the three channels), against ``between``, the spread of those per-condition
    mean colours across conditions. ``ratio`` = within / between: near 0, the samples of one
    condition share its colour; near 1 or above, the colour varies as much as between conditions
    (the representation dropped it)."""
    colour = images.reshape(len(images), -1, images.shape[-1]).mean(1) / 255.0  # (M, 3) mean RGB
    labels = np.unique(groups)
    counts = np.array([(groups == g).sum() for g in labels])
    means = np.stack([colour[groups == g].mean(0) for g in labels])  # (C, 3)
    many = [g for g, c in zip(labels, counts, strict=True) if c > 1]
    within = (
        float(np.sqrt(np.mean([colour[groups == g].var(0, ddof=1).mean() for g in many]))) if many else float("nan")
    )
    between = float(np.sqrt(means.var(0, ddof=1).mean())) if len(labels) > 1 else float("nan")
    ratio = within / between if between > 0 else float("nan")
    return {"within": within, "between": between, "ratio": ratio, "n_conditions": int(len(labels))}
