"""The report's tables for what ``rcdm evaluate`` measured beyond rank / MRR in the conditioning
space (``metrics.json``'s ``faithfulness`` and ``fd`` blocks): one self-contained function that
adds them to the evaluation entry."""

from __future__ import annotations

from typing import Any

from rcdm.analysis.report import Entry, Table

__all__ = ["add_faithfulness", "faithfulness_tables"]


def _r(v: Any, nd: int = 3) -> Any:
    return None if v is None else round(float(v), nd)


def _vs(v: Any, chance: Any, nd: int = 3) -> str:
    """'value (chance)'."""
    if v is None:
        return "-"
    return f"{_r(v, nd)} ({_r(chance, nd)})" if chance is not None else str(_r(v, nd))


def faithfulness_tables(m: dict) -> tuple[list[Table], list[str]]:
    """Tables and notes from one evaluation's metrics.json."""
    f = m.get("faithfulness") or {}
    tables, notes = [], list(f.get("notes") or [])
    spaces = f.get("spaces") or []
    if spaces:
        rows = []
        for s in spaces:
            b = s.get("baseline") or {}
            rows.append(
                [
                    s["space"],
                    f"{s.get('encoder')} ({s.get('layer')})",
                    s.get("n"),
                    _vs(s.get("mean_rank"), s.get("chance_mean_rank"), 2),
                    _vs(s.get("mrr"), s.get("chance_mrr")),
                    _vs(s.get("top1"), s.get("chance_top1")),
                    _vs(s.get("top5"), s.get("chance_top5")),
                    _vs(s.get("cosine"), s.get("chance_cosine")),
                    _r(b.get("mean_rank"), 2),
                    _r(b.get("top1")),
                    _r(b.get("cosine")),
                ]
            )
        tables.append(
            Table(
                title="Faithfulness in each encoder's space: samples (chance in brackets) and the retrieval baseline",
                columns=[
                    "space",
                    "encoder",
                    "samples",
                    "mean rank",
                    "MRR",
                    "top-1",
                    "top-5",
                    "cosine",
                    "baseline mean rank",
                    "baseline top-1",
                    "baseline cosine",
                ],
                rows=rows,
            )
        )
        rb = f.get("retrieval_baseline")
        if rb:
            notes.append(
                f"Retrieval baseline: for each condition, the nearest of the {rb['N_train']} training images "
                f"({rb['train_store']}) in the conditioning space is used as the sample; mean distance "
                f"{rb['mean_distance_condition_to_nearest_train']:.4g}. Generation is faithful beyond retrieval "
                "where the samples' numbers beat the baseline's."
            )
        drows = [
            [
                s["space"],
                f"{s.get('encoder')} ({s.get('layer')})",
                _r(s["diversity"].get("samples_per_condition"), 4),
                _r(s["diversity"].get("random_reference_pairs"), 4),
                _r(s["diversity"].get("ratio")),
            ]
            for s in spaces
            if s["space"] != "pixels"
        ]  # pixels: the row below
        px = f.get("pixel_diversity") or {}
        drows.append(
            [
                "pixels",
                "[0, 1] RGB",
                _r(px.get("samples_per_condition"), 4),
                _r(px.get("random_reference_pairs"), 4),
                _r(px.get("ratio")),
            ]
        )
        tables.append(
            Table(
                title="Diversity for a fixed h: mean pairwise distance of one condition's samples vs random reference pairs",
                columns=["space", "encoder", "samples of one condition", "random reference pairs", "ratio"],
                rows=drows,
            )
        )
    fd = m.get("fd") or {}
    done = {k: v for k, v in fd.items() if not v.get("skipped")}
    if done:
        tables.append(
            Table(
                title="Frechet distance and precision / recall in other feature spaces",
                columns=["extractor", "FD", "precision", "recall", "k", "reference images"],
                rows=[
                    [k, _r(v["fd"], 2), _r(v["precision"]), _r(v["recall"]), v["k"], v["n_reference"]]
                    for k, v in done.items()
                ],
            )
        )
    for k, v in fd.items():
        if v.get("skipped"):
            notes.append(f"FD / precision-recall ({k}) not computed ({v.get('reason')}). {v.get('how_to_enable', '')}")
    return tables, notes


def add_faithfulness(entry: Entry, m: dict) -> Entry:
    tables, notes = faithfulness_tables(m)
    entry.tables.extend(tables)
    entry.notes.extend(notes)
    return entry
