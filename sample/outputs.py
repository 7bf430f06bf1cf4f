"""Sample-directory outputs: seeds plan, chunk files, index.jsonl, grids and strips."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from rcdm import viz
from rcdm.utils import atomic_write_bytes, atomic_write_text

from .conds import ConditionSet


def assign_seeds(n_conditions: int, k: int, seed: int, fixed_noise_groups: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sample s = c * k + j is the j-th sample of condition c.

    Returns ``(cond_index (S,), seeds (S,))``. Seeds are ``seed + s`` (every sample its own), or
    ``seed + j`` with fixed noise across an interpolation path, so column j of the path shares
    its initial noise and every step's noise.
    """
    s = np.arange(n_conditions * k, dtype=np.int64)
    cond_index = s // k
    seeds = seed + (s % k if fixed_noise_groups else s)
    return cond_index, seeds


def chunk_path(out: Path, c: int) -> Path:
    return out / "partial" / f"chunk-{c:05d}.npy"


def save_npy(path: Path, arr: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, arr)
    return atomic_write_bytes(path, buf.getvalue())


def load_chunk(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A finished chunk, or None when it is missing or not the expected shape (recompute it)."""
    if not path.exists():
        return None
    try:
        arr = np.load(path)
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def save_npz(path: Path, samples: np.ndarray) -> Path:
    """``samples.npz`` with ``arr_0`` (N, H, W, 3) uint8: guided-diffusion's convention.

    Written straight to a temporary file and renamed (no second in-memory copy: 50,000 samples
    at 256 px are 10 GB)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, samples)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_index(path: Path, cs: ConditionSet, cond_index: np.ndarray, seeds: np.ndarray, k: int) -> Path:
    """One JSON line per sample: its index, condition, key, description, seed, kind."""
    lines = []
    for s, (c, seed) in enumerate(zip(cond_index.tolist(), seeds.tolist(), strict=True)):
        cond = cs.conditions[c]
        row = {
            "sample": s,
            "condition": c,
            "key": cond.key,
            "description": cond.description,
            "kind": cond.kind,
            "seed": int(seed),
            "label": int(cond.label),
            "store_index": cond.store_index,
            "sample_of_condition": s % k,
        }
        row.update(cond.extra)
        lines.append(json.dumps(row))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def condition_tile(cs: ConditionSet, c: int, size: int) -> np.ndarray:
    """The grid's first-column image for condition c: its image (ADM center crop) or a text tile."""
    from rcdm.data.images import adm_center_crop

    cond = cs.conditions[c]
    image = cond.load_image()
    if image is not None:
        tile = adm_center_crop(image, size)
    else:
        tile = viz.placeholder((size, size), cond.description)
    return viz.red_border(tile) if cond.kind == "manipulate" else tile


def write_grids(
    out: Path, cs: ConditionSet, samples: np.ndarray, k: int, rows_per_page: int, max_conditions: int
) -> list[Path]:
    """grid-NNN.png: each condition's image in the first column, its k samples beside it, for
    the first ``max_conditions`` conditions."""
    size = samples.shape[1]
    n_cond = min(len(cs.conditions), max_conditions)
    paths = []
    for page, start in enumerate(range(0, n_cond, max(1, rows_per_page))):
        rows = []
        for c in range(start, min(n_cond, start + rows_per_page)):
            rows.append([condition_tile(cs, c, size)] + [samples[c * k + j] for j in range(k)])
        paths.append(viz.save_png(viz.grid(rows, pad=2), out / f"grid-{page:03d}.png"))
    return paths


def write_strip(out: Path, cs: ConditionSet, samples: np.ndarray, k: int) -> Path:
    """interpolation.png: one strip per sample column j along the path, endpoints at the ends."""
    from rcdm.data.images import adm_center_crop

    size = samples.shape[1]
    images = [load() if load is not None else None for load in cs.ends]
    ends = tuple(adm_center_crop(im, size) if im is not None else None for im in images)
    n_path = len(cs.conditions)
    strips = [viz.strip([samples[p * k + j] for p in range(n_path)], pad=2, ends=ends) for j in range(k)]
    return viz.save_png(np.concatenate(strips, axis=0), out / "interpolation.png")
