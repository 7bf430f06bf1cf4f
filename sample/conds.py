"""Turn ``SampleConfig.condition`` into condition vectors, one record each, and display images.

Endpoints (the representations a condition starts from) come from, in this order: store rows
(``indices``), store keys (``keys``) and image files (``images``, encoded with the store's
encoder and its recorded preprocessing). The pure maths lives in ``rcdm.diffusion.conditions``.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rcdm.config import SampleConfig
from rcdm.data.images import IMAGE_EXTS, UnreadableImage, decode_image
from rcdm.diffusion import conditions as C
from rcdm.errors import InvalidInput, MissingInput
from rcdm.run.sampleset import IndexRow

_EXTS = {e.lower() for e in IMAGE_EXTS}


@dataclass
class Condition:
    """One conditioning representation and what it is."""

    vector: np.ndarray  # (D,) float32
    kind: str  # store | image | interpolate | class-mean | kde | prior | algebra | manipulate-original | manipulate
    key: str  # store key, image path, or a made-up name ("class:3", "kde:0")
    description: str
    label: int = -1
    store_index: int | None = None  # row of the conditions' store, when the condition is one
    image: Callable[[], Any] | None = None  # loads the PIL image for the grid (None: a text tile)
    extra: dict = field(default_factory=dict)  # written to the index rows (alpha, dims, ...)

    def load_image(self) -> Any:
        """The conditioning image (PIL) or None; loaded only when a grid shows it, so 10,000
        store conditions do not hold 10,000 decoded images."""
        return self.image() if self.image is not None else None


@dataclass
class ConditionSet:
    conditions: list[Condition]
    fixed_noise_groups: bool = False  # interpolation with fixed noise: seed by sample column only
    ends: tuple[Any, Any] = (None, None)  # interpolation endpoints' image loaders (or None)

    @property
    def vectors(self) -> np.ndarray:
        return np.stack([c.vector for c in self.conditions]).astype(np.float32)  # (C, D)

    def index_rows(self, cond_index: np.ndarray, seeds: np.ndarray, k: int) -> list[IndexRow]:
        """The sample set's index rows: sample s is the (s % k)-th of condition cond_index[s], drawn
        with seeds[s]."""
        rows = []
        for s, (c, seed) in enumerate(zip(cond_index.tolist(), seeds.tolist(), strict=True)):
            cond = self.conditions[c]
            rows.append(
                IndexRow(
                    sample=s,
                    condition=c,
                    key=cond.key,
                    kind=cond.kind,
                    seed=int(seed),
                    description=cond.description,
                    label=int(cond.label),
                    store_index=cond.store_index,
                    sample_of_condition=s % k,
                    extra=cond.extra,
                )
            )
        return rows


# ----------------------------------------------------------------------------------- images
def expand_images(specs: tuple[str, ...] | list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and globs -> a sorted list of files."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in _EXTS)
            if not found:
                raise MissingInput(f"folder {p} holds no images with extensions {sorted(_EXTS)}")
            out.extend(found)
        else:
            found = sorted(Path(q) for q in glob.glob(os.path.expanduser(spec), recursive=True) if Path(q).is_file())
            if not found:
                raise MissingInput(f"image path {spec!r} is not a file, folder or matching glob")
            out.extend(found)
    return out


def read_image(path: Path):
    """Decode an image file to RGB PIL, or a ValueError naming the file."""
    try:
        return decode_image(path.read_bytes(), key=str(path))
    except UnreadableImage as e:
        raise InvalidInput(f"cannot read image {path}: {e.reason}; remove it from --images or replace the file") from e
    except OSError as e:
        raise InvalidInput(f"cannot read image {path}: {e}") from e


class Resolver:
    """Reads endpoints from the store or image files; loads the encoder only when images need it."""

    def __init__(self, cfg: SampleConfig, store: Any, device: Any):
        self.cfg, self.store, self.device = cfg, store, device
        self._images: Any = None  # rcdm.store.StoreImages, made on first use
        self._images_failed = False

    def store_image(self, i: int):
        """The store row's image for display, or None when it cannot be found (grid only)."""
        if self._images_failed:
            return None
        try:
            if self._images is None:
                from rcdm.store import StoreImages

                self._images = StoreImages(self.store)
            return self._images.load(i)
        except Exception:  # display only: a moved image folder must not stop sampling
            self._images_failed = True
        return None

    def rows(self, rows) -> np.ndarray:
        """View 0 (unflipped) of store rows ``rows``, (n, D) float32, reading only the shards that
        hold them (a training store is 10 GB of float32: it is never read whole)."""
        return self.store.gather(rows, view=0)

    def knn(self, query: np.ndarray, k: int, exclude: int | None = None) -> np.ndarray:
        """``C.knn`` of ``query (D,)`` over view 0 of the store, ``(k,)``: the same blocks, the same
        answer, read a block at a time."""
        return C.knn_store(self.store, np.asarray(query, np.float32)[None], k, exclude=exclude)[0]

    def store_row(self, i: int, kind: str = "store", vector: np.ndarray | None = None) -> Condition:
        """Row ``i`` as a condition (``vector``: its features, when already read)."""
        n = len(self.store)
        if not -n <= i < n:
            raise InvalidInput(f"store index {i} is out of range: the store {self.store.path} has {n} rows")
        i = i % n
        key = self.store.keys[i]
        label = int(self.store.labels[i])
        vector = self.rows([i])[0] if vector is None else vector
        return Condition(vector.copy(), kind, key, f"store row {i} ({key})", label, i, lambda: self.store_image(i))

    def store_key(self, key: str, kind: str = "store") -> Condition:
        return self.store_row(self.store.index_of(key), kind)

    def images(self, kind: str = "image") -> list[Condition]:
        paths = expand_images(self.cfg.images)
        imgs = [read_image(p) for p in paths]
        from rcdm.encoders.build import encode, encoder_from_info

        enc = encoder_from_info(
            self.store.encoder_info, weights=self.cfg.encoder_weights, trust_checkpoint=self.cfg.trust_checkpoint
        )
        vecs = encode(enc, imgs, self.store.preprocess, batch_size=self.cfg.batch_size, device=self.device)
        vecs = np.asarray(vecs, dtype=np.float32).reshape(len(imgs), -1)  # (N, D)
        if vecs.shape[1] != self.store.dim:
            raise InvalidInput(f"the encoder gave {vecs.shape[1]}-d features but the store is {self.store.dim}-d")
        del imgs  # re-read for the grid when needed
        return [
            Condition(v, kind, str(p), f"image {p}", -1, None, (lambda p=p: read_image(p)))
            for v, p in zip(vecs, paths, strict=True)
        ]

    def endpoints(self) -> list[Condition]:
        """indices, then keys, then images, in the order given."""
        out = [self.store_row(i) for i in self.cfg.indices]
        out += [self.store_key(k) for k in self.cfg.keys]
        if self.cfg.images:
            out += self.images()
        return out


