"""The report's comparison of the learned prior (``rcdm train-prior``) with the paper's KDE.

Both draw representations with no input image. Measured in the representation space of the
prior's training store, always: how far each draw is from its nearest training entry (KDE draws
sit ``sigma`` from a copied entry; a prior that memorised would too) and how spread out the draws
are (mean distance of random pairs), beside the same numbers for held-out validation
representations (real, unseen data: the target), and the Frechet distance of the draws to those.
Where ``rcdm evaluate`` measured sample sets conditioned on ``prior`` or ``kde`` (FID when the
Inception weights exist), their numbers are shown too; where an RCDM of the same representation
is analysed, a figure shows its samples from both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rcdm.analysis.evaluation import feature_stats as F
from rcdm.analysis.evaluation import metrics
from rcdm.analysis.report import Entry, Table
from rcdm.config import SampleConfig
from rcdm.errors import MissingInput
from rcdm.run.evaldir import EvalDir
from rcdm.run.sampleset import SampleSetWriter

__all__ = ["prior_entry", "draw_statistics", "evaluated_rows"]

TITLE = "Sampling with no image: learned prior vs KDE"
N_DRAWS = 256  # per source: nearest-entry search over a 1.28M x 2048 store stays under a minute of CPU


def draw_statistics(draws: np.ndarray, train: np.ndarray, target: np.ndarray | None, seed: int = 0) -> dict:
    """Nearest-training-entry distance, spread, and (with ``target`` features) Frechet distance."""
    _, nn = F.nearest_rows(draws, train)
    out = {
        "n": int(len(draws)),
        "nearest_train_mean": float(nn.mean()),
        "nearest_train_median": float(np.median(nn)),
        "spread": F.random_pair_distance(draws, 10000, seed) if len(draws) > 1 else None,
    }
    if target is not None and len(target) > 1 and len(draws) > 1:
        mu, sigma = metrics.feature_statistics(target)
        out["frechet_to_val"] = max(0.0, metrics.frechet_distance_from_features(draws, mu, sigma))  # -1e-16 is 0
    return out


def evaluated_rows(evaluations: tuple[str, ...]) -> list[list[Any]]:
    """Rows for evaluations of sample sets conditioned on prior or kde draws."""
    rows = []
    for d in evaluations:
        try:
            m = EvalDir(d).metrics()
        except MissingInput:  # not evaluated (yet): nothing to list
            continue
        man = SampleSetWriter((m.get("samples") or {}).get("path", "")).finished()  # the sample set's manifest
        cond = man.get("condition") if man else None
        if cond in ("prior", "kde"):
            fid = m.get("fid") or {}
            rows.append([cond, d, m.get("n_samples"), fid.get("value") if not fid.get("skipped") else "not computed"])
    return rows


def prior_entry(ctx: Any) -> Entry | None:
    """The entry, or None when ``analyze.prior`` is the derived default and holds no prior."""
    from rcdm.diffusion.conditions import kde_sample
    from rcdm.prior.model import draw
    from rcdm.run.priordir import check_store, is_prior, load_prior

    cfg = ctx.cfg
    if not cfg.prior or not is_prior(cfg.prior):
        if cfg.prior and not cfg.derived("prior", unknown=True):
            raise MissingInput(
                f"analyze.prior {cfg.prior} holds no trained prior; run `rcdm train-prior --out {cfg.prior}`"
            )
        return None
    model, meta = load_prior(cfg.prior, ctx.device)
    train_store = ctx.store("train")
    check_store(meta, train_store, cfg.prior)
    train = ctx.features(train_store)
    n = min(N_DRAWS, max(2, len(train)))
    sigma = SampleConfig.kde_sigma  # the paper's bandwidth, as `rcdm sample --condition kde`
    draws = {
        "prior": draw(model, n, seed=cfg.seed, device=ctx.device, meta=meta),
        "kde": np.asarray(kde_sample(train, n, sigma, cfg.seed)),
    }
    val = None
    if cfg.val_store and Path(cfg.val_store).exists():
        from rcdm.analysis.experiments.common import same_encoder

        vs = ctx.store("val")
        val = ctx.features(vs) if same_encoder(vs, train_store) else None
    stats = {k: draw_statistics(v, train, val, cfg.seed) for k, v in draws.items()}
    if val is not None:
        stats["validation (real, held out)"] = draw_statistics(val[:n], train, val, cfg.seed)
    rows = [
        [
            k,
            s["n"],
            round(s["nearest_train_mean"], 4),
            round(s["nearest_train_median"], 4),
            None if s["spread"] is None else round(s["spread"], 4),
            None if s.get("frechet_to_val") is None else round(s["frechet_to_val"], 4),
        ]
        for k, s in stats.items()
    ]
    enc = meta.get("encoder") or {}
    entry = Entry(
        experiment="prior",
        title=TITLE,
        description=(
            f"Representations drawn with no input image, in the space of {enc.get('name')} {enc.get('layer')} "
            f"({train_store.dim}-d): from the learned prior {cfg.prior} (RCG's residual-MLP diffusion, "
            f"{meta.get('iters')} steps on {meta.get('n_train')} training entries, DDIM "
            f"{meta.get('sample_steps')} steps, eta {meta.get('sample_eta')}) and from the paper's KDE "
            f"(a random training entry + N(0, {sigma}^2 I)). Nearest-entry distance: Euclidean distance of "
            "each draw to its nearest training entry (a draw that copies an entry is near 0). Spread: mean "
            "distance of random pairs of draws. Frechet distance: of the draws' Gaussian statistics to "
            "those of the validation representations. The validation row is the target: real images "
            "unseen in training."
        ),
        tables=[
            Table(
                "Draws in representation space (same seed for both)",
                ["source", "draws", "nearest-entry distance (mean)", "(median)", "spread", "Frechet to val"],
                rows,
            )
        ],
    )
    ev = evaluated_rows(tuple(cfg.evaluations))
    if ev:
        entry.tables.append(
            Table("Evaluated sample sets (rcdm evaluate)", ["condition", "evaluation", "samples", "FID"], ev)
        )
    else:
        entry.notes.append(
            "FID: sample each with `rcdm sample --condition prior` and `--condition kde`, evaluate each with "
            "`rcdm evaluate` (FID where the Inception weights exist) and list them in analyze.evaluations."
        )
    _figure(ctx, entry, draws, train_store)
    from rcdm.analysis.report import write_entry
    from rcdm.utils import atomic_write_json

    path = ctx.dir("prior") / "prior.json"
    atomic_write_json(path, {"prior": str(cfg.prior), "kde_sigma": sigma, "seed": cfg.seed, "statistics": stats})
    entry.numbers = str(path.relative_to(ctx.out))
    write_entry(ctx.out, entry)
    return entry


def _figure(ctx: Any, entry: Entry, draws: dict, train_store: Any) -> None:
    """RCDM samples from the first draws of each, when a checkpoint of this representation is analysed."""
    from rcdm.analysis.experiments.common import same_encoder
    from rcdm.analysis.experiments.figures import display_size, labelled
    from rcdm.viz import grid

    try:
        rs = [r for r in ctx.rcdms() if same_encoder(train_store, r)]
    except Exception:  # no checkpoint to sample with: numbers only
        rs = []
    if not rs:
        entry.notes.append("No analysed checkpoint is conditioned on this representation: no sample figure.")
        return
    r, seeds = rs[0], ctx.noise_seeds()
    k = max(1, ctx.cfg.n_images)
    conds = np.concatenate([draws["prior"][:k], draws["kde"][:k]])
    samples = ctx.sample_grid(r, conds, seeds)  # (2k, S, H, W, 3)
    size = display_size(r.image_size)
    rows = [
        [labelled(np.full((size, size, 3), 255, np.uint8), f"{'prior' if i < k else 'KDE'} draw {i % k}", size)]
        + [labelled(s, "", size) for s in samples[i]]
        for i in range(len(conds))
    ]
    cap = ctx.caption(
        r,
        seeds,
        f"Rows: {k} draws from the learned prior, then {k} KDE draws (sigma "
        f"{SampleConfig.kde_sigma}); each followed by RCDM samples from it",
    )
    entry.figures.append(ctx.save_figure("prior", f"{r.label}_draws", grid(rows), cap, r.label))
