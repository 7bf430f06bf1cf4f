"""pooled-vs-tokens: what conditioning on a ViT's patch-token grid shows beyond its pooled vector.

Needs a ``tokens`` val store (``rcdm extract --layer tokens``) and, among ``analyze.checkpoints``,
at least one RCDM of that encoder trained with ``train.cond xattn`` (cross-attention to the tokens)
and one trained on the pooled representation (``embed`` / ``cbn`` on the same tokens store, which
conditions on the token mean, or a model trained on a ``mean`` / ``cls`` store of the encoder).

For the same validation images and noise seeds the figure shows, per image, the samples of the
pooled model beside those of the token model. Each model's samples are re-encoded into tokens and
ranked against the val store under both distances of :func:`rcdm.analysis.evaluation.metrics.token_ranks`
(mean over tokens of the squared distance; distance of the token means): mean rank and MRR of
each (model, distance) pair form the table.
"""

from __future__ import annotations

import numpy as np
from rcdm.analysis.evaluation import metrics
from rcdm.analysis.experiments.common import RCDM, Context, describe_encoder, same_encoder
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Pooled vs token conditioning (one ViT encoder)"
NAME = "pooled-vs-tokens"


def _same_encoder_name(r: RCDM, info: dict) -> bool:
    theirs = r.encoder_info
    return theirs.get("name") == info.get("name") and theirs.get("weights_sha256") == info.get("weights_sha256")


def split_models(ctx: Context, val) -> tuple[list[RCDM], list[RCDM], list[str]]:
    """(token models, pooled models, notes) among the checkpoints of the val store's encoder."""
    tokens, pooled, notes = [], [], []
    for r in ctx.rcdms():
        cond = (r.meta.get("unet") or {}).get("cond")
        if cond == "xattn" and same_encoder(val, r):
            tokens.append(r)
        elif cond in ("embed", "cbn") and _same_encoder_name(r, val.encoder_info):
            pooled.append(r)
        else:
            notes.append(
                f"checkpoint {r.path} ({describe_encoder(r.encoder_info)}, cond {cond}) is not a "
                f"pooled or token model of {val.encoder_info.get('name')}: left out"
            )
    return tokens, pooled, notes


def run(ctx: Context) -> Entry:
    cfg = ctx.cfg
    val = ctx.store("val")
    if val.token_shape is None:
        raise InvalidInput(
            f"{NAME}: the val store {val.path} holds {val.layer!r} vectors; this analysis needs the "
            "patch tokens: set analyze.val_store to a store made with `rcdm extract --layer tokens`"
        )
    tokens, pooled, notes = split_models(ctx, val)
    if not tokens or not pooled:
        raise InvalidInput(
            f"{NAME}: analyze.checkpoints needs a model trained with train.cond xattn on a tokens store of "
            f"{val.encoder_info.get('name')} and one trained on its pooled representation (cond embed or cbn); "
            f"found {len(tokens)} token and {len(pooled)} pooled model(s)"
        )
    models = [("pooled", r) for r in pooled] + [("tokens", r) for r in tokens]
    rows = ctx.pick(val, cfg.n_images, NAME)
    seeds = ctx.noise_seeds()
    enc = ctx.encoder(val.encoder_info)  # the tokens encoder the val store was made with
    ref = ctx.features(val)  # (N, T * D)
    size = display_size(max(r.image_size for _, r in models))
    samples = {r.path: ctx.sample_grid(r, ctx.conditions(r, val, rows), seeds) for _, r in models}  # (n, S, H, W, 3)
    grid_rows = []
    for i, row in enumerate(rows):
        tiles = [labelled(ctx.image(val, row), val.keys[row], size)]
        for kind, r in models:
            tiles += [
                labelled(s, f"{kind}: {r.label}" if j == 0 else "", size) for j, s in enumerate(samples[r.path][i])
            ]
        grid_rows.append(tiles)
    records, table_rows = [], []
    cond_index = np.repeat(np.asarray(rows), len(seeds))  # sample -> its condition's val row, every model
    for kind, r in models:
        flat = samples[r.path].reshape(-1, *samples[r.path].shape[2:])
        q = ctx.encode(enc, flat)  # (n * S, T * D)
        both = metrics.token_ranks(q, ref, cond_index, val.token_shape, device=ctx.device)
        summary = {d: metrics.rank_summary(both[d], len(ref)) for d in ("tokens", "pooled")}
        records.append(
            {
                "model": kind,
                "checkpoint": r.path,
                "cond": r.meta["unet"]["cond"],
                "ranks": summary,
                "per_sample": {d: both[d].tolist() for d in both},
            }
        )
        table_rows.append(
            [
                kind,
                r.label,
                summary["tokens"]["mean_rank"],
                summary["tokens"]["mrr"],
                summary["pooled"]["mean_rank"],
                summary["pooled"]["mrr"],
            ]
        )
    cap = ctx.caption(
        None,
        seeds,
        f"Left: the validation image; then {len(seeds)} samples of each model, pooled first "
        f"({', '.join(r.label for r in pooled)}), then token cross-attention ({', '.join(r.label for r in tokens)}); "
        "same noise seeds across models",
        encoder=val.encoder_info,
    )
    figure = ctx.save_figure(NAME, "side-by-side", grid(grid_rows), cap, "pooled vs tokens")
    table = Table(
        f"Rank of the condition among the {len(ref)} val images (chance: mean rank "
        f"{metrics.chance_mean_rank(len(ref)):.3g}, MRR {metrics.chance_mrr(len(ref)):.3g})",
        [
            "model",
            "checkpoint",
            "mean rank (token distance)",
            "MRR (token distance)",
            "mean rank (pooled distance)",
            "MRR (pooled distance)",
        ],
        table_rows,
    )
    numbers = {
        "seed": cfg.seed,
        "noise_seeds": seeds,
        "conditions": [val.keys[i] for i in rows],
        "token_shape": list(val.token_shape),
        "models": records,
        "distances": {
            "tokens": "mean over tokens of the squared euclidean distance",
            "pooled": "euclidean distance of the token means",
        },
    }
    return ctx.finish(NAME, TITLE, numbers, [figure], [table], description=__doc__.split("\n\n")[2], notes=notes)
