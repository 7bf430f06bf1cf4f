"""Image sources (ImageFolder trees, path lists, webdataset tars) and preprocessing.

Two pixel pipelines live here and must not be confused:

- the *encoder input* (:class:`Preprocess`, :func:`encoder_input`): what a frozen encoder sees,
  a 224x224 crop in the encoder's value range (``rcdm``: [-1, 1] as in the official RCDM code;
  ``imagenet``: [0, 1] then ImageNet mean/std as in torchvision / VISSL);
- the *diffusion image* (:func:`adm_center_crop`, :func:`to_model_range`): what the RCDM UNet
  is trained on, guided-diffusion's center crop at the model resolution scaled to [-1, 1].
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTS",
    "Item",
    "UnreadableImage",
    "ImageSource",
    "open_source",
    "decode_image",
    "Preprocess",
    "PREPROCESS",
    "get_preprocess",
    "encoder_input",
    "adm_center_crop",
    "to_model_range",
    "from_model_range",
]

IMAGE_EXTS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff",
    ".JPG", ".JPEG", ".PNG", ".BMP", ".WEBP", ".PPM", ".PGM", ".TIF", ".TIFF",
)  # fmt: skip
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


class UnreadableImage(Exception):
    """An image that cannot be read or decoded. Extraction counts and skips these."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"cannot read image {key!r}: {reason}")
        self.key = key
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_image(
    data: bytes, draft: tuple[int, int] | None = None, *, key: str = "<bytes>"
) -> Image.Image:
    """Decode image bytes to an RGB PIL image.

    ``draft=(w, h)`` lets libjpeg decode at a reduced DCT scale (1/2, 1/4, 1/8) that is still at
    least ``w`` x ``h``: several times faster for large JPEGs, but not bit-identical to a full
    decode followed by resizing. Ignored for non-JPEG images.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (int(draft[0]), int(draft[1])))
        img.load()  # decode now, so truncated files fail here and not later
        return img.convert("RGB")
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise UnreadableImage(key, f"{type(e).__name__}: {e}") from e


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
    text = str(path)
    if any(c in text for c in "{*?[") and not Path(text).exists():
        return _open_tar_pattern(text)
    p = Path(text)
    if not p.exists():
        raise FileNotFoundError(
            f"image source {p} does not exist; give an ImageFolder directory, a .txt list of "
            "image paths, a .tar file, or a brace/glob pattern of .tar files"
        )
    if p.is_dir():
        if _has_images(p):
            return _open_folder(p)
        tars = sorted(str(t) for t in p.glob("*.tar"))
        if tars:
            return _open_tars(tars, root=str(p))
        raise ValueError(
            f"image source {p} is empty: it holds no image files ({', '.join(sorted(_IMAGE_EXTS_LOWER))}) "
            "in class sub-folders and no .tar shards"
        )
    if p.suffix == ".tar":
        return _open_tars([str(p)], root=str(p))
    if p.suffix == ".txt":
        return _open_list(p)
    raise ValueError(
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
            raise ValueError(
                f"{where}: two images have the key {it.key!r} ({other.path or other.tar} and "
                f"{it.path or it.tar}); keys must be unique: rename or remove one of them"
            )
        seen[it.key] = i


def _open_folder(root: Path) -> ImageSource:
    classes = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _has_images(d)
    )
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
            raise ValueError(f"{path}:{n}: cannot read the label in {raw!r}: {e}") from e
        full = Path(rel) if os.path.isabs(rel) else base / rel
        items.append(Item(key=_strip_ext(rel), label=label, path=str(full)))
    if not items:
        raise ValueError(f"image list {path} is empty: expected one image path per line")
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
        raise FileNotFoundError(
            f"tar pattern {pattern!r}: {len(missing)} of {len(paths)} files do not exist "
            f"(first: {missing[0]}); fix the pattern or the path"
        )
    if not paths:
        raise FileNotFoundError(f"tar pattern {pattern!r} matches no files; fix the pattern")
    return _open_tars(paths, root=pattern)


def _split_wds_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the basename."""
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _open_tars(tars: list[str], root: str) -> ImageSource:
    items: list[Item] = []
    members: list[tuple[int, int]] = []
    no_image = 0
    for tar_path in tars:
        try:
            samples = _scan_tar(tar_path)
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"{tar_path} is not a readable tar file: {e}") from e
        for key, fields_ in samples:
            img = next((fields_[f] for f in _WDS_IMAGE_FIELDS if f in fields_), None)
            if img is None:
                no_image += 1
                continue
            label = fields_.get("__cls__", -1)
            items.append(Item(key=key, label=label, tar=tar_path))
            members.append(img)
    if not items:
        raise ValueError(
            f"webdataset source {root} is empty: no sample has an image field "
            f"({'|'.join(_WDS_IMAGE_FIELDS)})"
        )
    _check_unique(items, f"webdataset source {root}")
    return ImageSource(
        kind="wds",
        root=root,
        items=items,
        key_rule="webdataset __key__; label from the cls field (-1 if absent)",
        _members=members,
        notes={"n_tars": len(tars), "n_samples_without_image": no_image},
    )


