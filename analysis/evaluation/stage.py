"""``rcdm evaluate``: samples -> FID, IS and nearest-neighbour rank / MRR (the paper's Table 1).

The method, step by step (:func:`evaluate`): check every input before anything heavy runs
(:mod:`.checks`), rebuild the encoders from their stores' records, rank each sample's conditioning
image in the conditioning space (:mod:`.ranking`), measure faithfulness in every space
(:mod:`.spaces`), then FD in other feature spaces and FID / IS, or say why not (:mod:`.fd`,
:mod:`.fid`), and write the evaluation folder (``rcdm.run.evaldir``: the old finished marker
removed first, the new one written last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rcdm.analysis.evaluation import fd as fdmod
from rcdm.analysis.evaluation import fid as fidmod
from rcdm.analysis.evaluation.checks import Inputs, check_inputs
from rcdm.analysis.evaluation.ranking import Ranking, rank_samples
from rcdm.analysis.evaluation.spaces import evaluate_spaces
from rcdm.analysis.evaluation.tables import metrics_csv, metrics_markdown
from rcdm.config import EvaluateConfig
from rcdm.errors import InvalidInput
from rcdm.run.evaldir import EvalDir
from rcdm.run.lock import holding_output_lock
from rcdm.run.sampleset import MANIFEST, SampleSet

__all__ = ["evaluate", "method_label"]


@holding_output_lock("rcdm evaluate")  # one writer per evaluation folder
def evaluate(cfg: EvaluateConfig) -> Path:
    """Evaluate one sample directory; returns ``<out>/metrics.json``."""
    from rcdm.utils import pick_device

    inputs = check_inputs(cfg)  # cheap checks first: nothing heavy runs on inputs that will fail later
    device = pick_device(cfg.device)
    encoder = open_encoders(cfg, inputs, device)
    folder = EvalDir(cfg.out)
    folder.begin()  # no stale "finished" marker while we work
    ranking = rank_samples(cfg, inputs.samples, inputs.store, encoder, device)
    faithfulness = faithfulness_spaces(cfg, inputs, ranking, device)
    fd = frechet_distances(cfg, inputs, device)
    quality = fid_and_is(cfg, inputs, device)
    metrics = metrics_of(inputs, quality, ranking, faithfulness, fd)
    return write(folder, cfg, inputs, metrics, ranking)


def open_encoders(cfg: EvaluateConfig, inputs: Inputs, device: Any) -> Any:
    """The conditioning encoder, rebuilt from the store's record (its weights must be found), and
    each second encoder from its own store's (set on its space); returns the first."""
    from rcdm.encoders.build import encoder_from_info

    encoder = encoder_from_info(
        inputs.store.encoder_info, weights=cfg.encoder_weights, trust_checkpoint=cfg.trust_checkpoint
    ).to(device)
    for sp in inputs.seconds:
        sp.encoder = encoder_from_info(sp.store.encoder_info, trust_checkpoint=cfg.trust_checkpoint).to(device)
    return encoder


def faithfulness_spaces(cfg: EvaluateConfig, inputs: Inputs, ranking: Ranking, device: Any) -> dict:
    """metrics.json's ``faithfulness``: every space's numbers (:func:`.spaces.evaluate_spaces`)."""
    from rcdm.encoders.build import encode

    return evaluate_spaces(
        inputs.samples,
        inputs.store,
        ranking.ref,
        ranking.queries,
        ranking.cond_index,
        inputs.seconds,
        inputs.train_store,
        device=device,
        chunk_bytes=cfg.rank_chunk_mb << 20,
        encode=lambda enc, imgs, pp: np.asarray(
            encode(enc, imgs, pp, batch_size=cfg.batch_size, device=device), np.float32
        ),
    )


def frechet_distances(cfg: EvaluateConfig, inputs: Inputs, device: Any) -> dict:
    """metrics.json's ``fd``: each planned extractor's FD and precision / recall, each other one
    with why it was skipped."""
    plan, ss = inputs.quality, inputs.samples
    fd = dict(plan.fd_skipped)
    if plan.fd_names:
        ref_imgs = fdmod.reference_images(cfg.reference_images, ss.resolution, cfg.fid_reference_limit, cfg.batch_size)
        fd.update(fdmod.compute(plan.fd_names, ss.images, ref_imgs, batch_size=cfg.batch_size, device=device))
    return fd


