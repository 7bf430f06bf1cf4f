"""invariance (Fig. 3, 25): transform the conditioning image (shift, zoom, grayscale, colour
jitter, flip, user torchvision transforms), sample from each representation with the same noise
seeds, and measure how far the representation moves (per encoder layer in ``analyze.layers``)
and how far the samples move, as the scores of :mod:`.invariance_scores`: (a) h movement over
the nearest-training-neighbour distance, (b) sample movement in a second encoder's space
(``analyze.second_store``; default the conditioning encoder) over the samples' diversity at a
fixed h. A table and a plot per checkpoint; the raw numbers per image in invariance.json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcdm.analysis.experiments.common import Context, describe_encoder, same_encoder
from rcdm.analysis.experiments.distances import squared_distances
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.experiments.invariance_scores import (
    StoreReference,
    h_score,
    nn_distance,
    plot_scores,
    sample_score,
)
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


def check_layers(ctx: Context, info: dict) -> tuple[tuple[str, ...], list[str]]:
    """The layers of ``analyze.layers`` this encoder has (checked before any work), and a note for
    each it lacks (a random network has no head: its trunk is still measured). None at all, or a
    name that is not a layer, is an error."""
    from rcdm.encoders.registry import get_spec

    dims = get_spec(info["name"]).dims
    for layer in ctx.cfg.layers:
        if layer not in ("trunk", "head"):
            raise InvalidInput(f"analyze.layers: {layer!r} is not a layer; use 'trunk' and/or 'head'")
    layers = tuple(layer for layer in ctx.cfg.layers if layer in dims)
    if not layers:
        raise InvalidInput(
            f"invariance: encoder {info['name']} has none of the layers {', '.join(ctx.cfg.layers)} (it has: "
            f"{', '.join(dims)}); set analyze.layers to one it has"
        )
    notes = [
        f"encoder {info['name']} has no {layer} layer: its movement is not measured"
        for layer in ctx.cfg.layers
        if layer not in layers
    ]
    return layers, notes


N_NN = 256  # training images encoded for the nearest-neighbour distance of a layer without a store


def _standardiser(r):
    """``x -> (x - mean) / std`` in float64 when the RCDM standardises h per dimension before use
    (train.cond_norm: :class:`rcdm.model.unet.CondStandardize` with its buffers), else None."""
    cn = getattr(r.model, "cond_norm", None)
    if cn is None or not hasattr(cn, "mean"):
        return None
    mean = cn.mean.detach().cpu().numpy().astype(np.float64)
    std = cn.std.detach().cpu().numpy().astype(np.float64)
    return lambda x: (np.asarray(x, np.float64) - mean) / std


def _nn_reference(ctx: Context, r, layer: str) -> tuple[np.ndarray | StoreReference, str]:
    """Training representations of ``layer`` for nearest-neighbour distances (float64, converted
    once), and what they are: the train store when it holds this encoder and layer (read a block
    at a time when it is too large to hold: :meth:`Context.held_features`), else N_NN training
    images encoded. Cached per (encoder, layer): checkpoints of one encoder share it."""

    def make() -> tuple[np.ndarray | StoreReference, str]:
        train = ctx.store("train")
        info = {**r.encoder_info, "layer": layer}
        if layer == r.encoder_info.get("layer") and same_encoder(train, r):
            ref, what = ctx.held_features(train), f"all {len(train)} entries of the train store"
            if ref is None:
                return StoreReference(train), what
        else:
            rows = ctx.pick(train, N_NN, f"invariance-nn/{layer}")
            enc = ctx.encoder(r.encoder_info, layer)
            ref = ctx.encode(enc, [ctx.image(train, i) for i in rows])
            what = f"{len(rows)} training images ({describe_encoder(info)})"
        return np.asarray(ref, np.float64), what

    return ctx.cached(("invariance-nn", layer, repr(sorted(r.encoder_info.items()))), make)


def _second(ctx: Context, r):
    """The encoder whose space measures sample movement, and its description."""
    if ctx.cfg.second_store:
        s = ctx.store(ctx.cfg.second_store)
        return ctx.encoder(s.encoder_info), f"second encoder {describe_encoder(s.encoder_info)} (store {s.path})"
    return ctx.encoder(
        r.encoder_info
    ), f"the conditioning encoder {describe_encoder(r.encoder_info)} (no analyze.second_store)"


def _mean(values: list[float]) -> float:
    """Mean over the images that have the number (nan when none has: e.g. (b) with one sample)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


