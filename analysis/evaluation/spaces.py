"""Faithfulness beyond the conditioning encoder, for ``rcdm evaluate``.

Rank / MRR in the conditioning encoder's own space rewards samples that fool that encoder. Here
every sample is also re-encoded by *other* encoders, each given as a store of the same reference
images (``evaluate.second_references``), and each space reports, beside the conditioning space:
rank / MRR, top-1 / top-5 retrieval accuracy and the cosine similarity to the conditioning image;
their chance levels; the retrieval baseline (the nearest training image to the condition, in the
conditioning space, used as the "sample"); and the diversity of the samples of one condition
(mean pairwise distance) beside random pairs of reference images. Pixel-space diversity is
reported once. Only samples whose condition is a reference image count (KDE / prior draws have
no image to be faithful to).

The ``pixels`` space needs no encoder: each sample ranks its conditioning image among all the
reference images (ADM-resized to the samples' resolution) by Euclidean distance in [0, 1] RGB.
No encoder can be fooled there, so it is computed whenever the reference images can be read and
fit in ``PIXEL_SPACE_BYTES`` (a gradient step on pixels towards f(x) = h raised the conditioning
space's MRR from 0.59 to 0.94 and left the pixel space's where it was: docs/recipes.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rcdm.analysis.evaluation import feature_stats as F
from rcdm.analysis.evaluation import metrics
from rcdm.errors import InvalidInput

__all__ = [
    "Space",
    "describe_space",
    "evaluate_spaces",
    "open_second_stores",
    "pixel_spaces",
    "space_metrics",
    "pixel_diversity",
    "pixel_space",
]

PAIRS = 10000  # random pairs for the chance cosine and the random-pair distance
PIXEL_SPACE_BYTES = 1 << 30  # the reference images as float32 pixels, at most (ImageNet's val at 32 px: 0.6 GiB)


@dataclass
class Space:
    """A representation space: its store of the reference images and the samples in it."""

    name: str  # "conditioning" or "second"
    store: Any  # FeatureStore of the reference images in this space
    row_of_reference: np.ndarray  # (N_ref,) row of this store for each reference row (-1: none)
    encoder: Any = None  # the encoder, rebuilt from the store's record (second spaces)

    def describe(self) -> dict:
        return describe_space(self.name, self.store)


def describe_space(name: str, store: Any) -> dict:
    """The head of a space's entry in metrics.json: its name and its store's encoder, layer, dim, path."""
    info = store.encoder_info
    return {
        "space": name,
        "encoder": info.get("name"),
        "layer": store.layer,
        "dim": int(store.dim),
        "store": str(store.path.resolve()),
    }


def open_second_stores(paths: tuple[str, ...], reference: Any) -> list[Space]:
    """Open each second store; it must hold the reference store's images (by key)."""
    from rcdm.store import FeatureStore

    out = []
    for p in paths:
        s = FeatureStore(p)
        where = {k: i for i, k in enumerate(s.keys)}
        rows = np.array([where.get(k, -1) for k in reference.keys], dtype=np.int64)
        missing = int((rows < 0).sum())
        if missing:
            raise InvalidInput(
                f"evaluate.second_references: store {p} lacks {missing} of the {len(rows)} reference "
                f"images of {reference.path} (e.g. {reference.keys[int(np.argmax(rows < 0))]!r}); extract it "
                "from the same image source as the reference store"
            )
        out.append(Space("second", s, rows))
    return out


