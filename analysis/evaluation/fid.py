"""FID / IS for a sample set: weights lookup, cached reference statistics, the numbers.

Reference statistics (mu, sigma of the Inception pool features of a reference image set, each
image ADM-center-cropped to the sample resolution) are computed once and cached as ``.npz`` with
``mu``, ``sigma`` and ``meta`` (a JSON string: source path, number of images, resolution, weights
sha256, crop rule). A cache whose ``meta`` names another set, resolution or Inception file is
refused with an error (never silently recomputed over): point ``evaluate.fid_stats_cache`` to a
new file or delete the old one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rcdm.analysis.evaluation import metrics
from rcdm.analysis.evaluation.inception import (
    FEATURE_EXTRACTOR,
    InceptionV3,
    missing_weights_message,
    resolve_weights,
)
from rcdm.errors import InvalidInput, MissingInput
from rcdm.utils import atomic_write_bytes, now_iso, sha256_file

CROP_RULE = "adm_center_crop"
STATS_VERSION = 1


def default_stats_path(out: str | Path, resolution: int) -> Path:
    """``<out>/../fid-ref-<res>.npz``: the work directory, shared by evaluations of one workdir."""
    return Path(out).resolve().parent / f"fid-ref-{resolution}.npz"


def expected_meta(source: str | Path, resolution: int, weights_sha256: str, limit: int | None) -> dict:
    return {
        "version": STATS_VERSION,
        "source": str(Path(source).expanduser().resolve()),
        "resolution": int(resolution),
        "limit": limit,
        "weights_sha256": weights_sha256,
        "feature": f"{FEATURE_EXTRACTOR}/2048",
        "crop": CROP_RULE,
    }


def load_reference_stats(path: Path, want: dict) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The cached (mu, sigma, meta) if ``path`` exists and matches ``want``; None if absent.

    A cache from another set / resolution / Inception file is a ValueError naming the field.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, meta = z["mu"], z["sigma"], json.loads(str(z["meta"]))
    except (KeyError, ValueError, OSError) as e:
        raise InvalidInput(
            f"FID reference statistics {path} are unreadable or were not written by rcdm "
            f"(need mu, sigma and meta: {e}); delete the file to recompute it, or set "
            "evaluate.fid_stats_cache to another path"
        ) from e
    for field in ("resolution", "source", "limit", "weights_sha256", "feature", "crop"):
        if meta.get(field) != want[field]:
            raise InvalidInput(
                f"FID reference statistics {path} were computed with {field}={meta.get(field)!r}, "
                f"but this evaluation needs {field}={want[field]!r}; delete {path} to recompute "
                "it, or set evaluate.fid_stats_cache to a different file for this reference set"
            )
    if mu.shape != (2048,) or sigma.shape != (2048, 2048):
        raise InvalidInput(f"FID reference statistics {path} have shapes {mu.shape}, {sigma.shape}")
    return mu, sigma, meta


def reference_batches(
    source: str | Path, resolution: int, limit: int | None, batch_size: int, skipped: list[str] | None = None
) -> Iterator[np.ndarray]:
    """The reference images, ADM-center-cropped to ``resolution``, as ``(B, H, W, 3)`` uint8 batches
    of ``batch_size`` (the last one shorter), streamed: all of them, or ``limit`` evenly spaced.
    FID and FD read their reference set through this one function. Unreadable images are skipped;
    their reasons are appended to ``skipped`` when given."""
    from rcdm.data.images import UnreadableImage, adm_center_crop, open_source

    src = open_source(source)
    if limit is None or limit >= len(src):
        order = np.arange(len(src))
    else:
        # Evenly spaced over the sorted set, so a subset of a class-sorted folder spans all
        # classes (the first 10,000 ImageNet validation images would be 200 classes only).
        order = np.unique(np.linspace(0, len(src) - 1, num=limit).round().astype(np.int64))
    batch = []
    for i in order.tolist():
        try:
            batch.append(adm_center_crop(src.load(i), resolution))
        except UnreadableImage as e:
            if skipped is not None:
                skipped.append(str(e))
            continue
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def compute_reference_stats(
    inception: InceptionV3, source: str | Path, resolution: int, limit: int | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Inception pool statistics of a reference image set at ``resolution`` (ADM center crop).

    Unreadable images are skipped and counted (as extraction does).
    """
    skipped: list[str] = []
    feats = [inception(b, batch_size)[0] for b in reference_batches(source, resolution, limit, batch_size, skipped)]
    if not feats or sum(len(f) for f in feats) < 2:
        raise InvalidInput(
            f"the FID reference set {source} has fewer than 2 readable images "
            f"({len(skipped)} unreadable); set evaluate.reference_images to a real image set"
        )
    pool = np.concatenate(feats)  # (n_used, 2048)
    mu, sigma = metrics.feature_statistics(pool)
    info = {"n": int(len(pool)), "n_unreadable": len(skipped), "unreadable": skipped[:20]}
    return mu, sigma, info


