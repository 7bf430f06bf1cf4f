"""manipulation (Fig. 5, 30, 31, 32): edit a representation and decode it.

Nearest-neighbour common-dimension masking (section 5 of the paper): take the k nearest training
neighbours of h; the *most-common* dimensions are those active in at least m of them (what the
neighbours share, usually the object); the *least-common* variant takes as many dimensions of h
among those active in the fewest neighbours. "Active" is relative to each dimension's distribution
over the training store (above its 75th percentile), not "non-zero", which every dimension of a
dense or standardised representation is. A selection where the two sets overlap or cover most
dimensions is flagged as degenerate in the figure, the notes and the JSON. Each set is zeroed
("mask") or replaced by the values of another image's representation ("substitute"). Algebra rows decode a - b + c.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcdm.analysis.experiments import common
from rcdm.analysis.experiments.common import Context, describe_encoder, nearest_training_rows, same_encoder
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.report import Entry, Table
from rcdm.diffusion.conditions import active_mask, common_dims
from rcdm.errors import InvalidInput
from rcdm.viz import grid

TITLE = "Manipulation: common-dimension masking, substitution and algebra (Fig. 5, 30-32)"


ACTIVE_QUANTILE = 0.75  # "active": above the dimension's 75th percentile over the training store


def active_thresholds(train_feats: np.ndarray, q: float = ACTIVE_QUANTILE) -> np.ndarray:
    """Per-dimension thresholds ``(D,)``: a dimension is *active* in a vector when its value is
    above the ``q`` quantile of that dimension over the training store. "Non-zero" (the paper's
    rule, for sparse post-ReLU features) means nothing for a dense or standardised
    representation, where every dimension is non-zero; this threshold means the same for both."""
    return np.quantile(np.asarray(train_feats, dtype=np.float32), q, axis=0).astype(np.float32)


def streamed_thresholds(store, q: float = ACTIVE_QUANTILE, budget: int | None = None) -> np.ndarray:
    """:func:`active_thresholds` of view 0 of ``store`` without holding it: a few columns at a time
    (as many as ``budget`` bytes of float32 hold for every row; default
    ``common.IN_MEMORY_BYTES``), each group gathered in one pass over the store. Each column's
    quantile is the one of the whole matrix, exactly; ImageNet's 1.28M x 2048 store takes 10 passes."""
    n, d = len(store), store.dim
    per_pass = max(1, (common.IN_MEMORY_BYTES if budget is None else budget) // (4 * max(1, n)))
    out = np.zeros(d, np.float32)
    for c in range(0, d, per_pass):
        cols = np.zeros((n, min(d, c + per_pass) - c), np.float32)
        for s, block in store.iter_features(0):
            cols[s : s + len(block)] = block[:, c : c + per_pass]
        out[c : c + cols.shape[1]] = np.quantile(cols, q, axis=0)
    return out


@dataclass
class TrainRows:
    """View 0 of the training store for the neighbour rule: held (``features``, when it fits
    :meth:`Context.held_features`) or read a block at a time (``None``: ImageNet's is 10 GB), with the
    same thresholds, neighbours and rows either way."""

    store: Any
    features: np.ndarray | None

    def thresholds(self) -> np.ndarray:
        return active_thresholds(self.features) if self.features is not None else streamed_thresholds(self.store)

    def knn(self, h: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` nearest rows to ``h (D,)``, nearest first (``conditions.knn``'s answer)."""
        from rcdm.diffusion.conditions import knn

        if self.features is not None:
            return knn(self.features, h, k)
        return nearest_training_rows(self.store, np.asarray(h)[None], k)[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.features[idx] if self.features is not None else self.store.gather(idx, 0)


def select_dims(
    h: np.ndarray, neighbour_feats: np.ndarray, m: int, variant: str, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """Dimensions to edit, sorted ``(n,)`` int64.

    A dimension is active in a vector when its value is above ``thresholds`` (per dimension;
    default: non-zero, the paper's rule; ``rcdm.diffusion.conditions.active_mask``). ``most``:
    active in at least ``m`` of the ``k`` neighbours (``conditions.common_dims``). ``least``: the
    same number of dimensions, chosen among those active in ``h`` with the fewest active
    neighbours (ties: lower index first).
    """
    if variant not in ("most", "least"):
        raise InvalidInput(f"select_dims variant must be 'most' or 'least', got {variant!r}")
    most = common_dims(neighbour_feats, m, thresholds=thresholds)
    if variant == "most":
        return most
    counts = active_mask(neighbour_feats, thresholds=thresholds).sum(0)  # (D,)
    active = np.flatnonzero(active_mask(h, thresholds=thresholds))
    order = active[np.argsort(counts[active], kind="stable")]
    return np.sort(order[: len(most)]).astype(np.int64)


def selection_check(most: np.ndarray, least: np.ndarray, dim: int) -> dict:
    """Whether the two selections can be told apart: their overlap, the share of all dimensions
    they cover, and ``degenerate`` with the reason when "mask most" and "mask least" cannot
    show different things (the sets overlap, one covers most dimensions, or they are empty)."""
    overlap = int(np.intersect1d(most, least).size)
    frac = len(most) / max(1, dim)
    reasons = []
    if len(most) == 0:
        reasons.append("no dimension is active in enough neighbours (nothing is edited)")
    if overlap:
        reasons.append(f"{overlap} of the {len(most)} dimensions are in both the most- and least-common sets")
    if frac > 0.5:
        reasons.append(f"the selection covers {100 * frac:.0f}% of the {dim} dimensions")
    return {
        "n_most": int(len(most)),
        "n_least": int(len(least)),
        "overlap": overlap,
        "fraction_of_dims": frac,
        "degenerate": bool(reasons),
        "reason": "; ".join(reasons),
    }


@dataclass
class _Setting:
    """What every checkpoint's figures share: the stores, the neighbour rule, the picked images."""

    val: Any
    train: Any
    tf: TrainRows  # the training features
    vf: np.ndarray  # (N_val, D) the validation features
    k: int  # nearest training neighbours
    m: int  # a dimension is common when active in at least m of them
    thresholds: np.ndarray  # (D,) per-dimension "active" thresholds
    rows: list[int]  # the picked validation rows
    seeds: list[int]


@dataclass
class _Results:
    figures: list = field(default_factory=list)
    records: list = field(default_factory=list)
    table_rows: list = field(default_factory=list)
    degenerate: list = field(default_factory=list)  # "<key>: <reason>" per degenerate selection


def run(ctx: Context) -> Entry:
    """Per checkpoint: masking / substitution figures of each picked image, then the algebra rows."""
    cfg = ctx.cfg
    val, train = ctx.store("val"), ctx.store("train")
    tf = TrainRows(train, ctx.held_features(train))
    k = min(cfg.knn_k, len(train))
    m = min(cfg.knn_m, k)
    rows = ctx.pick(val, max(3, cfg.n_images), "manipulation")  # algebra needs 3
    seeds = ctx.noise_seeds()
    if not same_encoder(train, val):
        raise InvalidInput(
            f"manipulation: the train store ({describe_encoder(train.encoder_info)}) and val store "
            f"({describe_encoder(val.encoder_info)}) must hold the same representation"
        )
    rcdms, notes = ctx.store_rcdms(train, "manipulation")
    thresholds = tf.thresholds()
    out = _Results()
    for r in rcdms:
        st = _Setting(val, train, tf, ctx.features(val), k, m, thresholds, rows, seeds)
        size = display_size(r.image_size, ["mask least (degenerate)"])
        for n_img, i in enumerate(rows[: max(1, cfg.n_images)]):
            _masking(ctx, r, st, n_img, i, size, out)
        _algebra_rows(ctx, r, st, size, out)
    table = Table(
        "Edited dimensions",
        ["run", "image", "most-common dims", "least-common dims", "overlap", "D", "degenerate"],
        out.table_rows,
    )
    numbers = {
        "seed": cfg.seed,
        "noise_seeds": seeds,
        "active_rule": f"value > the dimension's {ACTIVE_QUANTILE} quantile over the training store",
        "active_quantile": ACTIVE_QUANTILE,
        "degenerate": out.degenerate,
        "results": out.records,
    }
    notes, summary = _degenerate_notes(out, notes)
    return ctx.finish("manipulation", TITLE, numbers, out.figures, [table], notes=notes, summary=summary)


def _masking(ctx: Context, r, st: _Setting, n_img: int, i: int, size: int, out: _Results) -> None:
    """Image ``i``: h, its most- / least-common dimensions zeroed and replaced by those of the next
    picked image, sampled; its figure, record and table row."""
    from rcdm.diffusion.conditions import manipulate

    val, h = st.val, st.vf[i]
    other = st.rows[(n_img + 1) % len(st.rows)]  # the substitution source: the next image
    nn = st.tf.knn(h, st.k)
    nn_feats = st.tf.rows(nn)
    conds, labels = [h], ["original"]
    dims_by = {}
    for variant in ("most", "least"):
        dims = select_dims(h, nn_feats, st.m, variant, st.thresholds)
        dims_by[variant] = dims
        conds.append(manipulate(h, dims, "zero"))
        labels.append(f"mask {variant}")
        conds.append(manipulate(h, dims, "replace", target=st.vf[other]))
        labels.append(f"sub {variant}")
    check = selection_check(dims_by["most"], dims_by["least"], len(h))
    if check["degenerate"]:
        out.degenerate.append(f"{val.keys[i]}: {check['reason']}")
        labels = [lab if lab == "original" else f"{lab} (degenerate)" for lab in labels]
    samples = ctx.sample_grid(r, np.stack(conds), st.seeds)  # (5, S, H, W, 3)
    img, oimg = ctx.image(val, i), ctx.image(val, other)
    grid_rows = []
    for c, lab in enumerate(labels):
        first = labelled(oimg if lab.startswith("sub ") else img, lab, size, lines=3)
        grid_rows.append([first] + [labelled(s, "", size) for s in samples[c]])
    warn = (
        f"DEGENERATE SELECTION: {check['reason']}, so the mask / sub rows cannot show different things. "
        if check["degenerate"]
        else ""
    )
    cap = ctx.caption(
        r,
        st.seeds,
        f"{warn}Rows: samples of h({val.keys[i]}); with its {len(dims_by['most'])} most-common / "
        f"least-common dimensions (active, i.e. above the dimension's {100 * ACTIVE_QUANTILE:.0f}th "
        f"percentile over the training store, in >= {st.m} of its {st.k} nearest training neighbours; "
        f"overlap {check['overlap']}) zeroed (mask) or replaced by those of {val.keys[other]} "
        "(sub, whose image is shown)",
    )
    title = f"{r.title}: {val.keys[i]}" + (" (degenerate selection)" if check["degenerate"] else "")
    out.figures.append(ctx.save_figure("manipulation", f"{r.label}_mask_{n_img}", grid(grid_rows), cap, title))
    out.records.append(
        {
            "checkpoint": r.path,
            "key": val.keys[i],
            "substitute_from": val.keys[other],
            "k": st.k,
            "m": st.m,
            "neighbours": [st.train.keys[j] for j in nn],
            "dims_most": dims_by["most"],
            "dims_least": dims_by["least"],
            "selection": check,
        }
    )
    out.table_rows.append(
        [
            r.label,
            val.keys[i],
            len(dims_by["most"]),
            len(dims_by["least"]),
            check["overlap"],
            r.cond_dim,
            "yes" if check["degenerate"] else "no",
        ]
    )


def _algebra_rows(ctx: Context, r, st: _Setting, size: int, out: _Results) -> None:
    """Samples of h(a) - h(b) + h(c) for each triple: one figure and record per checkpoint."""
    from rcdm.diffusion.conditions import algebra

    val, vf, seeds = st.val, st.vf, st.seeds
    alg_rows, alg_records = [], []
    for a, b, c in _triples(ctx, val, st.rows):
        hc = algebra(vf[a], vf[b], vf[c])
        samples = ctx.sample(r, np.repeat(hc[None], len(seeds), 0), seeds)
        row = [
            labelled(ctx.image(val, a), "a", size),
            labelled(ctx.image(val, b), "- b", size),
            labelled(ctx.image(val, c), "+ c", size),
        ]
        row += [labelled(s, "", size) for s in samples]
        alg_rows.append(row)
        alg_records.append({"a": val.keys[a], "b": val.keys[b], "c": val.keys[c]})
    if not alg_rows:
        return
    cap = ctx.caption(
        r,
        seeds,
        "Representation algebra: each row shows a, b, c, then samples of h(a) - h(b) + h(c) ("
        + "; ".join(f"{t['a']} - {t['b']} + {t['c']}" for t in alg_records)
        + ")",
    )
    fig = grid(alg_rows, separator_after_first=False)
    out.figures.append(ctx.save_figure("manipulation", f"{r.label}_algebra", fig, cap, f"{r.title}: algebra"))
    out.records.append({"checkpoint": r.path, "algebra": alg_records})


def _degenerate_notes(out: _Results, notes: list[str]) -> tuple[list[str], str]:
    """The notes, led by the degenerate selections when there are any, and the summary saying so."""
    if not out.degenerate:
        return notes, ""
    notes = [
        f"Degenerate selection for {len(out.degenerate)} image(s): most- and least-common masking "
        f"cannot be told apart ({'; '.join(out.degenerate)})."
    ] + list(notes)
    summary = (  # said in bold under the title, not only in the figures
        f"{len(out.degenerate)} of {len(out.records) - sum('algebra' in r for r in out.records)} "
        "masking figure(s) have a degenerate selection: their most- and least-common rows "
        "cannot show different things (see each figure's caption)."
    )
    return notes, summary


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
