"""The paper's Table 1 from metrics.json: one evaluation's metrics.csv / .md, and Table 1a / 1b
over several (``rcdm evaluate --table``).

Table 1a (image quality): method, resolution, FID, IS. Table 1b (faithfulness to the
representation): encoder, mean rank, MRR. Every row also carries the sample count, sampler and
steps, so numbers computed differently never sit side by side unlabelled. The folders are read and
written by ``rcdm.run.evaldir``; this module renders the tables.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rcdm.errors import InvalidInput
from rcdm.run.evaldir import EvalDir, write_table

COLUMNS = [
    "run",
    "method",
    "encoder",
    "layer",
    "resolution",
    "n_samples",
    "sampler",
    "steps",
    "fid",
    "is_mean",
    "is_std",
    "is_splits",
    "mean_rank",
    "mrr",
    "median_rank",
    "n_in_reference",
    "N",
    "chance_mean_rank",
    "chance_mrr",
    "n_outside",
    "outside_mean_rank",
    "outside_mrr",
    "samples",
]


def flat_row(m: dict, run: str | None = None) -> dict:
    """One evaluation's metrics.json -> one CSV row (None where a metric was skipped); ``run``
    names the row (the evaluation's folder, or a label)."""
    fid, is_, rank = m.get("fid", {}), m.get("is", {}), m.get("rank", {})
    inr, outr = rank.get("in_reference", {}), rank.get("outside_reference", {})
    return {
        "run": run or m.get("label") or (m.get("samples") or {}).get("path"),
        "method": m.get("method"),
        "encoder": m.get("encoder"),
        "layer": m.get("layer"),
        "resolution": m.get("resolution"),
        "n_samples": m.get("n_samples"),
        "sampler": m.get("sampler"),
        "steps": m.get("steps"),
        "fid": fid.get("value"),
        "is_mean": is_.get("mean"),
        "is_std": is_.get("std"),
        "is_splits": is_.get("splits"),
        "mean_rank": inr.get("mean_rank"),
        "mrr": inr.get("mrr"),
        "median_rank": inr.get("median_rank"),
        "n_in_reference": inr.get("n"),
        "N": inr.get("N"),
        "chance_mean_rank": inr.get("chance_mean_rank"),
        "chance_mrr": inr.get("chance_mrr"),
        "n_outside": outr.get("n"),
        "outside_mean_rank": outr.get("mean_rank"),
        "outside_mrr": outr.get("mrr"),
        "samples": (m.get("samples") or {}).get("path"),
    }


def _f(x, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _is(r: dict) -> str:
    return "—" if r["is_mean"] is None else f"{r['is_mean']:.2f} ± {r['is_std']:.2f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table_1a(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "method", "resolution", "FID", "IS", "samples", "sampler", "steps"]
    body = [
        [r.get("run"), r["method"], r["resolution"], _f(r["fid"]), _is(r), r["n_samples"], r["sampler"], r["steps"]]
        for r in rows
    ]
    return header, body


def table_1b(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [
        "run",
        "encoder",
        "mean rank",
        "MRR",
        "median rank",
        "N",
        "chance rank / MRR",
        "samples",
        "sampler",
        "steps",
    ]
    body = [
        [
            r.get("run"),
            f"{r['encoder']} ({r['layer']})",
            _f(r["mean_rank"], ".1f"),
            _f(r["mrr"], ".3f"),
            _f(r["median_rank"], ".1f"),
            r["N"],
            f"{_f(r['chance_mean_rank'], '.1f')} / {_f(r['chance_mrr'], '.4f')}",
            r["n_in_reference"],
            r["sampler"],
            r["steps"],
        ]
        for r in rows
    ]
    return header, body


def _skips(m: dict) -> list[str]:
    notes = []
    fid, is_ = m.get("fid", {}), m.get("is", {})
    if fid.get("skipped") and is_.get("skipped") and fid.get("reason") == is_.get("reason"):
        notes.append(f"- FID and IS skipped ({fid['reason']}): {fid.get('how_to_enable')}")
    else:
        for name, s in (("FID", fid), ("IS", is_)):
            if s.get("skipped"):
                notes.append(f"- {name} skipped ({s.get('reason')}): {s.get('how_to_enable')}")
    out = m.get("rank", {}).get("outside_reference", {})
    if out.get("n"):
        notes.append(
            f"- {out['n']} sample(s) conditioned outside the reference set: mean rank "
            f"{_f(out['mean_rank'], '.1f')}, MRR {_f(out['mrr'], '.3f')} among N+1 = {out['N']}"
        )
    return notes


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    return buf.getvalue()


def render_markdown(metrics_list: list[dict], title: str, runs: list[str] | None = None) -> str:
    runs = runs or [flat_row(m)["run"] for m in metrics_list]
    rows = [flat_row(m, r) for m, r in zip(metrics_list, runs, strict=True)]
    parts = [
        f"# {title}",
        "",
        "## Table 1a: image quality",
        "",
        _md_table(*table_1a(rows)),
        "",
        "## Table 1b: nearest-neighbour rank of the conditioning image",
        "",
        _md_table(*table_1b(rows)),
        "",
    ]
    notes: dict[str, list[str]] = {}  # each note once, with the runs it is about
    for m, run in zip(metrics_list, runs, strict=True):
        for n in _skips(m):
            notes.setdefault(n, []).append(str(run))
    if notes:
        lines = [
            n if len(who) == len(runs) else f"{n} (run{'s' if len(who) > 1 else ''} {', '.join(who)})"
            for n, who in notes.items()
        ]
        parts += ["## Notes", "", *lines, ""]
    return "\n".join(parts)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Short distinct names for evaluation folders: the folder's name, with as many parent
    folders as it takes to tell them apart ("dino", "simclr"; "a/eval", "b/eval")."""
    paths = [Path(d).resolve() for d in run_dirs]
    distinct = set(paths)

    def label(p: Path) -> str:
        depth = 1
        while depth < len(p.parts) and any(q != p and q.parts[-depth:] == p.parts[-depth:] for q in distinct):
            depth += 1
        return "/".join(p.parts[-depth:])

    labels = [label(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:  # the same folder given twice: number the repeats
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def metrics_csv(metrics: dict, run: str) -> str:
    """One evaluation's metrics.csv: the header and its row, named ``run``."""
    return _csv([flat_row(metrics, run)])


def metrics_markdown(metrics: dict, run: str) -> str:
    """One evaluation's metrics.md: Table 1a / 1b and the notes."""
    return render_markdown([metrics], f"Evaluation of {metrics['samples']['path']}", [run])


def table(run_dirs: list[str], out: str) -> Path:
    """Assemble finished evaluations into Table 1a / 1b: metrics.md, .csv, .json; returns .md."""
    if not run_dirs:
        raise InvalidInput("--table needs at least one evaluation directory (the --out of `rcdm evaluate`)")
    folders = [EvalDir(d) for d in run_dirs]
    metrics_list = [f.metrics() for f in folders]  # each a finished evaluation, or refused saying why
    shas = {str(f.path): f.manifest_sha256() for f in folders}
    labels = run_labels([Path(d) for d in run_dirs])
    rows = [flat_row(m, lab) for m, lab in zip(metrics_list, labels, strict=True)]
    h1a, b1a = table_1a(rows)
    h1b, b1b = table_1b(rows)
    return write_table(
        out,
        csv=_csv(rows),
        tables={
            "table_1a": [dict(zip(h1a, r, strict=True)) for r in b1a],
            "table_1b": [dict(zip(h1b, r, strict=True)) for r in b1b],
            "rows": rows,
        },
        markdown=render_markdown(metrics_list, "RCDM evaluation: Table 1", labels),
        evaluations=shas,
    )
