"""What every experiment shares: stores, encoders and RCDMs (loaded once), seeded picks,
sampling, figure captions and output paths.

Conditions for an RCDM come from the feature store when the store was made with the RCDM's
encoder (the exact cached features), otherwise by running that encoder on the images: this is
what lets several checkpoints trained on different encoders be compared on the same images.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from rcdm.analysis.experiments.names import checkpoint_label
from rcdm.analysis.report import Entry, Figure, Table, write_entry
from rcdm.config import AnalyzeConfig
from rcdm.errors import InvalidInput, MissingInput
from rcdm.run.conditioning import Conditioning, check_conditioning, same_representation
from rcdm.store.format import MANIFEST as STORE_MANIFEST
from rcdm.store.stats import IN_MEMORY_BYTES, fits_in_memory
from rcdm.utils import atomic_write_json

__all__ = ["RCDM", "Context", "same_encoder", "describe_encoder"]

T = TypeVar("T")


def describe_encoder(info: dict) -> str:
    sha = info.get("weights_sha256")
    w = f", weights {sha[:12]}" if sha else (f", seed {info['seed']}" if "seed" in info else "")
    return f"{info.get('name', '?')} {info.get('layer', '?')} ({info.get('dim', '?')}-d{w})"


def same_encoder(a: Any, b: Any) -> bool:
    """``a`` and ``b`` (feature stores, RCDMs, encoder infos) stand for the same representation:
    a store's cached features can condition the RCDM, two stores' features share one space.
    The comparison is ``rcdm.run.conditioning``'s, the one ``rcdm sample`` refuses stores with."""
    return same_representation(_conditioning(a), _conditioning(b))


