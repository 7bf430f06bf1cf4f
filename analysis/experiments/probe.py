"""probe (the paper's Table a): linear-probe validation accuracy per (train, val) store pair,
typically the trunk and the head of each encoder."""

from __future__ import annotations

import numpy as np
from rcdm.analysis.experiments.common import Context, same_encoder
from rcdm.analysis.probe import ProbeResult, train_probe
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput

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
    return train_probe(
        ctx.features(train),
        ytr,
        ctx.features(val),
        yva,
        epochs=ctx.cfg.probe_epochs,
        lr=ctx.cfg.probe_lr,
        seed=ctx.cfg.seed,
        n_classes=n_classes,
        device=ctx.device,
    )


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
    desc = (
        f"Multinomial logistic regression on standardised features (Adam, lr {ctx.cfg.probe_lr}, "
        f"{ctx.cfg.probe_epochs} epochs, full batch, seed {ctx.cfg.seed})."
    )
    return ctx.finish("probe", TITLE, {"probes": numbers, "seed": ctx.cfg.seed}, [], [table], desc)
