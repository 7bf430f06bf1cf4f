"""The report's first section: what ``rcdm evaluate`` measured, beside the samples it measured.

Reads ``<eval>/metrics.json`` (and the sample grids of the sample directory it names), so the
report shows the conditioning images next to their samples and says, with the chance level
computed, whether the samples are faithful to their representation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rcdm.analysis.faithfulness_entry import add_faithfulness
from rcdm.analysis.report import Entry, Figure, Table
from rcdm.analysis.tables import flat_row, table_1a
from rcdm.run.sampleset import INDEX, grid_files
from rcdm.verdict import verdict as verdict_of
from rcdm.verdict import verdict_of_metrics

__all__ = ["evaluation_entry", "verdict"]


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
    """An entry for one finished evaluation, or None when ``eval_dir`` has none."""
    eval_dir, out = Path(eval_dir), Path(out)
    if not (eval_dir / "manifest.json").exists() or not (eval_dir / "metrics.json").exists():
        return None
    m = json.loads((eval_dir / "metrics.json").read_text())
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
        numbers=str((eval_dir / "metrics.json").resolve()),
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