def _need(ends: list[Condition], n: int | None, what: str, at_least: int = 1) -> None:
    if (n is not None and len(ends) != n) or len(ends) < at_least:
        want = f"exactly {n}" if n is not None else f"at least {at_least}"
        raise InvalidInput(
            f"condition {what} needs {want} endpoint(s) from --indices / --keys / --images, got {len(ends)}"
        )


# ------------------------------------------------------------------------------- conditions
def _store(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    """Rows of the store: the --indices / --keys given, else a seeded --subset."""
    if cfg.indices or cfg.keys:
        return ConditionSet(r.endpoints())
    n = min(cfg.subset, len(r.store))
    if cfg.subset > n:
        print(
            f"note: --subset {cfg.subset} is more than the {n} rows of the store {getattr(r.store, 'path', '')}; "
            f"conditioning on all {n} (give --subset {n} or less to choose a random part)",
            file=sys.stderr,
        )
    rows = np.random.default_rng(cfg.seed).choice(len(r.store), size=n, replace=False)
    vectors = r.rows(rows)  # one pass over the shards that hold them
    return ConditionSet([r.store_row(int(i), vector=v) for i, v in zip(rows, vectors, strict=True)])


def _images(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    if not cfg.images:
        raise InvalidInput("condition 'images' needs --images (files, folders or globs)")
    return ConditionSet(r.images())


def _interpolate(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    ends = r.endpoints()
    _need(ends, 2, "interpolate")
    a, b = ends
    path = C.interpolate(a.vector, b.vector, cfg.interp_steps)  # (n, D)
    alphas = np.linspace(0.0, 1.0, cfg.interp_steps)
    conds = [
        Condition(
            v,
            "interpolate",
            f"interp:{al:.4f}",
            f"(1 - {al:.3f}) {a.key} + {al:.3f} {b.key}",
            extra={"alpha": float(al), "a": a.key, "b": b.key},
            image=a.image if i == 0 else (b.image if i == len(path) - 1 else None),
        )
        for i, (v, al) in enumerate(zip(path, alphas, strict=True))
    ]
    return ConditionSet(conds, fixed_noise_groups=cfg.fixed_noise, ends=(a.image, b.image))


def _class_mean(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    if not cfg.labels:
        raise InvalidInput("condition 'class-mean' needs --set sample.labels=[...] (class indices)")
    classes = (r.store.source or {}).get("classes") or []
    conds = []
    for lab in cfg.labels:
        name = classes[lab] if 0 <= lab < len(classes) else str(lab)
        labels = r.store.labels
        rows = C.class_rows(labels, lab)  # only the class's rows are read (a training store is 10 GB)
        v = C.class_mean(r.rows(rows), labels[rows], lab)
        conds.append(Condition(v, "class-mean", f"class:{lab}", f"mean of class {name}", int(lab)))
    return ConditionSet(conds)


def _kde(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    # C.kde_sample's draws, reading only the picked rows (a training store is 10 GB of float32)
    idx, noise = C.kde_draw(len(r.store), r.store.dim, cfg.kde_n, cfg.kde_sigma, cfg.seed)
    vecs = C.kde_points(r.rows(idx), noise, cfg.kde_sigma)
    return ConditionSet(
        [
            Condition(
                v,
                "kde",
                f"kde:{j}",
                f"KDE draw {j} around row {int(i)} (sigma={cfg.kde_sigma} std)",
                extra={"center": int(i), "sigma": cfg.kde_sigma},
            )
            for j, (v, i) in enumerate(zip(vecs, idx, strict=True))
        ]
    )


def _algebra(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    ends = r.endpoints()
    _need(ends, 3, "algebra")
    a, b, c = ends
    v = C.algebra(a.vector, b.vector, c.vector)
    desc = f"{a.key} - {b.key} + {c.key}"
    return ConditionSet([Condition(v, "algebra", f"algebra:{desc}", desc, extra={"a": a.key, "b": b.key, "c": c.key})])


def build(cfg: SampleConfig, store: Any, device: Any = "cpu") -> ConditionSet:
    """The conditions for ``cfg.condition``."""
    return BUILDERS[cfg.condition](cfg, Resolver(cfg, store, device))


def _prior(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    """``prior_n`` draws from the learned prior of ``rcdm train-prior`` (seeded by sample.seed),
    which must live in the store's representation space."""
    from rcdm.prior.model import draw
    from rcdm.run.priordir import WEIGHTS, check_store, load_prior
    from rcdm.utils import sha256_file

    if not cfg.prior:
        raise InvalidInput("condition 'prior' needs sample.prior: a folder written by `rcdm train-prior`")
    model, meta = load_prior(cfg.prior, r.device)
    check_store(meta, r.store, cfg.prior)
    vecs = draw(model, cfg.prior_n, seed=cfg.seed, device=r.device, meta=meta)  # (n, D)
    sha = sha256_file(Path(cfg.prior) / WEIGHTS)
    extra = {"prior": str(cfg.prior), "prior_sha256": sha, "prior_steps": meta.get("sample_steps")}
    return ConditionSet(
        [
            Condition(v, "prior", f"prior:{j}", f"prior draw {j} (seed {cfg.seed})", extra=dict(extra))
            for j, v in enumerate(vecs)
        ]
    )


def _manipulate(cfg: SampleConfig, r: Resolver) -> ConditionSet:
    """Section 5 of the paper: dimensions non-zero in >= m of the k nearest neighbours (in the
    store) are zeroed, or replaced by a target's values (the last endpoint, mode 'replace')."""
    ends = r.endpoints()
    target = None
    if cfg.manipulate_mode == "replace":
        _need(ends, None, "manipulate (mode replace: queries then the target)", at_least=2)
        target, ends = ends[-1], ends[:-1]
    _need(ends, None, "manipulate", at_least=1)
    conds: list[Condition] = []
    for q in ends:
        nb = r.knn(q.vector, cfg.knn_k, exclude=q.store_index)  # (k,)
        dims = C.common_dims(r.rows(nb), cfg.knn_m)
        v = C.manipulate(q.vector, dims, cfg.manipulate_mode, None if target is None else target.vector)
        extra = {"dims": dims.tolist(), "neighbours": nb.tolist(), "mode": cfg.manipulate_mode}
        if target is not None:
            extra["target"] = target.key
        what = "zeroed" if target is None else f"from {target.key}"
        conds.append(
            Condition(q.vector, "manipulate-original", q.key, f"{q.key} unchanged", q.label, q.store_index, q.image)
        )
        conds.append(
            Condition(
                v,
                "manipulate",
                q.key,
                f"{q.key}: {len(dims)} dims {what} (k={cfg.knn_k}, m={cfg.knn_m})",
                q.label,
                q.store_index,
                q.image,
                extra,
            )
        )
    return ConditionSet(conds)


# sample.condition -> its builder (tests/test_config.py keeps these the schema's choices)
BUILDERS = {
    "store": _store,
    "images": _images,
    "interpolate": _interpolate,
    "class-mean": _class_mean,
    "kde": _kde,
    "algebra": _algebra,
    "manipulate": _manipulate,
    "prior": _prior,
}
