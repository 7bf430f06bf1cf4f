"""neighbours (Fig. 16): the nearest training images (in representation space) of RCDM samples,
to see whether samples are new images or copies of training images."""

from __future__ import annotations

from rcdm.analysis.experiments.common import Context, nearest_training_rows
from rcdm.analysis.experiments.distances import squared_distances
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.report import Entry, Table
from rcdm.viz import grid

TITLE = "Nearest training neighbours of samples (Fig. 16)"


def run(ctx: Context) -> Entry:
    cfg = ctx.cfg
    val, train = ctx.store("val"), ctx.store("train")
    k = min(cfg.neighbours_k, len(train))
    rows = ctx.pick(val, cfg.n_images, "neighbours")
    seeds = ctx.noise_seeds()
    figures, records, table_rows = [], [], []
    rcdms, notes = ctx.store_rcdms(train, "neighbours")
    for r in rcdms:
        enc = ctx.encoder(r.encoder_info)
        size = display_size(r.image_size)
        conds = ctx.conditions(r, val, rows)
        samples = ctx.sample_grid(r, conds, seeds)  # (N, S, H, W, 3)
        flat = samples.reshape(-1, *samples.shape[2:])
        hs = ctx.encode(enc, flat)  # (N*S, D)
        nn = nearest_training_rows(train, hs, k)  # (N*S, k)
        near = train.gather(nn.reshape(-1)).reshape(*nn.shape, -1)  # (N*S, k, D), the shards read once
        grid_rows = []
        for j, (s_img, h_s, idx) in enumerate(zip(flat, hs, nn, strict=True)):
            i, s = divmod(j, len(seeds))
            d = squared_distances(h_s, near[j])
            d_cond = float(squared_distances(h_s, conds[i][None])[0])
            row = [labelled(s_img, f"d(h) {d_cond:.3g}", size)]
            row += [labelled(ctx.image(train, t), f"{dt:.3g}", size) for t, dt in zip(idx, d, strict=True)]
            grid_rows.append(row)
            records.append(
                {
                    "checkpoint": r.path,
                    "condition": val.keys[rows[i]],
                    "seed": seeds[s],
                    "squared_distance_to_condition": d_cond,
                    "neighbours": [
                        {"key": train.keys[t], "squared_distance": float(dt)} for t, dt in zip(idx, d, strict=True)
                    ],
                }
            )
            table_rows.append([r.label, val.keys[rows[i]], seeds[s], d_cond, float(d[0]), train.keys[idx[0]]])
        cap = ctx.caption(
            r,
            seeds,
            f"Left: a sample (conditioned on {', '.join(val.keys[i] for i in rows)}, {len(seeds)} seeds each, "
            f"under it the squared distance of its representation to the condition); right: its {k} nearest "
            "training images in representation space with squared distances",
        )
        figures.append(ctx.save_figure("neighbours", r.label, grid(grid_rows), cap, r.title))
    table = Table(
        "Nearest training neighbour of each sample",
        ["checkpoint", "condition", "seed", "sq. dist. to condition", "sq. dist. to NN 1", "NN 1"],
        table_rows,
    )
    return ctx.finish(
        "neighbours",
        TITLE,
        {"seed": cfg.seed, "noise_seeds": seeds, "k": k, "samples": records},
        figures,
        [table],
        notes=notes,
    )
