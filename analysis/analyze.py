"""``rcdm analyze``: run the configured experiments and write ``<out>/report.html``.

Outputs: ``<out>/config.yaml`` (the resolved section), one folder per experiment with its PNG
figures, ``<exp>.json`` (the numbers) and ``entry.json`` (its report entry), ``report.html``, and
``manifest.json`` last (the finished marker, with the sha256 of every upstream manifest read).
Every random choice derives from ``analyze.seed``, so the same command gives the same figures.
"""

from __future__ import annotations

import importlib
import shutil
import time
from pathlib import Path

from rcdm.analysis.evaluation_entry import evaluation_entry
from rcdm.analysis.experiments import EXPERIMENTS
from rcdm.analysis.prior_entry import prior_entry
from rcdm.analysis.recipe import recipe_label
from rcdm.analysis.report import Entry, write_report
from rcdm.config import AnalyzeConfig, save_resolved, to_dict
from rcdm.errors import InvalidInput
from rcdm.run.lock import holding_output_lock
from rcdm.utils import atomic_write_json, now_iso, pick_device

__all__ = ["analyze", "check_config"]


def check_config(cfg: AnalyzeConfig) -> None:
    """Cheap checks of the config before anything is loaded."""
    cfg.check()  # each key's bounds were checked when the section was made; here the rules between keys
    if cfg.out is None:
        raise InvalidInput("analyze.out is not set; give --out or resolve the config (data.workdir)")
    if "invariance" in cfg.experiments:
        from rcdm.analysis.experiments.transforms import get_transform

        for t in list(cfg.transforms) + list(cfg.custom_transforms):
            get_transform(t)


@holding_output_lock("rcdm analyze")  # one writer per report folder
def analyze(cfg: AnalyzeConfig) -> Path:
    """Run ``cfg.experiments`` in order; returns ``<out>/report.html``."""
    from rcdm.analysis.experiments.common import Context

    check_config(cfg)
    out = Path(cfg.out)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # a re-run is unfinished until it ends
    save_resolved(cfg, out)
    ctx = Context(cfg=cfg, out=out, device=pick_device(cfg.device))
    meta = {
        "experiments": list(cfg.experiments),
        "checkpoints": list(cfg.checkpoints),
        "train store": cfg.train_store,
        "val store": cfg.val_store,
        "seed": cfg.seed,
        "sampler": cfg.sampler.label(),
    }
    for ckpt in cfg.checkpoints:  # what the samples come from, in words
        if (label := recipe_label(ckpt)) is not None:
            meta["training recipe" + (f" ({Path(ckpt).name})" if len(cfg.checkpoints) > 1 else "")] = label
    entries: list[Entry] = []
    for i, eval_dir in enumerate(cfg.evaluations):  # what `rcdm evaluate` measured comes first
        entry = evaluation_entry(eval_dir, out, index=i)
        if entry is not None:
            entries.append(entry)
    prior = prior_entry(ctx)  # the learned prior vs KDE, when analyze.prior holds one (issue 14)
    if prior is not None:
        entries.append(prior)
    timings: dict[str, float] = {}
    for name in cfg.experiments:
        t0 = time.perf_counter()
        module = importlib.import_module(f"rcdm.analysis.experiments.{EXPERIMENTS[name]}")
        if (out / name).is_dir():
            shutil.rmtree(out / name)  # figures of an earlier run would otherwise linger
        entries.append(module.run(ctx))
        timings[name] = round(time.perf_counter() - t0, 3)
        write_report(out, entries, meta)  # progress: the report grows as experiments finish
    report = write_report(out, entries, meta)
    atomic_write_json(
        out / "manifest.json",
        {
            "stage": "analyze",
            "created": now_iso(),
            "config": to_dict(cfg),
            "seed": cfg.seed,
            "noise_seeds": ctx.noise_seeds(),
            "experiments": {
                e.experiment: {
                    "numbers": e.numbers,
                    "figures": [f.path for f in e.figures],
                    "skipped": e.skipped,
                    "seconds": timings.get(e.experiment),
                }
                for e in entries
            },
            "upstream": ctx.upstream,
            "report": report.name,
        },
    )
    return report
