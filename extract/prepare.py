"""What to do with the output directory: start, resume, stop (finished) or refuse a mismatch.

``extract.json`` (the run header) is written before the first shard. It records the settings the
shards are made with, so a re-run of the same command resumes and a different command is refused
instead of mixing features from two encoders in one store.

A store is only called finished when its shards are what its manifest records: a re-run hashes
the shards it would keep (:func:`damaged_shards`). A missing shard is redone; a damaged one is
refused unless ``--repair`` asks to re-encode it (:func:`after_damage`, :func:`drop`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from rcdm.errors import InvalidInput, OutputExists
from rcdm.run.lock import LOCK_FILE
from rcdm.store import bad_shards, completed_shards, read_manifest
from rcdm.store.format import MANIFEST, record_path
from rcdm.utils import atomic_write_json, read_json

HEADER = "extract.json"
# Files an extraction writes; --overwrite removes these and nothing else.
_OURS = re.compile(
    r"^(manifest\.json|extract\.json|config\.yaml|shard-\d+\.(h5|tar|json)|\.shard-\d+\.(h5|tar)\.tmp-\d+)$"
)
# Header fields that must agree for a resume; a difference needs --overwrite.
_MUST_MATCH = (
    "encoder",
    "weights_sha256",
    "layer",
    "preprocess",
    "format",
    "dtype",
    "shard_size",
    "include_images",
    "source_root",
    "n_items",
    "max_pixels",
    "decode",
    "draft",
)
_SHARD = re.compile(r"^shard-(\d+)\.(h5|tar)$")

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
        "max_pixels": cfg.max_pixels,
        "decode": cfg.decode,  # resolved (cpu | gpu): nvjpeg and libjpeg give different pixels
        "draft": bool(cfg.draft),  # PIL draft mode: the cpu path's JPEGs, and non-device JPEGs (CMYK) on gpu
    }


def check_out(out: Path) -> None:
    """``--out`` must name a folder (new, or a store to resume): refused before any work."""
    if out.exists() and not out.is_dir():
        raise OutputExists(
            f"--out {out} is a file, not a folder; pass a folder for the store (a new one, or an existing store to resume)"
        )
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputExists(
            f"--out {out}: {parent} is a file, not a folder, so it cannot hold the store; pass a folder path"
        )


def _describe(h: dict) -> str:
    sha = h.get("weights_sha256")
    pp = h.get("preprocess") or {}
    return (
        f"encoder {h.get('encoder')} layer {h.get('layer')} weights {sha[:12] + '...' if sha else 'none'}"
        f" (seed {h.get('seed')}), preprocess resize {pp.get('resize')} {pp.get('interpolation')} crop "
        f"{pp.get('crop')} range {pp.get('value_range')} mean {pp.get('mean')}, format {h.get('format')} "
        f"{h.get('dtype')}, shard_size {h.get('shard_size')}, images {h.get('include_images')}, "
        f"max_pixels {h.get('max_pixels')}, decode {h.get('decode')} (draft {h.get('draft')}), source {h.get('source_root')} ({h.get('n_items')} items)"
    )


def _normal(v):
    return json.loads(json.dumps(v))  # tuples -> lists, so headers compare as JSON


def decide(out: Path, header: dict, overwrite: bool) -> tuple[Action, bool]:
    """(action, clear_first). Raises on a mismatch without ``overwrite`` (nothing is touched).
    ``out`` has passed :func:`check_out` (a folder or nothing yet), before any work."""
    if not out.is_dir():
        return "start", False
    if not (out / HEADER).is_file():
        return _without_header(out, overwrite)
    existing = read_json(out / HEADER)
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
    if not (out / MANIFEST).is_file():
        return "resume", False
    try:
        read_manifest(out)  # only the current format is read: another one is replaced (--overwrite) or refused
    except InvalidInput:
        if not overwrite:
            raise
        return "start", True
    return "finished", False


def _without_header(out: Path, overwrite: bool) -> tuple[Action, bool]:
    """A folder without ``extract.json``: empty, or the files of no store this rcdm can resume.
    A finished store without it was not written by `rcdm extract`, and someone else's files are
    never touched."""
    if (out / MANIFEST).is_file() and not overwrite:
        raise OutputExists(
            f"store {out} has no {HEADER} (it was not written by `rcdm extract`), so its settings cannot be "
            "compared with this run's; pass --overwrite to replace it, or choose another --out"
        )
    foreign = [p.name for p in out.iterdir() if not _OURS.match(p.name) and p.name != LOCK_FILE]
    if foreign:
        raise OutputExists(
            f"output {out} is not empty and is not a feature store (it holds {', '.join(sorted(foreign)[:3])}); "
            "choose another --out or an empty directory"
        )
    return "start", any(out.iterdir())


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


def damaged_shards(out: Path) -> dict[str, str]:
    """``{file: problem}`` of the shards a re-run would keep that are not as recorded (streamed
    sha256): a finished store's against its manifest, an unfinished one's against their records."""
    if (out / MANIFEST).is_file():
        return bad_shards(out, read_manifest(out)["shards"])
    return bad_shards(out, list(completed_shards(out).values()))


def after_damage(out: Path, action: Action, damaged: dict[str, str], repair: bool) -> Action:
    """The action once ``damaged`` is known: missing shards are redone; damaged ones only with
    ``repair`` (else refused, naming them and the fix)."""
    if not damaged:
        return action
    bad = {f: p for f, p in damaged.items() if p != "is missing"}
    if bad and not repair:
        state = "reads as finished" if action == "finished" else "is unfinished"
        listed = "; ".join(f"{f} {p}" for f, p in sorted(bad.items())[:3]) + (" ..." if len(bad) > 3 else "")
        raise InvalidInput(
            f"store {out} {state}, but {len(bad)} shard(s) are not what it records: {listed}. Re-run the "
            "same command with --repair to re-encode just those shards (every other shard is kept), "
            "or delete them and re-run it"
        )
    return "resume"


def drop(out: Path, files: list[str]) -> None:
    """Remove these shards (file and record) and the manifest: the store is unfinished again."""
    (out / MANIFEST).unlink(missing_ok=True)
    for name in files:
        m = _SHARD.match(name)
        (out / name).unlink(missing_ok=True)
        if m:
            record_path(out, int(m.group(1))).unlink(missing_ok=True)
