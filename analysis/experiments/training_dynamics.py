"""training-dynamics (Fig. 35): the same images decoded by RCDMs trained on the representations
of several checkpoints of one SSL run (``analyze.dynamics_checkpoints``, in training order)."""

from __future__ import annotations

from rcdm.analysis.experiments.common import Context
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Training dynamics of the encoder (Fig. 35)"


def run(ctx: Context) -> Entry:
    cfg = ctx.cfg
    if not cfg.dynamics_checkpoints:
        return ctx.skip(
            "training-dynamics",
            TITLE,
            "no analyze.dynamics_checkpoints configured: give the RCDM runs trained on the encoder's "
            "checkpoints, in training order, to compare them side by side",
        )
    rcdms = [ctx.rcdm(p) for p in cfg.dynamics_checkpoints]
    for r in rcdms:
        if not r.meta.get("encoder"):
            raise InvalidInput(
                f"training-dynamics: checkpoint {r.path} does not record the encoder it was trained on; "
                "each run must come from `rcdm train` on a store of that encoder checkpoint"
            )
    val = ctx.store("val")
    rows = ctx.pick(val, cfg.n_images, "training-dynamics")
    seeds = ctx.noise_seeds()
    size = display_size(max(r.image_size for r in rcdms), [val.keys[i] for i in rows] + [r.label for r in rcdms])
    per_ckpt = [ctx.sample_grid(r, ctx.conditions(r, val, rows), seeds) for r in rcdms]  # each (N, S, H, W, 3)
    grid_rows = []
    for n, i in enumerate(rows):
        row = [labelled(ctx.image(val, i), val.keys[i], size)]
        for r, samples in zip(rcdms, per_ckpt, strict=True):
            row += [labelled(s, r.label if (n == 0 and j == 0) else "", size) for j, s in enumerate(samples[n])]
        grid_rows.append(row)
    encs = "; ".join(
        f"{r.label}: encoder {r.encoder_info.get('name')} {r.encoder_info.get('layer')} "
        f"weights {str(r.encoder_info.get('weights_sha256') or r.encoder_info.get('seed'))[:12]}"
        for r in rcdms
    )
    cap = ctx.caption(
        rcdms[-1],
        seeds,
        f"Columns in blocks of {len(seeds)} samples per checkpoint, in training order ({encs}); "
        f"all checkpoints: {', '.join(r.path for r in rcdms)}",
    )
    fig = ctx.save_figure("training-dynamics", "dynamics", grid(grid_rows), cap, "checkpoints side by side")
    records = [{"checkpoint": r.path, "encoder": r.encoder_info, "kimg": r.kimg} for r in rcdms]
    table = Table(
        "Checkpoints",
        ["order", "checkpoint", "encoder", "kimg"],
        [[n, r.path, r.encoder_info.get("name"), r.kimg] for n, r in enumerate(rcdms)],
    )
    return ctx.finish(
        "training-dynamics",
        TITLE,
        {"seed": cfg.seed, "noise_seeds": seeds, "images": [val.keys[i] for i in rows], "checkpoints": records},
        [fig],
        [table],
    )