def nearest_training_rows(train: Any, hs: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows of the store ``train`` nearest to each of ``hs (Q, D)`` (``knn``'s answer),
    nearest first, streamed over the store a block at a time (ImageNet's is 10 GB of float32)."""
    from rcdm.diffusion.conditions import knn_store

    return knn_store(train, hs, k)


def _conditioning(x: Any) -> Conditioning:
    if isinstance(x, Conditioning):
        return x
    if isinstance(x, RCDM):
        return x.conditioning
    if isinstance(x, dict):
        return Conditioning.of_encoder(x)
    return Conditioning.of_store(x)  # a FeatureStore


@dataclass
class RCDM:
    """A loaded checkpoint, ready to sample, with the encoder its conditions come from."""

    path: str
    label: str  # short name for figure titles: the run ("demo/run")
    model: torch.nn.Module
    diffusion: Any
    meta: dict
    encoder_info: dict  # the encoder whose representation conditions this RCDM
    encoder_note: str  # where encoder_info came from
    conditioning: Conditioning  # what its conditions are (encoder, preprocessing): stores must match
    cond_dim: int
    image_size: int
    kimg: Any = None

    @property
    def title(self) -> str:
        """The run, its encoder and layer: "demo/run (random-rn50 trunk)"."""
        return f"{self.label} ({self.encoder_info.get('name', '?')} {self.encoder_info.get('layer', '?')})"


@dataclass
class Context:
    """What the experiments of one ``rcdm analyze`` share: the config, the output folder, the
    device, and everything loaded once (stores, features, encoders, RCDMs, probes: :meth:`cached`)."""

    cfg: AnalyzeConfig
    out: Path
    device: torch.device
    upstream: dict = field(default_factory=dict)  # manifest path -> sha256, for manifest.json
    _memo: dict = field(default_factory=dict, init=False, repr=False)  # key -> value: only cached() reads it

    # ---------------------------------------------------------------- memo
    def cached(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value stored under ``key``, made by ``make()`` the first time: what several
        experiments (or checkpoints) need is loaded or computed once per analysis. Keys are tuples
        whose first item names the kind ("store", "feats", "probe", ...), so kinds never collide."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ---------------------------------------------------------------- seeds
    def rng(self, salt: str) -> np.random.Generator:
        """A generator that depends on cfg.seed and the experiment only (stable across runs)."""
        return np.random.default_rng([int(self.cfg.seed), zlib.crc32(salt.encode())])

    def noise_seeds(self, n: int | None = None) -> list[int]:
        """Noise seeds of the samples of one condition: the same for every condition, so
        differences along a row / between rows come from the representation alone."""
        n = self.cfg.n_samples if n is None else n
        return [int(self.cfg.seed) * 1000 + j for j in range(n)]

    # ---------------------------------------------------------------- stores
    def store(self, which: str):
        """``which`` is "train", "val" or a path; cached."""
        from rcdm.store import FeatureStore

        path = {"train": self.cfg.train_store, "val": self.cfg.val_store}.get(which, which)
        if path is None:
            raise InvalidInput(f"analyze.{which}_store is not set; give the {which} feature store path")

        def open_store():
            s = FeatureStore(path)
            self.upstream[str(Path(path) / STORE_MANIFEST)] = s.manifest_sha256
            return s

        return self.cached(("store", str(path)), open_store)

    def features(self, store) -> np.ndarray:
        """The store's view-0 (unflipped) features, ``(N, D)`` float32; cached."""
        return self.cached(("feats", str(store.path)), lambda: store.features(0))

    def held_features(self, store) -> np.ndarray | None:
        """:meth:`features` (cached) when the store's view-0 rows fit :data:`IN_MEMORY_BYTES` of
        float32, else None: the caller reads the store a block at a time (``iter_features``,
        ``gather``, :func:`nearest_training_rows`), as it must for ImageNet's 10 GB training store."""
        return self.features(store) if fits_in_memory(store, 0, IN_MEMORY_BYTES) else None

    def labels(self, store, what: str) -> np.ndarray:
        """``store``'s labels (known for every row), meaning the same classes as the other store
        of the analysis (train and val must come from class folders that agree)."""
        from rcdm.analysis.probe import check_labels
        from rcdm.store import check_same_classes

        for which in ("train", "val"):
            path = getattr(self.cfg, f"{which}_store")
            if path and (Path(path) / STORE_MANIFEST).is_file() and Path(path).resolve() != store.path.resolve():
                check_same_classes(store, self.store(which), f"{what} store's labels (analyze)")
        return check_labels(store.labels, f"{what} store {store.path}")

    def class_names(self, store) -> list[str] | None:
        """The store's class names (its image source's class folders), or None when unknown."""
        try:
            classes = self.images(store).source.classes
        except (FileNotFoundError, ValueError, OSError):
            return None
        return list(classes) if classes else None

    def class_name(self, store, label: int) -> str:
        """``label``'s class name where the store has them, else "class <label>"."""
        names = self.class_names(store)
        return names[label] if names and 0 <= label < len(names) else f"class {label}"

    def images(self, store):
        """The store's ``StoreImages`` (cached): source images of its rows."""
        from rcdm.store import StoreImages

        return self.cached(
            ("images", str(store.path)),
            lambda: StoreImages(
                store, hint="the analyses show images, so run them where the store's source images are"
            ),
        )

    def image(self, store, i: int) -> Image.Image:
        """The source image of store row ``i`` (RGB)."""
        return self.images(store).load(i)

    def thumb(self, img: Image.Image, size: int) -> np.ndarray:
        """ADM's center crop at the figure's resolution, ``(size, size, 3)`` uint8."""
        from rcdm.data.images import adm_center_crop

        return adm_center_crop(img, size)

    def pick(self, store, n: int, salt: str) -> list[int]:
        """Conditioning rows: ``analyze.image_keys`` if given, else ``n`` rows drawn by seed."""
        if self.cfg.image_keys:
            out = []
            for k in self.cfg.image_keys[:n] if n else self.cfg.image_keys:
                try:
                    out.append(store.index_of(k))
                except KeyError as e:
                    raise InvalidInput(f"analyze.image_keys: {e}") from None
            return out
        n = min(n, len(store))
        return sorted(int(i) for i in self.rng(salt).choice(len(store), size=n, replace=False))

    # ---------------------------------------------------------------- encoders
    def encoder(self, info: dict, layer: str | None = None):
        """The encoder described by a manifest's ``encoder`` field (optionally another layer)."""
        from rcdm.encoders.build import encoder_from_info
        from rcdm.encoders.registry import get_spec

        info = dict(info)
        if layer is not None and layer != info.get("layer"):
            spec = get_spec(info["name"])
            if layer not in spec.dims:
                raise InvalidInput(
                    f"encoder {info['name']} has no {layer!r} layer (it has: {', '.join(spec.dims)}); "
                    f"remove {layer!r} from analyze.layers or use an encoder with a projection head "
                    "(e.g. simclr-rn50, dino-rn50)"
                )
            info["layer"], info["dim"] = layer, spec.dims[layer]
        key = (
            "encoder",
            info.get("name"),
            info.get("layer"),
            info.get("weights_sha256"),
            info.get("seed"),
            repr(info.get("preprocess")),
        )
        return self.cached(
            key, lambda: encoder_from_info(info, trust_checkpoint=self.cfg.trust_checkpoint).to(self.device).eval()
        )

    def preprocess_for(self, info: dict):
        """The preprocessing a store of this encoder recorded (exactly what its features were made
        with), else the encoder's own."""
        for which in ("val", "train"):
            path = getattr(self.cfg, f"{which}_store")
            if path is None or not (Path(path) / STORE_MANIFEST).is_file():
                continue
            store = self.store(which)
            if same_encoder(store, info):
                return store.preprocess
        return None

    def encode(self, enc, images: list[Image.Image] | np.ndarray) -> np.ndarray:
        """``(N, D)`` float32 representations, preprocessed as the matching store recorded."""
        from rcdm.encoders.build import encode

        if isinstance(images, list) and not images:
            return np.zeros((0, enc.dim), np.float32)
        pp = self.preprocess_for(enc.info()) or enc.preprocess
        return encode(enc, images, pp, batch_size=self.cfg.batch_size, device=self.device)

    # ---------------------------------------------------------------- RCDMs
    def rcdm(self, path: str) -> RCDM:
        """The checkpoint at ``path``, loaded once."""
        return self.cached(("rcdm", str(path)), lambda: self._load_rcdm(str(path)))

    def rcdms(self) -> list[RCDM]:
        if not self.cfg.checkpoints:
            raise InvalidInput("analyze.checkpoints is empty; give at least one RCDM run or weights file")
        return [self.rcdm(p) for p in self.cfg.checkpoints]

    def _load_rcdm(self, path: str) -> RCDM:
        from rcdm.run.models import load_for_sampling

        if not Path(path).exists():
            raise MissingInput(f"checkpoint {path} does not exist; train one with `rcdm train` first")
        model, diffusion, meta = load_for_sampling(
            path, self.cfg.sampler, device=self.device, trust_checkpoint=self.cfg.trust_checkpoint
        )
        unet = meta.get("unet") or {}
        cfg = getattr(model, "cfg", None)
        cond_dim = int(unet.get("cond_dim") or getattr(cfg, "cond_dim", 0))
        image_size = int(unet.get("image_size") or getattr(cfg, "image_size", 0))
        if meta.get("encoder"):
            info, note = dict(meta["encoder"]), "recorded in the checkpoint"
            conditioning = Conditioning.of_run(meta)
            if conditioning.preprocess and not info.get("preprocess"):
                info["preprocess"] = conditioning.preprocess  # the encoder is rebuilt with it
        else:  # an official checkpoint: its conditions are the val store's features
            val = self.store("val")
            check_conditioning(meta, val, what=f"checkpoint {path}")  # dim, the file-name hint
            info, conditioning = dict(val.encoder_info), Conditioning.of_store(val)
            note = f"not recorded in the checkpoint; taken from the val store {self.cfg.val_store}"
        if int(info.get("dim", -1)) != cond_dim:
            raise InvalidInput(
                f"checkpoint {path} expects {cond_dim}-d conditions, but its encoder "
                f"{describe_encoder(info)} ({note}) gives {info.get('dim')}-d representations; "
                "use a checkpoint trained on features of this encoder and layer"
            )
        from rcdm.model.weights import meta_path
        from rcdm.run.rundir import RunDir
        from rcdm.utils import sha256_file

        p, run = Path(path), RunDir(path)
        # the run's manifest / model.json / the weights' meta JSON (cheap), else the weights file
        for f in (run.manifest, run.meta_file, meta_path(p), p):
            if f.is_file():
                self.upstream[str(f)] = sha256_file(f)
                break
        label = checkpoint_label(path)
        return RCDM(
            path=path,
            label=label,
            model=model,
            diffusion=diffusion,
            meta=meta,
            encoder_info=info,
            encoder_note=note,
            conditioning=conditioning,
            cond_dim=cond_dim,
            image_size=image_size,
            kimg=meta.get("kimg"),
        )

    def sample(self, r: RCDM, conds: np.ndarray, seeds: list[int] | np.ndarray) -> np.ndarray:
        """``conds (N, D)``, ``seeds (N,)`` -> ``(N, H, W, 3)`` uint8."""
        from rcdm.diffusion.generate import generate

        conds = np.asarray(conds, np.float32)
        if conds.ndim != 2 or conds.shape[1] != r.cond_dim:
            raise InvalidInput(f"checkpoint {r.path} expects {r.cond_dim}-d conditions, got shape {conds.shape}")
        return generate(
            r.model,
            r.diffusion,
            conds,
            seeds,
            self.cfg.sampler,
            batch_size=self.cfg.batch_size,
            device=self.device,
            progress=False,
            mixed_precision=self.cfg.mixed_precision,
        )

    def sample_grid(self, r: RCDM, conds: np.ndarray, seeds: list[int]) -> np.ndarray:
        """Every condition with every seed: ``(N, S, H, W, 3)`` uint8."""
        conds = np.asarray(conds, np.float32)
        n, s = conds.shape[0], len(seeds)
        imgs = self.sample(r, np.repeat(conds, s, axis=0), np.tile(np.asarray(seeds), n))
        return imgs.reshape(n, s, *imgs.shape[1:])

    def conditions(self, r: RCDM, store, rows: list[int]) -> np.ndarray:
        """Representations of store rows for RCDM ``r``: the cached features when the store was
        made with r's encoder, otherwise r's encoder run on the rows' images. ``(N, D)``."""
        if same_encoder(store, r):
            return self.features(store)[rows]
        enc = self.encoder(r.encoder_info)
        return self.encode(enc, [self.image(store, i) for i in rows])

    def store_rcdms(self, store, experiment: str, required: bool = True) -> tuple[list[RCDM], list[str]]:
        """The checkpoints conditioned on ``store``'s representation, and a note for each other
        one (left out: neighbours / class means / probes must live in the checkpoint's space).
        With ``required``, no matching checkpoint is an error naming both representations."""
        rs = self.rcdms()
        ok = [r for r in rs if same_encoder(store, r)]
        notes = [
            f"checkpoint {r.path} is conditioned on {describe_encoder(r.encoder_info)}, but store "
            f"{store.path} holds {describe_encoder(store.encoder_info)}: left out of this experiment"
            for r in rs
            if r not in ok
        ]
        if required and not ok:
            raise InvalidInput(
                f"{experiment}: no checkpoint in analyze.checkpoints is conditioned on the representation "
                f"of store {store.path} ({describe_encoder(store.encoder_info)}); checkpoints: "
                + "; ".join(f"{r.path} ({describe_encoder(r.encoder_info)})" for r in rs)
                + ". Nearest neighbours, class means and probes must come from a store of the "
                "checkpoint's encoder and layer"
            )
        return ok, notes

    # ---------------------------------------------------------------- outputs
    def caption(self, r: RCDM | None, seeds: list[int] | None, what: str, encoder: dict | None = None) -> str:
        """The caption every figure carries: encoder, layer, checkpoint, sampler, steps, seeds."""
        info = encoder or (r.encoder_info if r else None)
        parts = [what.rstrip(".") + "."]
        if info:
            parts.append(f"Encoder {info.get('name')}, layer {info.get('layer')} ({info.get('dim')}-d).")
        if r is not None:
            kimg = f", {r.kimg} kimg" if r.kimg is not None else ""
            parts.append(f"Checkpoint {r.path}{kimg}.")
            if r.encoder_note != "recorded in the checkpoint":
                parts.append(f"(Encoder {r.encoder_note}.)")
            parts.append(f"Sampler {self.cfg.sampler.label()}.")
        if seeds is not None:
            parts.append(f"Noise seeds {list(seeds)}; analysis seed {self.cfg.seed}.")
        return " ".join(parts)

    def dir(self, experiment: str) -> Path:
        d = self.out / experiment
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_figure(self, experiment: str, name: str, arr: np.ndarray, caption: str, title: str = "") -> Figure:
        from rcdm.viz import save_png

        path = self.dir(experiment) / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"
        save_png(arr, path)
        return Figure(path=str(path.relative_to(self.out)), caption=caption, title=title)

    def finish(
        self,
        experiment: str,
        title: str,
        numbers: dict,
        figures: list[Figure],
        tables: list[Table],
        description: str = "",
        notes: list[str] | None = None,
        summary: str = "",
    ) -> Entry:
        """Write ``<exp>/<exp>.json`` (the numbers) and ``<exp>/entry.json``; return the entry.
        ``summary``: the line said in bold under the title (empty: none)."""
        path = self.dir(experiment) / f"{experiment}.json"
        atomic_write_json(path, _jsonable(numbers))
        entry = Entry(
            experiment=experiment,
            title=title,
            description=description,
            figures=figures,
            tables=tables,
            numbers=str(path.relative_to(self.out)),
            notes=list(notes or []),
            summary=summary,
        )
        write_entry(self.out, entry)
        return entry

    def skip(self, experiment: str, title: str, reason: str) -> Entry:
        entry = Entry(experiment=experiment, title=title, skipped=reason)
        self.dir(experiment)
        write_entry(self.out, entry)
        return entry


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
