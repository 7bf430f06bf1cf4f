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
    out: Path,
    cs: ConditionSet,
    samples: np.ndarray,
    k: int,
    rows_per_page: int,
    max_conditions: int,
    title: str = "",
) -> list[Path]:
    """Grid pages: each condition's image in the first column, its k samples beside it, for
    the first ``max_conditions`` conditions (``samples`` holds at least their samples). Small
    samples are enlarged by a whole factor; the columns are labelled and ``title`` (checkpoint,
    kimg, sampler, guidance) heads each page."""
    size = samples.shape[1]
    scale = viz.display_scale(size)
    n_cond = min(len(cs.conditions), max_conditions)
    heads = ["condition"] + [f"sample {j + 1}" for j in range(k)]
    paths = []
    for page, start in enumerate(range(0, n_cond, max(1, rows_per_page))):
        rows = []
        for c in range(start, min(n_cond, start + rows_per_page)):
            # the condition tile is drawn at the enlarged size, so its text stays legible
            rows.append(
                [condition_tile(cs, c, size * scale)] + [viz.enlarge(samples[c * k + j], scale) for j in range(k)]
            )
        paths.append(viz.save_png(viz.headed_grid(rows, heads, title, scale=1), out / grid_name(page)))
    return paths


def write_strip(out: Path, cs: ConditionSet, samples: np.ndarray, k: int) -> Path:
    """The interpolation strip: one row per sample column j along the path, endpoints at the ends
    (small samples enlarged by a whole factor)."""
    from rcdm.data.images import adm_center_crop

    size = samples.shape[1]
    scale = viz.display_scale(size)  # enlarged by a whole factor, as the grids
    images = [load() if load is not None else None for load in cs.ends]
    ends = tuple(adm_center_crop(im, size * scale) if im is not None else None for im in images)
    n_path = len(cs.conditions)
    strips = [
        viz.strip([viz.enlarge(samples[p * k + j], scale) for p in range(n_path)], pad=2, ends=ends) for j in range(k)
    ]
    return viz.save_png(np.concatenate(strips, axis=0), out / STRIP)
