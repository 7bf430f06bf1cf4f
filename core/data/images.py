"""Image sources (ImageFolder trees, path lists, webdataset tars) and decoding.

Sources give a fixed, ordered list of images with stable keys (the relative path without
extension, or the webdataset ``__key__``) and random access by index or key. Decoding
(:func:`decode_image`, :class:`UnreadableImage`) lives in :mod:`rcdm.data.decode`; the pixel
preprocessing (:class:`Preprocess`, :func:`encoder_input`, :func:`adm_center_crop`,
:func:`to_model_range`) lives in :mod:`rcdm.data.preprocess` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rcdm.data.decode import UnreadableImage, decode_image, to_rgb
from rcdm.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS,
    Preprocess,
    adm_center_crop,
    encoder_input,
    from_model_range,
    get_preprocess,
    to_model_range,
)
from rcdm.errors import InvalidInput, MissingInput

__all__ = [
    "IMAGE_EXTS",
    "Item",
    "UnreadableImage",
    "ImageSource",
    "open_source",
    "decode_image",
    "to_rgb",
    "Preprocess",
    "PREPROCESS",
    "get_preprocess",
    "encoder_input",
    "adm_center_crop",
    "to_model_range",
    "from_model_range",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGE_EXTS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".JPG",
    ".JPEG",
    ".PNG",
    ".BMP",
    ".WEBP",
    ".PPM",
    ".PGM",
    ".TIF",
    ".TIFF",
)
_IMAGE_EXTS_LOWER = {e.lower() for e in IMAGE_EXTS}
# webdataset image fields, in order of preference when a sample has several
_WDS_IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _IMAGE_EXTS_LOWER


@dataclass(frozen=True)
class Item:
    """One image of a source. ``key`` is stable: the relative path without extension, or the
    webdataset ``__key__``. ``label`` is -1 when unknown."""

    key: str
    label: int
    path: str | None = None  # file on disk (folder / list sources)
    tar: str | None = None  # tar file holding the image (webdataset sources)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass
class ImageSource:
    """A fixed, ordered list of images with stable keys; random access by index or key."""

    kind: str  # "folder" | "list" | "wds"
    root: str  # the path the source was opened from (folder, list file, tar, or pattern)
    items: list[Item]
    classes: list[str] | None = None
    key_rule: str = ""  # how keys are formed, for the manifest
    # webdataset: (offset of the image's data in its tar, size in bytes), parallel to items
    _members: list[tuple[int, int]] | None = field(default=None, repr=False)
    _index: dict[str, int] | None = field(default=None, repr=False)
    notes: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def index_of(self, key: str) -> int:
        if self._index is None:
            self._index = {it.key: i for i, it in enumerate(self.items)}
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"no image with key {key!r} in {self.kind} source {self.root}") from None

    def read_bytes(self, i: int) -> bytes:
        """The raw file bytes of item ``i`` (raises UnreadableImage if the file is gone)."""
        it = self.items[i]
        try:
            if self._members is not None:
                offset, size = self._members[i]
                with open(it.tar, "rb") as f:  # type: ignore[arg-type]
                    f.seek(offset)
                    data = f.read(size)
                if len(data) != size:
                    raise OSError(f"tar {it.tar} ends before the member's {size} bytes")
                return data
            with open(it.path, "rb") as f:  # type: ignore[arg-type]
                return f.read()
        except OSError as e:
            raise UnreadableImage(it.key, f"{type(e).__name__}: {e}") from e

    def load(self, i: int, draft: tuple[int, int] | None = None) -> Image.Image:
        """Item ``i`` as an RGB PIL image (raises UnreadableImage)."""
        return decode_image(self.read_bytes(i), draft, key=self.items[i].key)

    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    def describe(self) -> dict:
        """The manifest's ``source`` field."""
        d = {
            "kind": self.kind,
            "root": self.root,
            "split": _guess_split(self.root),
            "n_items": len(self.items),
            "key_rule": self.key_rule,
            "n_classes": len(self.classes) if self.classes is not None else None,
            "classes": list(self.classes) if self.classes is not None else None,  # label i is classes[i]
        }
        d.update(self.notes)
        return d


