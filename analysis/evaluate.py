"""``rcdm evaluate``: samples -> FID, IS and nearest-neighbour rank / MRR (the paper's Table 1).

Everything cheap is checked before anything heavy runs (sample files, reference store, the
conditioning dimension, the encoder, the Inception weights, the cached reference statistics).
An old ``manifest.json`` in the output folder is removed first and the new one is written last,
so a folder whose manifest exists holds a complete, consistent evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rcdm.analysis import fd as fdmod
from rcdm.analysis import fid as fidmod
from rcdm.analysis import metrics
from rcdm.analysis.second_space import evaluate_spaces, open_second_stores
from rcdm.analysis.tables import table, write_metrics_files
from rcdm.config import EvaluateConfig, save_resolved
from rcdm.errors import InvalidInput, MissingInput
from rcdm.faithfulness import reencode
from rcdm.run.conditioning import Conditioning, extraction_for, mismatches, same_representation
from rcdm.run.sampleset import SampleSet, read_samples
from rcdm.utils import atomic_write_json, now_iso, sha256_file

__all__ = ["evaluate", "table", "match_conditions"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rcdm")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


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


def _check_encoder(ss: SampleSet, store) -> None:
    """The samples' conditioning must be the reference store's representation: the same
    dimension, encoder (name, architecture, layer, weights, seed) and preprocessing (input size
    included). One comparison with training and sampling: :mod:`rcdm.run.conditioning`."""
    if ss.conds.shape[1] != store.dim:
        raise InvalidInput(
            f"the samples in {ss.path} were conditioned on {ss.conds.shape[1]}-d representations, "
            f"but the reference store {store.path} holds {store.dim}-d features "
            f"({store.encoder_info.get('name')}/{store.layer}); evaluate with a reference store "
            "made by the encoder the model was trained on"
        )
    enc = ss.manifest.get("encoder")
    if not isinstance(enc, dict) or not enc.get("name"):
        return  # the sample set does not say (conditions typed in by hand): nothing to compare
    pp = ss.manifest.get("preprocess") or enc.get("preprocess")
    theirs = Conditioning(dim=int(ss.conds.shape[1]), encoder=enc, preprocess=pp)
    found = mismatches(theirs, Conditioning.of_store(store))
    if found:
        raise InvalidInput(
            f"the samples in {ss.path} were conditioned on {theirs.describe()} (store "
            f"{ss.manifest.get('store')}), but the reference store {store.path} holds other features: "
            f"{', '.join(map(str, found))} (samples vs reference). Evaluate with a reference store "
            f"extracted with {extraction_for(theirs, found)}"
        )


def _method(ss: SampleSet, encoder_name: str) -> str:
    m = ss.manifest
    if m.get("method"):
        return str(m["method"])
    cond = m.get("cond") or (m.get("unet") or {}).get("cond")
    if cond and (n := (m.get("unet") or {}).get("cond_image")):
        cond += f" + cond_image {n}"  # the fitted image of h (an rcdm addition)
    return f"RCDM ({encoder_name}{', ' + cond if cond else ''})"


def _train_store(cfg: EvaluateConfig, reference):
    """The retrieval baseline's training store, or None when the derived default (<workdir>/stores/
    train) does not exist or holds another representation; a store the user named must fit."""
    from rcdm.store import FeatureStore
    from rcdm.store.format import MANIFEST

    if not cfg.train_store:
        return None
    derived = cfg.derived("train_store", unknown=True)
    if not (Path(cfg.train_store) / MANIFEST).is_file():
        if derived:
            return None
        raise MissingInput(
            f"evaluate.train_store {cfg.train_store} is not a finished feature store; "
            "give the training store of the reference's encoder, or unset it"
        )
    train = FeatureStore(cfg.train_store)
    if not same_representation(Conditioning.of_store(train), Conditioning.of_store(reference)):
        if derived:
            return None
        raise InvalidInput(
            f"evaluate.train_store {train.path} holds {Conditioning.of_store(train).describe()}, the reference "
            f"{reference.path} {Conditioning.of_store(reference).describe()}: the retrieval baseline needs the "
            "training store of the same encoder and layer"
        )
    return train


def _rank(
    cfg: EvaluateConfig, ss: SampleSet, store, encoder, device
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``rank`` block of metrics.json, then (ranks, inside, queries, cond_index, ref): the
    per-sample ranks and the arrays the faithfulness block reuses (``ref``: the store's features)."""
    # Re-encode every sample with the conditioning encoder and the store's own preprocessing: (M, D).
    queries = reencode(
        encoder,
        ss.images,
        store.preprocess,
        store.dim,
        batch_size=cfg.batch_size,
        device=device,
        reference=f"the reference store {store.path}",
    )
    ref = store.features(view=0)  # (N, D)
    cond_index = match_conditions(ss, store.keys, ref)  # (M,) row c, or -1 outside
    kw = dict(device=device, max_chunk_bytes=cfg.rank_chunk_mb << 20)
    pooled = None
    if store.token_shape:  # a patch grid: rank by the token distance and by the pooled one
        both = metrics.token_ranks(queries, ref, cond_index, store.token_shape, ss.conds, **kw)
        ranks, pooled = both["tokens"], both["pooled"]
    else:
        ranks = metrics.nearest_neighbour_ranks(queries, ref, cond_index, ss.conds, **kw)
    inside = cond_index >= 0
    n = len(ref)
    kinds = np.array(ss.kinds())
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
    return result, ranks, inside, queries, cond_index, ref


