"""The embedded demonstration data set: small crops of photographs shipped inside installed packages.

Built offline from scikit-image's bundled sample images and scikit-learn's two sample photos.
Each source photograph is one class; seeded random-resized crops expand it into a training split
and a held-out validation split (different seeds, so no crop is in both). It exists to show the
pipeline working on a CPU in minutes; it is a demonstration set, not a benchmark.

The set is written as two ImageFolder trees plus ``manifest.json`` with the sha256 of every file;
``is_built`` re-verifies those checksums, so a damaged cache is rebuilt rather than used.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from rcdm.config import DataConfig
from rcdm.errors import InvalidInput
from rcdm.utils import atomic_write_json, now_iso, read_json, sha256_file

DEMO_VERSION = 1
NOTICE = (
    "rcdm demonstration set: random crops of sample photographs bundled with scikit-image and "
    "scikit-learn. For trying the pipeline only; not a benchmark."
)


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img  # stereo pairs: the left view

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


# Class name -> loader. Colour photographs first; two greyscale ones add a colour contrast.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "cat": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "tissue": _skimage("immunohistochemistry"),
    "galaxies": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "palace": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "cameraman": _skimage("camera"),
    "coins": _skimage("coins"),
}


def _rgb(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8), "RGB")


def random_resized_crop(
    img: Image.Image, size: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
) -> Image.Image:
    """torchvision's RandomResizedCrop rule, driven by a numpy generator (seeded, portable)."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to the largest centred crop
        cw = ch = min(w, h)
        x, y = (w - cw) // 2, (h - ch) // 2
    return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))


def _split_dirs(cfg: DataConfig) -> tuple[Path, Path]:
    return Path(cfg.train), Path(cfg.val)


def _manifest_path(cfg: DataConfig) -> Path:
    # The demo trees share a parent (data/cache/demo by default); the manifest sits there.
    return Path(cfg.train).parent / "manifest.json"


def _settings(cfg: DataConfig) -> dict:
    return {
        "version": DEMO_VERSION,
        "size": cfg.demo_size,
        "train_per_photo": cfg.demo_train_per_photo,
        "val_per_photo": cfg.demo_val_per_photo,
        "seed": cfg.demo_seed,
        "classes": list(PHOTOS),
    }


def is_built(cfg: DataConfig) -> bool:
    """True when the cached set exists, was made with these settings and every checksum holds."""
    path = _manifest_path(cfg)
    if not path.exists():
        return False
    try:
        man = read_json(path)
    except (OSError, ValueError):
        return False
    if man.get("settings") != _settings(cfg):
        return False
    root = path.parent
    files = man.get("files", {})
    if len(files) != man.get("n_files"):
        return False
    return all((root / rel).exists() and sha256_file(root / rel) == digest for rel, digest in files.items())


def build(cfg: DataConfig, force: bool = False) -> tuple[Path, Path]:
    """Write the demo train/val ImageFolder trees (once); return their paths."""
    train_dir, val_dir = _split_dirs(cfg)
    if train_dir.parent != val_dir.parent:
        raise InvalidInput(
            f"data.train ({train_dir}) and data.val ({val_dir}) must share a parent folder for the "
            "demo set; set both under one folder, e.g. data/cache/demo/{train,val}"
        )
    if not force and is_built(cfg):
        return train_dir, val_dir
    root = train_dir.parent
    for d in (train_dir, val_dir):
        if d.exists():
            shutil.rmtree(d)
    files: dict[str, str] = {}
    from tqdm import tqdm

    for label, (name, load) in enumerate(tqdm(list(PHOTOS.items()), desc="demo set", unit="photo")):
        photo = _rgb(load())
        for split, out_dir, n, offset in (
            ("train", train_dir, cfg.demo_train_per_photo, 0),
            ("val", val_dir, cfg.demo_val_per_photo, 1),
        ):
            # One generator per (photo, split): changing one split's size leaves the other alone.
            rng = np.random.default_rng([cfg.demo_seed, label, offset])
            cls_dir = out_dir / name
            cls_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                crop = random_resized_crop(photo, cfg.demo_size, rng)
                path = cls_dir / f"{name}_{split}_{i:04d}.png"
                crop.save(path, format="PNG", optimize=False)
                files[str(path.relative_to(root))] = sha256_file(path)
    digest = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode())
    atomic_write_json(
        _manifest_path(cfg),
        {
            "notice": NOTICE,
            "settings": _settings(cfg),
            "created": now_iso(),
            "n_files": len(files),
            "sha256": digest.hexdigest(),
            "files": files,
        },
    )
    (root / "README.txt").write_text(NOTICE + "\n")
    return train_dir, val_dir