def space_metrics(
    queries: np.ndarray,
    ref: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    *,
    baseline: np.ndarray | None = None,
    device: Any = None,
    chunk_bytes: int = 1 << 28,
    seed: int = 0,
) -> dict:
    """All numbers of one space. ``queries (M, D)``: the samples' features; ``ref (N, D)``: the
    reference images'; ``target (M,)``: row of each sample's conditioning image in ``ref``;
    ``groups (M,)``: the condition of each sample; ``baseline (M, D)``: the retrieval baseline's
    "sample" features (None: not computed)."""
    n = len(ref)

    def faithfulness(q: np.ndarray) -> dict:
        ranks = metrics.nearest_neighbour_ranks(q, ref, target, device=device, max_chunk_bytes=chunk_bytes)
        cos = F.cosine_to_targets(q, ref, target)
        return {
            **metrics.rank_summary(ranks, n),
            **F.topk_accuracy(ranks, (1, 5), n),
            "cosine": float(cos.mean()) if len(cos) else None,
        }

    out = faithfulness(queries)
    out["chance_cosine"] = F.random_pair_cosine(ref, PAIRS, seed) if n > 1 else None
    if baseline is not None:
        out["baseline"] = faithfulness(baseline)
    div = F.group_diversity(queries, groups)
    rand = F.random_pair_distance(ref, PAIRS, seed) if n > 1 else None
    out["diversity"] = {
        "samples_per_condition": float(div.mean()) if len(div) else None,
        "conditions": int(len(div)),
        "random_reference_pairs": rand,
        "ratio": float(div.mean() / rand) if len(div) and rand else None,
    }
    return out


def pixel_diversity(images: np.ndarray, groups: np.ndarray, reference: np.ndarray | None, seed: int = 0) -> dict:
    """Diversity in pixel space (values in [0, 1], flattened): the samples of one condition, beside
    random pairs of reference images at the samples' resolution (None when they cannot be read)
    and random pairs of samples of different conditions."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    div = F.group_diversity(x, groups)
    out: dict = {"samples_per_condition": float(div.mean()) if len(div) else None, "conditions": int(len(div))}
    g = np.asarray(groups)
    if len(np.unique(g)) > 1:
        i, j = F.random_pair_indices(len(x), 4 * PAIRS, seed)
        keep = g[i] != g[j]
        out["samples_of_other_conditions"] = float(np.linalg.norm(x[i[keep]] - x[j[keep]], axis=1).mean())
    if reference is not None and len(reference) > 1:
        r = reference.reshape(len(reference), -1).astype(np.float64) / 255.0
        out["random_reference_pairs"] = F.random_pair_distance(r, PAIRS, seed)
        if out["samples_per_condition"] is not None:
            out["ratio"] = out["samples_per_condition"] / out["random_reference_pairs"]
    return out


def _reference_pixels(
    store: Any, resolution: int, n: int = 256, seed: int = 0, every: np.ndarray | str | None = None
) -> np.ndarray | None:
    """Up to ``n`` random reference images at the samples' resolution, or None when unreadable.
    ``every``: :func:`all_reference_pixels`' answer when the caller has it; when it holds the
    images the rows are taken from it and nothing is read again."""
    from rcdm.data.images import adm_center_crop
    from rcdm.store import StoreImages

    rows = np.random.default_rng(seed).permutation(len(store))[:n]
    if isinstance(every, np.ndarray):
        return every[rows]
    try:
        imgs = StoreImages(store)
        return np.stack([adm_center_crop(imgs.load(int(i)), resolution) for i in rows])
    except Exception:  # a moved image folder only costs this one comparison
        return None


def all_reference_pixels(store: Any, resolution: int) -> np.ndarray | str:
    """Every reference image ADM-resized to ``resolution``, ``(N, R, R, 3)`` uint8, or a note
    saying why not: they would not fit in ``PIXEL_SPACE_BYTES`` as float32, or could not be read."""
    from rcdm.data.images import adm_center_crop
    from rcdm.store import StoreImages

    n, dim = len(store), 3 * resolution * resolution
    if n * dim * 4 > PIXEL_SPACE_BYTES:
        return (
            f"pixel-space rank not computed: the {n} reference images at {resolution} px would take "
            f"{n * dim * 4 / 2**30:.1f} GiB as float32 (rcdm.analysis.evaluation.spaces.PIXEL_SPACE_BYTES: "
            f"{PIXEL_SPACE_BYTES / 2**30:g} GiB)"
        )
    try:
        reader = StoreImages(store)
        return np.stack([adm_center_crop(reader.load(i), resolution) for i in range(n)])
    except Exception as e:  # a moved image folder costs only this space
        return f"pixel-space rank not computed: the images of {store.path} could not be read ({str(e).splitlines()[0][:200]})"


def pixel_space(
    store: Any,
    resolution: int,
    images: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    nn_images: list | None = None,
    inv: np.ndarray | None = None,
    *,
    every: np.ndarray | str | None = None,
    device: Any = None,
    chunk_bytes: int = 1 << 28,
) -> dict | str:
    """The ``pixels`` space's entry (:func:`space_metrics` on [0, 1] RGB pixels at ``resolution``,
    the baseline's training images ``nn_images[inv]`` too), or a note saying why it was not computed.
    ``every``: :func:`all_reference_pixels`' answer, when the caller already has it."""
    from rcdm.data.images import adm_center_crop

    ref = all_reference_pixels(store, resolution) if every is None else every
    if isinstance(ref, str):
        return ref

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(len(a), -1).astype(np.float32) / 255.0

    base = None
    if nn_images is not None:
        base = flat(np.stack([adm_center_crop(im, resolution) for im in nn_images]))[inv]
    return {
        "space": "pixels",
        "encoder": "pixels",
        "layer": f"RGB in [0, 1] at {resolution} px",
        "dim": 3 * resolution * resolution,
        "store": str(store.path.resolve()),
        **space_metrics(flat(images), flat(ref), target, groups, baseline=base, device=device, chunk_bytes=chunk_bytes),
    }


