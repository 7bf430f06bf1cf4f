"""Read and check a sample directory written by ``rcdm sample``.

Layout: ``manifest.json`` (written last: the finished marker), ``samples.npz`` (``arr_0`` uint8
(N, H, W, 3)), ``index.jsonl`` (one JSON line per sample) and ``conds.npy`` (the conditioning
vectors: one row per sample, or one per condition with each line naming its ``condition``).
Every inconsistency is a ValueError / FileNotFoundError naming the file and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rcdm.errors import InvalidInput, MissingInput
from rcdm.utils import read_json, sha256_file


@dataclass
class SampleSet:
    path: Path
    images: np.ndarray  # (N, H, W, 3) uint8
    rows: list[dict]  # index.jsonl, one per sample
    conds: np.ndarray  # (N, D) float32, the conditioning vector of each sample
    manifest: dict
    manifest_sha256: str

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def keys(self) -> list[str | None]:
        return [r.get("key") for r in self.rows]

    def kinds(self) -> list[str]:
        return [str(r.get("kind", "?")) for r in self.rows]


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingInput(
            f"{path} is missing: {what}. Is {path.parent} a finished `rcdm sample` output?"
        )
    return path


def read_samples(path: str | Path) -> SampleSet:
    d = Path(path)
    if not d.is_dir():
        raise MissingInput(f"sample directory {d} does not exist; run `rcdm sample` first")
    mpath = _need(d / "manifest.json", "the sampler writes it last, so the run did not finish")
    manifest = read_json(mpath)
    npz = _need(d / "samples.npz", "the samples (arr_0, uint8 NHWC)")
    _check_recorded_sha(manifest, d, "samples.npz")
    images = _read_npz(npz)
    n = len(images)
    res = manifest.get("resolution", manifest.get("image_size"))
    if res is not None and images.shape[1] != int(res):
        raise InvalidInput(
            f"{d / 'samples.npz'} holds {images.shape[1]}x{images.shape[2]} images but "
            f"manifest.json says resolution {res}"
        )
    if manifest.get("n_samples") is not None and int(manifest["n_samples"]) != n:
        raise InvalidInput(
            f"{d / 'samples.npz'} holds {n} samples but manifest.json says n_samples "
            f"{manifest['n_samples']}; the sample directory is inconsistent, re-run `rcdm sample`"
        )
    rows = _read_index(_need(d / "index.jsonl", "one JSON line per sample"), n)
    _check_recorded_sha(manifest, d, "index.jsonl")
    conds = _read_conds(_need(d / "conds.npy", "the conditioning vectors"), rows)
    _check_recorded_sha(manifest, d, "conds.npy")
    return SampleSet(d, images, rows, conds, manifest, sha256_file(mpath))


def _check_recorded_sha(manifest: dict, d: Path, name: str) -> None:
    """The sampler records each file's sha256: a file changed since then is not its output."""
    want = (manifest.get("files") or {}).get(name)
    if want and sha256_file(d / name) != want:
        raise InvalidInput(
            f"{d / name} has changed since `rcdm sample` wrote it (sha256 differs from "
            f"manifest.json); re-run `rcdm sample --out {d}`"
        )


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise InvalidInput(
                    f"{path} has no arr_0 (it holds {z.files}); samples must be saved as "
                    "np.savez(path, samples) with samples uint8 (N, H, W, 3)"
                )
            x = z["arr_0"]
    except (OSError, EOFError) as e:
        raise InvalidInput(f"{path} is not a readable .npz file ({e}); re-run `rcdm sample`") from e
    if x.dtype != np.uint8:
        raise InvalidInput(
            f"{path}: arr_0 has dtype {x.dtype}; samples must be uint8 pixels in [0, 255] "
            "(convert with rcdm.data.images.from_model_range)"
        )
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or len(x) == 0:
        raise InvalidInput(
            f"{path}: arr_0 has shape {x.shape}; expected (N, H, W, 3) square RGB images with N > 0"
        )
    return x


def _read_index(path: Path, n: int) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{path}:{lineno} is not valid JSON ({e})") from e
    if len(rows) != n:
        raise InvalidInput(f"{path} has {len(rows)} lines but samples.npz holds {n} samples")
    for i, r in enumerate(rows):
        s = r.get("sample", r.get("i", i))
        if s != i:
            raise InvalidInput(f"{path}: line {i + 1} describes sample {s}, expected {i}")
    return rows


def _read_conds(path: Path, rows: list[dict]) -> np.ndarray:
    try:
        conds = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path} is not a readable .npy array ({e})") from e
    if conds.ndim != 2:
        raise InvalidInput(f"{path} has shape {conds.shape}; expected (N, D) conditioning vectors")
    n = len(rows)
    cidx = [r.get("condition") for r in rows]
    if all(c is not None for c in cidx) and len(conds) == max(cidx) + 1:
        return conds[np.asarray(cidx, dtype=np.int64)].astype(np.float32)  # per condition
    if len(conds) == n:
        return conds.astype(np.float32)  # per sample
    raise InvalidInput(
        f"{path} has {len(conds)} rows; expected one per sample ({n}) or one per condition "
        "named in index.jsonl"
    )