def fid_and_is(cfg: EvaluateConfig, inputs: Inputs, device: Any) -> dict:
    """metrics.json's ``fid`` and ``is``: computed when the Inception weights are here, else the
    same record of why they were skipped and how to enable them."""
    plan = inputs.quality
    if plan.weights is not None:
        return fidmod.fid_and_is(
            inputs.samples.images,
            weights=plan.weights,
            reference_images=cfg.reference_images,
            stats_path=plan.stats_path,
            limit=cfg.fid_reference_limit,
            splits=cfg.is_splits,
            method=cfg.fid_method,
            batch_size=cfg.batch_size,
            device=device,
            trust_checkpoint=cfg.trust_checkpoint,
            weights_sha256=plan.weights_sha256,
        )
    if cfg.fid == "off":
        skipped = {
            "skipped": True,
            "reason": "evaluate.fid=off",
            "how_to_enable": "set evaluate.fid=auto (or on) with the Inception weights",
        }
    else:
        skipped = {"skipped": True, "reason": "the Inception weights file is missing", "how_to_enable": plan.fid_skip}
    return {"fid": dict(skipped), "is": dict(skipped)}


def method_label(ss: SampleSet, encoder_name: str) -> str:
    """metrics.json's ``method``: the sample set's own, else "RCDM (<encoder>, <cond>)"."""
    m = ss.manifest
    if m.get("method"):
        return str(m["method"])
    cond = m.get("cond") or (m.get("unet") or {}).get("cond")
    if cond and (n := (m.get("unet") or {}).get("cond_image")):
        cond += f" + cond_image {n}"  # the fitted image of h (an rcdm addition)
    return f"RCDM ({encoder_name}{', ' + cond if cond else ''})"


def metrics_of(inputs: Inputs, quality: dict, ranking: Ranking, faithfulness: dict, fd: dict) -> dict:
    """metrics.json, in the order of its schema (``rcdm.run.evaldir.METRICS_KEYS``; the folder's
    writer adds ``complete`` and ``created``)."""
    ss, store = inputs.samples, inputs.store
    encoder_name = str(store.encoder_info.get("name"))
    m = ss.manifest
    return {
        "method": method_label(ss, encoder_name),
        "encoder": encoder_name,
        "layer": store.layer,
        "resolution": ss.resolution,
        "n_samples": len(ss.images),
        "sampler": ss.sampler.label() if ss.sampler else None,  # what every table and caption names
        "steps": str(ss.sampler.steps) if ss.sampler else None,
        "samples": {
            "path": str(ss.path.resolve()),
            "manifest_sha256": ss.manifest_sha256,
            "checkpoint": m.get("checkpoint"),
            "store": m.get("store"),
        },
        "reference": {
            "path": str(store.path.resolve()),
            "N": len(store),
            "manifest_sha256": store.manifest_sha256,
        },
        **quality,
        "rank": ranking.block,
        "faithfulness": faithfulness,
        "fd": fd,
    }


def write(folder: EvalDir, cfg: EvaluateConfig, inputs: Inputs, metrics: dict, ranking: Ranking) -> Path:
    """The evaluation folder, its tables rendered here; returns metrics.json. The sample set must
    still be the one read at the start (a sampler that rewrote it meanwhile: nothing is written)."""
    from rcdm.utils import sha256_file

    now = inputs.samples.path / MANIFEST
    if not now.is_file() or sha256_file(now) != inputs.samples.manifest_sha256:
        raise InvalidInput(
            f"the sample set {inputs.samples.path} changed while it was evaluated (another `rcdm sample` wrote "
            "it?); nothing was written: re-run `rcdm evaluate` once sampling is done"
        )
    name = folder.path.name
    return folder.write(
        metrics,
        ranks=ranking.ranks,
        rank_in_reference=ranking.inside,
        csv=metrics_csv(metrics, name),
        markdown=metrics_markdown(metrics, name),
        config=cfg,
        upstream={
            "samples_manifest_sha256": inputs.samples.manifest_sha256,
            "reference_manifest_sha256": inputs.store.manifest_sha256,
            "inception_weights_sha256": metrics["fid"].get("weights_sha256"),
            "fid_reference_stats": (metrics["fid"].get("reference") or {}).get("stats"),
        },
    )
