"""distances (Fig. 21, 22): how far, in squared Euclidean distance in representation space, is a
conditioning image from random validation images, validation images of its class, its nearest
training neighbours, single augmentations of itself, the SwAV/DINO multi-crop views, and RCDM
samples? Shown with the images and the number under each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rcdm.analysis.experiments.common import Context, describe_encoder, nearest_training_rows, same_encoder
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.experiments.transforms import multicrop, seeded_apply, single_augmentations
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Distances in representation space (Fig. 21, 22)"


def squared_distances(h: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """``||h - f_i||^2`` for every row of ``feats (N, D)``, ``h (D,)`` -> ``(N,)`` float64."""
    h = np.asarray(h, np.float64)
    f = np.asarray(feats, np.float64).reshape(-1, h.shape[0])
    return ((f - h[None]) ** 2).sum(1)


def run(ctx: Context) -> Entry:
    """For each picked image: every group's distances (:func:`_groups`), its figure and rows."""
    cfg = ctx.cfg
    val, train = ctx.store("val"), ctx.store("train")
    if not same_encoder(val, train):
        raise InvalidInput(
            f"distances: the train store ({describe_encoder(train.encoder_info)}) and val store "
            f"({describe_encoder(val.encoder_info)}) must hold the same representation"
        )
    info = val.encoder_info
    enc = ctx.encoder(info)
    vf = ctx.features(val)  # the training store is searched a block at a time, never held
    rows = ctx.pick(val, cfg.n_images, "distances")
    rcdms, notes = ctx.store_rcdms(val, "distances", required=False)
    size = display_size(max([r.image_size for r in rcdms], default=64), [f"samples {r.label}" for r in rcdms])
    seeds = ctx.noise_seeds()
    rng = ctx.rng("distances")
    k = min(cfg.n_distance, len(val) - 1)
    st = _Setting(val, train, vf, enc, rcdms, rng, k)
    figures, results, table_rows = [], [], []
    for n_img, i in enumerate(rows):
        img = ctx.image(val, i)
        groups = _groups(ctx, st, i, img)
        # figure: one row per group, the query first
        grid_rows = []
        for gname, items in groups.items():
            row = [labelled(img, gname, size)]
            row += [labelled(im, f"{dist:.3g}", size) for _, dist, im in items]
            grid_rows.append(row)
        caption = ctx.caption(
            rcdms[0] if rcdms else None,
            seeds if rcdms else None,
            f"Squared distance ||f(x) - f(y)||^2 from {val.keys[i]} (left) to each image y of the row",
            encoder=info,
        )
        if len(rcdms) > 1:
            caption += " Sample rows from: " + ", ".join(r.path for r in rcdms) + "."
        figures.append(ctx.save_figure("distances", f"distances_{n_img}", grid(grid_rows), caption, val.keys[i]))
        rec = {
            "key": val.keys[i],
            "row": int(i),
            "label": int(val.labels[i]),
            "groups": {g: [{"name": n, "squared_distance": dd} for n, dd, _ in it] for g, it in groups.items()},
        }
        results.append(rec)
        table_rows += [_table_row(val.keys[i], g, [dd for _, dd, _ in it]) for g, it in groups.items()]
    numbers = {"encoder": info, "seed": cfg.seed, "noise_seeds": seeds, "images": results}
    table = Table("Squared distances per group", ["image", "group", "n", "mean", "min"], table_rows)
    return ctx.finish(
        "distances",
        TITLE,
        numbers,
        figures,
        [table],
        f"Representation: {describe_encoder(info)}; squared Euclidean distance of view-0 features.",
        notes,
    )


@dataclass
class _Setting:
    """What every image's groups are drawn from."""

    val: Any
    train: Any
    vf: np.ndarray  # (N_val, D) view-0 features
    enc: Any  # the stores' encoder
    rcdms: list  # the checkpoints conditioned on the stores' representation
    rng: np.random.Generator  # the experiment's: random and same-class picks, image after image
    k: int  # images per random / same-class group


def _groups(ctx: Context, st: _Setting, i: int, img) -> dict:
    """Group name -> [(name, squared distance from h(x), image)] for image ``i``: random
    validation images, validation images of its class, nearest training neighbours, single
    augmentations, multi-crop views, and each checkpoint's samples (``st.rng`` drawn in that order)."""
    cfg, h = ctx.cfg, st.vf[i]
    val, train, vf, enc, rng, k = st.val, st.train, st.vf, st.enc, st.rng, st.k
    groups: dict[str, list[tuple[str, float, object]]] = {}
    # random validation images (other than the query)
    others = np.array([j for j in range(len(val)) if j != i])
    pick = rng.choice(others, size=min(k, len(others)), replace=False) if len(others) else []
    d = squared_distances(h, vf[pick]) if len(pick) else []
    groups["random val"] = [(val.keys[j], float(dj), ctx.image(val, j)) for j, dj in zip(pick, d, strict=True)]
    # validation images of the same class
    lab = int(val.labels[i])
    if lab >= 0:
        same = np.array([j for j in range(len(val)) if j != i and int(val.labels[j]) == lab])
        same = rng.choice(same, size=min(k, len(same)), replace=False) if len(same) else []
        d = squared_distances(h, vf[same]) if len(same) else []
        groups["same class"] = [(val.keys[j], float(dj), ctx.image(val, j)) for j, dj in zip(same, d, strict=True)]
    # nearest training neighbours
    nn = nearest_training_rows(train, h[None], min(cfg.neighbours_k, len(train)))[0]
    d = squared_distances(h, train.gather(nn))
    groups["train NN"] = [(train.keys[j], float(dj), ctx.image(train, j)) for j, dj in zip(nn, d, strict=True)]
    # single augmentations, and the multi-crop views
    for gname, augs in (("single aug", list(single_augmentations().items())), ("multi-crop", multicrop())):
        views = [seeded_apply(t, img, cfg.seed, f"{gname}/{name}/{i}") for name, t in augs]
        d = squared_distances(h, ctx.encode(enc, views))
        groups[gname] = [(name, float(dj), v) for (name, _), dj, v in zip(augs, d, views, strict=True)]
    # RCDM samples
    seeds = ctx.noise_seeds()
    for r in st.rcdms:
        samples = ctx.sample(r, np.repeat(h[None], len(seeds), 0), seeds)
        d = squared_distances(h, ctx.encode(enc, samples))
        groups[f"samples {r.label}"] = [
            (f"seed {s}", float(dj), im) for s, dj, im in zip(seeds, d, samples, strict=True)
        ]
    return groups


def _table_row(key: str, group: str, ds: list[float]) -> list:
    """One row of the table: the image, the group, how many, the mean and the least distance."""
    return [key, group, len(ds), float(np.mean(ds)) if ds else float("nan"), float(np.min(ds)) if ds else float("nan")]
