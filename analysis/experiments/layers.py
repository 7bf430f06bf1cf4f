"""layers (the paper's Fig. 3-5 and Table 1b, run on the demo): RCDMs conditioned on different
layers of encoders (a self-supervised trunk and its projector head, a random network as the floor)
side by side on the same conditioning images and noise seeds, with the numbers their evaluations
measured beside the pictures, and the paper's finding stated from those numbers: the head, trained
to be invariant to colour jitter and greyscale, keeps less of the image than the trunk.

Numbers per checkpoint, from its `rcdm evaluate` folder (``analyze.evaluations``, matched to the
checkpoint its samples came from): rank / MRR of the conditioning image in the encoder's space and
in pixel space, and the colour kept (``faithfulness.colour``: the spread of each sample's mean
colour within a condition over the spread across conditions; higher = colour dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rcdm.analysis.experiments.common import RCDM, Context
from rcdm.analysis.experiments.figures import display_size, labelled, tile
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Trunk against head: what each layer keeps (Fig. 3-5, Table 1b)"


def run(ctx: Context) -> Entry:
    rcdms = ctx.rcdms()
    if len(rcdms) < 2:
        raise InvalidInput("layers compares RCDMs of several layers: give at least two in analyze.checkpoints")
    val = ctx.store("val")
    rows = ctx.pick(val, ctx.cfg.n_images, "layers")
    seeds = ctx.noise_seeds()
    figure = _figure(ctx, rcdms, val, rows, seeds)
    numbers = {r.label: _numbers(ctx, r) for r in rcdms}
    table = Table(
        "What each layer's samples keep (from each checkpoint's rcdm evaluate)",
        ["checkpoint", "layer", "MRR (encoder)", "chance", "MRR (pixels)", "colour spread within / between"],
        [
            [r.label, f"{r.encoder_info.get('name')} {r.encoder_info.get('layer')}", *_row(numbers[r.label])]
            for r in rcdms
        ],
    )
    summary = verdict(rcdms, numbers)
    return ctx.finish(
        "layers",
        TITLE,
        {
            "seed": ctx.cfg.seed,
            "noise_seeds": seeds,
            "images": [val.keys[i] for i in rows],
            "numbers": numbers,
            "verdict": summary,
        },  # fmt: skip
        [figure],
        [table],
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        summary=summary,
    )


def _figure(ctx: Context, rcdms: list[RCDM], val, rows: list[int], seeds: list[int]):
    """One row per conditioning image: the image, then each checkpoint's samples (same seeds)."""
    size = display_size(max(r.image_size for r in rcdms))
    samples = {r.label: ctx.sample_grid(r, ctx.conditions(r, val, rows), seeds) for r in rcdms}  # (n, S, H, W, 3)
    grid_rows = []
    for j, i in enumerate(rows):
        cells = [labelled(ctx.image(val, i), "condition", size)]
        for r in rcdms:
            layer = r.encoder_info.get("layer")
            cells += [labelled(tile(s, size), f"{r.label} ({layer})" if k == 0 else "", size)
                      for k, s in enumerate(samples[r.label][j])]  # fmt: skip
        grid_rows.append(cells)
    cap = ctx.caption(
        None,
        seeds,
        "Each row: a validation image, then samples from each checkpoint's representation of it, "
        f"{len(seeds)} per checkpoint with the same noise seeds (checkpoints: "
        + "; ".join(f"{r.label} = {r.encoder_info.get('name')} {r.encoder_info.get('layer')}" for r in rcdms)
        + f"; sampler {ctx.cfg.sampler.label()})",
    )
    return ctx.save_figure("layers", "side_by_side", grid(grid_rows), cap, "the same images through each layer")


