"""Reading a finished feature store: random access by index or key, or the whole matrix."""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from rcdm.errors import InvalidInput, MissingInput, UserError
from rcdm.store.format import (
    CLS,
    FEAT,
    FORMAT_VERSION,
    JPG,
    MANIFEST,
    MANIFEST_FIELDS,
    SHARD_FIELDS,
    index_tar,
    read_at,
    shard_file,
    token_layout,
)
from rcdm.store.integrity import REPAIR, check_shard, unreadable
from rcdm.utils import checksum_problem, read_json, sha256_file

__all__ = ["FeatureStore", "UnknownKey", "check_same_classes", "read_manifest"]

REEXTRACT = "re-extract the store (`rcdm extract` with --overwrite, or into a new --out)"
# HDF5 shards a reader keeps open at once (least recently used closed first): ImageNet's train store
# is 1,252 shards at the default shard_size, over the common limit of 1,024 open files a process.
MAX_OPEN_SHARDS = 32


def read_manifest(path: str | Path) -> dict:
    """The manifest of the finished store at ``path``: the one reader of ``manifest.json``.

    Only the current format is read (:data:`~rcdm.store.format.FORMAT_VERSION`): a manifest of another or no
    ``format_version``, or one that lacks a field of the format, is refused with the fix
    (:data:`REEXTRACT`); no other layout is read. A folder without a manifest is missing or
    unfinished (``MissingInput`` saying which)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        _no_manifest(path)
    try:
        manifest = read_json(mpath)
    except ValueError as e:  # not JSON, or not even UTF-8 text
        raise InvalidInput(f"{mpath} is not valid JSON ({e}); {REEXTRACT}") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise InvalidInput(
            f"{mpath}: format_version {version!r} is not supported (this rcdm reads version {FORMAT_VERSION} "
            f"only); {REEXTRACT}"
        )
    if problem := checksum_problem(manifest):
        raise InvalidInput(f"{mpath} {problem}; {REEXTRACT}")
    lacks = [f for f in MANIFEST_FIELDS if f not in manifest]
    lacks += sorted({f"shards[].{f}" for s in manifest.get("shards") or [] for f in SHARD_FIELDS if f not in s})
    if lacks:
        raise InvalidInput(
            f"{mpath} lacks {', '.join(lacks)}: it is not a format-{FORMAT_VERSION} manifest; {REEXTRACT}"
        )
    for i, s in enumerate(manifest["shards"]):  # every shard a file of this store, never one elsewhere
        shard_file(path, s["file"], manifest["format"], f"{mpath}: shards[{i}].file", REEXTRACT)
    return manifest


def _no_manifest(path: Path) -> NoReturn:
    """Raise: ``path`` does not exist, or holds no finished store (how far it got, and the fix)."""
    if not path.exists():
        raise MissingInput(f"feature store {path} does not exist; check the path or run `rcdm extract`")
    from rcdm.store.write import completed_shards

    n_done = len(completed_shards(path))
    hint = (
        f"it is incomplete ({n_done} shard(s) done, no manifest.json): re-run the same "
        "`rcdm extract` command to finish it"
        if n_done
        else "it has no manifest.json; is it a feature store made by `rcdm extract`?"
    )
    raise MissingInput(f"feature store {path}: {hint}")


class UnknownKey(KeyError, InvalidInput):
    """A key that is not in the store (a KeyError for dict-like use, a ValueError for the CLI)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class FeatureStore:
    """Read a finished store: random access by index or key, or the whole feature matrix.

    Opening reads the manifest only. Each shard is checked against the sha256 its manifest
    records when this process first opens it (:mod:`rcdm.store.integrity`): a damaged shard is
    an error naming it and the fix, never features read silently.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict = read_manifest(self.path)
        self.manifest_sha256 = sha256_file(self.path / MANIFEST)
        shards = self.manifest["shards"]
        self._files = [self.path / s["file"] for s in shards]
        self._offsets = np.cumsum([0] + [int(s["rows"]) for s in shards]).tolist()  # row starts
        self._keys: list[str] | None = None
        self._labels: np.ndarray | None = None
        self._key_index: dict[str, int] | None = None
        self._rows: dict[int, tuple[list[str], np.ndarray]] = {}  # shard -> (keys, labels)
        self._tar_index: dict[int, list[tuple[str, dict[str, tuple[int, int]]]]] = {}
        self._h5: collections.OrderedDict[int, Any] = collections.OrderedDict()  # at most MAX_OPEN_SHARDS
        self._pid = os.getpid()

    # ---- manifest fields
    @property
    def encoder_info(self) -> dict:
        return self.manifest["encoder"]

    @property
    def layer(self) -> str:
        return self.manifest["layer"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def views(self) -> list[str]:
        return list(self.manifest["views"])

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def source(self) -> dict:
        return self.manifest["source"]

    @property
    def classes(self) -> list[str] | None:
        """The class names of the source's labels (label i is ``classes[i]``), where it has them."""
        classes = self.source.get("classes")
        return list(classes) if classes is not None else None

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def failed(self) -> list[dict]:
        return list(self.manifest["failed"])

    @property
    def has_images(self) -> bool:
        return bool(self.manifest["has_images"])

    @functools.cached_property
    def tokens(self) -> dict | None:
        """A tokens store's layout (``grid`` [rows, columns], ``count`` T, ``dim`` D), else None.
        Checked and built on first use, once (the manifest does not change); a layout that does
        not fit the rows raises then."""
        return token_layout(self.manifest["tokens"], self.dim)

    @property
    def token_shape(self) -> tuple[int, int] | None:
        """(T, D) of a tokens store's rows (each view holds T * D values), else None."""
        t = self.tokens
        return (t["count"], t["dim"]) if t else None

    def token_grid(self, i: int, view: int = 0) -> np.ndarray:
        """Row ``i``'s patch grid ``(rows, columns, D)`` float32 for ``view`` (tokens stores)."""
        t = self.tokens
        if t is None:
            raise InvalidInput(f"store {self.path} holds {self.layer!r} vectors, not a token grid")
        return self[i][0][view].reshape(t["grid"][0], t["grid"][1], t["dim"])

    def pooled_features(self, view: int | None = 0) -> np.ndarray:
        """One vector per view: the features, or for a tokens store the mean over its tokens
        ``(N, D)`` (``(N, V, D)`` for ``view=None``) — what pooled conditioning uses."""
        f = self.features(view)
        if self.tokens is None:
            return f
        return f.reshape(*f.shape[:-1], *self.token_shape).mean(-2)

    @property
    def preprocess(self):
        from rcdm.data.images import Preprocess

        return Preprocess.from_dict(self.manifest["preprocess"])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def shard_offsets(self) -> list[int]:
        """Each shard's first row, then ``len(self)``: shard ``s`` holds rows ``[o[s], o[s + 1])``
        (what a streamed reader cuts its blocks by, so each block reads one shard)."""
        return list(self._offsets)

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, {self.encoder_info.get('name')}/{self.layer}, {len(self)} x {self.dim})"
        )

    # ---- pickling (DataLoader workers): open file handles stay behind
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = collections.OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self) -> None:
        while self._h5:
            _close(self._h5.popitem()[1])

    def __del__(self) -> None:
        if os.getpid() == getattr(self, "_pid", None):
            self.close()

    def _check(self, s: int) -> None:
        """Shard ``s`` is the file the manifest records.

        Hashed once per process, when first opened: DataLoader workers are processes of their
        own, so a spawned worker hashes the shards it touches once (forked ones inherit the
        parent's checks); a few ms per 1024-row shard against hours of reading.
        """
        check_shard(self._files[s], self.manifest["shards"][s]["sha256"])

    @contextlib.contextmanager
    def _reading(self, s: int) -> Iterator[None]:
        """A shard that h5py, tarfile or numpy cannot read is one error naming it and the fix."""
        try:
            yield
        except UserError:
            raise
        except (OSError, KeyError, ValueError, EOFError, tarfile.TarError) as e:
            raise unreadable(self._files[s], e) from e

    def _h5_file(self, s: int):
        """Shard ``s`` open for reading; at most :data:`MAX_OPEN_SHARDS` stay open (the least
        recently used is closed first), so a store of any number of shards needs few handles."""
        import h5py

        if self._pid != os.getpid():  # forked: handles of the parent are not ours
            self._h5, self._pid = collections.OrderedDict(), os.getpid()
        if s in self._h5:
            self._h5.move_to_end(s)
            return self._h5[s]
        self._check(s)
        while len(self._h5) >= MAX_OPEN_SHARDS:
            _close(self._h5.popitem(last=False)[1])
        with self._reading(s):
            f = h5py.File(self._files[s], "r")
            try:
                self._check_rows(s, f["feat"].shape[0], f["key"].shape[0], f["label"].shape[0])
            except BaseException:
                _close(f)
                raise
        self._h5[s] = f
        return f

    def _check_rows(self, s: int, *counts: int) -> None:
        """Shard ``s`` holds the rows its manifest says (features, keys and labels alike)."""
        want = int(self.manifest["shards"][s]["rows"])
        if any(int(n) != want for n in counts):
            raise InvalidInput(
                f"shard {self._files[s]} holds {'/'.join(map(str, counts))} rows (features/keys/labels), not the "
                f"{want} its manifest records: it is damaged; {REPAIR}"
            )

    def _tar(self, s: int) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        """Shard ``s``'s samples: [(key, {suffix: (offset, size)})]."""
        if s not in self._tar_index:
            self._check(s)
            with self._reading(s):
                samples = index_tar(self._files[s])
            self._check_rows(s, len(samples))
            self._tar_index[s] = samples
        return self._tar_index[s]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} is out of range for a store of {n} rows")
        i = i % n if n else i
        s = bisect.bisect_right(self._offsets, i) - 1
        return s, i - self._offsets[s]

    # ---- keys and labels
    def _shard_rows(self, s: int) -> tuple[list[str], np.ndarray]:
        """Shard ``s``'s keys and labels (read once)."""
        if s not in self._rows:
            if self.format == "h5":
                f = self._h5_file(s)
                with self._reading(s):
                    rows = f["key"].asstr()[:].tolist(), f["label"][:].astype(np.int64)
            else:
                samples = self._tar(s)
                with self._reading(s):
                    lab = [int(read_at(self._files[s], *m[CLS])) for _, m in samples]
                rows = [k for k, _ in samples], np.asarray(lab, dtype=np.int64)
            self._rows[s] = rows
        return self._rows[s]

    def _load_keys_labels(self) -> None:
        rows = [self._shard_rows(s) for s in range(len(self._files))]
        self._keys = ReadOnlyList(k for keys, _ in rows for k in keys)
        labels = np.concatenate([lab for _, lab in rows]) if rows else np.zeros(0, dtype=np.int64)
        labels.flags.writeable = False
        self._labels = labels

    @property
    def keys(self) -> list[str]:
        """Every row's key, in row order: the store's one list (read-only), so ``keys[i]`` in a loop
        over rows costs O(1), not a copy of 1.28M keys per access."""
        if self._keys is None:
            self._load_keys_labels()
        return self._keys

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64, -1 where unknown: the store's one array, read-only (``.copy()`` to edit)."""
        if self._labels is None:
            self._load_keys_labels()
        return self._labels

    def index_of(self, key: str) -> int:
        if self._key_index is None:
            if self._keys is None:
                self._load_keys_labels()
            self._key_index = {k: i for i, k in enumerate(self._keys)}
        try:
            return self._key_index[key]
        except KeyError:
            some = ", ".join(list(self._key_index)[:3])
            raise UnknownKey(f"key {key!r} is not in store {self.path} (keys look like: {some})") from None

    # ---- features
    def __getitem__(self, i: int) -> tuple[np.ndarray, str, int]:
        """Row ``i``: (feat (V, D) float32, key, label)."""
        s, j = self._locate(int(i))
        keys, labels = self._shard_rows(s)  # only this row's shard is opened (and checked)
        if self.format == "h5":
            ds = self._h5_file(s)["feat"]
            with self._reading(s):
                feat = ds[j]
        else:
            _, members = self._tar(s)[j]
            with self._reading(s):
                feat = np.load(io.BytesIO(read_at(self._files[s], *members[FEAT])), allow_pickle=False)
        return np.asarray(feat, dtype=np.float32), keys[j], int(labels[j])

    def features(self, view: int | None = 0) -> np.ndarray:
        """All rows: (N, D) float32 for one view, or (N, V, D) for ``view=None``. This holds the whole
        matrix (ImageNet's 1.28M x 2048: 10 GB a view); :meth:`iter_features` reads it a block at a time."""
        self._check_view(view)
        parts = [self._shard_features(s, view) for s in range(len(self._files))]
        shape = (0, self.dim) if view is not None else (0, len(self.views), self.dim)
        out = np.concatenate(parts) if parts else np.zeros(shape)
        return out.astype(np.float32, copy=False)

    def iter_features(self, view: int | None = 0, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` over every row in order: a shard at a time, or blocks of
        exactly ``block_rows`` rows (the last one shorter), so a pass over the store holds one block,
        whatever its size. The blocks are the rows :meth:`features` gives, cut."""
        self._check_view(view)
        pending: list[np.ndarray] = []
        held, start = 0, 0
        for s in range(len(self._files)):
            part = self._shard_features(s, view).astype(np.float32, copy=False)
            if block_rows is None:
                if len(part):
                    yield self._offsets[s], part
                continue
            pending.append(part)
            held += len(part)
            while held >= block_rows:
                block = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield start, block[:block_rows]
                rest = block[block_rows:]  # a short remainder is copied, so the yielded block can be freed
                pending, held, start = (
                    [rest if len(rest) >= block_rows else rest.copy()],
                    held - block_rows,
                    start + block_rows,
                )
                del block, rest
        if block_rows is not None and held:
            yield start, np.concatenate(pending)

    def gather(self, rows: np.ndarray, view: int = 0) -> np.ndarray:
        """``features(view)[rows]`` (len(rows), D) float32, reading only the shards that hold them,
        one at a time."""
        self._check_view(view)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.zeros((len(rows), self.dim), np.float32)
        if not len(rows):
            return out
        n = len(self)
        if rows.min() < -n or rows.max() >= n:
            raise IndexError(f"rows out of range for a store of {n} rows")
        rows = rows % n
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard_of).tolist():
            at = np.flatnonzero(shard_of == s)
            out[at] = self._shard_features(s, view)[rows[at] - self._offsets[s]]
        return out

    def _check_view(self, view: int | None) -> None:
        if view is not None and not 0 <= view < len(self.views):
            raise InvalidInput(
                f"view {view} does not exist; this store has views 0..{len(self.views) - 1} {self.views}"
            )

    def read_range(self, start: int, stop: int, view: int = 0) -> np.ndarray:
        """``features(view)[start:stop]`` (stop - start, D) float32, reading only those rows (a slice of
        each shard that holds them: a few hundred rows cost a few hundred rows' bytes, not a shard's)."""
        self._check_view(view)
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows [{start}, {stop}) are out of range for a store of {len(self)} rows")
        parts = []
        while start < stop:
            s = bisect.bisect_right(self._offsets, start) - 1
            a, b = start - self._offsets[s], min(stop, self._offsets[s + 1]) - self._offsets[s]
            parts.append(self._shard_features(s, view, slice(a, b)).astype(np.float32, copy=False))
            start = self._offsets[s] + b
        if not parts:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _shard_features(self, s: int, view: int | None, sel: slice = slice(None)) -> np.ndarray:
        """Shard ``s``'s rows (the ``sel`` slice of them), (n, D) for one view or (n, V, D), in the
        stored dtype."""
        if self.format == "h5":
            f = self._h5_file(s)
            with self._reading(s):
                return f["feat"][sel] if view is None else f["feat"][sel, view]
        samples = self._tar(s)[sel]
        with self._reading(s), open(self._files[s], "rb") as fh:
            rows = []
            for _, m in samples:
                fh.seek(m[FEAT][0])
                rows.append(np.load(io.BytesIO(fh.read(m[FEAT][1])), allow_pickle=False))
        arr = np.stack(rows) if rows else np.zeros((0, len(self.views), self.dim), self.dtype)
        return arr if view is None else arr[:, view]

    def image_bytes(self, i: int) -> bytes:
        """The source image stored with row ``i`` (webdataset stores made with images)."""
        if not self.has_images:
            raise InvalidInput(
                f"store {self.path} holds no image bytes; re-extract with --format wds --include-images, "
                "or read the images from the source it names"
            )
        s, j = self._locate(int(i))
        _, members = self._tar(s)[j]
        with self._reading(s):
            return read_at(self._files[s], *members[JPG])

    # ---- compatibility
    def check_compatible(self, encoder: Any = None, layer: str | None = None, dim: int | None = None) -> None:
        """Raise ValueError naming the mismatch if the store was not made with these settings.

        ``encoder`` is a registry name, an encoder info dict, or an object with ``.info()``.
        """
        mine = self.encoder_info
        if encoder is not None:
            theirs = encoder if isinstance(encoder, (dict, str)) else encoder.info()
            if isinstance(theirs, str):
                theirs = {"name": theirs}
            if theirs.get("name") != mine.get("name"):
                raise InvalidInput(
                    f"store {self.path} was made with encoder {mine.get('name')!r}, not {theirs.get('name')!r}"
                )
            a, b = mine.get("weights_sha256"), theirs.get("weights_sha256")
            if a and b and a != b:
                raise InvalidInput(
                    f"store {self.path} was made with {mine.get('name')} weights sha256 {a[:12]}..., "
                    f"but these weights have sha256 {b[:12]}..."
                )
            if layer is None and theirs.get("layer") is not None:
                layer = theirs["layer"]
            if dim is None and theirs.get("dim") is not None:
                dim = theirs["dim"]
        if layer is not None and layer != self.layer:
            raise InvalidInput(f"store {self.path} holds layer {self.layer!r}, not {layer!r}")
        if dim is not None and int(dim) != self.dim:
            raise InvalidInput(f"store {self.path} has {self.dim}-d features, not {dim}-d")


class ReadOnlyList(list):
    """A list that refuses changes: what :attr:`FeatureStore.keys` hands out, shared by every caller."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a store's key list is read-only; copy it with list(store.keys) to change it")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse

    def __reduce__(self) -> tuple:  # pickling (DataLoader workers) and copies rebuild it whole
        return (ReadOnlyList, (list(self),))

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


def _close(h5file: Any) -> None:
    try:
        h5file.close()
    except Exception:  # closing a handle whose file went away: nothing left to release
        pass


def check_same_classes(a: FeatureStore, b: FeatureStore, why: str) -> None:
    """Labels of ``a`` and ``b`` mean the same classes (``why``: what compares them), or
    ``InvalidInput`` naming the first label they disagree on. Stores whose source names no classes
    (a file list, tars) are not compared."""
    ca, cb = a.classes, b.classes
    if ca is None or cb is None or ca == cb:
        return
    diff = next((i for i in range(min(len(ca), len(cb))) if ca[i] != cb[i]), min(len(ca), len(cb)))
    name = lambda c: repr(c[diff]) if diff < len(c) else "no class"  # noqa: E731
    raise InvalidInput(
        f"{why} compares the labels of {a.path} and {b.path}, but their class folders differ: label {diff} is "
        f"{name(ca)} in the first and {name(cb)} in the second ({len(ca)} vs {len(cb)} classes). Extract both "
        "splits from image folders with the same class sub-folders"
    )
