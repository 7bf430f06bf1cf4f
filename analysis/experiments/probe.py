"""probe (the paper's Table a): linear-probe validation accuracy per (train, val) store pair,
typically the trunk and the head of each encoder."""

from __future__ import annotations

import numpy as np
from rcdm.analysis.experiments.common import Context, same_encoder
from rcdm.analysis.probe import FULL_BATCH_ROWS, MINIBATCH, ProbeResult, train_probe, train_probe_streamed
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.store.stats import IN_MEMORY_BYTES, fits_in_memory, rows_fit

TITLE = "Linear probe (Table a)"


def store_pairs(ctx: Context) -> list[tuple[str, str]]:
    cfg = ctx.cfg
    trains = cfg.probe_train_stores or ((cfg.train_store,) if cfg.train_store else ())
    vals = cfg.probe_val_stores or ((cfg.val_store,) if cfg.val_store else ())
    if len(trains) != len(vals) or not trains:
        raise InvalidInput(
            f"probe: analyze.probe_train_stores ({len(trains)}) and analyze.probe_val_stores "
            f"({len(vals)}) must be non-empty lists of the same length, one (train, val) pair per "
            "encoder and layer"
        )
    return list(zip(trains, vals, strict=True))


def fit_store_probe(ctx: Context, train, val) -> ProbeResult:
    """Probe on ``train``'s view-0 features, accuracy on ``val`` (both need labels)."""
    if not same_encoder(train, val):
        raise InvalidInput(
            f"probe: train store {train.path} ({train.encoder_info.get('name')} {train.layer}) and val "
            f"store {val.path} ({val.encoder_info.get('name')} {val.layer}) hold different representations; "
            "pair stores extracted with the same encoder, weights and layer"
        )
    ytr = ctx.labels(train, "probe: the train")
    yva = ctx.labels(val, "probe: the val")
    n_classes = int(max(ytr.max(), yva.max()) + 1)
    kw = {"epochs": ctx.cfg.probe_epochs, "lr": ctx.cfg.probe_lr, "seed": ctx.cfg.seed, "n_classes": n_classes}
    return store_probe(train, ytr, val, yva, device=ctx.device, features=ctx.features, **kw)


def store_probe(train, ytr, val, yva, *, in_memory_bytes: int = IN_MEMORY_BYTES, features=None, **kw) -> ProbeResult:
    """The probe on view 0 of two stores: in memory (``features(store)``, default
    ``store.features(0)``: :func:`train_probe`, as it always was) when the training rows fit
    ``in_memory_bytes`` of float32, else streamed through a shuffle buffer of that size
    (:func:`train_probe_streamed`; ImageNet's training rows are 10 GB)."""
    if fits_in_memory(train, 0, in_memory_bytes):
        feats = features or (lambda s: s.features(0))
        return train_probe(feats(train), ytr, feats(val), yva, **kw)
    return train_probe_streamed(train, ytr, val, yva, buffer_bytes=in_memory_bytes, **kw)


def _how(n_train: int, dim: int) -> str:
    """How :func:`store_probe` fits a training store of ``n_train`` x ``dim`` rows."""
    if not rows_fit(n_train, dim, IN_MEMORY_BYTES):
        return f"minibatches of {MINIBATCH} from a shuffle buffer of {IN_MEMORY_BYTES >> 20} MiB of the streamed store"
    return "full batch" if n_train <= FULL_BATCH_ROWS else f"minibatches of {MINIBATCH}"


def cached_probe(ctx: Context, train, val) -> ProbeResult:
    """The adversarial experiment reuses the probe of the same stores."""
    return ctx.cached(("probe", str(train.path), str(val.path)), lambda: fit_store_probe(ctx, train, val))


def run(ctx: Context) -> Entry:
    rows, numbers = [], []
    for tr_path, va_path in store_pairs(ctx):
        train, val = ctx.store(tr_path), ctx.store(va_path)
        res = cached_probe(ctx, train, val)
        info = train.encoder_info
        chance = float(np.bincount(val.labels).max() / len(val))  # majority-class accuracy
        rec = {
            "encoder": info.get("name"),
            "layer": train.layer,
            "dim": train.dim,
            "train_store": str(tr_path),
            "val_store": str(va_path),
            "n_train": len(train),
            "n_val": len(val),
            "majority_class_accuracy": chance,
            **res.to_dict(),
        }
        numbers.append(rec)
        rows.append(
            [
                rec["encoder"],
                rec["layer"],
                rec["dim"],
                rec["n_train"],
                rec["n_val"],
                round(100 * res.val_accuracy, 2),
                round(100 * res.train_accuracy, 2),
                round(100 * chance, 2),
            ]
        )
    table = Table(
        title="Linear-probe accuracy (%) on the validation store",
        columns=["encoder", "layer", "dim", "train n", "val n", "val acc", "train acc", "majority"],
        rows=rows,
    )
    hows = sorted({_how(r["n_train"], r["dim"]) for r in numbers})
    desc = (
        f"Multinomial logistic regression on standardised features (Adam, lr {ctx.cfg.probe_lr}, "
        f"{ctx.cfg.probe_epochs} epochs, {'; '.join(hows)}, seed {ctx.cfg.seed})."
    )
    return ctx.finish("probe", TITLE, {"probes": numbers, "seed": ctx.cfg.seed}, [], [table], desc)
