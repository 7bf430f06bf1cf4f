"""Writing a feature store: atomic shards, their records, and the manifest (written last).

Part of :mod:`rcdm.store`; the names and layout come from :mod:`rcdm.store.format`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rcdm.errors import DiskFull, InvalidInput, disk_full_errno
from rcdm.store.format import (
    CLS,
    FEAT,
    FORMAT_VERSION,
    JPG,
    MANIFEST,
    SHARD_RECORD_RE,
    VIEWS,
    record_path,
    shard_name,
    token_layout,
    tool_version,
)
from rcdm.utils import atomic_write_json, inside, now_iso, read_json, sha256_file, with_checksum

# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

RESUME = (
    "free some space (or quota), then re-run the same `rcdm extract` command: it resumes from the last complete shard"
)


def disk_full(error: BaseException, path: Path) -> DiskFull | None:
    """The one-line error for a full disk while writing ``path`` (None: another OSError)."""
    return DiskFull(f"no space left on the device while writing {path}; {RESUME}") if disk_full_errno(error) else None


@contextlib.contextmanager
def _disk_full_as_user_error(path: Path) -> Iterator[None]:
    """A full disk inside the block becomes :func:`disk_full`'s one line naming ``path``; other
    errors pass unchanged."""
    try:
        yield
    except OSError as e:
        full = disk_full(e, path)
        if full is None:
            raise
        raise full from e


def write_shard(
    store_dir: str | Path,
    shard_index: int,
    feats: np.ndarray,
    keys: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    *,
    fmt: str = "h5",
    dtype: str = "float16",
    images: Sequence[bytes] | None = None,
    failed: Sequence[dict] = (),
    first_item: int,
) -> dict:
    """Write one complete shard atomically and its json record; return the record.

    ``feats`` is (n, V, D); ``keys`` n strings; ``labels`` n ints (-1 if unknown); ``images``
    (wds only) n encoded images stored as ``jpg``; ``failed`` the items of this shard that could
    not be read ({key, index, reason}); ``first_item`` the source index of the shard's first item.
    """
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    feats = np.asarray(feats)
    if feats.ndim != 3:
        raise InvalidInput(f"shard features must be (n, V, D), got shape {feats.shape}")
    n = feats.shape[0]
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(keys) != n or len(labels) != n:
        raise InvalidInput(f"shard {shard_index}: {n} feature rows but {len(keys)} keys and {len(labels)} labels")
    if images is not None and len(images) != n:
        raise InvalidInput(f"shard {shard_index}: {n} feature rows but {len(images)} images")
    if images is not None and fmt != "wds":
        raise InvalidInput("image bytes can only be stored in webdataset shards; use --format wds")
    if dtype not in ("float16", "float32"):
        raise InvalidInput(f"store dtype {dtype!r} is not supported; use float16 or float32")
    feats = feats.astype(dtype, copy=False)

    name = shard_name(shard_index, fmt)
    final = store_dir / name
    tmp = store_dir / f".{name}.tmp-{os.getpid()}"
    try:
        with _disk_full_as_user_error(final):
            if fmt == "h5":
                _write_h5(tmp, feats, list(keys), labels)
            else:
                _write_tar(tmp, feats, list(keys), labels, images)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()  # a half-written shard never stays behind
    record = {
        "file": name,
        "rows": int(n),
        "sha256": sha256_file(final),
        "first_item": int(first_item),
        "failed": [dict(x) for x in failed],
    }
    rpath = record_path(store_dir, shard_index)
    with _disk_full_as_user_error(rpath):  # the shard has no record: a re-run writes it again
        atomic_write_json(rpath, record)
    return record


def _write_h5(path: Path, feats: np.ndarray, keys: list[str], labels: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        # track_times=False: the same content gives the same bytes (and sha256)
        f.create_dataset("feat", data=feats, track_times=False)  # (n, V, D)
        f.create_dataset("key", data=np.array(keys, dtype=object), dtype=h5py.string_dtype("utf-8"), track_times=False)
        f.create_dataset("label", data=labels, dtype=np.int64, track_times=False)


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0  # deterministic bytes
    ti.mode = 0o444
    tf.addfile(ti, io.BytesIO(data))


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write_tar(
    path: Path, feats: np.ndarray, keys: list[str], labels: np.ndarray, images: Sequence[bytes] | None
) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:  # PAX: long / utf-8 keys
        for i, key in enumerate(keys):
            _tar_add(tf, f"{key}.{FEAT}", _npy_bytes(feats[i]))
            _tar_add(tf, f"{key}.{CLS}", str(int(labels[i])).encode())
            if images is not None:
                _tar_add(tf, f"{key}.{JPG}", bytes(images[i]))


def completed_shards(store_dir: str | Path) -> dict[int, dict]:
    """Records of the complete shards: json record present and its shard file present."""
    store_dir = Path(store_dir)
    out: dict[int, dict] = {}
    if not store_dir.is_dir():
        return out
    for p in store_dir.iterdir():
        m = SHARD_RECORD_RE.match(p.name)
        if not m:
            continue
        try:
            rec = read_json(p)
        except (OSError, ValueError):  # not JSON, or not even UTF-8 text
            continue  # a torn record: the shard is redone
        # a record names its own shard file, never another path (a tampered one is redone)
        if _own_shard(store_dir, rec, m.group(1)):
            out[int(m.group(1))] = rec
    return dict(sorted(out.items()))


def _own_shard(store_dir: Path, rec: object, index: str) -> bool:
    """``rec`` is the record of shard ``index``: it names that shard's file, which is present
    inside the store (not a link out of it)."""
    names = {f"shard-{index}.{ext}" for ext in ("h5", "tar")}
    if not isinstance(rec, dict) or rec.get("file") not in names or not (store_dir / rec["file"]).is_file():
        return False
    try:
        inside(store_dir, rec["file"], "a shard record", "")
    except InvalidInput:
        return False
    return True


def build_manifest(
    records: dict[int, dict] | Sequence[dict],
    *,
    encoder_info: dict,
    preprocess: dict,
    source: dict,
    fmt: str,
    dtype: str,
    dim: int,
    has_images: bool = False,
    extract_config: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """The manifest of a store made of ``records`` (shard records in shard order)."""
    recs = list(records.values()) if isinstance(records, dict) else list(records)
    recs.sort(key=lambda r: r["first_item"])
    failed = [f for r in recs for f in r["failed"]]
    manifest = {
        "format_version": FORMAT_VERSION,
        "encoder": dict(encoder_info),
        "layer": encoder_info.get("layer"),
        "dim": int(dim),
        # tokens stores: the patch grid's shape (rows hold it flat; rcdm.store.format.token_layout)
        "tokens": token_layout(encoder_info.get("tokens"), dim),
        "preprocess": dict(preprocess),
        "views": list(VIEWS),
        "dtype": dtype,
        "format": fmt,
        "has_images": bool(has_images),
        "source": dict(source),
        "rows": int(sum(r["rows"] for r in recs)),
        "n_failed": len(failed),
        "failed": failed,
        "shards": [
            {"file": r["file"], "rows": r["rows"], "sha256": r["sha256"], "first_item": r["first_item"]} for r in recs
        ],
        "tool": {"name": "rcdm", "version": tool_version()},
        "created": now_iso(),
        "extract_config": extract_config or {},
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(store_dir: str | Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically; call it last, it marks the store finished."""
    path = Path(store_dir) / MANIFEST
    with _disk_full_as_user_error(path):
        return atomic_write_json(path, with_checksum(manifest))  # readers refuse an edited one
