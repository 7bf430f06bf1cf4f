"""class-mean (Fig. 27): samples from the mean representation of a class (training store)."""

from __future__ import annotations

import numpy as np
from rcdm.analysis.experiments.common import Context
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Class means (Fig. 27)"


def run(ctx: Context) -> Entry:
    from rcdm.diffusion.conditions import class_mean

    cfg = ctx.cfg
    train = ctx.store("train")
    labels = ctx.labels(train, "class-mean: the train")
    present = np.unique(labels)
    if cfg.class_labels:
        missing = [c for c in cfg.class_labels if c not in present]
        if missing:
            raise InvalidInput(
                f"analyze.class_labels {missing} do not occur in the train store {train.path} "
                f"(labels present: {present[:20].tolist()})"
            )
        chosen = list(cfg.class_labels)
    else:
        n = min(cfg.n_images, len(present))
        chosen = sorted(int(c) for c in ctx.rng("class-mean").choice(present, size=n, replace=False))
    names = {c: ctx.class_name(train, c) for c in chosen}
    tf = ctx.features(train)
    seeds = ctx.noise_seeds()
    figures, records, table_rows = [], [], []
    rcdms, notes = ctx.store_rcdms(train, "class-mean")
    for r in rcdms:
        size = display_size(r.image_size, list(names.values()))
        means = np.stack([class_mean(tf, labels, c) for c in chosen])  # (C, D)
        samples = ctx.sample_grid(r, means, seeds)
        grid_rows = []
        for c, lab in enumerate(chosen):
            members = np.flatnonzero(labels == lab)
            name = names[lab]
            # the member nearest the mean, shown as the row's reference image
            d = ((tf[members].astype(np.float64) - means[c]) ** 2).sum(1)
            ref = int(members[int(np.argmin(d))])
            grid_rows.append(
                [labelled(ctx.image(train, ref), name, size)] + [labelled(s, "", size) for s in samples[c]]
            )
            rec = {
                "checkpoint": r.path,
                "label": int(lab),
                "class": name,
                "n_members": int(len(members)),
                "nearest_member": train.keys[ref],
                "nearest_member_squared_distance": float(d.min()),
                "mean_norm": float(np.linalg.norm(means[c])),
            }
            records.append(rec)
            table_rows.append([r.label, name, rec["n_members"], rec["nearest_member_squared_distance"]])
        cap = ctx.caption(
            r,
            seeds,
            "Samples from the mean training representation of each class (left: the class member "
            f"nearest the mean); classes {chosen}",
        )
        figures.append(ctx.save_figure("class-mean", r.label, grid(grid_rows), cap, r.title))
    table = Table("Class means", ["checkpoint", "class", "members", "nearest member sq. distance"], table_rows)
    return ctx.finish(
        "class-mean",
        TITLE,
        {"seed": cfg.seed, "noise_seeds": seeds, "labels": chosen, "classes": records},
        figures,
        [table],
        notes=notes,
    )
