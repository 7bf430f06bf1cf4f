"""The report's first section: what ``rcdm evaluate`` measured, beside the samples it measured.

Reads an evaluation folder's metrics (``rcdm.run.evaldir``) and the sample grids of the sample
directory it names, so the report shows the conditioning images next to their samples and says,
with the chance level computed, whether the samples are faithful to their representation. Then
what the evaluation measured beyond rank / MRR in the conditioning space (``metrics.json``'s
``faithfulness`` and ``fd`` blocks): second encoders' spaces, the pixel space, the retrieval
baseline, diversity, FD (:func:`faithfulness_tables`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rcdm.analysis.evaluation.tables import flat_row, table_1a
from rcdm.analysis.report import Entry, Figure, Table
from rcdm.errors import MissingInput
from rcdm.run.evaldir import EvalDir
from rcdm.run.sampleset import INDEX, grid_files
from rcdm.verdict import verdict as verdict_of
from rcdm.verdict import verdict_of_metrics

__all__ = ["add_faithfulness", "evaluation_entry", "faithfulness_tables", "verdict"]


def verdict(
    mean_rank: float,
    chance_rank: float,
    mrr: float,
    chance_mrr: float,
    n_reference: int | None = None,
    baseline: dict | None = None,
) -> str:
    """One sentence: the verdict on ``rcdm.verdict``'s fixed scale, beside chance (and the
    retrieval baseline when the evaluation reports one). The entry itself reads it from
    metrics.json with ``rcdm.verdict.verdict_of_metrics``."""
    return verdict_of(mean_rank, chance_rank, mrr, chance_mrr, n_reference, baseline).sentence


def evaluation_entry(eval_dir: str | Path, out: str | Path, index: int = 0) -> Entry | None:
    """An entry for one finished evaluation, or None when ``eval_dir`` has none (not run, or not
    finished); a folder of another stage is refused (``rcdm.run.evaldir``)."""
    eval_dir, out = Path(eval_dir), Path(out)
    evaluation = EvalDir(eval_dir)
    try:
        m = evaluation.metrics()
    except MissingInput:
        return None
    name = f"evaluation-{index}" if index else "evaluation"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    entry = Entry(
        experiment=name,
        title=f"Evaluation: {m.get('method', eval_dir.name)}",
        description=(
            "Samples from the representations of held-out images, and how faithful they are: "
            "each sample is re-encoded, and the rank of its conditioning image among all "
            f"{m.get('reference', {}).get('N', '?')} reference images by distance in representation "
            "space is reported (1 = the nearest). Chance is the rank of a random image."
        ),
        numbers=str(evaluation.metrics_file.resolve()),
    )
    rank = (m.get("rank") or {}).get("in_reference") or {}
    v = verdict_of_metrics(m)
    if v is not None:
        entry.summary = v.sentence + f" Sampler: {m.get('sampler')}."
        entry.tables.append(
            Table(
                title="Nearest-neighbour rank of the conditioning image (Table 1b)",
                columns=[
                    "encoder",
                    "samples",
                    "mean rank",
                    "chance mean rank",
                    "MRR",
                    "chance MRR",
                    "median rank",
                    "N",
                ],
                rows=[
                    [
                        f"{m.get('encoder')} ({m.get('layer')})",
                        rank["n"],
                        round(rank["mean_rank"], 2),
                        round(rank["chance_mean_rank"], 2),
                        round(rank["mrr"], 4),
                        round(rank["chance_mrr"], 4),
                        rank["median_rank"],
                        rank["N"],
                    ]
                ],
            )
        )
    fid = m.get("fid") or {}
    if fid.get("skipped"):
        entry.notes.append(f"FID and IS not computed ({fid.get('reason')}). {fid.get('how_to_enable', '')}")
    else:  # the same Table 1a row as metrics.md
        columns, rows = table_1a([flat_row(m)])
        entry.tables.append(Table(title="Image quality (Table 1a)", columns=columns, rows=rows))
    add_faithfulness(entry, m)  # second encoders' spaces, baseline, diversity, FD (issue 14)
    samples = Path((m.get("samples") or {}).get("path", ""))
    for grid in grid_files(samples)[:2]:
        dest = folder / grid.name
        shutil.copyfile(grid, dest)
        entry.figures.append(
            Figure(
                path=str(dest.relative_to(out)),
                title=grid.stem,
                caption=(
                    f"First column: conditioning image; then samples from its {m.get('encoder')} "
                    f"{m.get('layer')} representation (sampler {m.get('sampler')}, "
                    f"checkpoint {(m.get('samples') or {}).get('checkpoint')}, seeds in "
                    f"{samples / INDEX})."
                ),
            )
        )
    return entry


# ------------------------------------------------------- beyond rank / MRR in the conditioning space
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
