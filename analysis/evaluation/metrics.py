"""Pure metrics: FID from statistics, Inception Score from logits, nearest-neighbour rank / MRR.

Arrays in, numbers out; no I/O and no model. Rank / MRR live in core (:mod:`rcdm.faithfulness`:
training logs them too) and are re-exported here. The Inception network lives in
:mod:`.inception`, the file handling in :mod:`.fid`; the pure numbers beyond rank (top-k,
cosine, diversity, precision / recall) in :mod:`.feature_stats`.
"""

from __future__ import annotations

import math

import numpy as np
from rcdm.errors import InvalidInput
from rcdm.faithfulness import chance_mean_rank, chance_mrr, nearest_neighbour_ranks, rank_summary

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "inception_score",
    "inception_score_from_probs",
    "nearest_neighbour_ranks",
    "rank_summary",
    "chance_mean_rank",
    "chance_mrr",
    "pool_tokens",
    "token_sq_distance",
    "token_ranks",
]


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mu (D,), sigma (D, D), float64, sigma the unbiased covariance."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InvalidInput(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6):

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    The matrix square root is scipy's ``sqrtm`` as in the TTUR / pytorch-fid / ADM code; when the
    product is singular (fewer samples than dimensions) ``eps`` is added to both diagonals.
    ``method="eigh"`` computes the same trace from symmetric eigendecompositions,
    Tr (s1 s2)^(1/2) = Tr (s1^(1/2) s2 s1^(1/2))^(1/2), exact for PSD covariances and about 15x
    faster at 2048-d; "sqrtm" stays the default because published numbers use it.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise InvalidInput(
            f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    if method == "eigh":
        w, v = np.linalg.eigh(sigma1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # sigma1^(1/2), symmetric
        inner = root1 @ sigma2 @ root1
        tr_covmean = _trace_sqrt_psd(inner)
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    if method != "sqrtm":
        raise InvalidInput(f"FID method {method!r} is unknown; use 'sqrtm' or 'eigh'")
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    # Numerical error can give a small imaginary part; a large one means the maths went wrong.
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = float(np.max(np.abs(covmean.imag)))
            raise InvalidInput(f"FID: the matrix square root has an imaginary component {m:g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _trace_sqrt_psd(a: np.ndarray) -> float:
    """Tr a^(1/2) for a symmetric PSD matrix. Eigenvalues at rounding level are zeroed first:
    sqrt would turn 1e-16 noise on a rank-deficient matrix into 1e-8 per eigenvalue."""
    lam = np.linalg.eigvalsh((a + a.T) / 2)
    floor = max(float(np.abs(lam).max(initial=0.0)), 1e-300) * a.shape[0] * np.finfo(np.float64).eps
    return float(np.sqrt(np.where(lam > floor, lam, 0.0)).sum())


def frechet_distance_from_features(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID of a feature set (N, D) against statistics (mu2, sigma2), exact, in O(N D^2).

    With X the centred features, sigma1 = X^T X / (N - 1), and the non-zero eigenvalues of
    sigma1 sigma2 = X^T (X sigma2) / (N - 1) are those of the (N, N) PSD matrix
    X sigma2 X^T / (N - 1). So Tr (sigma1 sigma2)^(1/2) comes from one small eigvalsh: exact where
    sqrtm of a singular product needs the eps hack, and much cheaper when N < D.
    """
    x = np.asarray(features, dtype=np.float64)
    mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or mu2.shape != (x.shape[1],) or sigma2.shape != (x.shape[1],) * 2:
        raise InvalidInput(f"FID: features {x.shape} do not match statistics mu {mu2.shape}, sigma {sigma2.shape}")
    n = x.shape[0]
    mu1 = x.mean(axis=0)
    xc = x - mu1  # (N, D)
    small = xc @ sigma2 @ xc.T / (n - 1)  # (N, N)
    tr_covmean = _trace_sqrt_psd(small)
    tr_sigma1 = float((xc * xc).sum() / (n - 1))
    diff = mu1 - mu2
    return float(diff.dot(diff) + tr_sigma1 + np.trace(sigma2) - 2 * tr_covmean)


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------


def inception_score_from_probs(
    probs: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split, returned as (mean, std) over ``splits``.

    probs: (N, C) rows summing to 1. The split rule and the shuffle (RandomState(2020)
    permutation) are torch-fidelity's, so numbers match its ``isc`` exactly.
    """
    from scipy.special import xlogy

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise InvalidInput(f"IS needs (N, C) class probabilities, got shape {p.shape}")
    n = p.shape[0]
    if splits < 1 or n < splits:
        raise InvalidInput(f"IS over {splits} splits needs at least {splits} samples, got {n}")
    if shuffle:
        p = p[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)  # (1, C) marginal p(y) of the split
        # KL(p(y|x) || p(y)) with 0 log 0 = 0 (one-hot rows are allowed).
        kl = (xlogy(part, part) - xlogy(part, np.broadcast_to(py, part.shape))).sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(
    logits: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """IS from (N, C) logits (softmax taken here); see :func:`inception_score_from_probs`."""
    from scipy.special import softmax

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise InvalidInput(f"IS needs (N, C) logits, got shape {z.shape}")
    return inception_score_from_probs(softmax(z, axis=1), splits, shuffle, seed)


# --------------------------------------------------------------------------------------------
# Token representations (a ViT's patch grid, stored flat as T x D per row)
# --------------------------------------------------------------------------------------------


def pool_tokens(x: np.ndarray, token_shape: tuple[int, int]) -> np.ndarray:
    """(M, T * D) flat token grids -> (M, D) their mean over the T tokens (the pooled vector)."""
    t, d = token_shape
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != t * d:
        raise InvalidInput(f"token grids must be (M, {t} x {d} = {t * d}), got {x.shape}")
    return x.reshape(len(x), t, d).mean(1)


def token_sq_distance(a: np.ndarray, b: np.ndarray, token_shape: tuple[int, int]) -> np.ndarray:
    """The token distance: the mean over tokens of the squared Euclidean distance between the
    tokens at the same grid position, (1/T) sum_t ||a_t - b_t||^2, for rows of (M, T * D).

    It is ||a - b||^2 / T on the flat rows, so it orders pairs as the flat Euclidean distance
    does: :func:`token_ranks` ranks by that (it does not call this function), and this one states
    the distance those ranks stand for."""
    t, d = token_shape
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a - b).reshape(-1, t, d) ** 2).sum(-1).mean(-1)


def token_ranks(
    queries: np.ndarray,
    reference: np.ndarray,
    cond_index: np.ndarray,
    token_shape: tuple[int, int],
    cond_vectors: np.ndarray | None = None,
    **kw,
) -> dict[str, np.ndarray]:
    """Ranks of each sample's condition for token representations, under both distances:

    - ``tokens``: the mean over tokens of the squared distance, position by position (a sample
      must put the right content in the right place), ranked as the Euclidean distance of the
      flat (T * D) rows, which orders pairs the same way (:func:`token_sq_distance` = that
      distance squared / T);
    - ``pooled``: the Euclidean distance between the token means (:func:`pool_tokens`): the
      content, wherever it is.

    Arguments as :func:`nearest_neighbour_ranks` with (M, T * D) / (N, T * D) rows; ``kw`` goes to it."""
    tokens = nearest_neighbour_ranks(queries, reference, cond_index, cond_vectors, **kw)
    pooled_cond = pool_tokens(cond_vectors, token_shape) if cond_vectors is not None else None
    pooled = nearest_neighbour_ranks(
        pool_tokens(queries, token_shape), pool_tokens(reference, token_shape), cond_index, pooled_cond, **kw
    )
    return {"tokens": tokens, "pooled": pooled}