DESCRIPTION = (
    "One number per (encoder, layer, augmentation) and per (checkpoint, augmentation). (a): how far the "
    "augmentation moves the representation, relative to the distance from the original to its nearest "
    "training neighbour (above 1: further than the nearest other image). (b): how far same-seed RCDM "
    "samples move, in a second encoder's space, relative to the spread of the samples for a fixed h (near 0: "
    "what the representation keeps does not change; about 1: the change is as large as the noise's). An "
    "invariant representation scores 0 on both."
)


@dataclass
class _Results:
    """What every checkpoint adds to the entry."""

    figures: list = field(default_factory=list)
    records: list = field(default_factory=list)  # one per (checkpoint, image): invariance.json
    h_rows: list = field(default_factory=list)  # table (a)
    s_rows: list = field(default_factory=list)  # table (b)
    notes: list = field(default_factory=list)


@dataclass
class _Setup:
    """One checkpoint's encoders and reference distances, the same for each of its images."""

    enc: Any  # the conditioning encoder
    second: Any  # the encoder whose space measures sample movement
    second_desc: str
    std: Callable | None  # the checkpoint's standardisation of h, or None
    cond_layer: str | None  # the layer that conditions the checkpoint
    refs: dict  # layer -> (training representations, what they are)
    layers: tuple[str, ...]  # the layers of analyze.layers this encoder has


def run(ctx: Context) -> Entry:
    """Each checkpoint: every picked image and its transformations sampled and measured (:func:`_image`),
    then the mean scores as tables, a plot and notes."""
    cfg = ctx.cfg
    names = transform_names(ctx)
    val = ctx.store("val")
    rows = ctx.pick(val, cfg.n_images, "invariance")
    seeds = ctx.noise_seeds()
    out = _Results()
    for r in ctx.rcdms():
        _checkpoint(ctx, r, val, rows, names, seeds, out)
    numbers = {
        "seed": cfg.seed,
        "noise_seeds": seeds,
        "layers": list(cfg.layers),
        "transforms": names,
        "second_store": cfg.second_store,
        "images": out.records,
    }
    return ctx.finish("invariance", TITLE, numbers, out.figures, _tables(out, len(rows)), DESCRIPTION, out.notes)


def _setup(ctx: Context, r) -> _Setup:
    """The checkpoint's encoders, and the nearest-neighbour references of every layer (in the
    standardised space the model sees, for the conditioning layer of a standardising checkpoint)."""
    layers, _ = check_layers(ctx, r.encoder_info)
    enc = ctx.encoder(r.encoder_info)
    second, second_desc = _second(ctx, r)
    std = _standardiser(r)
    cond_layer = r.encoder_info.get("layer")
    refs = {layer: _nn_reference(ctx, r, layer) for layer in layers}
    if std is not None and cond_layer in refs:  # compare in the space the model sees
        ref, what = refs[cond_layer]
        refs[cond_layer] = (ref.mapped(std) if isinstance(ref, StoreReference) else std(ref), what)
    return _Setup(enc, second, second_desc, std, cond_layer, refs, layers)


