"""What to do with the output directory: start, resume, stop (finished) or refuse a mismatch.

``extract.json`` (the run header) is written before the first shard. It records the settings the
shards are made with, so a re-run of the same command resumes and a different command is refused
instead of mixing features from two encoders in one store.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from rcdm.errors import InvalidInput, OutputExists
from rcdm.store.format import MANIFEST
from rcdm.utils import atomic_write_json, read_json

HEADER = "extract.json"
# Files an extraction writes; --overwrite removes these and nothing else.
_OURS = re.compile(r"^(manifest\.json|extract\.json|config\.yaml|shard-\d+\.(h5|tar|json)|\.shard-\d+\.(h5|tar)\.tmp-\d+)$")
# Header fields that must agree for a resume; a difference needs --overwrite.
_MUST_MATCH = ("encoder", "weights_sha256", "layer", "preprocess", "format", "dtype", "shard_size", "include_images", "source_root", "n_items")

Action = Literal["start", "resume", "finished"]


def _abs(root: str | None) -> str | None:
    """The same source named by a relative or an absolute path is the same source."""
    return os.path.abspath(root) if root else root


def make_header(encoder_info: dict, preprocess: dict, source: dict, cfg) -> dict:
    return {
        "encoder": encoder_info.get("name"),
        "weights_sha256": encoder_info.get("weights_sha256"),
        "seed": encoder_info.get("seed"),
        "layer": encoder_info.get("layer"),
        "preprocess": {k: preprocess[k] for k in ("resize", "crop", "interpolation", "value_range", "mean", "std")},
        "format": cfg.format,
        "dtype": cfg.dtype,
        "shard_size": cfg.shard_size,
        "include_images": bool(cfg.include_images),
        "source_root": _abs(source.get("root")),
        "n_items": source.get("n_items"),
    }


def _describe(h: dict) -> str:
    sha = h.get("weights_sha256")
    pp = h.get("preprocess") or {}
    return (
        f"encoder {h.get('encoder')} layer {h.get('layer')} weights {sha[:12] + '...' if sha else 'none'}"
        f" (seed {h.get('seed')}), preprocess resize {pp.get('resize')} {pp.get('interpolation')} crop "
        f"{pp.get('crop')} range {pp.get('value_range')} mean {pp.get('mean')}, format {h.get('format')} "
        f"{h.get('dtype')}, shard_size {h.get('shard_size')}, images {h.get('include_images')}, "
        f"source {h.get('source_root')} ({h.get('n_items')} items)"
    )


def _existing_header(out: Path) -> dict | None:
    if (out / HEADER).is_file():
        return read_json(out / HEADER)
    if (out / MANIFEST).is_file():  # a store made without a header (e.g. by hand): rebuild one
        m = read_json(out / MANIFEST)
        cfg = m.get("extract_config", {})
        enc = m.get("encoder", {})
        return {
            "encoder": enc.get("name"),
            "weights_sha256": enc.get("weights_sha256"),
            "seed": enc.get("seed"),
            "layer": m.get("layer"),
            "preprocess": {k: m.get("preprocess", {}).get(k) for k in ("resize", "crop", "interpolation", "value_range", "mean", "std")},
            "format": m.get("format"),
            "dtype": m.get("dtype"),
            "shard_size": cfg.get("shard_size"),
            "include_images": m.get("has_images", False),
            "source_root": _abs(m.get("source", {}).get("root")),
            "n_items": m.get("source", {}).get("n_items"),
        }
    return None


def _normal(v):
    return json.loads(json.dumps(v))  # tuples -> lists, so headers compare as JSON


def decide(out: Path, header: dict, overwrite: bool) -> tuple[Action, bool]:
    """(action, clear_first). Raises on a mismatch without ``overwrite`` (nothing is touched)."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"output {out} exists and is a file; --out must name a directory")
    existing = _existing_header(out) if out.is_dir() else None
    if existing is None:
        foreign = [p.name for p in out.iterdir() if not _OURS.match(p.name)] if out.is_dir() else []
        if foreign:
            raise OutputExists(
                f"output {out} is not empty and is not a feature store (it holds {', '.join(sorted(foreign)[:3])}); "
                "choose another --out or an empty directory"
            )
        return "start", bool(out.is_dir() and any(out.iterdir()))
    mine, theirs = _normal(header), _normal(existing)
    diff = [k for k in _MUST_MATCH if mine.get(k) != theirs.get(k)]
    if header.get("weights_sha256") is None and mine.get("seed") != theirs.get("seed"):
        diff.append("seed")  # random-rn50: the seed is the weights
    if diff:
        if not overwrite:
            raise InvalidInput(
                f"store {out} already exists with different {', '.join(diff)}:\n"
                f"  existing: {_describe(existing)}\n"
                f"  this run: {_describe(header)}\n"
                "pass --overwrite to replace it, or choose another --out"
            )
        return "start", True
    if (out / MANIFEST).is_file():
        return "finished", False
    return "resume", False


def clear(out: Path) -> None:
    """Remove the files of a previous extraction (and only those)."""
    for p in out.iterdir():
        if _OURS.match(p.name) and p.is_file():
            p.unlink()


def clear_temp(out: Path) -> None:
    """Remove half-written shards left by a killed run (their shards are redone)."""
    for p in out.glob(".shard-*.tmp-*"):
        p.unlink(missing_ok=True)


def write_header(out: Path, header: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / HEADER, header)