def _numbers(ctx: Context, r: RCDM) -> dict:
    """What the evaluation of ``r``'s samples measured (empty when none is given)."""
    m = evaluation_of(ctx, r)
    if m is None:
        return {}
    rank = (m.get("rank") or {}).get("in_reference") or {}
    faith = m.get("faithfulness") or {}
    pixels = next((s for s in faith.get("spaces") or [] if s.get("space") == "pixels"), {})
    return {
        "samples": m.get("samples", {}).get("path"),
        "mrr": rank.get("mrr"),
        "chance_mrr": rank.get("chance_mrr"),
        "mean_rank": rank.get("mean_rank"),
        "mrr_pixels": pixels.get("mrr"),
        "colour": faith.get("colour"),
    }


def evaluation_of(ctx: Context, r: RCDM) -> dict | None:
    """The metrics of the ``analyze.evaluations`` folder whose samples came from ``r``."""
    from rcdm.run.evaldir import EvalDir

    want = Path(r.path).resolve()
    for d in ctx.cfg.evaluations:
        folder = EvalDir(d)
        if not folder.finished():
            continue
        m = folder.metrics()
        ckpt = (m.get("samples") or {}).get("checkpoint")
        if ckpt and Path(ckpt).resolve() == want:
            return m
    return None


def _row(n: dict) -> list:
    colour = n.get("colour") or {}
    return [_r(n.get("mrr")), _r(n.get("chance_mrr")), _r(n.get("mrr_pixels")), _r(colour.get("ratio"))]


def _r(x, digits: int = 3):
    return round(float(x), digits) if isinstance(x, (int, float)) and np.isfinite(x) else "-"


# The head "drops colour" when its samples' colour varies clearly more than the trunk's: a ratio
# at least this many times the trunk's (0.13 against 0.16 is noise at 16 conditions, not a drop).
COLOUR_DROP = 1.5


def verdict(rcdms: list[RCDM], numbers: dict) -> str:
    """The finding in one line, from the numbers: does the head keep less than the trunk (lower
    MRR, more colour variation), as in the paper? Said plainly when the numbers do not show it.

    "Keeps less" compares the pixel-space MRR when both have it (one space for both; each
    encoder's own-space MRR is measured in a different space), else the encoder-space MRR."""
    trunk = next((r for r in rcdms if r.encoder_info.get("layer") == "trunk" and "random" not in r.encoder_info.get("name", "")), None)  # fmt: skip
    head = next((r for r in rcdms if r.encoder_info.get("layer") == "head"), None)
    if trunk is None or head is None:
        return "No trunk / head pair of one encoder among the checkpoints: nothing to compare."
    return verdict_of(numbers.get(trunk.label) or {}, numbers.get(head.label) or {})


def verdict_of(t: dict, h: dict) -> str:
    tc, hc = (t.get("colour") or {}).get("ratio"), (h.get("colour") or {}).get("ratio")
    if None in (t.get("mrr"), h.get("mrr"), tc, hc):
        return "The evaluations of the trunk and head checkpoints are missing: run rcdm evaluate on both."
    space = "pixel MRR" if None not in (t.get("mrr_pixels"), h.get("mrr_pixels")) else "MRR"
    tm, hm = (t["mrr_pixels"], h["mrr_pixels"]) if space == "pixel MRR" else (t["mrr"], h["mrr"])
    keeps_less = hm < tm
    drops_colour = hc >= COLOUR_DROP * tc
    facts = f"{space} {tm:.3f} (trunk) vs {hm:.3f} (head); colour spread {tc:.2f} vs {hc:.2f}"
    if keeps_less and drops_colour:
        return f"As in the paper, the head keeps less than the trunk and drops colour: {facts}."
    if keeps_less:
        colour = "varies only slightly more" if hc > tc else "does not vary more"
        return (
            f"As in the paper, the head keeps less than the trunk, but its samples' colour {colour}"
            f" (not the paper's colour drop): {facts}."
        )
    shown = " (the head varies more in colour)" if drops_colour else ""
    return f"At this scale the numbers do not show the paper's direction{shown}: {facts}."
