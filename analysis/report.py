"""The analysis report: one self-contained ``report.html`` with a section per experiment.

Each experiment returns an :class:`Entry` (figures with captions, tables of its numbers, the path
of its JSON, or the reason it was skipped). Figures are embedded as base64 PNG, so the page opens
from anywhere with no other file; figures of one entry sit side by side (one per checkpoint or
encoder), which is how encoders are compared.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rcdm.errors import MissingInput
from rcdm.utils import atomic_write_json, atomic_write_text, now_iso

__all__ = ["Figure", "Table", "Entry", "write_entry", "read_entry", "render", "write_report"]


@dataclass
class Figure:
    path: str  # PNG path relative to the analysis folder
    caption: str  # states encoder, layer, checkpoint, sampler, steps and seeds
    title: str = ""  # short label shown above the figure (e.g. the checkpoint)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Entry:
    experiment: str  # the experiment name, e.g. "invariance"
    title: str  # e.g. "Invariance (Fig. 3, 25)"
    description: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    numbers: str | None = None  # JSON of the numbers, relative to the analysis folder
    skipped: str | None = None  # why the experiment did not run (no fake figure instead)
    notes: list[str] = field(default_factory=list)
    summary: str = ""  # the one-line result, shown in bold under the description

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Entry:
        d = dict(d)
        d["figures"] = [Figure(**f) for f in d.get("figures", [])]
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        return cls(**d)


def write_entry(out_dir: str | Path, entry: Entry) -> Path:
    """``<out>/<experiment>/entry.json``: the report entry, so the report can be rebuilt."""
    return atomic_write_json(Path(out_dir) / entry.experiment / "entry.json", entry.to_dict())


def read_entry(path: str | Path) -> Entry:
    return Entry.from_dict(json.loads(Path(path).read_text()))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1400px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.5em; }
.figs { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
/* A figure is as wide as its image (shown at a whole factor, never squeezed: the labels drawn in
   it stay as laid out), at least 24em so its caption reads; side by side when they fit. */
figure { margin: 0; width: min-content; min-width: min(24em, 100%); max-width: 100%; }
figure img { max-width: none; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
.ftitle { font-weight: 600; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.skipped { background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.5em 1em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; max-height: 30em; }
.meta { font-size: 0.85em; color: #555; }
.summary { font-weight: bold; }
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _img_tag(png: Path, alt: str) -> str:
    if not png.is_file():
        raise MissingInput(f"report figure {png} is missing; the experiment did not write it")
    raw = png.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    # Small figures (32 px samples) are shown enlarged by a whole factor, pixels kept sharp; a
    # figure is never shown smaller than it was drawn (its labels would be squeezed).
    width = _png_width(raw)
    scale = max(1, min(4, 480 // width)) if width else 1
    size = f' width="{width * scale}"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{size} alt="{html.escape(alt, quote=True)}">'


def _png_width(raw: bytes) -> int | None:
    """Width from the PNG header (IHDR), without decoding the image."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or len(raw) < 24:
        return None
    return int.from_bytes(raw[16:20], "big")


def breakable(text: str) -> str:
    """HTML-escaped ``text`` that may wrap after "/" or "_" (long keys such as
    ``n01440764/n01440764_10026``) as well as at spaces, never inside a word."""
    return "".join(html.escape(c) + ("<wbr>" if c in "/_" else "") for c in text)


def _entry_html(entry: Entry, root: Path) -> str:
    e = html.escape
    parts = [f'<section id="{e(entry.experiment)}"><h2>{e(entry.title)}</h2>']
    if entry.description:
        parts.append(f"<p>{e(entry.description)}</p>")
    if entry.summary:
        parts.append(f'<p class="summary">{e(entry.summary)}</p>')
    if entry.skipped:
        parts.append(f'<p class="skipped">Skipped: {e(entry.skipped)}</p>')
    for note in entry.notes:
        parts.append(f'<p class="meta">{e(note)}</p>')
    if entry.figures:
        parts.append('<div class="figs">')
        for fig in entry.figures:
            title = f'<div class="ftitle">{breakable(fig.title)}</div>' if fig.title else ""
            parts.append(
                f"<figure>{title}{_img_tag(root / fig.path, fig.title or fig.path)}"
                f"<figcaption>{e(fig.caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    for t in entry.tables:
        head = "".join(f"<th>{e(str(c))}</th>" for c in t.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>" for row in t.rows)
        parts.append(f"<h3>{e(t.title)}</h3><table><tr>{head}</tr>{body}</table>")
    if entry.numbers and (root / entry.numbers).is_file():
        text = (root / entry.numbers).read_text()
        parts.append(f"<details><summary>numbers ({e(entry.numbers)})</summary><pre>{e(text)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def render(entries: list[Entry], root: str | Path, meta: dict | None = None) -> str:
    """The whole page as a string (figures read from ``root`` and embedded)."""
    root = Path(root)
    meta = meta or {}
    e = html.escape
    toc = "".join(
        f'<li><a href="#{e(x.experiment)}">{e(x.title)}</a>{" (skipped)" if x.skipped else ""}</li>' for x in entries
    )
    meta_rows = "".join(
        f"<tr><td>{e(str(k))}</td><td>{e(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
        for k, v in meta.items()
    )
    body = "\n".join(_entry_html(x, root) for x in entries)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>rcdm analysis</title>"
        # An empty inline icon: the browser would otherwise request /favicon.ico and log a 404.
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body>\n"
        "<h1>RCDM analysis: what does the representation keep?</h1>\n"
        f'<table class="meta">{meta_rows}</table>\n<ul>{toc}</ul>\n{body}\n</body></html>\n'
    )


def write_report(out_dir: str | Path, entries: list[Entry], meta: dict | None = None) -> Path:
    """Write ``<out>/report.html`` atomically and return its path."""
    out = Path(out_dir)
    meta = {"created": now_iso(), **(meta or {})}
    return atomic_write_text(out / "report.html", render(entries, out, meta))
