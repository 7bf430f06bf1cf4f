"""interpolation (Fig. 1c, 14, 15): decode the linear path between the representations of two
images, with several noise seeds per path (one row per seed, the same seed along a row)."""

from __future__ import annotations

import numpy as np
from rcdm.analysis.experiments.common import Context
from rcdm.analysis.experiments.figures import display_size, tile
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import strip

TITLE = "Interpolation (Fig. 1c, 14, 15)"


def run(ctx: Context) -> Entry:
    from rcdm.diffusion.conditions import interpolate

    cfg = ctx.cfg
    val = ctx.store("val")
    n_pairs = max(1, cfg.n_images // 2)
    rows = ctx.pick(val, 2 * n_pairs, "interpolation")
    if len(rows) < 2:
        raise InvalidInput(f"interpolation needs at least 2 validation images; {val.path} has {len(val)}")
    pairs = [(rows[2 * j], rows[2 * j + 1]) for j in range(len(rows) // 2)]
    seeds = ctx.noise_seeds()
    n = cfg.interp_steps
    alphas = np.linspace(0.0, 1.0, n).tolist()
    figures, records, table_rows = [], [], []
    for r in ctx.rcdms():
        size = display_size(r.image_size)
        for a, b in pairs:
            ha, hb = ctx.conditions(r, val, [a, b])
            path = interpolate(ha, hb, n)  # (n, D)
            samples = ctx.sample_grid(r, path, seeds).transpose(1, 0, 2, 3, 4)  # (S, n, H, W, 3)
            ends = (tile(ctx.image(val, a), size), tile(ctx.image(val, b), size))
            strips = [strip([tile(s, size) for s in row], ends=ends) for row in samples]
            gap = np.full((2, strips[0].shape[1], 3), 255, np.uint8)
            fig = np.concatenate([x for s in strips for x in (s, gap)][:-1], axis=0)
            # how smoothly the samples change along the path: mean |x_{i+1} - x_i| in [0, 1]
            steps = np.abs(np.diff(samples.astype(np.float32) / 255.0, axis=1)).mean(axis=(2, 3, 4))  # (S, n-1)
            cap = ctx.caption(
                r,
                seeds,
                f"Linear interpolation h = (1 - a) h({val.keys[a]}) + a h({val.keys[b]}), a in {n} "
                "steps from 0 to 1 (end images left and right); one row per noise seed",
            )
            name = f"{r.label}_{len(records)}"
            figures.append(
                ctx.save_figure("interpolation", name, fig, cap, f"{r.title}: {val.keys[a]} to {val.keys[b]}")
            )
            rec = {
                "checkpoint": r.path,
                "a": val.keys[a],
                "b": val.keys[b],
                "alphas": alphas,
                "squared_distance_a_b": float(((ha.astype(np.float64) - hb) ** 2).sum()),
                "mean_abs_pixel_step": steps.mean(0).tolist(),
            }
            records.append(rec)
            table_rows.append(
                [
                    r.label,
                    val.keys[a],
                    val.keys[b],
                    rec["squared_distance_a_b"],
                    float(steps.mean()),
                    float(steps.max()),
                ]
            )
    table = Table(
        "Paths", ["checkpoint", "a", "b", "||h(a) - h(b)||^2", "mean pixel step", "max pixel step"], table_rows
    )
    return ctx.finish(
        "interpolation", TITLE, {"seed": cfg.seed, "noise_seeds": seeds, "paths": records}, figures, [table]
    )
