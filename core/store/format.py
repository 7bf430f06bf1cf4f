"""The feature store's on-disk format: names, versions and the webdataset member layout.

The contract between stage 1 (extract) and every later stage; every module of
:mod:`rcdm.store` takes its file names and constants from here.

A store is a directory for one (encoder, layer, dataset split)::

    manifest.json          written last: the "finished" marker (see ``build_manifest``)
    shard-NNNNN.h5         feat [n, V, D] float16, key [n] utf-8, label [n] int64   (default)
    shard-NNNNN.tar        webdataset: <key>.feat.npy [V, D], <key>.cls, optional <key>.jpg
    shard-NNNNN.json       the shard's record (file, rows, sha256, first_item, failed)
    config.yaml            the resolved extract config

A ``tokens`` store (a ViT's patch grid, ``extract.layer: tokens``) keeps the same shard layout with
each view's T x D grid stored flat (``D = T * token dim``, row-major over the grid, float16 by
default); the manifest's ``tokens`` field records ``grid`` [rows, columns], ``count`` T and ``dim``
(see :func:`token_layout`). View 1 is the grid of the horizontally flipped input, so its token
(r, c) covers the pixels of view 0's token (r, columns - 1 - c).

Shards are written under a temporary name and renamed when complete; the record is written after
the rename, so a record always names a complete shard. View 0 is the encoder input, view 1 the
same input flipped horizontally (training picks the view matching its flip).
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from rcdm.errors import InvalidInput
from rcdm.utils import inside, tool_version

__all__ = [
    "CLS",
    "FEAT",
    "FORMATS",
    "FORMAT_VERSION",
    "JPG",
    "MANIFEST",
    "MANIFEST_FIELDS",
    "SHARD_FIELDS",
    "SHARD_FILE_RE",
    "SHARD_RECORD_RE",
    "VIEWS",
    "index_tar",
    "parse_member",
    "read_at",
    "record_path",
    "shard_file",
    "shard_name",
    "token_layout",
    "tool_version",
]

FORMAT_VERSION = 2  # 2: the manifest carries the checksum of its fields; the source its class map
MANIFEST = "manifest.json"  # written last: the store is finished
# What a manifest of this format holds (rcdm.store.write.build_manifest writes all of it), and each of
# its ``shards`` entries; rcdm.store.read.read_manifest refuses a manifest that lacks any.
MANIFEST_FIELDS = (
    "format_version",
    "encoder",
    "layer",
    "dim",
    "tokens",
    "preprocess",
    "views",
    "dtype",
    "format",
    "has_images",
    "source",
    "rows",
    "n_failed",
    "failed",
    "shards",
    "tool",
    "created",
    "extract_config",
    "checksum",
)
SHARD_FIELDS = ("file", "rows", "sha256", "first_item")
VIEWS = ["orig", "hflip"]  # view 0: encoder input; view 1: the same input flipped horizontally
FORMATS = ("h5", "wds")
_EXT = {"h5": "h5", "wds": "tar"}
SHARD_RECORD_RE = re.compile(r"^shard-(\d{5,})\.json$")
SHARD_FILE_RE = re.compile(r"^shard-(\d{5,})\.(h5|tar)$")  # a shard's own file name
# webdataset member suffixes we write; parsed by suffix so keys may contain dots.
FEAT, CLS, JPG = "feat.npy", "cls", "jpg"


def token_layout(tokens: dict | None, dim: int) -> dict | None:
    """The manifest's ``tokens`` field, checked against the stored vector length ``dim``
    (None: a store of one vector per view)."""
    if not tokens:
        return None
    grid = [int(v) for v in tokens["grid"]]
    count, tdim = int(tokens.get("count", grid[0] * grid[1])), int(tokens["dim"])
    if count != grid[0] * grid[1] or count * tdim != int(dim):
        raise InvalidInput(f"the store's token layout {tokens} does not match its {dim}-d rows; re-extract the store")
    return {**tokens, "grid": grid, "count": count, "dim": tdim}


def shard_name(index: int, fmt: str = "h5") -> str:
    if fmt not in FORMATS:
        raise InvalidInput(f"store format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    return f"shard-{index:05d}.{_EXT[fmt]}"


def shard_file(store: Path, name: str, fmt: str, what: str, fix: str) -> Path:
    """The shard file ``name`` of the store at ``store``, as a manifest or a record names it: one of
    this store's shard names (``shard-NNNNN.h5`` / ``.tar``) inside the folder, else ``InvalidInput``
    naming ``what`` and ``fix`` (a name read from a file never leads elsewhere)."""
    if not isinstance(name, str) or not SHARD_FILE_RE.match(name) or not name.endswith("." + _EXT.get(fmt, "?")):
        raise InvalidInput(f"{what} is {name!r}, not the name of one of this store's {fmt} shards; {fix}")
    return inside(store, name, what, fix)


def record_path(store_dir: Path, index: int) -> Path:
    """The json record written beside shard ``index`` once it is complete."""
    return Path(store_dir) / f"shard-{index:05d}.json"


def parse_member(name: str) -> tuple[str, str] | None:
    """``(key, suffix)`` of a webdataset member name, or None for a member we do not write."""
    for suffix in (FEAT, CLS, JPG):
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    return None


def index_tar(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {suffix: (offset, size)})] in tar order, without reading the payloads."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    with tarfile.open(path, "r:") as tf:
        for ti in tf:
            if not ti.isfile():
                continue
            parsed = parse_member(ti.name)
            if parsed is None:
                raise InvalidInput(f"{path}: unexpected member {ti.name!r} (not feat.npy, cls or jpg)")
            key, suffix = parsed
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][suffix] = (ti.offset_data, ti.size)
    return samples


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