def evaluate(cfg: EvaluateConfig) -> Path:
    """Evaluate one sample directory; returns ``<out>/metrics.json``."""
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device

    for name in ("samples", "reference", "out"):
        if not getattr(cfg, name):
            raise InvalidInput(f"evaluate.{name} is not set; pass --{name} or set it in pipeline.yaml")
    out = Path(cfg.out)

    # Cheap checks first: nothing heavy runs on inputs that will fail later.
    ss = read_samples(cfg.samples)
    store = FeatureStore(cfg.reference)
    _check_encoder(ss, store)
    seconds = open_second_stores(cfg.second_references, store)
    train_store = _train_store(cfg, store)
    fd_names, fd_skipped = fdmod.plan_fd(cfg.fid, cfg.fd_extractors)
    if fd_names and not cfg.reference_images:
        fd_skipped.update(
            {
                n: {
                    "skipped": True,
                    "reason": "no evaluate.reference_images",
                    "how_to_enable": "set evaluate.reference_images",
                }
                for n in fd_names
            }
        )
        fd_names = []
    weights, fid_skip = fidmod.plan_fid(cfg.fid, cfg.inception_weights, cfg.allow_download)
    stats_path = Path(cfg.fid_stats_cache) if cfg.fid_stats_cache else None
    weights_sha256 = sha256_file(weights) if weights is not None else None
    if weights is not None:
        stats_path = stats_path or fidmod.default_stats_path(out, ss.resolution)
        if len(ss.images) < 2:
            raise InvalidInput(f"FID needs at least 2 samples, {ss.path} holds {len(ss.images)}")
        if not cfg.reference_images:
            raise InvalidInput("FID needs evaluate.reference_images (e.g. 10,000 validation images)")
        want = fidmod.expected_meta(cfg.reference_images, ss.resolution, weights_sha256, cfg.fid_reference_limit)
        # A cache of another set is refused here; without a cache the image set must open.
        if fidmod.load_reference_stats(stats_path, want) is None:
            from rcdm.data.images import open_source

            open_source(cfg.reference_images)
    device = pick_device(cfg.device)
    # The conditioning encoder, rebuilt from the store's record (its weights must be found).
    from rcdm.encoders.build import encoder_from_info

    encoder = encoder_from_info(
        store.encoder_info, weights=cfg.encoder_weights, trust_checkpoint=cfg.trust_checkpoint
    ).to(device)
    for sp in seconds:  # the second encoders, rebuilt from their stores' records
        sp.encoder = encoder_from_info(sp.store.encoder_info, trust_checkpoint=cfg.trust_checkpoint).to(device)

    # No stale "finished" marker while we work.
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)

    rank, ranks, inside, queries, cond_index, ref = _rank(cfg, ss, store, encoder, device)
    from rcdm.encoders.build import encode

    faithfulness = evaluate_spaces(
        ss,
        store,
        ref,
        queries,
        cond_index,
        seconds,
        train_store,
        device=device,
        chunk_bytes=cfg.rank_chunk_mb << 20,
        encode=lambda enc, imgs, pp: np.asarray(
            encode(enc, imgs, pp, batch_size=cfg.batch_size, device=device), np.float32
        ),
    )
    fd = dict(fd_skipped)
    if fd_names:
        ref_imgs = fdmod.reference_images(cfg.reference_images, ss.resolution, cfg.fid_reference_limit, cfg.batch_size)
        fd.update(fdmod.compute(fd_names, ss.images, ref_imgs, batch_size=cfg.batch_size, device=device))
    if weights is not None:
        quality = fidmod.fid_and_is(
            ss.images,
            weights=weights,
            reference_images=cfg.reference_images,
            stats_path=stats_path,
            limit=cfg.fid_reference_limit,
            splits=cfg.is_splits,
            method=cfg.fid_method,
            batch_size=cfg.batch_size,
            device=device,
            trust_checkpoint=cfg.trust_checkpoint,
            weights_sha256=weights_sha256,
        )
    else:
        if cfg.fid == "off":
            skipped = {
                "skipped": True,
                "reason": "evaluate.fid=off",
                "how_to_enable": "set evaluate.fid=auto (or on) with the Inception weights",
            }
        else:
            skipped = {"skipped": True, "reason": "the Inception weights file is missing", "how_to_enable": fid_skip}
        quality = {"fid": dict(skipped), "is": dict(skipped)}

    encoder_name = str(store.encoder_info.get("name"))
    m = ss.manifest
    result = {
        "method": _method(ss, encoder_name),
        "encoder": encoder_name,
        "layer": store.layer,
        "resolution": ss.resolution,
        "n_samples": len(ss.images),
        "sampler": ss.sampler.label() if ss.sampler else None,  # what every table and caption names
        "steps": str(ss.sampler.steps) if ss.sampler else None,
        "samples": {
            "path": str(ss.path.resolve()),
            "manifest_sha256": ss.manifest_sha256,
            "checkpoint": m.get("checkpoint"),
            "store": m.get("store"),
        },
        "reference": {
            "path": str(store.path.resolve()),
            "N": len(store),
            "manifest_sha256": store.manifest_sha256,
        },
        **quality,
        "rank": rank,
        "faithfulness": faithfulness,
        "fd": fd,
        "complete": True,
        "created": now_iso(),
    }
    np.save(out / "ranks.npy", ranks)  # (M,) int64
    np.save(out / "rank_in_reference.npy", inside)  # (M,) bool: False = condition outside
    save_resolved(cfg, out)
    path = write_metrics_files(out, result)
    atomic_write_json(
        out / "manifest.json",
        {
            "stage": "evaluate",
            "samples_manifest_sha256": ss.manifest_sha256,
            "reference_manifest_sha256": store.manifest_sha256,
            "inception_weights_sha256": quality["fid"].get("weights_sha256"),
            "fid_reference_stats": (quality["fid"].get("reference") or {}).get("stats"),
            "files": ["metrics.json", "metrics.csv", "metrics.md", "ranks.npy", "rank_in_reference.npy", "config.yaml"],
            "tool_version": _version(),
            "created": now_iso(),
        },
    )
    return path
