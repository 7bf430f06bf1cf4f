"""manipulation (Fig. 5, 30, 31, 32): edit a representation and decode it.

Nearest-neighbour common-dimension masking (section 5 of the paper): take the k nearest training
neighbours of h; the *most-common* dimensions are those non-zero in at least m of them (what the
neighbours share, usually the object); the *least-common* variant takes as many dimensions of h
among those active in the fewest neighbours. Each set is zeroed ("mask") or replaced by the
values of another image's representation ("substitute"). Algebra rows decode a - b + c.
"""

from __future__ import annotations

import numpy as np
from rcdm.analysis.experiments.common import Context, describe_encoder, same_encoder
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Manipulation: common-dimension masking, substitution and algebra (Fig. 5, 30-32)"


def select_dims(h: np.ndarray, neighbour_feats: np.ndarray, m: int, variant: str) -> np.ndarray:
    """Dimensions to edit, sorted ``(n,)`` int64.

    ``most``: non-zero in at least ``m`` of the ``k`` neighbours (``rcdm.diffusion.conditions.common_dims``).
    ``least``: the same number of dimensions, chosen among those non-zero in ``h`` with the
    fewest non-zero neighbours (ties: lower index first).
    """
    from rcdm.diffusion.conditions import common_dims

    most = common_dims(neighbour_feats, m)
    if variant == "most":
        return most
    if variant != "least":
        raise InvalidInput(f"select_dims variant must be 'most' or 'least', got {variant!r}")
    counts = (np.abs(np.asarray(neighbour_feats)) > 0).sum(0)  # (D,)
    active = np.flatnonzero(np.abs(np.asarray(h)) > 0)
    order = active[np.argsort(counts[active], kind="stable")]
    return np.sort(order[: len(most)]).astype(np.int64)


def run(ctx: Context) -> Entry:
    from rcdm.diffusion.conditions import algebra, knn, manipulate

    cfg = ctx.cfg
    val, train = ctx.store("val"), ctx.store("train")
    tf = ctx.features(train)
    k = min(cfg.knn_k, len(train))
    m = min(cfg.knn_m, k)
    rows = ctx.pick(val, max(3, cfg.n_images), "manipulation")  # algebra needs 3
    seeds = ctx.noise_seeds()
    figures, records, table_rows = [], [], []
    if not same_encoder(train, val):
        raise InvalidInput(
            f"manipulation: the train store ({describe_encoder(train.encoder_info)}) and val store "
            f"({describe_encoder(val.encoder_info)}) must hold the same representation"
        )
    rcdms, notes = ctx.store_rcdms(train, "manipulation")
    for r in rcdms:
        size = display_size(r.image_size)
        vf = ctx.features(val)
        for n_img, i in enumerate(rows[: max(1, cfg.n_images)]):
            h = vf[i]
            other = rows[(n_img + 1) % len(rows)]  # the substitution source: the next image
            nn = knn(tf, h, k)
            conds, labels = [h], ["original"]
            dims_by = {}
            for variant in ("most", "least"):
                dims = select_dims(h, tf[nn], m, variant)
                dims_by[variant] = dims
                conds.append(manipulate(h, dims, "zero"))
                labels.append(f"mask {variant}")
                conds.append(manipulate(h, dims, "replace", target=vf[other]))
                labels.append(f"sub {variant}")
            samples = ctx.sample_grid(r, np.stack(conds), seeds)  # (5, S, H, W, 3)
            img, oimg = ctx.image(val, i), ctx.image(val, other)
            grid_rows = []
            for c, lab in enumerate(labels):
                first = labelled(oimg if lab.startswith("sub ") else img, lab, size)
                grid_rows.append([first] + [labelled(s, "", size) for s in samples[c]])
            cap = ctx.caption(
                r, seeds,
                f"Rows: samples of h({val.keys[i]}); with its {len(dims_by['most'])} most-common / "
                f"least-common dimensions (non-zero in >= {m} of its {k} nearest training neighbours) "
                f"zeroed (mask) or replaced by those of {val.keys[other]} (sub, whose image is shown)",
            )  # fmt: skip
            figures.append(ctx.save_figure("manipulation", f"{r.label}_mask_{n_img}", grid(grid_rows), cap, f"{r.label}: {val.keys[i]}"))
            records.append({
                "checkpoint": r.path, "key": val.keys[i], "substitute_from": val.keys[other],
                "k": k, "m": m, "neighbours": [train.keys[j] for j in nn],
                "dims_most": dims_by["most"], "dims_least": dims_by["least"],
            })  # fmt: skip
            table_rows.append([r.label, val.keys[i], len(dims_by["most"]), len(dims_by["least"]), r.cond_dim])
        # algebra rows: a - b + c
        triples = _triples(ctx, val, rows)
        alg_rows, alg_records = [], []
        for a, b, c in triples:
            hc = algebra(vf[a], vf[b], vf[c])
            samples = ctx.sample(r, np.repeat(hc[None], len(seeds), 0), seeds)
            row = [labelled(ctx.image(val, a), "a", size), labelled(ctx.image(val, b), "- b", size),
                   labelled(ctx.image(val, c), "+ c", size)]  # fmt: skip
            row += [labelled(s, "", size) for s in samples]
            alg_rows.append(row)
            alg_records.append({"a": val.keys[a], "b": val.keys[b], "c": val.keys[c]})
        if alg_rows:
            cap = ctx.caption(
                r, seeds,
                "Representation algebra: each row shows a, b, c, then samples of h(a) - h(b) + h(c) ("
                + "; ".join(f"{t['a']} - {t['b']} + {t['c']}" for t in alg_records) + ")",
            )
            fig = grid(alg_rows, separator_after_first=False)
            figures.append(ctx.save_figure("manipulation", f"{r.label}_algebra", fig, cap, f"{r.label}: algebra"))
            records.append({"checkpoint": r.path, "algebra": alg_records})
    table = Table("Edited dimensions", ["checkpoint", "image", "most-common dims", "least-common dims", "D"], table_rows)
    numbers = {"seed": cfg.seed, "noise_seeds": seeds, "results": records}
    return ctx.finish("manipulation", TITLE, numbers, figures, [table], notes=notes)


def _triples(ctx: Context, val, rows: list[int]) -> list[tuple[int, int, int]]:
    keys = ctx.cfg.algebra_keys
    if keys:
        if len(keys) % 3:
            raise InvalidInput(
                f"analyze.algebra_keys has {len(keys)} keys; give them in threes (a, b, c per row: a - b + c)"
            )
        try:
            idx = [val.index_of(k) for k in keys]
        except KeyError as e:
            raise InvalidInput(f"analyze.algebra_keys: {e}") from None
        return [tuple(idx[j : j + 3]) for j in range(0, len(idx), 3)]  # type: ignore[misc]
    if len(rows) < 3:
        return []
    # default: rotate the picked images, one row per image
    return [(rows[j], rows[(j + 1) % len(rows)], rows[(j + 2) % len(rows)]) for j in range(min(len(rows), 2))]

