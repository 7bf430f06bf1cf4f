"""Faithfulness: does a sample map back to its condition? Nearest-neighbour rank and MRR.

The paper's measure (Bordes et al. 2022, Table 1): re-encode each sample with the conditioning
encoder and rank its condition among a reference set of representations by distance; mean rank
near 1 and MRR near 1 mean the samples follow h. ``rcdm evaluate`` and the check during training
(``train.val_store``) both use these functions, so their numbers are the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rcdm.errors import InvalidInput

__all__ = [
    "Reference",
    "chance_mean_rank",
    "chance_mrr",
    "nearest_neighbour_ranks",
    "prepare_reference",
    "rank_summary",
    "reencode",
    "reencode_ranks",
]


# --------------------------------------------------------------------------------------------
# Rank / MRR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A reference set on its device, ready for :func:`nearest_neighbour_ranks` (torch tensors)."""

    raw: Any  # (N, D) float32, for the exact float64 recheck
    centre: Any  # (1, D) the reference mean
    centred: Any  # (N, D) raw - centre
    sq: Any  # (N,) squared norms of the centred rows

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.raw.shape)

    def __len__(self) -> int:
        return int(self.raw.shape[0])


def prepare_reference(reference: np.ndarray, device=None) -> Reference:
    """Copy ``reference`` (N, D) to ``device`` and centre it once, for callers that rank against
    the same set many times (the check during training); :func:`nearest_neighbour_ranks` does
    this itself when given a numpy array."""
    import torch

    r_np = np.asarray(reference, dtype=np.float32)
    if r_np.ndim != 2:
        raise InvalidInput(f"rank: the reference set must be (N, D), got {r_np.shape}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    raw = torch.from_numpy(r_np).to(dev)
    centre = raw.mean(dim=0, keepdim=True)
    centred = raw - centre
    return Reference(raw, centre, centred, (centred * centred).sum(dim=1))


def nearest_neighbour_ranks(
    queries: np.ndarray,
    reference: np.ndarray | Reference,
    cond_index: np.ndarray,
    cond_vectors: np.ndarray | None = None,
    *,
    device=None,
    max_chunk_bytes: int = 1 << 28,
) -> np.ndarray:
    """Rank of each sample's conditioning image among the reference set, by Euclidean distance.

    queries (M, D): the re-encoded samples f(x_hat); reference (N, D): the reference store's
    features; cond_index (M,): the row c of each sample's conditioning image in ``reference``, or
    -1 when the condition is not in the reference set, in which case ``cond_vectors[m]`` (D,) is
    the condition itself. With d_j = ||f(x_hat) - reference_j||:

        in the set:  rank = 1 + #{j != c : d_j < d_c}
        outside:     rank = 1 + #{j : d_j < ||f(x_hat) - h||}   (rank among reference + h)

    Ties count in the condition's favour (strict <); a sample whose distance to its condition is not
    finite gets the worst rank (N, or N + 1 outside), and a non-finite reference row is never closer. Distances are computed in float32 with the
    matmul expansion ||q||^2 + ||r||^2 - 2 q.r after centering on the reference mean, a chunk of
    queries against all N references at a time so that the (chunk, N) distance block stays under
    ``max_chunk_bytes``. Pairs whose float32 distance is within rounding of d_c are recomputed
    exactly in float64, so ties and near-ties are decided on the true distances. Returns (M,)
    int64 ranks: in [1, N] for conditions in the set, in [1, N + 1] for those outside.

    ``reference`` may be a :class:`Reference` from :func:`prepare_reference` (the work runs on its
    device, ``device`` is then not used): the same arithmetic, without copying and centring the
    set again on every call.
    """
    q_np, c_np, v_np = _rank_inputs(queries, reference, cond_index, cond_vectors)
    if not isinstance(reference, Reference):
        reference = prepare_reference(reference, device)
    m, n = q_np.shape[0], len(reference)
    chunk = max(1, int(max_chunk_bytes // (4 * max(n, 1))))
    ranks = np.empty(m, dtype=np.int64)
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        ranks[s:e] = _chunk_ranks(q_np[s:e], c_np[s:e], v_np[s:e], reference)
    return ranks


def _rank_inputs(
    queries: np.ndarray, reference: np.ndarray | Reference, cond_index: np.ndarray, cond_vectors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries float32, cond_index int64, condition vectors float32; zeros when every condition
    is in the set), checked against each other and the reference's shape."""
    q_np = np.asarray(queries, dtype=np.float32)
    r_shape = reference.shape if isinstance(reference, Reference) else np.shape(reference)
    c_np = np.asarray(cond_index, dtype=np.int64)
    if q_np.ndim != 2 or len(r_shape) != 2 or q_np.shape[1] != r_shape[1]:
        raise InvalidInput(f"rank: queries {q_np.shape} and reference {tuple(r_shape)} must be (M, D) and (N, D)")
    m, n = q_np.shape[0], r_shape[0]
    if c_np.shape != (m,):
        raise InvalidInput(f"rank: cond_index must have shape ({m},), got {c_np.shape}")
    if (c_np >= n).any() or (c_np < -1).any():
        raise InvalidInput(f"rank: cond_index must be in [-1, {n - 1}]")
    if not (c_np < 0).any():
        return q_np, c_np, np.zeros_like(q_np)
    if cond_vectors is None:
        raise InvalidInput("rank: conditions outside the reference set need cond_vectors")
    v_np = np.asarray(cond_vectors, dtype=np.float32)
    if v_np.shape != q_np.shape:
        raise InvalidInput(f"rank: cond_vectors must have shape {q_np.shape}, got {v_np.shape}")
    return q_np, c_np, v_np


def _chunk_ranks(q_np: np.ndarray, c_np: np.ndarray, v_np: np.ndarray, reference: Reference) -> np.ndarray:
    """The ranks of one chunk of queries (B, D) against all N references (the arithmetic of
    :func:`nearest_neighbour_ranks`' docstring)."""
    import torch

    ref_raw, centre, ref, ref_sq = reference.raw, reference.centre, reference.centred, reference.sq
    dev = ref_raw.device
    q_raw = torch.from_numpy(q_np).to(dev)  # (B, D)
    c = torch.from_numpy(c_np).to(dev)  # (B,)
    inside = c >= 0
    # The condition vector h_c: the reference row c, or the given vector for outside ones.
    h_raw = torch.from_numpy(v_np).to(dev)
    h_raw[inside] = ref_raw[c[inside]]
    q, h = q_raw - centre, h_raw - centre
    q_sq = (q * q).sum(dim=1)  # (B,)
    d2 = q_sq[:, None] + ref_sq[None, :] - 2.0 * (q @ ref.T)  # (B, N) squared distances
    d_c = (q * q).sum(1) + (h * h).sum(1) - 2.0 * (q * h).sum(1)  # (B,)
    rows = torch.arange(len(q_np), device=dev)
    d_c[inside] = d2[rows[inside], c[inside]]  # same computation as the d_j it is compared to
    # float32 rounding of the expansion is a few ulps of ||q||^2 + ||r||^2 (sqrt(D) terms).
    tol = 1e-5 * (q_sq + ref_sq.max()) + 1e-12  # (B,)
    closer = (d2 < (d_c - tol)[:, None]).sum(dim=1)  # (B,) certainly closer
    near = (d2 - d_c[:, None]).abs() <= tol[:, None]  # (B, N) too close to call in float32
    near[rows[inside], c[inside]] = False  # j != c
    ii, jj = near.nonzero(as_tuple=True)
    if ii.numel():
        _count_exact(closer, ii, jj, q_raw, h_raw, ref_raw)
    # A sample whose distance to its condition is not finite (a NaN or inf re-encoding) never
    # counts as faithful: the worst rank (a NaN compares as "not closer" to everything, rank 1).
    lost = ~torch.isfinite(d_c)
    closer[lost] = torch.where(inside[lost], len(ref_raw) - 1, len(ref_raw))
    return (1 + closer).cpu().numpy()


def _count_exact(closer, ii, jj, q_raw, h_raw, ref_raw) -> None:
    """Add to ``closer`` the near pairs (ii, jj) whose float64 distance is below the condition's."""
    q64, h64 = q_raw.double(), h_raw.double()
    dc64 = ((q64 - h64) ** 2).sum(1)  # (B,) exact squared distance to the condition
    for p in range(0, ii.numel(), 8192):
        a, b = ii[p : p + 8192], jj[p : p + 8192]
        dj64 = ((q64[a] - ref_raw[b].double()) ** 2).sum(1)
        closer.index_add_(0, a, (dj64 < dc64[a]).to(closer.dtype))


def chance_mean_rank(n: int) -> float:
    """Expected rank when the sample says nothing about its condition: (N + 1) / 2."""
    return (n + 1) / 2.0


def chance_mrr(n: int) -> float:
    """Expected 1/rank for a uniform rank in 1..N: H_N / N."""
    return float(np.sum(1.0 / np.arange(1, n + 1)) / n) if n > 0 else float("nan")


def rank_summary(ranks: np.ndarray, n_reference: int) -> dict:
    """Mean rank, MRR, median rank and the chance levels for a reference set of N items."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict = {"n": int(r.size), "N": int(n_reference)}
    if r.size:
        out.update(
            mean_rank=float(r.mean()),
            mrr=float((1.0 / r).mean()),
            median_rank=float(np.median(r)),
        )
    else:
        out.update(mean_rank=None, mrr=None, median_rank=None)
    out.update(chance_mean_rank=chance_mean_rank(n_reference), chance_mrr=chance_mrr(n_reference))
    return out


def reencode_ranks(
    encoder,
    images: np.ndarray,
    preprocess,
    reference: np.ndarray | Reference,
    cond_index: np.ndarray,
    conds: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    device=None,
    max_chunk_bytes: int = 1 << 28,
) -> np.ndarray:
    """Re-encode uint8 samples ``(M, H, W, 3)`` with the conditioning ``encoder`` and its
    ``preprocess`` (:func:`reencode`), and rank each one's condition among ``reference`` (N, D),
    an array or a :class:`Reference` (:func:`nearest_neighbour_ranks`): ``(M,)`` int64 ranks."""
    queries = reencode(encoder, images, preprocess, reference.shape[1], batch_size=batch_size, device=device)
    return nearest_neighbour_ranks(
        queries, reference, cond_index, conds, device=device, max_chunk_bytes=max_chunk_bytes
    )


def reencode(
    encoder,
    images: np.ndarray,
    preprocess,
    dim: int,
    *,
    batch_size: int = 64,
    device=None,
    reference: str = "the reference set",
) -> np.ndarray:
    """The samples ``(M, H, W, 3)`` uint8 re-encoded by the conditioning ``encoder`` with its
    ``preprocess``: ``(M, dim)`` float32. Features of another dimension than the reference's
    (``reference`` names it in the error) mean the encoder is not the one that made them."""
    from rcdm.encoders.build import encode

    queries = np.asarray(encode(encoder, images, preprocess, batch_size=batch_size, device=device), np.float32)
    if queries.shape[1] != dim:
        raise InvalidInput(
            f"re-encoded samples are {queries.shape[1]}-d, {reference} holds {dim}-d features: the "
            "encoder does not produce the reference store's features"
        )
    return queries
