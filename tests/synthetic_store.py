"""Make a valid feature store from arrays in a second (for tests of the later stages)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rcdm.data.images import PREPROCESS
from rcdm.store import build_manifest, write_manifest, write_shard

# The 'rcdm' preprocessing (what the official RCDM code feeds its encoders), as manifests record it.
RCDM_PREPROCESS = PREPROCESS["rcdm"].to_dict()


def make_store(
    store_dir: str | Path,
    feats: np.ndarray,
    keys: Sequence[str] | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    encoder_info: dict | None = None,
    preprocess: dict | None = None,
    source: dict | None = None,
    fmt: str = "h5",
    images: Sequence[bytes] | None = None,
    shard_size: int = 64,
    dtype: str = "float16",
    failed: Sequence[dict] = (),
) -> Path:
    """Write a finished store at ``store_dir`` holding ``feats`` and return its path.

    ``feats`` is (N, 2, D) (view 0, view 1 = hflip) or (N, D) (both views set to the same row).
    Defaults: keys ``item_00000``..., labels -1, a synthetic encoder named ``synthetic`` with layer
    ``trunk``, the ``rcdm`` preprocessing, a ``folder`` source of N items. ``images`` (one encoded
    image per row) needs ``fmt="wds"``. ``failed`` items are listed in the manifest as skipped.
    """
    store_dir = Path(store_dir)
    feats = np.asarray(feats)
    if feats.ndim == 2:
        feats = np.stack([feats, feats], axis=1)  # (N, 2, D)
    if feats.ndim != 3 or feats.shape[1] != 2:
        raise ValueError(f"feats must be (N, 2, D) or (N, D), got {feats.shape}")
    n, _, dim = feats.shape
    keys = list(keys) if keys is not None else [f"item_{i:05d}" for i in range(n)]
    labels = np.asarray(labels if labels is not None else np.full(n, -1), dtype=np.int64)
    if len(keys) != n or len(labels) != n:
        raise ValueError(f"{n} feature rows but {len(keys)} keys and {len(labels)} labels")
    encoder_info = dict(
        encoder_info
        or {"name": "synthetic", "arch": "none", "layer": "trunk", "dim": dim, "weights": None, "weights_sha256": None}
    )
    encoder_info.setdefault("layer", "trunk")
    encoder_info.setdefault("dim", dim)
    source = dict(
        source or {"kind": "folder", "root": str(store_dir / "images"), "split": "train", "key_rule": "synthetic"}
    )
    source.setdefault("n_items", n + len(failed))
    records = []
    for k, start in enumerate(range(0, max(n, 1), shard_size)):
        sl = slice(start, min(start + shard_size, n))
        rec = write_shard(
            store_dir,
            k,
            feats[sl],
            keys[sl],
            labels[sl],
            fmt=fmt,
            dtype=dtype,
            images=list(images[sl]) if images is not None else None,
            failed=list(failed) if k == 0 else [],
            first_item=start,
        )
        records.append(rec)
    manifest = build_manifest(
        records,
        encoder_info=encoder_info,
        preprocess=dict(preprocess or RCDM_PREPROCESS),
        source=source,
        fmt=fmt,
        dtype=dtype,
        dim=dim,
        has_images=images is not None,
        extract_config={"synthetic": True, "shard_size": shard_size},
    )
    write_manifest(store_dir, manifest)
    return store_dir
