"""The evaluation folder: what ``rcdm evaluate`` writes and ``rcdm evaluate --table``, the report
and the command line read back.

This module is the one owner of the format: the file names, one writer (:meth:`EvalDir.write`),
one reader (:meth:`EvalDir.metrics`) and the schema of ``metrics.json`` (:data:`METRICS_KEYS`).
The numbers themselves are computed in ``rcdm.analysis``; they arrive here as a finished dict.

    <eval>/metrics.json            the numbers: the keys of METRICS_KEYS, in that order
    <eval>/metrics.csv             one row of the paper's Table 1 (rendered by rcdm.analysis)
    <eval>/metrics.md              Table 1a / 1b and the notes, in Markdown (idem)
    <eval>/ranks.npy               (M,) int64: the rank of each sample's conditioning image
    <eval>/rank_in_reference.npy   (M,) bool: False where the condition is outside the reference
    <eval>/config.yaml             the resolved EvaluateConfig
    <eval>/manifest.json           written last, the finished marker: stage "evaluate", the sha256
                                   of the sample set's and the reference store's manifests, the
                                   Inception weights and FID statistics used, files, tool_version

An old ``manifest.json`` is removed before anything else is written (:meth:`EvalDir.begin`), so a
folder whose manifest exists holds one complete, consistent evaluation.

``rcdm evaluate --table EVAL... --out DIR`` writes the same metrics names into DIR (Table 1 over
several evaluations: :func:`write_table`, manifest stage "evaluate-table"); ``rcdm evaluate
--curve RUN... --out DIR`` writes :data:`CURVE_PNG` and :data:`CURVE_JSON`.

The top-level keys of ``metrics.json`` (:data:`METRICS_KEYS`; the writer refuses any other set):

    method        what made the samples: the sample set's ``method``, else "RCDM (<encoder>, <cond>)"
    encoder       the reference store's encoder name
    layer         its layer ("trunk", "head", ...)
    resolution    the samples' side in pixels
    n_samples     how many samples were evaluated
    sampler       the sample set's ``Sampler.label()`` (what every table and caption names), or None
    steps         the sampler's steps, as a string, or None
    samples       {path, manifest_sha256, checkpoint, store}: the sample set evaluated
    reference     {path, N, manifest_sha256}: the reference store
    fid           {value, reference, weights_sha256, ...}, or {skipped, reason, how_to_enable}
    is            {mean, std, splits, ...}, or skipped as ``fid``
    rank          nearest-neighbour rank of the conditioning image in the conditioning space:
                  distance, view, encoder, layer, in_reference and outside_reference (each a
                  ``rcdm.faithfulness.rank_summary``; outside: note, by_kind), pooled (token stores)
    faithfulness  {spaces, pixel_diversity, retrieval_baseline, n_samples, notes}: every space
                  (conditioning, second encoders, pixels) with rank, top-k, cosine, their chance
                  levels, the retrieval baseline and diversity
    fd            {extractor: {fd, precision, recall, k, n_reference, ...} or skipped}
    complete      True (set by the writer)
    created       when it was written, ISO 8601 (set by the writer)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rcdm.errors import InvalidInput, MissingInput
from rcdm.utils import atomic_write_json, atomic_write_text, now_iso, read_json, sha256_file, tool_version

__all__ = [
    "CONFIG",
    "CURVE_JSON",
    "CURVE_PNG",
    "FILES",
    "MANIFEST",
    "METRICS",
    "METRICS_CSV",
    "METRICS_KEYS",
    "METRICS_MD",
    "RANKS",
    "RANK_IN_REFERENCE",
    "STAGE",
    "TABLE_STAGE",
    "EvalDir",
    "write_table",
]

METRICS = "metrics.json"
METRICS_CSV = "metrics.csv"
METRICS_MD = "metrics.md"
RANKS = "ranks.npy"
RANK_IN_REFERENCE = "rank_in_reference.npy"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
FILES = (METRICS, METRICS_CSV, METRICS_MD, RANKS, RANK_IN_REFERENCE, CONFIG)  # listed in the manifest
CURVE_PNG = "curve.png"
CURVE_JSON = "curve.json"
STAGE = "evaluate"  # the manifest's "stage" of an evaluation
TABLE_STAGE = "evaluate-table"  # ... of a table of evaluations

METRICS_KEYS = (
    "method",
    "encoder",
    "layer",
    "resolution",
    "n_samples",
    "sampler",
    "steps",
    "samples",
    "reference",
    "fid",
    "is",
    "rank",
    "faithfulness",
    "fd",
    "complete",
    "created",
)
_STAMPED = ("complete", "created")  # the writer's own keys


def _evaluate_hint(path: Path) -> str:
    return f"run `rcdm evaluate --samples SAMPLES --reference STORE --out {path}`"


class EvalDir:
    """One evaluation folder (the ``--out`` of ``rcdm evaluate``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"EvalDir({str(self.path)!r})"

    # ---- names
    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def csv_file(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def markdown_file(self) -> Path:
        return self.path / METRICS_MD

    @property
    def ranks_file(self) -> Path:
        return self.path / RANKS

    @property
    def rank_in_reference_file(self) -> Path:
        return self.path / RANK_IN_REFERENCE

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    # ---- writing
    def begin(self) -> None:
        """Make the folder and remove an old finished marker: no stale manifest while we work."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest.unlink(missing_ok=True)

    def write(
        self,
        metrics: dict,
        *,
        ranks: Any,
        rank_in_reference: Any,
        csv: str,
        markdown: str,
        config: Any,
        upstream: dict,
    ) -> Path:
        """Write every file, ``manifest.json`` last; returns ``metrics.json``.

        ``metrics``: the keys of :data:`METRICS_KEYS` but ``complete`` / ``created`` (set here);
        ``ranks (M,)`` int64, ``rank_in_reference (M,)`` bool; ``csv`` / ``markdown``: the rendered
        tables; ``config``: the resolved section; ``upstream``: the manifest's record of what was
        read (the sample set's and the reference's manifest sha256, the FID inputs)."""
        import numpy as np
        from rcdm.config import save_resolved

        want = [k for k in METRICS_KEYS if k not in _STAMPED]
        assert list(metrics) == want, f"metrics.json keys {list(metrics)} are not the schema's {want}"
        assert not {"stage", "files", "tool_version", "created"} & set(upstream), "the writer sets these"
        self.begin()
        np.save(self.ranks_file, ranks)  # (M,) int64
        np.save(self.rank_in_reference_file, rank_in_reference)  # (M,) bool: False = condition outside
        save_resolved(config, self.path, CONFIG)
        atomic_write_text(self.csv_file, csv)
        atomic_write_text(self.markdown_file, markdown)
        path = atomic_write_json(self.metrics_file, {**metrics, "complete": True, "created": now_iso()})
        record = {
            "stage": STAGE,
            **upstream,
            "files": list(FILES),
            "tool_version": tool_version(),
            "created": now_iso(),
        }
        atomic_write_json(self.manifest, record)
        return path

    # ---- reading
    def finished(self) -> bool:
        """Whether a finished evaluation is here (its manifest, of ``rcdm evaluate``, and metrics)."""
        return self._problem() is None

    def check(self) -> None:
        """Raise ``MissingInput`` (unfinished, or nothing here) or ``InvalidInput`` (another
        stage's folder, a metrics file not marked complete) unless :meth:`finished`."""
        problem = self._problem()
        if problem is not None:
            raise problem

    def metrics(self) -> dict:
        """``metrics.json`` of a finished evaluation (see :data:`METRICS_KEYS`); refused as
        :meth:`check` says otherwise."""
        self.check()
        return read_json(self.metrics_file)

    def manifest_sha256(self) -> str:
        self.check()
        return sha256_file(self.manifest)

    def _problem(self) -> Exception | None:
        """Why this is not a finished evaluation (None: it is one)."""
        if not self.manifest.is_file():
            return MissingInput(
                f"{self.path} is not a finished evaluation (no {MANIFEST}); {_evaluate_hint(self.path)} "
                f"first (an evaluation that stopped has no {MANIFEST}: run it again)"
            )
        manifest = _json_object(self.manifest)
        stage = manifest.get("stage") if manifest is not None else None
        if stage != STAGE:
            by = {TABLE_STAGE: "`rcdm evaluate --table` (a table of evaluations)"}.get(stage, f"`rcdm {stage}`")
            if not stage:
                by = "another stage (it names none: a feature store?)"
            return InvalidInput(
                f"{self.path} is not an evaluation folder: its {MANIFEST} was written by {by}, not by "
                "`rcdm evaluate`; give the --out folder of `rcdm evaluate`"
            )
        metrics = _json_object(self.metrics_file)
        if metrics is None or metrics.get("complete") is not True:
            return InvalidInput(
                f"{self.metrics_file} is missing, unreadable or not marked complete; {_evaluate_hint(self.path)} again"
            )
        return None


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is not one (cut short, another format)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_table(out: str | Path, *, csv: str, tables: dict, markdown: str, evaluations: dict) -> Path:
    """The folder of ``rcdm evaluate --table``: ``metrics.csv`` (one row per evaluation),
    ``metrics.json`` (``tables``), ``metrics.md``, then ``manifest.json`` (stage "evaluate-table",
    ``evaluations``: folder -> sha256 of its manifest). The old manifest goes first; returns ``metrics.md``."""
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / MANIFEST).unlink(missing_ok=True)
    atomic_write_text(o / METRICS_CSV, csv)
    atomic_write_json(o / METRICS, tables)
    md = atomic_write_text(o / METRICS_MD, markdown)
    atomic_write_json(o / MANIFEST, {"stage": TABLE_STAGE, "evaluations": evaluations, "created": now_iso()})
    return md