@dataclass
class Baseline:
    """The retrieval baseline: the nearest training image to each condition, used as the sample."""

    rows: np.ndarray  # (M_in,) its training-store row, per sample
    features: np.ndarray  # (M_in, D) its features in the conditioning space
    info: dict  # metrics.json's faithfulness.retrieval_baseline
    images: list | None = None  # the distinct training images (None: unreadable), decoded once
    inverse: np.ndarray | None = None  # (M_in,) index into ``images`` per sample


def evaluate_spaces(
    ss: Any,
    store: Any,
    ref: np.ndarray,
    queries: np.ndarray,
    cond_index: np.ndarray,
    seconds: list[Space],
    train_store: Any | None,
    *,
    encode: Any,
    device: Any = None,
    chunk_bytes: int = 1 << 28,
) -> dict:
    """The ``faithfulness`` block of metrics.json: one entry per space, pixel diversity, the
    retrieval baseline's description and notes. ``ref (N, D)``: ``store``'s features (view 0), as
    the caller already read them. ``encode(encoder, images, preprocess) -> (N, D)``.

    Only samples conditioned on a reference image count. The steps: the retrieval baseline (with a
    training store), the conditioning space, each second encoder's space, then the pixel space and
    the pixel diversity."""
    inside = cond_index >= 0
    notes: list[str] = []
    if not inside.any():
        return {"spaces": [], "notes": ["no sample is conditioned on a reference image: nothing to be faithful to"]}
    target = cond_index[inside]
    groups = np.array([r.condition for r in ss.rows])[inside]
    images = ss.images[inside]
    kw = dict(device=device, chunk_bytes=chunk_bytes)
    base = retrieval_baseline(ss.conds[inside], train_store, notes, device=device)
    spaces = [
        {
            **describe_space("conditioning", store),
            **space_metrics(queries[inside], ref, target, groups, baseline=_get(base, "features"), **kw),
        }
    ]
    if base is not None:
        baseline_images(base, train_store, notes)
    spaces += [second_space(sp, images, target, groups, base, encode, **kw) for sp in seconds]
    diversity = pixel_spaces(store, ss.resolution, images, target, groups, base, spaces, notes, **kw)
    return {
        "spaces": spaces,
        "pixel_diversity": diversity,
        "colour": F.colour_spread(images, groups),  # how much of the colour the representation keeps
        "retrieval_baseline": _get(base, "info"),
        "n_samples": int(inside.sum()),
        "notes": notes,
    }