def _checkpoint(ctx: Context, r, val, rows: list[int], names: list[str], seeds: list[int], out: _Results) -> None:
    """One checkpoint's figures, records, table rows and notes."""
    setup = _setup(ctx, r)
    size = display_size(r.image_size, ["original", *names])  # tiles wide enough for every row label
    per_t: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for n_img, i in enumerate(rows):
        _image(ctx, r, setup, val, i, n_img, names, seeds, size, per_t, out)
    mean = {t: {k: _mean(v) for k, v in per_t[t].items()} for t in names}
    out.h_rows += _h_rows(r, setup.layers, names, mean)
    out.notes += check_layers(ctx, r.encoder_info)[1]
    out.s_rows += [
        [
            r.label,
            t,
            round(mean[t]["sample_movement"], 4),
            round(mean[t]["sample_diversity"], 4),
            round(mean[t]["sample_score"], 3),
            round(mean[t]["sample_pixel_mad"], 4),
        ]
        for t in names
    ]
    std_note = (
        f" The {setup.cond_layer} distances are measured after the per-dimension standardisation this checkpoint "
        "applies to h before using it ((h - mean) / std with the training store's mean and std per dimension, "
        "train.cond_norm=standardize), the space the model sees; raw squared distances are in invariance.json."
        if setup.std is not None
        else ""
    )
    out.figures.append(_score_figure(ctx, r, setup, names, seeds, mean, len(rows), std_note))
    if std_note:
        out.notes.append(f"{r.label}:{std_note}")
    out.notes.append(f"{r.label}: sample movement measured in the space of {setup.second_desc}.")
    if len(seeds) < 2:
        out.notes.append(
            "(b) needs at least 2 samples per condition (analyze.n_samples) for the diversity at a fixed h."
        )


def _image(
    ctx: Context,
    r,
    setup: _Setup,
    val,
    i: int,
    n_img: int,
    names: list[str],
    seeds: list[int],
    size: int,
    per_t: dict,
    out: _Results,
) -> None:
    """One image: its transformations encoded and sampled with the same noise seeds, every number
    per transformation (added to ``per_t`` and the records) and its figure."""
    cfg = ctx.cfg
    img = ctx.image(val, i)
    views = [img] + [seeded_apply(get_transform(t), img, cfg.seed, f"{t}/{val.keys[i]}") for t in names]
    conds = ctx.encode(setup.enc, views)  # (1 + T, D): original first
    samples = ctx.sample_grid(r, conds, seeds)  # (1 + T, S, H, W, 3)
    s_feats = ctx.encode(setup.second, samples.reshape(-1, *samples.shape[2:])).reshape(len(views), len(seeds), -1)
    grid_rows = [
        [labelled(v, lab, size)] + [labelled(s, "", size) for s in samples[c]]
        for c, (v, lab) in enumerate(zip(views, ["original", *names], strict=True))
    ]
    rec = {"checkpoint": r.path, "key": val.keys[i], "transforms": {}}
    norm0 = float((conds[0].astype(np.float64) ** 2).sum())
    hs = _layer_reprs(ctx, r, setup, views, conds)
    for t_idx, t in enumerate(names, start=1):
        d = _transform_numbers(hs, t_idx, samples, s_feats)
        rec["transforms"][t] = d
        for k, v in d.items():
            per_t[t].setdefault(k, []).append(v)
    rec["original_squared_norm"] = norm0
    out.records.append(rec)
    cap = ctx.caption(
        r,
        seeds,
        f"Rows: the original image {val.keys[i]} and its transformations ({', '.join(names)}; "
        f"random ones seeded by analysis seed {cfg.seed}), each followed by samples from its "
        "representation, the same noise seed per column",
    )
    out.figures.append(
        ctx.save_figure("invariance", f"{r.label}_{n_img}", grid(grid_rows), cap, f"{r.title}: {val.keys[i]}")
    )


def _layer_reprs(ctx: Context, r, setup: _Setup, views: list, conds: np.ndarray) -> dict:
    """Per layer: (raw h of every view, h as the model sees it, the original's nearest-neighbour
    distance), float64."""
    hs = {}
    for layer in setup.layers:
        h = conds if layer == setup.cond_layer else ctx.encode(ctx.encoder(r.encoder_info, layer), views)
        raw = h.astype(np.float64)
        seen = setup.std(raw) if (setup.std is not None and layer == setup.cond_layer) else raw
        hs[layer] = (raw, seen, nn_distance(seen[0], setup.refs[layer][0]))
    return hs