def _scan_tar(tar_path: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, {ext: (offset, size), "__cls__": label}) for each sample, in tar order."""
    samples: list[tuple[str, dict[str, Any]]] = []
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
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
                except ValueError:
                    fields_["__cls__"] = -1
            else:
                fields_[ext] = (m.offset_data, m.size)
    return samples


# --------------------------------------------------------------------------------------------
# Encoder preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes an encoder input.

    ``resize_rule="torchvision"``: resize the shorter side to ``resize`` with ``interpolation``
    (torchvision's ``Resize(int)``), then center crop ``crop`` (``CenterCrop``).
    ``resize_rule="adm"``: guided-diffusion's ``center_crop_arr`` (box-halve while the shorter
    side is >= 2 * ``resize``, bicubic so the shorter side is ``resize``, floor-offset center
    crop), which is what the official RCDM code feeds its encoders.
    Then [0, 255] is scaled to ``value_range`` and ``(x - mean) / std`` is applied per channel.
    """

    resize: int
    crop: int
    interpolation: str  # "bicubic" | "bilinear"
    value_range: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_rule: str = "torchvision"  # "torchvision" | "adm"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"preprocess interpolation {self.interpolation!r}: use 'bicubic' or 'bilinear'"
            )
        if self.resize_rule not in ("torchvision", "adm"):
            raise ValueError(f"preprocess resize_rule {self.resize_rule!r}: use 'torchvision' or 'adm'")
        if self.resize_rule == "adm" and self.interpolation != "bicubic":
            raise ValueError("preprocess resize_rule 'adm' resizes with bicubic interpolation only")
        if self.crop > self.resize:
            raise ValueError(f"preprocess crop {self.crop} is larger than resize {self.resize}")
        if self.value_range[1] <= self.value_range[0]:
            raise ValueError(f"preprocess value_range {self.value_range}: expected (low, high)")

    def to_dict(self) -> dict:
        d = asdict(self)
        how = (
            "guided-diffusion center_crop_arr"
            if self.resize_rule == "adm"
            else f"resize shorter side ({self.interpolation}), center crop"
        )
        d["rule"] = (
            f"{how}: resize {self.resize}, crop {self.crop}; scale [0, 255] to "
            f"{list(self.value_range)}; (x - mean) / std"
        )
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            resize=int(d["resize"]),
            crop=int(d["crop"]),
            interpolation=str(d["interpolation"]),
            value_range=tuple(float(v) for v in d["value_range"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            resize_rule=str(d.get("resize_rule", "torchvision")),
        )

    def draft_size(self) -> tuple[int, int]:
        """The JPEG draft request that keeps the shorter side >= ``resize``."""
        return (self.resize, self.resize)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PREPROCESS: dict[str, Preprocess] = {
    # the official RCDM code (guided_diffusion/image_datasets.py): center_crop_arr(img, 224),
    # then x / 127.5 - 1, no mean/std
    "rcdm": Preprocess(224, 224, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "adm"),
    # torchvision / VISSL evaluation: resize 256, crop 224, [0, 1], ImageNet mean/std
    "imagenet": Preprocess(256, 224, "bilinear", (0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD),
}


def get_preprocess(name_or_pp: str | Preprocess) -> Preprocess:
    if isinstance(name_or_pp, Preprocess):
        return name_or_pp
    try:
        return PREPROCESS[name_or_pp]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing {name_or_pp!r}; choose one of {', '.join(PREPROCESS)}"
        ) from None


def _resize_shorter(img: Image.Image, size: int, resample: int) -> Image.Image:
    # torchvision's Resize(int) rule: shorter side = size, longer side scaled and truncated
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, resample=resample)


def _center_crop(img: Image.Image, crop: int) -> Image.Image:
    # torchvision's center_crop rule (round the offsets)
    w, h = img.size
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def encoder_input(img: Image.Image, pp: Preprocess):
    """PIL image -> encoder input tensor ``(3, crop, crop)`` float32."""
    import torch

    img = img.convert("RGB")
    if pp.resize_rule == "adm":
        arr = adm_center_crop(img, pp.resize)
        if pp.crop != pp.resize:
            top, left = (pp.resize - pp.crop) // 2, (pp.resize - pp.crop) // 2
            arr = arr[top : top + pp.crop, left : left + pp.crop]
    else:
        resample = Image.BICUBIC if pp.interpolation == "bicubic" else Image.BILINEAR
        arr = np.asarray(_center_crop(_resize_shorter(img, pp.resize, resample), pp.crop))
    x = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float()  # copy: writable
    lo, hi = pp.value_range
    # x / (255 / (hi - lo)) + lo: exactly RCDM's x / 127.5 - 1 and torchvision's x / 255
    x = x / (255.0 / (hi - lo)) + lo
    if pp.mean != (0.0, 0.0, 0.0) or pp.std != (1.0, 1.0, 1.0):
        mean = torch.tensor(pp.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(pp.std, dtype=torch.float32).view(3, 1, 1)
        x = (x - mean) / std
    return x  # (3, crop, crop)


# --------------------------------------------------------------------------------------------
# Diffusion images
# --------------------------------------------------------------------------------------------


def adm_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr``: box-halve while the shorter side is at least
    ``2 * size``, bicubic-resize so the shorter side is ``size``, then center crop.
    Returns ``(size, size, 3)`` uint8."""
    img = img.convert("RGB")
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def to_model_range(x_uint8):
    """uint8 ``(N, H, W, 3)`` or ``(H, W, 3)`` (numpy or torch) -> float32 ``(N, 3, H, W)`` in
    [-1, 1] (x / 127.5 - 1, as guided-diffusion)."""
    import torch

    x = torch.as_tensor(np.asarray(x_uint8)) if not isinstance(x_uint8, torch.Tensor) else x_uint8
    if x.dtype != torch.uint8:
        raise ValueError(f"to_model_range expects uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"to_model_range expects (N, H, W, 3) pixels, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def from_model_range(x) -> np.ndarray:
    """float ``(N, 3, H, W)`` or ``(3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)``.

    Rounds to the nearest level (guided-diffusion truncates), so that
    ``from_model_range(to_model_range(a)) == a`` exactly.
    """
    import torch

    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"from_model_range expects (N, 3, H, W), got shape {tuple(x.shape)}")
    y = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous().numpy()
