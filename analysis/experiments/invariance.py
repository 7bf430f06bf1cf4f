"""invariance (Fig. 3, 25): transform the conditioning image (shift, zoom, grayscale, colour
jitter, flip, user torchvision transforms), sample from each representation with the same noise
seeds, and measure how far the representation moves (per encoder layer in ``analyze.layers``)
and how far the samples move (pixels, and the samples' own representations)."""

from __future__ import annotations

import numpy as np
from rcdm.analysis.experiments.common import Context
from rcdm.analysis.experiments.distances import squared_distances
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.experiments.transforms import get_transform, seeded_apply
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Invariance to transformations (Fig. 3, 25)"


def transform_names(ctx: Context) -> list[str]:
    names = list(ctx.cfg.transforms) + list(ctx.cfg.custom_transforms)
    if not names:
        raise InvalidInput("invariance: analyze.transforms and analyze.custom_transforms are both empty")
    for n in names:
        get_transform(n)  # parse now: a bad expression fails before any sampling
    return names


def check_layers(ctx: Context, info: dict) -> None:
    """Every layer of ``analyze.layers`` must exist in the encoder (checked before any work)."""
    from rcdm.encoders.registry import get_spec

    dims = get_spec(info["name"]).dims
    for layer in ctx.cfg.layers:
        if layer not in ("trunk", "head"):
            raise InvalidInput(f"analyze.layers: {layer!r} is not a layer; use 'trunk' and/or 'head'")
        if layer not in dims:
            raise InvalidInput(
                f"invariance: encoder {info['name']} has no {layer!r} layer (it has: {', '.join(dims)}); "
                f"remove {layer!r} from analyze.layers or use an encoder with a projection head "
                "(e.g. simclr-rn50, dino-rn50)"
            )


def run(ctx: Context) -> Entry:
    cfg = ctx.cfg
    names = transform_names(ctx)
    val = ctx.store("val")
    rows = ctx.pick(val, cfg.n_images, "invariance")
    seeds = ctx.noise_seeds()
    figures, records, table_rows = [], [], []
    for r in ctx.rcdms():
        check_layers(ctx, r.encoder_info)
        enc = ctx.encoder(r.encoder_info)
        size = display_size(r.image_size)
        per_t: dict[str, dict[str, list[float]]] = {n: {} for n in names}
        for n_img, i in enumerate(rows):
            img = ctx.image(val, i)
            views = [img] + [seeded_apply(get_transform(t), img, cfg.seed, f"{t}/{val.keys[i]}") for t in names]
            conds = ctx.encode(enc, views)  # (1 + T, D): original first
            samples = ctx.sample_grid(r, conds, seeds)  # (1 + T, S, H, W, 3)
            s_feats = ctx.encode(enc, samples.reshape(-1, *samples.shape[2:])).reshape(len(views), len(seeds), -1)
            grid_rows = [
                [labelled(v, lab, size)] + [labelled(s, "", size) for s in samples[c]]
                for c, (v, lab) in enumerate(zip(views, ["original", *names], strict=True))
            ]
            rec = {"checkpoint": r.path, "key": val.keys[i], "transforms": {}}
            norm0 = float((conds[0].astype(np.float64) ** 2).sum())
            for t_idx, t in enumerate(names, start=1):
                d = {}
                for layer in cfg.layers:
                    if layer == r.encoder_info.get("layer"):
                        h = conds[[0, t_idx]]
                    else:
                        h = ctx.encode(ctx.encoder(r.encoder_info, layer), [views[0], views[t_idx]])
                    d[f"{layer}_squared_distance"] = float(squared_distances(h[0], h[1:])[0])
                    d[f"{layer}_relative"] = d[f"{layer}_squared_distance"] / max(
                        float((h[0].astype(np.float64) ** 2).sum()), 1e-12
                    )
                # how far the samples move, with the same noise seeds
                d["sample_pixel_mad"] = float(
                    np.abs(samples[t_idx].astype(np.float32) - samples[0].astype(np.float32)).mean() / 255.0
                )
                d["sample_repr_squared_distance"] = float(
                    ((s_feats[t_idx].astype(np.float64) - s_feats[0]) ** 2).sum(-1).mean()
                )
                rec["transforms"][t] = d
                for k, v in d.items():
                    per_t[t].setdefault(k, []).append(v)
            rec["original_squared_norm"] = norm0
            records.append(rec)
            cap = ctx.caption(
                r, seeds,
                f"Rows: the original image {val.keys[i]} and its transformations ({', '.join(names)}; "
                f"random ones seeded by analysis seed {cfg.seed}), each followed by samples from its "
                "representation, the same noise seed per column",
            )  # fmt: skip
            figures.append(ctx.save_figure("invariance", f"{r.label}_{n_img}", grid(grid_rows), cap, f"{r.label}: {val.keys[i]}"))
        for t in names:
            m = {k: float(np.mean(v)) for k, v in per_t[t].items()}
            table_rows.append(
                [r.label, t]
                + [m[f"{layer}_squared_distance"] for layer in cfg.layers]
                + [m[f"{layer}_relative"] for layer in cfg.layers]
                + [m["sample_pixel_mad"], m["sample_repr_squared_distance"]]
            )
    columns = (["checkpoint", "transform"] + [f"{layer} ||dh||^2" for layer in cfg.layers]
               + [f"{layer} relative" for layer in cfg.layers]
               + ["samples: mean |dx|", "samples: ||df||^2"])  # fmt: skip
    table = Table(f"Mean over {len(rows)} images", columns, table_rows)
    numbers = {"seed": cfg.seed, "noise_seeds": seeds, "layers": list(cfg.layers), "transforms": names,
               "images": records}  # fmt: skip
    desc = (
        "Representation distance ||h(T x) - h(x)||^2 (and relative to ||h(x)||^2) per encoder layer; "
        "sample movement: mean absolute pixel difference in [0, 1] and squared distance between the "
        "samples' representations, comparing samples with the same noise seed."
    )
    return ctx.finish("invariance", TITLE, numbers, figures, [table], desc)
