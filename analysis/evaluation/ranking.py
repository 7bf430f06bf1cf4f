"""The paper's faithfulness measure in the conditioning space: each sample is re-encoded with the
conditioning encoder and its conditioning image is ranked among the reference images by distance
(1 = the nearest); mean rank and MRR beside their chance levels (``metrics.json``'s ``rank``).

A sample whose condition is not a reference image (a manipulated vector, an image from elsewhere)
ranks its condition vector among the N reference features and itself (N + 1), reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rcdm.analysis.evaluation import metrics
from rcdm.analysis.evaluation.checks import check_finite
from rcdm.config import EvaluateConfig
from rcdm.faithfulness import reencode
from rcdm.run.sampleset import SampleSet

__all__ = ["Ranking", "match_conditions", "rank_block", "rank_samples"]


@dataclass
class Ranking:
    """The ranks, and the arrays the faithfulness spaces reuse."""

    block: dict  # metrics.json's "rank"
    ranks: np.ndarray  # (M,) int64: the rank of each sample's condition
    inside: np.ndarray  # (M,) bool: the condition is a reference image
    queries: np.ndarray  # (M, D) the samples re-encoded
    cond_index: np.ndarray  # (M,) row of the condition in the reference, or -1 outside
    ref: np.ndarray  # (N, D) the reference store's features (view 0)


def match_conditions(ss: SampleSet, keys: list[str], ref: np.ndarray) -> np.ndarray:
    """Row c of each sample's conditioning image in the reference set, or -1 when outside.

    A sample is "in the set" when its key is a reference key *and* its conditioning vector is that
    row's feature (to float16 storage precision): a manipulated vector, or a same-named image
    from another store, counts as outside.
    """
    where = {k: i for i, k in enumerate(keys)}
    out = np.full(len(ss.rows), -1, dtype=np.int64)
    for i, key in enumerate(ss.keys()):
        c = where.get(key) if isinstance(key, str) else None
        if c is not None and np.allclose(ss.conds[i], ref[c], rtol=1e-3, atol=1e-3):
            out[i] = c
    return out


def rank_samples(cfg: EvaluateConfig, ss: SampleSet, store: Any, encoder: Any, device: Any) -> Ranking:
    """Re-encode every sample with the conditioning encoder (and the store's own preprocessing),
    then rank each sample's condition: by the euclidean distance, or for a patch grid by the token
    distance and by the pooled one."""
    queries = reencode(
        encoder,
        ss.images,
        store.preprocess,
        store.dim,
        batch_size=cfg.batch_size,
        device=device,
        reference=f"the reference store {store.path}",
    )  # (M, D)
    ref = store.features(view=0)  # (N, D)
    check_finite(ref, "reference features", f"the reference store {store.path}", store.keys)
    check_finite(queries, "re-encoded samples", f"the sample set {ss.path} (the encoder's output)", ss.keys())
    cond_index = match_conditions(ss, store.keys, ref)  # (M,) row c, or -1 outside
    kw = dict(device=device, max_chunk_bytes=cfg.rank_chunk_mb << 20)
    pooled = None
    if store.token_shape:  # a patch grid: rank by the token distance and by the pooled one
        both = metrics.token_ranks(queries, ref, cond_index, store.token_shape, ss.conds, **kw)
        ranks, pooled = both["tokens"], both["pooled"]
    else:
        ranks = metrics.nearest_neighbour_ranks(queries, ref, cond_index, ss.conds, **kw)
    inside = cond_index >= 0
    block = rank_block(ranks, inside, np.array(ss.kinds()), len(ref), store, pooled)
    return Ranking(block, ranks, inside, queries, cond_index, ref)


def rank_block(
    ranks: np.ndarray, inside: np.ndarray, kinds: np.ndarray, n: int, store: Any, pooled: np.ndarray | None = None
) -> dict:
    """The ``rank`` block of metrics.json: summaries in and outside the reference set (N + 1
    there), outside by the conditions' kind, and under the pooled distance for token stores."""
    outside = metrics.rank_summary(ranks[~inside], n + 1)
    result = {
        "distance": "mean over tokens of the squared euclidean distance" if pooled is not None else "euclidean",
        "view": 0,
        "encoder": store.encoder_info.get("name"),
        "layer": store.layer,
        "in_reference": metrics.rank_summary(ranks[inside], n),
        "outside_reference": {
            **outside,
            "note": "rank of the condition vector among the N reference features + itself",
            "by_kind": {
                str(k): metrics.rank_summary(ranks[~inside & (kinds == k)], n + 1)
                for k in sorted(set(kinds[~inside].tolist()))
            },
        },
    }
    if pooled is not None:
        result["pooled"] = {
            "distance": "euclidean distance of the token means",
            "in_reference": metrics.rank_summary(pooled[inside], n),
            "outside_reference": metrics.rank_summary(pooled[~inside], n + 1),
        }
    return result