def _guess_split(root: str) -> str:
    """'train' / 'val' / 'test' if a path component names one (last wins), else the stem."""
    aliases = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
    for part in reversed(Path(root).parts):
        for token in reversed(re.split(r"[^a-z]+", part.lower())):
            if token in aliases:
                return aliases[token]
    return Path(root).stem


def open_source(path: str | Path) -> ImageSource:
    """Open an ImageFolder tree, a ``.txt`` list of paths, or webdataset tars.

    - a folder with image files (ImageFolder: label = index of the sorted class folder; images
      directly in the root get label -1);
    - a folder holding only ``.tar`` files (webdataset shards, in sorted order);
    - a ``.txt`` file: one path per line, optionally followed by a tab or space and an integer
      label; relative paths are relative to the file's folder; ``#`` lines are comments;
    - a ``.tar`` file, or a brace / glob pattern of tars (``shards/train-{0000..0146}.tar``).
    """
    with _no_gc():  # a million items: the collector would walk them all, again and again
        return _open_source(str(path))


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off inside (restored after): listing 1.28M images makes
    millions of objects and no cycles, and each collection would walk all of them (a webdataset
    source of ImageNet took 181 s with it, 103 s without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _open_source(text: str) -> ImageSource:
    if any(c in text for c in "{*?[") and not Path(text).exists():
        return _open_tar_pattern(text)
    p = Path(text)
    if not p.exists():
        raise MissingInput(
            f"image source {p} does not exist; give an ImageFolder directory, a .txt list of "
            "image paths, a .tar file, or a brace/glob pattern of .tar files"
        )
    if p.is_dir():
        if _has_images(p):
            return _open_folder(p)
        tars = sorted(str(t) for t in p.glob("*.tar"))
        if tars:
            return _open_tars(tars, root=str(p))
        raise InvalidInput(
            f"image source {p} is empty: it holds no image files ({', '.join(sorted(_IMAGE_EXTS_LOWER))}) "
            "in class sub-folders and no .tar shards"
        )
    if p.suffix == ".tar":
        return _open_tars([str(p)], root=str(p))
    if p.suffix == ".txt":
        return _open_list(p)
    raise InvalidInput(
        f"image source {p} is a file of unknown kind; expected a directory, a .txt list of paths "
        "or a .tar (webdataset) file"
    )


def _has_images(root: Path) -> bool:
    for _dirpath, _dirs, files in os.walk(root, followlinks=True):
        if any(_is_image(f) for f in files):
            return True
    return False


def _walk_images(folder: Path) -> list[Path]:
    """Image files below ``folder``, recursively, in sorted order (symlinks followed)."""
    out = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        out.extend(Path(dirpath) / f for f in sorted(files) if _is_image(f))
    return sorted(out)


def _strip_ext(rel: str) -> str:
    return os.path.splitext(rel)[0]


def _check_unique(items: list[Item], where: str) -> None:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.key in seen:
            other = items[seen[it.key]]
            raise InvalidInput(
                f"{where}: two images have the key {it.key!r} ({other.path or other.tar} and "
                f"{it.path or it.tar}); keys must be unique: rename or remove one of them"
            )
        seen[it.key] = i


def _open_folder(root: Path) -> ImageSource:
    # Every class folder counts, empty or not: a split missing a class's images keeps the labels of
    # the others (a class folder empty in val only renumbered val's labels), and the map is recorded.
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items: list[Item] = []
    # images directly in the root: no class
    for f in sorted(root.iterdir()):
        if f.is_file() and _is_image(f.name):
            items.append(Item(key=_strip_ext(f.name), label=-1, path=str(f)))
    for label, c in enumerate(classes):
        for f in _walk_images(root / c):
            rel = f.relative_to(root).as_posix()
            items.append(Item(key=_strip_ext(rel), label=label, path=str(f)))
    _check_unique(items, f"image folder {root}")
    return ImageSource(
        kind="folder",
        root=str(root),
        items=items,
        classes=classes or None,
        key_rule="path relative to root without extension; label = index of sorted class folder",
    )


def _parse_list_line(line: str) -> tuple[str, int]:
    if "\t" in line:
        path, _, lab = line.rpartition("\t")
        return path.strip(), int(lab)
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        try:
            return parts[0], int(parts[1])
        except ValueError:
            pass
    return line, -1


def _open_list(path: Path) -> ImageSource:
    base = path.parent
    items = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rel, label = _parse_list_line(line)
        except ValueError as e:
            raise InvalidInput(f"{path}:{n}: cannot read the label in {raw!r}: {e}") from e
        full = Path(rel) if os.path.isabs(rel) else base / rel
        items.append(Item(key=_strip_ext(rel), label=label, path=str(full)))
    if not items:
        raise InvalidInput(f"image list {path} is empty: expected one image path per line")
    _check_unique(items, f"image list {path}")
    return ImageSource(
        kind="list",
        root=str(path),
        items=items,
        key_rule="path as written in the list, without extension; relative to the list's folder",
    )


def _open_tar_pattern(pattern: str) -> ImageSource:
    import braceexpand  # a webdataset dependency

    paths: list[str] = []
    for expanded in braceexpand.braceexpand(pattern):
        if any(c in expanded for c in "*?["):
            paths.extend(sorted(glob.glob(expanded)))
        else:
            paths.append(expanded)
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise MissingInput(
            f"tar pattern {pattern!r}: {len(missing)} of {len(paths)} files do not exist "
            f"(first: {missing[0]}); fix the pattern or the path"
        )
    if not paths:
        raise MissingInput(f"tar pattern {pattern!r} matches no files; fix the pattern")
    return _open_tars(paths, root=pattern)


def _split_wds_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the basename."""
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _open_tars(tars: list[str], root: str) -> ImageSource:
    items: list[Item] = []
    members: list[tuple[int, int]] = []
    counts = dict.fromkeys(_WDS_SKIPS, 0)
    for tar_path in tars:
        try:
            samples = _scan_tar(tar_path, counts)
        except (tarfile.TarError, OSError) as e:
            raise InvalidInput(f"{tar_path} is not a readable tar file: {e}") from e
        for key, fields_ in samples:
            img = next((fields_[f] for f in _WDS_IMAGE_FIELDS if f in fields_), None)
            if img is None:
                counts["n_samples_without_image"] += 1
            elif not _safe_key(key):  # it would name files (a wds store's members) out of their folder
                counts["n_samples_with_unsafe_key"] += 1
            else:
                items.append(Item(key=key, label=fields_.get("__cls__", -1), tar=tar_path))
                members.append(img)
    if not items:
        raise InvalidInput(
            f"webdataset source {root} is empty: no sample has an image field ({'|'.join(_WDS_IMAGE_FIELDS)})"
        )
    _check_unique(items, f"webdataset source {root}")
    return ImageSource(
        kind="wds",
        root=root,
        items=items,
        key_rule="webdataset __key__; label from the cls field (-1 if absent)",
        _members=members,
        notes={"n_tars": len(tars), **counts},
    )


# What a webdataset source skips, each counted in the store's manifest (``source``):
_WDS_SKIPS = (
    "n_samples_without_image",  # no jpg / png / ... member
    "n_samples_with_unsafe_key",  # a key with '..' or an absolute path: skipped, never written
    "n_link_members",  # symbolic or hard links in the tar: not read
    "n_unreadable_cls",  # a .cls that is not an integer: the sample is kept with label -1
)


def _safe_key(key: str) -> bool:
    """A webdataset key that stays a relative name: no absolute path, no '..', no backslash."""
    p = Path(key)
    return bool(key) and not p.is_absolute() and ".." not in p.parts and "\\" not in key


def _scan_tar(tar_path: str, counts: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
    """(key, {ext: (offset, size), "__cls__": label}) for each sample, in tar order; links and
    unreadable labels are counted in ``counts``.

    Plain ustar headers (what webdataset writers make) are read by :func:`_ustar_members`, about 10x
    faster than ``tarfile`` (ImageNet's 2.56M members: 3 minutes in tarfile's header parsing); a
    tar with any other header (pax, GNU long names, sparse or base-256 sizes) is read by ``tarfile``."""
    members = _ustar_members(tar_path)
    if members is None:
        return _scan_tarfile(tar_path, counts)
    samples: list[tuple[str, dict[str, Any]]] = []
    with open(tar_path, "rb") as f:
        for name, kind, offset, size in members:
            if kind in "12":  # a hard (1) or symbolic (2) link: counted, not read
                counts["n_link_members"] += 1
            if kind not in "07\0":  # not a regular file
                continue
            key, ext = _split_wds_name(name)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            fields_ = samples[-1][1]
            if ext == "cls":
                f.seek(offset)
                try:
                    fields_["__cls__"] = int(f.read(size).decode().strip())
                except (ValueError, UnicodeDecodeError):
                    fields_["__cls__"] = -1
                    counts["n_unreadable_cls"] += 1
            else:
                fields_[ext] = (offset, size)
    return samples


_USTAR_PLAIN_TYPES = frozenset(b"01257\0")  # files, links, directories, contiguous: no extended header


def _ustar_members(tar_path: str) -> list[tuple[str, str, int, int]] | None:
    """``(name, type flag, data offset, size)`` of every member of a tar of plain ustar / v7
    headers (checksums checked, names as tarfile makes them), or None when anything is else (pax,
    GNU long names, base-256 sizes, a member running past the end): then ``tarfile`` reads it."""
    out = []
    with open(tar_path, "rb") as f:
        end, offset = os.fstat(f.fileno()).st_size, 0
        while True:
            f.seek(offset)
            head = f.read(512)
            if offset and (not head or head == bytes(512)):  # the end of the archive
                return out
            member = _ustar_header(head, offset, end)
            if member is None:
                return None
            out.append(member)
            offset = member[2] + -(-member[3] // 512) * 512


def _ustar_header(head: bytes, offset: int, end: int) -> tuple[str, str, int, int] | None:
    """One plain header's ``(name, type flag, data offset, size)``, or None (see _ustar_members)."""
    if len(head) < 512 or head[156] not in _USTAR_PLAIN_TYPES or head[124] & 0x80 or not _checksum_ok(head):
        return None
    try:
        size = int(head[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    kind = chr(head[156]) if head[156] else "\0"
    name = head[:100].split(b"\0", 1)[0]
    if kind == "\0" and name.endswith(b"/"):  # v7's directory: tarfile's rule
        kind = "5"
    prefix = head[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    if kind in "12":
        size = 0  # a link has no data (tarfile reads none)
    if offset + 512 + size > end:
        return None
    return name.decode(_TAR_ENCODING, "surrogateescape"), kind, offset + 512, size


_TAR_ENCODING = tarfile.ENCODING


def _checksum_ok(head: bytes) -> bool:
    """The header's checksum field is the sum of its bytes with that field as spaces (unsigned or,
    as some old writers did, signed), as ``tarfile`` checks it."""
    try:
        want = int(head[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(head[:148]) + 256 + sum(head[156:])
    if want == unsigned:
        return True
    signed = sum(b - 256 * (b > 127) for b in head[:148] + head[156:]) + 256
    return want == signed


def _scan_tarfile(tar_path: str, counts: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
    """:func:`_scan_tar` by ``tarfile``: any tar it reads."""
    samples: list[tuple[str, dict[str, Any]]] = []
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if m.issym() or m.islnk():
                counts["n_link_members"] += 1
            if not m.isfile():
                continue
            key, ext = _split_wds_name(m.name)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            fields_ = samples[-1][1]
            if ext == "cls":
                f = tf.extractfile(m)
                try:
                    fields_["__cls__"] = int(f.read().decode().strip())  # type: ignore[union-attr]
                except (ValueError, UnicodeDecodeError):
                    fields_["__cls__"] = -1
                    counts["n_unreadable_cls"] += 1
            else:
                fields_[ext] = (m.offset_data, m.size)
    return samples
