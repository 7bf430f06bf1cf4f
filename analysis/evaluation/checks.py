"""``rcdm evaluate``'s checks before any work: the inputs open, fit each other and the FID / FD
plan is decided, so nothing heavy runs on inputs that would fail later.

Checked here: the section names samples, reference and out; the sample set (its own reader's
checks); the reference store and that it holds the representation the samples were conditioned
on (:func:`check_encoder`); the second reference stores; the retrieval baseline's training store
(:func:`train_store`); which FD extractors and whether FID / IS run (weights, reference images,
the cached reference statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcdm.analysis.evaluation import fd as fdmod
from rcdm.analysis.evaluation import fid as fidmod
from rcdm.analysis.evaluation.spaces import Space, open_second_stores
from rcdm.config import EvaluateConfig
from rcdm.errors import InvalidInput, MissingInput
from rcdm.run.conditioning import Conditioning, extraction_for, mismatches, same_representation
from rcdm.run.sampleset import SampleSet, read_samples
from rcdm.store import check_same_classes
from rcdm.utils import sha256_file

__all__ = [
    "MIN_REFERENCES",
    "Inputs",
    "QualityPlan",
    "check_encoder",
    "check_finite",
    "check_inputs",
    "check_references",
    "plan_quality",
    "train_store",
]


@dataclass
class QualityPlan:
    """What the image-quality metrics will do, decided before any work."""

    fd_names: list[str]  # FD / precision-recall extractors to run
    fd_skipped: dict[str, dict]  # extractor -> {skipped, reason, how_to_enable}
    weights: Path | None  # the Inception weights; None: FID / IS skipped
    fid_skip: str | None  # why FID / IS are skipped (how to enable them)
    stats_path: Path | None  # the cached FID reference statistics
    weights_sha256: str | None


@dataclass
class Inputs:
    """Everything the cheap checks opened, for the steps after them."""

    samples: SampleSet
    store: Any  # FeatureStore of the reference images
    seconds: list[Space]  # the second encoders' stores of the same images
    train_store: Any | None  # the retrieval baseline's training store, or None
    quality: QualityPlan


def check_inputs(cfg: EvaluateConfig) -> Inputs:
    """Every check that needs no model: the inputs open and fit each other."""
    from rcdm.store import FeatureStore

    for name in ("samples", "reference", "out"):
        if not getattr(cfg, name):
            raise InvalidInput(f"evaluate.{name} is not set; pass --{name} or set it in pipeline.yaml")
    ss = read_samples(cfg.samples)
    store = FeatureStore(cfg.reference)
    check_references(store)
    check_encoder(ss, store)
    check_finite(ss.conds, "conditioning vectors", f"the sample set {ss.path}", ss.keys())
    seconds = open_second_stores(cfg.second_references, store)
    train = train_store(cfg, store)
    if train is not None:
        check_same_classes(train, store, "the retrieval baseline")
    return Inputs(ss, store, seconds, train, plan_quality(cfg, ss))


# Rank / MRR against fewer references cannot tell a faithful sample from chance: with N = 1 every
# sample ranks first (chance MRR 1), and chance MRR stays above 0.5 up to N = 4 (0.52).
MIN_REFERENCES = 5


def check_references(store: Any) -> None:
    """Enough reference rows for rank / MRR to mean something (:data:`MIN_REFERENCES`)."""
    if len(store) < MIN_REFERENCES:
        raise InvalidInput(
            f"the reference store {store.path} holds {len(store)} row(s): rank / MRR needs at least "
            f"{MIN_REFERENCES} references to tell a faithful sample from chance; evaluate against the "
            "validation store of the images the conditions come from"
        )


def check_finite(rows: Any, what: str, where: str, keys: list | None = None) -> None:
    """``rows`` (N, D) hold no NaN or inf: a non-finite row never becomes a number, naming the first."""
    import numpy as np

    bad = ~np.isfinite(np.asarray(rows)).reshape(len(rows), -1).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        name = f" (the first: {keys[first]!r})" if keys is not None else f" (the first: row {first})"
        raise InvalidInput(
            f"{int(bad.sum())} of the {len(rows)} {what} of {where} hold NaN or inf{name}; nothing is measured "
            "from them. `rcdm store verify` names a store's damaged shards"
        )


def check_encoder(ss: SampleSet, store: Any) -> None:
    """The samples' conditioning must be the reference store's representation: the same
    dimension, encoder (name, architecture, layer, weights, seed) and preprocessing (input size
    included). One comparison with training and sampling: :mod:`rcdm.run.conditioning`."""
    if ss.conds.shape[1] != store.dim:
        raise InvalidInput(
            f"the samples in {ss.path} were conditioned on {ss.conds.shape[1]}-d representations, "
            f"but the reference store {store.path} holds {store.dim}-d features "
            f"({store.encoder_info.get('name')}/{store.layer}); evaluate with a reference store "
            "made by the encoder the model was trained on"
        )
    enc = ss.manifest.get("encoder")
    if not isinstance(enc, dict) or not enc.get("name"):
        return  # the sample set does not say (conditions typed in by hand): nothing to compare
    pp = ss.manifest.get("preprocess") or enc.get("preprocess")
    theirs = Conditioning(dim=int(ss.conds.shape[1]), encoder=enc, preprocess=pp)
    found = mismatches(theirs, Conditioning.of_store(store))
    if found:
        raise InvalidInput(
            f"the samples in {ss.path} were conditioned on {theirs.describe()} (store "
            f"{ss.manifest.get('store')}), but the reference store {store.path} holds other features: "
            f"{', '.join(map(str, found))} (samples vs reference). Evaluate with a reference store "
            f"extracted with {extraction_for(theirs, found)}"
        )


def train_store(cfg: EvaluateConfig, reference: Any) -> Any | None:
    """The retrieval baseline's training store, or None when the derived default (<workdir>/stores/
    train) does not exist or holds another representation; a store the user named must fit."""
    from rcdm.store import FeatureStore
    from rcdm.store.format import MANIFEST

    if not cfg.train_store:
        return None
    derived = cfg.derived("train_store", unknown=True)
    if not (Path(cfg.train_store) / MANIFEST).is_file():
        if derived:
            return None
        raise MissingInput(
            f"evaluate.train_store {cfg.train_store} is not a finished feature store; "
            "give the training store of the reference's encoder, or unset it"
        )
    train = FeatureStore(cfg.train_store)
    if not same_representation(Conditioning.of_store(train), Conditioning.of_store(reference)):
        if derived:
            return None
        raise InvalidInput(
            f"evaluate.train_store {train.path} holds {Conditioning.of_store(train).describe()}, the reference "
            f"{reference.path} {Conditioning.of_store(reference).describe()}: the retrieval baseline needs the "
            "training store of the same encoder and layer"
        )
    return train


def plan_quality(cfg: EvaluateConfig, ss: SampleSet) -> QualityPlan:
    """Which FD extractors run, and whether FID / IS do: decided (and their inputs checked) now."""
    fd_names, fd_skipped = _plan_fd(cfg)
    weights, fid_skip = fidmod.plan_fid(cfg.fid, cfg.inception_weights, cfg.allow_download)
    stats_path = Path(cfg.fid_stats_cache) if cfg.fid_stats_cache else None
    weights_sha256 = sha256_file(weights) if weights is not None else None
    if weights is not None:
        stats_path = stats_path or fidmod.default_stats_path(cfg.out, ss.resolution)
        _check_fid_inputs(cfg, ss, stats_path, weights_sha256)
    return QualityPlan(fd_names, fd_skipped, weights, fid_skip, stats_path, weights_sha256)


def _plan_fd(cfg: EvaluateConfig) -> tuple[list[str], dict[str, dict]]:
    """The FD extractors whose weights are here; none without reference images (each says why)."""
    fd_names, fd_skipped = fdmod.plan_fd(cfg.fid, cfg.fd_extractors)
    if fd_names and not cfg.reference_images:
        fd_skipped.update(
            {
                n: {
                    "skipped": True,
                    "reason": "no evaluate.reference_images",
                    "how_to_enable": "set evaluate.reference_images",
                }
                for n in fd_names
            }
        )
        fd_names = []
    return fd_names, fd_skipped


def _check_fid_inputs(cfg: EvaluateConfig, ss: SampleSet, stats_path: Path, weights_sha256: str | None) -> None:
    """FID needs 2 samples and a reference image set: its cached statistics, or images that open.
    A cache of another set is refused here (by ``load_reference_stats``)."""
    if len(ss.images) < 2:
        raise InvalidInput(f"FID needs at least 2 samples, {ss.path} holds {len(ss.images)}")
    if not cfg.reference_images:
        raise InvalidInput("FID needs evaluate.reference_images (e.g. 10,000 validation images)")
    want = fidmod.expected_meta(cfg.reference_images, ss.resolution, weights_sha256, cfg.fid_reference_limit)
    if fidmod.load_reference_stats(stats_path, want) is None:  # without a cache the image set must open
        from rcdm.data.images import open_source

        open_source(cfg.reference_images)
