"""The sample set: the folder ``rcdm sample`` writes and ``rcdm evaluate`` / ``rcdm analyze`` read.

This module is the one owner of the format: the file names, the index row, one writer
(:class:`SampleSetWriter`) and one reader (:func:`read_samples`). Layout, format_version 2:

    manifest.json    written last, the finished marker: format_version, n_samples, n_conditions,
                     image_size, files {name: sha256} and what the sampler records (checkpoint,
                     store, seed, fingerprint, ...; ``sampler``: the spec, ``Sampler.to_dict()``)
    samples.npz      arr_0 (N, H, W, 3) uint8 (guided-diffusion's convention)
    index.jsonl      one JSON line per sample: the IndexRow fields, then the condition's extras
    conds.npy        (C, D) float32, one conditioning vector per condition (row field `condition`)
    grid-NNN.png, interpolation.png    the sampler's pictures (named here so readers find them)
    partial/         while sampling: plan.json and chunk-NNNNN.npy, removed once finished
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from rcdm.config import Sampler
from rcdm.errors import InvalidInput, MissingInput, UserError
from rcdm.utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    checksum_problem,
    inside,
    now_iso,
    read_json,
    sha256_file,
    tool_version,
    with_checksum,
)

__all__ = [
    "CONDS",
    "DATA_FILES",
    "FORMAT_VERSION",
    "INDEX",
    "INDEX_FIELDS",
    "MANIFEST",
    "SAMPLES",
    "STRIP",
    "Chunks",
    "IndexRow",
    "SampleSet",
    "SampleSetWriter",
    "assign_seeds",
    "grid_files",
    "grid_name",
    "read_samples",
    "write_sample_set",
]

FORMAT_VERSION = 2  # 2: the sampler recorded whole (rcdm.config.Sampler.to_dict()); a checksum of the manifest
MANIFEST = "manifest.json"
SAMPLES = "samples.npz"
INDEX = "index.jsonl"
CONDS = "conds.npy"
DATA_FILES = (SAMPLES, INDEX, CONDS)
STRIP = "interpolation.png"
PARTIAL = "partial"
_GRID_GLOB = "grid-*.png"


def _rerun(d: Path) -> str:
    return f"write it again with `rcdm sample --out {d} --set sample.overwrite=true`"


def grid_name(page: int) -> str:
    return f"grid-{page:03d}.png"


def grid_files(path: str | Path) -> list[Path]:
    """The grid pictures of a sample directory, in page order."""
    return sorted(Path(path).glob(_GRID_GLOB))


def assign_seeds(n_conditions: int, k: int, seed: int, fixed_noise_groups: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sample s = c * k + j is the j-th sample of condition c.

    Returns ``(cond_index (S,), seeds (S,))``. Seeds are ``seed + s`` (every sample its own), or
    ``seed + j`` with fixed noise across an interpolation path, so column j of the path shares
    its initial noise and every step's noise.
    """
    s = np.arange(n_conditions * k, dtype=np.int64)
    cond_index = s // k
    seeds = seed + (s % k if fixed_noise_groups else s)
    return cond_index, seeds


# ---------------------------------------------------------------------------------- index row
@dataclass(frozen=True, kw_only=True)
class IndexRow:
    """One line of index.jsonl: the fields below in this order, then ``extra`` (the condition's
    own details: alpha and endpoints of an interpolation, a KDE centre, manipulated dims)."""

    sample: int  # position in samples.npz
    condition: int  # row of conds.npy
    key: str | None  # store key, image path, or a made-up name ("class:3", "kde:0")
    description: str = ""
    kind: str  # store | image | interpolate | class-mean | kde | algebra | manipulate[-original]
    seed: int  # the sample's noise seed: it depends on (condition vector, seed) only
    label: int = -1  # class label (-1: unknown)
    store_index: int | None = None  # row of the conditions' store, when the condition is one
    sample_of_condition: int = 0  # j in s = c * k + j
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {f: getattr(self, f) for f in INDEX_FIELDS}
        clash = sorted(set(d) & set(self.extra))
        if clash:
            raise ValueError(f"index row extras {clash} would overwrite the row's own fields")
        return {**d, **self.extra}

    @classmethod
    def from_json(cls, d: dict, where: str = "index row", fix: str = "") -> IndexRow:
        missing = [f for f in INDEX_FIELDS if f not in d]
        if missing:
            raise InvalidInput(f"{where} has no {', '.join(missing)} (an index row has {', '.join(INDEX_FIELDS)}){fix}")
        extra = {k: v for k, v in d.items() if k not in INDEX_FIELDS}
        return cls(**{f: d[f] for f in INDEX_FIELDS}, extra=extra)