def save_reference_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, meta: dict) -> Path:
    import io

    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta)))
    return atomic_write_bytes(path, buf.getvalue())


def plan_fid(mode: str, weights: str | None, allow_download: bool) -> tuple[Path | None, str | None]:
    """Decide before any heavy work: (weights path, None) to compute, or (None, why skipped)."""
    if mode == "off":
        return None, "evaluate.fid=off"
    path = resolve_weights(weights, allow_download=allow_download)
    if path is None:
        from rcdm.analysis.evaluation.inception import default_weights_path

        msg = missing_weights_message(default_weights_path(), configured=False)
        if mode == "on":
            raise MissingInput(msg)
        return None, msg
    return path, None


def fid_and_is(
    samples: np.ndarray,
    *,
    weights: Path,
    reference_images: str | None,
    stats_path: Path,
    limit: int | None,
    splits: int,
    method: str,
    batch_size: int,
    device,
    trust_checkpoint: bool,
    weights_sha256: str | None = None,
) -> dict:
    """FID against the (cached) reference statistics and IS of ``samples`` (N, H, W, 3) uint8.

    ``weights_sha256``: the Inception file's hash when the caller already has it (saves a read)."""
    resolution = int(samples.shape[1])
    if not reference_images:
        raise InvalidInput("FID needs a reference image set: set evaluate.reference_images")
    wsha = weights_sha256 or sha256_file(weights)
    want = expected_meta(reference_images, resolution, wsha, limit)
    cached = load_reference_stats(stats_path, want)
    inception = InceptionV3(weights, device=device, trust_checkpoint=trust_checkpoint)
    if cached is None:
        mu_r, sigma_r, info = compute_reference_stats(inception, reference_images, resolution, limit, batch_size)
        meta = {**want, **info, "created": now_iso()}
        save_reference_stats(stats_path, mu_r, sigma_r, meta)
        reused = False
    else:
        mu_r, sigma_r, meta = cached
        reused = True
    pool, logits = inception(samples, batch_size)
    if method == "eigh" and len(pool) < pool.shape[1]:
        # Fewer samples than dimensions: the exact (N, N) form, no (D, D) decomposition.
        fid = metrics.frechet_distance_from_features(pool, mu_r, sigma_r)
    else:
        mu_s, sigma_s = metrics.feature_statistics(pool)
        fid = metrics.frechet_distance(mu_s, sigma_s, mu_r, sigma_r, method=method)
    out: dict = {
        "fid": {
            "value": fid,
            "n_samples": int(len(samples)),
            "method": method,
            "feature": f"{FEATURE_EXTRACTOR}/2048",
            "reference": {
                "stats": str(stats_path),
                "reused_cache": reused,
                "source": meta["source"],
                "n": meta.get("n"),
                "resolution": resolution,
            },
            "weights": str(weights),
            "weights_sha256": wsha,
        }
    }
    if len(samples) >= splits:
        mean, std = metrics.inception_score(logits, splits=splits)
        out["is"] = {"mean": mean, "std": std, "splits": splits, "feature": "logits_unbiased"}
    else:
        out["is"] = {
            "skipped": True,
            "reason": f"IS over {splits} splits needs at least {splits} samples, got {len(samples)}",
            "how_to_enable": "sample more images or lower evaluate.is_splits",
        }
    return out
