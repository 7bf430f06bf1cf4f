"""The sample stage's pictures: grids (conditioning image, then its samples) and the
interpolation strip. The data files are written by ``rcdm.run.sampleset``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rcdm import viz
from rcdm.run.sampleset import STRIP, grid_name

from .conds import ConditionSet


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
    """Grid pages: each condition's image in the first column, its k samples beside it, for
    the first ``max_conditions`` conditions (``samples`` holds at least their samples)."""
    size = samples.shape[1]
    n_cond = min(len(cs.conditions), max_conditions)
    paths = []
    for page, start in enumerate(range(0, n_cond, max(1, rows_per_page))):
        rows = []
        for c in range(start, min(n_cond, start + rows_per_page)):
            rows.append([condition_tile(cs, c, size)] + [samples[c * k + j] for j in range(k)])
        paths.append(viz.save_png(viz.grid(rows, pad=2), out / grid_name(page)))
    return paths


def write_strip(out: Path, cs: ConditionSet, samples: np.ndarray, k: int) -> Path:
    """The interpolation strip: one row per sample column j along the path, endpoints at the ends."""
    from rcdm.data.images import adm_center_crop

    size = samples.shape[1]
    images = [load() if load is not None else None for load in cs.ends]
    ends = tuple(adm_center_crop(im, size) if im is not None else None for im in images)
    n_path = len(cs.conditions)
    strips = [viz.strip([samples[p * k + j] for p in range(n_path)], pad=2, ends=ends) for j in range(k)]
    return viz.save_png(np.concatenate(strips, axis=0), out / STRIP)