INDEX_FIELDS = tuple(f.name for f in fields(IndexRow) if f.name != "extra")


# ------------------------------------------------------------------------------------ writer
@dataclass(frozen=True)
class Chunks:
    """How ``n`` samples of ``shape`` (H, W, 3) are cut into resumable chunks of ``size``."""

    n: int
    size: int
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return (self.n + self.size - 1) // self.size

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.size, min(self.n, (c + 1) * self.size)


def _save_npy(path: Path, arr: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, arr)
    return atomic_write_bytes(path, buf.getvalue())


class SampleSetWriter:
    """Writes one sample directory in steps a killed run can resume: the plan and the conditions
    first, chunks of images under partial/ (from any number of processes, each its own chunks),
    then :meth:`finish` (main process) writes the data files and the manifest last."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- what the folder holds
    def finished(self) -> dict | None:
        """The manifest of a finished sample set here, or None."""
        p = self.path / MANIFEST
        return read_json(p) if p.is_file() else None

    def plan(self) -> dict | None:
        """The plan an unfinished run recorded (the sampler's own dict), or None."""
        p = self.path / PARTIAL / "plan.json"
        return read_json(p) if p.is_file() else None

    def write_plan(self, plan: dict) -> None:
        atomic_write_json(self.path / PARTIAL / "plan.json", plan)

    def clear(self) -> None:
        """Remove every file of a sample set (finished or not) from the folder."""
        for name in (PARTIAL, MANIFEST, *DATA_FILES, STRIP):
            p = self.path / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in grid_files(self.path):
            p.unlink()

    # -- conditions
    def has_conds(self) -> bool:
        return (self.path / CONDS).is_file()

    def write_conds(self, vectors: np.ndarray) -> None:
        _save_npy(self.path / CONDS, np.asarray(vectors, dtype=np.float32))  # (C, D)

    def read_conds(self) -> np.ndarray:
        return np.load(self.path / CONDS)  # (C, D) float32

    # -- chunks
    def chunk_path(self, c: int) -> Path:
        return self.path / PARTIAL / f"chunk-{c:05d}.npy"

    def read_chunk(self, chunks: Chunks, c: int) -> np.ndarray | None:
        """A finished chunk, or None when it is missing or not the expected shape (recompute it)."""
        s, e = chunks.bounds(c)
        try:
            arr = np.load(self.chunk_path(c))
        except (OSError, ValueError, EOFError):  # missing (FileNotFoundError) or cut short
            return None
        return arr if arr.shape == (e - s, *chunks.shape) and arr.dtype == np.uint8 else None

    def write_chunk(self, chunks: Chunks, c: int, images: np.ndarray) -> None:
        s, e = chunks.bounds(c)
        assert images.shape == (e - s, *chunks.shape) and images.dtype == np.uint8, images.shape
        _save_npy(self.chunk_path(c), images)

    def _chunk_or_fail(self, chunks: Chunks, c: int) -> np.ndarray:
        arr = self.read_chunk(chunks, c)
        if arr is None:  # another process failed to write its part
            raise UserError(f"chunk {c} is missing from {self.path / PARTIAL}; re-run the same command to finish it")
        return arr

    def read_range(self, chunks: Chunks, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) from the chunks, ``(stop - start, H, W, 3)`` uint8."""
        parts = []
        for c in range(start // chunks.size, len(chunks)):
            s, e = chunks.bounds(c)
            if s >= stop:
                break
            parts.append(self._chunk_or_fail(chunks, c)[max(start, s) - s : min(stop, e) - s])
        return np.concatenate(parts) if parts else np.zeros((0, *chunks.shape), np.uint8)

    # -- the data files and the manifest
    def finish(self, chunks: Chunks, rows: Sequence[IndexRow], record: dict, other_files: Sequence[str] = ()) -> dict:
        """Write samples.npz (streamed from the chunks), index.jsonl and manifest.json last, with
        ``record`` (what the sampler records) and the sha256 of the data files and of
        ``other_files`` (pictures, config) in this folder; then remove partial/."""
        n_cond = len(self.read_conds())
        assert len(rows) == chunks.n and all(r.sample == s for s, r in enumerate(rows)), "one row per sample"
        assert all(0 <= r.condition < n_cond for r in rows), "rows name conditions of conds.npy"
        own = {"format_version", "n_conditions", "n_samples", "image_size", "files"} & set(record)
        assert not own, f"the writer sets {own}"
        _write_npz(
            self.path / SAMPLES, (chunks.n, *chunks.shape), (self._chunk_or_fail(chunks, c) for c in range(len(chunks)))
        )
        atomic_write_text(self.path / INDEX, "".join(json.dumps(r.to_json()) + "\n" for r in rows))
        manifest = {
            "format_version": FORMAT_VERSION,
            "stage": "sample",
            **record,
            "n_conditions": n_cond,
            "n_samples": chunks.n,
            "image_size": chunks.shape[0],
            "files": {f: sha256_file(self.path / f) for f in (*DATA_FILES, *other_files)},
            "tool_version": tool_version(),
            "created": now_iso(),
        }
        manifest = with_checksum(manifest)  # readers refuse an edited manifest
        atomic_write_json(self.path / MANIFEST, manifest)
        shutil.rmtree(self.path / PARTIAL, ignore_errors=True)  # samples.npz now holds every chunk
        return manifest


def _write_npz(path: Path, shape: tuple[int, ...], parts: Iterator[np.ndarray]) -> None:
    """``arr_0`` (uint8, ``shape``) written part by part: the bytes np.savez(path, samples) writes,
    without ever holding all samples (50,000 at 256 px are 10 GB). Temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    info = zipfile.ZipInfo("arr_0.npy")  # as np.savez: dated 1980-01-01, stored, zip64
    written = 0
    with open(tmp, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(info, "w", force_zip64=True) as member:
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                    "fortran_order": False,
                    "shape": shape,
                }
                np.lib.format.write_array_header_1_0(member, header)
                for part in parts:
                    member.write(np.ascontiguousarray(part, dtype=np.uint8).data)
                    written += len(part)
        f.flush()
        os.fsync(f.fileno())
    assert written == shape[0], (written, shape)
    os.replace(tmp, path)


def write_sample_set(
    path: str | Path, images: np.ndarray, rows: Sequence[IndexRow], vectors: np.ndarray, record: dict
) -> Path:
    """A whole sample set from arrays in memory: images (N, H, W, 3) uint8, one row per sample,
    vectors (C, D). Returns the folder."""
    w = SampleSetWriter(path)
    chunks = Chunks(len(images), max(1, len(images)), tuple(images.shape[1:]))
    w.write_conds(vectors)
    w.write_chunk(chunks, 0, images)
    w.finish(chunks, rows, record)
    return w.path


# ------------------------------------------------------------------------------------ reader
@dataclass
class SampleSet:
    """A finished sample set, checked (:func:`read_samples`)."""

    path: Path
    images: np.ndarray  # (N, H, W, 3) uint8
    rows: list[IndexRow]  # one per sample
    vectors: np.ndarray  # (C, D) float32, one per condition (conds.npy)
    conds: np.ndarray  # (N, D) float32, the conditioning vector of each sample
    manifest: dict
    manifest_sha256: str

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def keys(self) -> list[str | None]:
        return [r.key for r in self.rows]

    @property
    def sampler(self) -> Sampler | None:
        """How the samples were drawn (None for a set that does not say: conditions typed in by hand)."""
        spec = self.manifest.get("sampler")
        return Sampler.from_dict(spec, f"{self.path / MANIFEST}: sampler") if spec is not None else None

    def kinds(self) -> list[str]:
        return [r.kind for r in self.rows]


def read_samples(path: str | Path) -> SampleSet:
    """Open and check a sample directory. Every inconsistency is an InvalidInput / MissingInput
    naming the file, what was expected and the fix."""
    d = Path(path)
    if not d.is_dir():
        raise MissingInput(f"sample directory {d} does not exist; run `rcdm sample` first")
    for name in (MANIFEST, *DATA_FILES):
        if not (d / name).is_file():
            what = (
                "the sampler writes it last, so the run did not finish"
                if name == MANIFEST
                else "a finished sample set has it"
            )
            if (d / PARTIAL).is_dir():  # interrupted: its finished chunks are kept
                what = f"sampling was interrupted ({len(list((d / PARTIAL).glob('chunk-*.npy')))} finished chunk(s) in {d / PARTIAL}); re-running the same `rcdm sample` command resumes it"
            raise MissingInput(f"{d / name} is missing: {what}. Is {d} a finished `rcdm sample` output?")
    manifest = _read_manifest(d)
    for name in DATA_FILES:
        if sha256_file(d / name) != manifest["files"][name]:
            raise InvalidInput(
                f"{d / name} has changed since `rcdm sample` wrote it (sha256 differs from manifest.json); {_rerun(d)}"
            )
    images = _read_npz(d, manifest)
    vectors = _read_conds(d, int(manifest["n_conditions"]))
    rows = _read_index(d, len(images), len(vectors))
    conds = vectors[np.array([r.condition for r in rows], dtype=np.int64)]  # (N, D)
    ss = SampleSet(d, images, rows, vectors, conds, manifest, sha256_file(d / MANIFEST))
    ss.sampler  # noqa: B018  (a sampler spec that does not parse is refused here, naming the file)
    return ss


def _read_manifest(d: Path) -> dict:
    path = d / MANIFEST
    try:
        m = read_json(path)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path} is not readable JSON ({e}); {_rerun(d)}") from e
    version = m.get("format_version") if isinstance(m, dict) else None
    if version != FORMAT_VERSION:
        got = "has no format_version" if version is None else f"has format_version {version!r}"
        raise InvalidInput(
            f"{path} {got}, but this rcdm reads sample sets of format_version {FORMAT_VERSION} "
            f"(written by an older or newer `rcdm sample`); {_rerun(d)}"
        )
    if problem := checksum_problem(m):
        raise InvalidInput(f"{path} {problem}; {_rerun(d)}")
    need = ("n_samples", "n_conditions", "image_size", "files")
    missing = [k for k in need if k not in m] or [f"files.{f}" for f in DATA_FILES if f not in m["files"]]
    if missing:
        raise InvalidInput(f"{path} has no {', '.join(missing)}; {_rerun(d)}")
    for name in m["files"]:  # every file it lists is one of this folder's, never one elsewhere
        inside(d, name, f"{path}: files", _rerun(d))
    return m