def pixel_spaces(
    store: Any,
    resolution: int,
    images: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    base: Baseline | None,
    spaces: list[dict],
    notes: list[str],
    **kw: Any,
) -> dict:
    """The pixel space (appended to ``spaces``, or a note saying why not) and the pixel diversity
    (returned); the reference images are read once for both."""
    every = all_reference_pixels(store, resolution)
    pixels = pixel_space(
        store, resolution, images, target, groups, _get(base, "images"), _get(base, "inverse"), every=every, **kw
    )
    if isinstance(pixels, str):
        notes.append(pixels)
    else:
        spaces.append(pixels)
    ref_px = _reference_pixels(store, resolution, every=every)
    if ref_px is None:
        notes.append(
            f"pixel diversity of random reference pairs not computed: the images of {store.path} could not be read"
        )
    return pixel_diversity(images, groups, ref_px)


def _get(base: Baseline | None, name: str) -> Any:
    """``base.<name>``, or None without a baseline."""
    return None if base is None else getattr(base, name)


def torch_device_type(device: Any) -> str:
    """``"cuda"``, ``"cpu"``, ... of a torch device or its name."""
    return getattr(device, "type", str(device).split(":")[0])


def retrieval_baseline(
    conds: np.ndarray, train_store: Any | None, notes: list[str], device: Any = None
) -> Baseline | None:
    """The nearest training row to each condition ``conds (M_in, D)`` and its features, or None
    (noted) without a training store. The distances are computed on ``device`` when it is an
    accelerator (a CPU keeps numpy's arithmetic)."""
    if train_store is None:
        notes.append(
            "retrieval baseline not computed: no evaluate.train_store of the reference's encoder and "
            "layer (set evaluate.train_store to the training store)"
        )
        return None
    # Streamed a block at a time: ImageNet's training store is 10 GB of float32 a view.
    blocks = train_store.iter_features(view=0, block_rows=F.nearest_block_rows(len(conds)))
    on = device if device is not None and torch_device_type(device) != "cpu" else None
    nn, nn_dist = F.nearest_rows_streamed(conds, blocks, device=on)  # nearest training row per condition
    base = train_store.gather(nn, view=0)  # the retrieval baseline's "samples" in the conditioning space
    info = {
        "train_store": str(train_store.path.resolve()),
        "N_train": len(train_store),
        "mean_distance_condition_to_nearest_train": float(nn_dist.mean()),
    }
    return Baseline(nn, base, info)


def baseline_images(base: Baseline, train_store: Any, notes: list[str]) -> None:
    """Decode the baseline's training images once, for the second and pixel spaces (a note, and
    no baseline there, when they cannot be read)."""
    try:
        from rcdm.store import StoreImages

        uniq, inv = np.unique(base.rows, return_inverse=True)
        imgs = StoreImages(train_store)
        base.images, base.inverse = [imgs.load(int(i)) for i in uniq], inv
    except Exception as e:  # the training images moved: the second spaces have no baseline
        notes.append(
            f"retrieval baseline in pixel space (and any second space) not computed: the training images "
            f"could not be read ({str(e).splitlines()[0][:200]})"
        )


def second_space(
    sp: Space,
    images: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    base: Baseline | None,
    encode: Any,
    **kw: Any,
) -> dict:
    """A second encoder's space: the samples (and the baseline's images) re-encoded by it, ranked
    among its store's features of the reference images."""
    q2 = encode(sp.encoder, images, sp.store.preprocess)
    base2 = None
    if base is not None and base.images is not None:
        base2 = encode(sp.encoder, base.images, sp.store.preprocess)[base.inverse]
    return {
        **sp.describe(),
        **space_metrics(q2, sp.store.features(view=0), sp.row_of_reference[target], groups, baseline=base2, **kw),
    }