def _transform_numbers(hs: dict, t_idx: int, samples: np.ndarray, s_feats: np.ndarray) -> dict:
    """Transformation ``t_idx`` against the original (view 0): per layer how far h moves and score
    (a), then how far the same-seed samples move and score (b)."""
    d = {}
    for layer, (raw, seen, nn0) in hs.items():
        d[f"{layer}_squared_distance"] = float(squared_distances(raw[0], raw[t_idx : t_idx + 1])[0])
        d[f"{layer}_relative"] = d[f"{layer}_squared_distance"] / max(float((raw[0] ** 2).sum()), 1e-12)
        sc = h_score(seen[0], seen[t_idx], nn0)
        d[f"{layer}_distance"], d[f"{layer}_nn_distance"], d[f"{layer}_score"] = (
            sc["distance"],
            sc["nn_distance"],
            sc["score"],
        )
    d.update(sample_score(s_feats[0], s_feats[t_idx]))
    # how far the samples move, with the same noise seeds
    d["sample_pixel_mad"] = float(
        np.abs(samples[t_idx].astype(np.float32) - samples[0].astype(np.float32)).mean() / 255.0
    )
    d["sample_repr_squared_distance"] = float(((s_feats[t_idx].astype(np.float64) - s_feats[0]) ** 2).sum(-1).mean())
    return d


def _h_rows(r, layers: tuple[str, ...], names: list[str], mean: dict) -> list[list]:
    """Table (a)'s rows of one checkpoint: per layer and transformation."""
    return [
        [
            r.label,
            describe_encoder({**r.encoder_info, "layer": layer}),
            t,
            round(mean[t][f"{layer}_distance"], 4),
            round(mean[t][f"{layer}_nn_distance"], 4),
            round(mean[t][f"{layer}_score"], 3),
            mean[t][f"{layer}_squared_distance"],
        ]
        for layer in layers
        for t in names
    ]


def _score_figure(
    ctx: Context, r, setup: _Setup, names: list[str], seeds: list[int], mean: dict, n_images: int, std_note: str
):
    """The plot of the mean scores (a) per layer and (b), with its caption."""
    series = {f"{layer} h (a)": [mean[t][f"{layer}_score"] for t in names] for layer in setup.layers}
    series["samples (b)"] = [mean[t]["sample_score"] for t in names]
    cap = ctx.caption(
        r,
        seeds,
        f"Invariance scores, mean over {n_images} images. (a) per layer: ||h(T x) - h(x)|| / distance from "
        f"h(x) to its nearest training neighbour ({'; '.join(f'{k}: {v[1]}' for k, v in setup.refs.items())}). "
        f"(b): distance between same-seed samples from h(T x) and h(x), in the space of {setup.second_desc}, over "
        f"the mean pairwise distance of the samples from h(x) (diversity at a fixed h). 0: invariant; the "
        f"dashed line at 1: the augmentation moves as far as the reference distance.{std_note}",
    )
    return ctx.save_figure(
        "invariance",
        f"{r.label}_scores",
        plot_scores(names, series, f"{r.title}: invariance scores"),
        cap,
        f"{r.title}: scores",
    )


def _tables(out: _Results, n_images: int) -> list[Table]:
    return [
        Table(
            f"(a) How far each augmentation moves h, beside the distance to the nearest training neighbour (mean over {n_images} images)",
            [
                "checkpoint",
                "encoder (layer)",
                "transform",
                "||h(Tx) - h(x)||",
                "nearest-neighbour distance",
                "(a) ratio",
                "||dh||^2 (raw)",
            ],
            out.h_rows,
        ),
        Table(
            "(b) How far the samples move (same noise seeds), beside their diversity at a fixed h",
            ["checkpoint", "transform", "sample movement", "diversity at fixed h", "(b) ratio", "mean |dx| (pixels)"],
            out.s_rows,
        ),
    ]