def _read_npz(d: Path, manifest: dict) -> np.ndarray:
    path = d / SAMPLES
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z.files
            x = z["arr_0"] if "arr_0" in names else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise InvalidInput(f"{path} is not a readable .npz file ({e}); {_rerun(d)}") from e
    if x is None:
        raise InvalidInput(f"{path} has no arr_0 (it holds {names}); {_rerun(d)}")
    if x.dtype != np.uint8:
        raise InvalidInput(f"{path}: arr_0 has dtype {x.dtype}; samples are uint8 pixels in [0, 255]; {_rerun(d)}")
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or len(x) == 0:
        raise InvalidInput(
            f"{path}: arr_0 has shape {x.shape}; expected (N, H, W, 3) square RGB images with N > 0; {_rerun(d)}"
        )
    n, size = int(manifest["n_samples"]), int(manifest["image_size"])
    if len(x) != n or x.shape[1] != size:
        raise InvalidInput(
            f"{path} holds {len(x)} samples of {x.shape[1]} px but manifest.json says n_samples {n}, "
            f"image_size {size}; {_rerun(d)}"
        )
    return x


def _read_conds(d: Path, n_conditions: int) -> np.ndarray:
    path = d / CONDS
    try:
        conds = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InvalidInput(f"{path} is not a readable .npy array ({e}); {_rerun(d)}") from e
    if conds.ndim != 2 or len(conds) != n_conditions or conds.dtype != np.float32:
        raise InvalidInput(
            f"{path} holds {conds.dtype} {conds.shape}; expected float32 (n_conditions, D) with "
            f"n_conditions {n_conditions} (manifest.json); {_rerun(d)}"
        )
    return conds


def _read_index(d: Path, n: int, n_conditions: int) -> list[IndexRow]:
    path = d / INDEX
    lines = path.read_text().splitlines()
    if len(lines) != n:
        raise InvalidInput(f"{path} has {len(lines)} lines but samples.npz holds {n} samples; {_rerun(d)}")
    rows = []
    for i, line in enumerate(lines):
        where = f"{path}:{i + 1}"
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{where} is not valid JSON ({e}); {_rerun(d)}") from e
        if not isinstance(obj, dict):
            raise InvalidInput(f"{where} is not a JSON object; {_rerun(d)}")
        r = IndexRow.from_json(obj, where, fix=f"; {_rerun(d)}")
        if r.sample != i:
            raise InvalidInput(f"{where} describes sample {r.sample!r}, expected {i}; {_rerun(d)}")
        if not isinstance(r.condition, int) or not 0 <= r.condition < n_conditions:
            raise InvalidInput(
                f"{where} names condition {r.condition!r}; conds.npy has {n_conditions} rows; {_rerun(d)}"
            )
        rows.append(r)
    return rows
