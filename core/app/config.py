"""Typed, frozen configuration for every stage, loaded from ``pipeline.yaml``.

One dataclass per section of ``pipeline.yaml``. Loading is strict: an unknown key or a value of
the wrong type is an error that names the section and the key. Paths left ``null`` are derived
from ``data.workdir`` by :func:`resolve`, so the config written next to every output is explicit.

This module must not import torch: ``rcdm --help`` and ``--dry-run`` use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExtractConfig",
    "TrainConfig",
    "SampleConfig",
    "EvaluateConfig",
    "AnalyzeConfig",
    "PipelineConfig",
    "load_config",
    "apply_overrides",
    "resolve",
    "to_dict",
    "dump_yaml",
    "save_resolved",
    "config_reference",
]


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or inconsistent."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and where outputs go."""

    demo: bool = True  # build the embedded demonstration set into train/val if they are missing
    train: str = "data/cache/demo/train"  # training images: ImageFolder tree, file list or tars
    val: str = "data/cache/demo/val"  # validation images (reference set for rank / MRR)
    workdir: str = "runs/demo"  # stores, runs, samples, metrics and the report go under here
    demo_size: int = 64  # side of each demo image in pixels
    demo_train_per_photo: int = 200  # random-resized crops per source photo (train split)
    demo_val_per_photo: int = 16  # crops per source photo (validation split)
    demo_seed: int = 0


@dataclass(frozen=True)
class ExtractConfig:
    """Stage 1: run a frozen encoder over images into a feature store."""

    encoder: str = "random-rn50"  # registry name (``rcdm extract --list-encoders``)
    weights: str | None = None  # local checkpoint file; random-rn50 needs none
    layer: Literal["trunk", "head"] = "trunk"
    source: str | None = None  # default: data.train (the pipeline also extracts data.val)
    out: str | None = None  # default: <workdir>/stores/train
    format: Literal["h5", "wds"] = "h5"
    preprocess: Literal["default", "rcdm", "imagenet"] = "default"  # default: the encoder's own
    input_size: int | None = None  # override the encoder's input crop (e.g. 64 for quick CPU runs); recorded in the manifest
    batch_size: int = 64
    workers: int = 2
    shard_size: int = 1024  # rows per shard
    dtype: Literal["float16", "float32"] = "float16"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    include_images: bool = False  # wds only: store the source image bytes beside the features
    overwrite: bool = False
    trust_checkpoint: bool = False  # allow pickle in torch.load (only for files you trust)
    allow_download: bool = False  # fetch the registry's public weights URL if weights is missing
    seed: int = 0  # random-rn50 initialisation seed
    limit: int | None = None  # encode only the first N images (debugging)
    draft: bool = True  # JPEG draft-mode decoding (libjpeg DCT downscale when >= 2x the resize; faster, not bit-identical)


@dataclass(frozen=True)
class TrainConfig:
    """Stage 2: train RCDM on a feature store."""

    store: str | None = None  # default: <workdir>/stores/train
    out: str | None = None  # default: <workdir>/run
    preset: Literal["tiny", "adm64", "adm128", "adm256"] = "tiny"
    cond: Literal["embed", "cbn"] = "embed"
    cond_norm: Literal["none", "standardize"] = "none"  # standardize h with the training store's per-dimension mean/std (saved with the model)
    resolution: int | None = None  # default: the preset's
    init_from: str | None = None  # official RCDM / ADM checkpoint or our safetensors
    kimg: float = 4.0  # total training images, in thousands
    batch_size: int = 16  # global batch size (all processes, one optimiser step)
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_rates: tuple[float, ...] = (0.9999,)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, no on CPU
    compile: bool = False
    channels_last: bool = False
    checkpoint_kimg: float = 1.0  # checkpoint every N kimg
    grid_kimg: float = 2.0  # sample grid every N kimg (0: never)
    grid_steps: int = 25  # sampling steps for the training grids
    log_every: int = 10  # optimiser steps between log.jsonl lines
    workers: int = 2
    seed: int = 0
    schedule: Literal["default", "linear", "cosine"] = "default"
    dropout: float | None = None  # default: the preset's
    p2_gamma: float = 0.0  # P2 loss weighting 1/(p2_k + SNR)^gamma (Choi et al. 2022); 0: ADM's uniform loss
    p2_k: float = 1.0
    cond_drop: float = 0.0  # train this fraction of samples without h, for classifier-free guidance (sample.guidance)
    trust_checkpoint: bool = False
    source: str | None = None  # image source of the store's keys; null: the store manifest's source root
    encoder: str | None = None  # expected store encoder name; null: accept the store's
    layer: Literal["trunk", "head"] | None = None  # expected store layer; null: accept the store's
    ema_warmup: bool = True  # EMA rate min(rate, (1+step)/(10+step)), so short runs get a useful EMA
    keep_checkpoints: int = 0  # keep only the newest N step-* checkpoints (0: keep all)
    grid_images: int = 4  # conditioning images (rows) in each sample grid
    grid_samples: int = 3  # samples per conditioning image in each grid
    grid_guidance: float = 1.0  # classifier-free guidance of the grids' samples (> 1 needs cond_drop > 0)


@dataclass(frozen=True)
class SampleConfig:
    """Stage 3a: draw images from representations."""

    checkpoint: str | None = None  # run directory or weights file; default: <workdir>/run
    out: str | None = None  # default: <workdir>/samples
    store: str | None = None  # conditions' store; default: <workdir>/stores/val
    condition: Literal[
        "store", "images", "interpolate", "class-mean", "kde", "algebra", "manipulate"
    ] = "store"
    images: tuple[str, ...] = ()  # files, folders or globs (condition: images)
    indices: tuple[int, ...] = ()  # store rows (condition: store)
    keys: tuple[str, ...] = ()  # store keys (condition: store; also a, b, c for algebra etc.)
    subset: int = 16  # random store rows when no indices/keys are given
    n_per_condition: int = 4
    steps: str = "100"  # respacing: "100", "1000", "ddim50"
    ddim: bool = False
    eta: float = 0.0
    guidance: float = 1.0  # classifier-free guidance scale (1: none, RCDM's sampler); > 1 needs train.cond_drop > 0
    clip_denoised: bool = True
    seed: int = 0
    batch_size: int = 32
    interp_steps: int = 8
    fixed_noise: bool = True
    labels: tuple[int, ...] = ()  # class-mean: which labels
    kde_sigma: float = 0.01  # KDE bandwidth: standard deviation of the Gaussian kernel
    kde_n: int = 16
    knn_k: int = 20
    knn_m: int = 14
    manipulate_mode: Literal["zero", "replace"] = "zero"
    ema: str = "auto"  # which EMA rate's weights; auto: the first
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    compile: bool = False
    trust_checkpoint: bool = False
    encoder_weights: str | None = None  # images condition: encoder weights; default: the store's recorded file
    chunk_size: int = 256  # samples per resumable chunk (<out>/partial/chunk-NNNNN.npy)
    grid_rows: int = 16  # conditions per grid PNG (grid-NNN.png)
    grid_conditions: int = 64  # grids show the first N conditions (the samples hold all of them)
    device: str = "auto"  # single process: auto | cpu | cuda | cuda:N (accelerate launch picks per rank)
    overwrite: bool = False  # discard partial or finished samples made with a different configuration


@dataclass(frozen=True)
class EvaluateConfig:
    """Stage 3b: FID, IS and nearest-neighbour rank / MRR."""

    samples: str | None = None  # default: <workdir>/samples
    reference: str | None = None  # reference feature store; default: <workdir>/stores/val
    out: str | None = None  # default: <workdir>/eval
    fid: Literal["auto", "on", "off"] = "auto"  # auto: when Inception weights are present
    inception_weights: str | None = None  # default: $TORCH_HOME or torch-fidelity's cache
    reference_images: str | None = None  # image set for FID reference statistics; default: data.val
    fid_stats_cache: str | None = None  # default: <out>/../fid-ref-<res>.npz; one of another set is refused
    allow_download: bool = False  # fetch the Inception weights into torch's hub cache if missing
    batch_size: int = 64
    device: str = "auto"
    trust_checkpoint: bool = False  # allow pickle in torch.load (encoder / Inception weights)
    is_splits: int = 10  # Inception Score: mean +- std over this many splits
    fid_method: Literal["sqrtm", "eigh"] = "sqrtm"  # sqrtm: as published code; eigh: same, faster
    fid_reference_limit: int | None = None  # use N reference images, evenly spaced (e.g. 10000)
    encoder_weights: str | None = None  # the reference store's encoder weights, if the file moved
    rank_chunk_mb: int = 256  # memory for one (chunk, N) block of rank distances


@dataclass(frozen=True)
class AnalyzeConfig:
    """The paper's analyses as experiments with figures and an HTML report."""

    experiments: tuple[str, ...] = (
        "invariance",
        "probe",
        "adversarial",
        "manipulation",
        "interpolation",
        "distances",
        "neighbours",
        "class-mean",
        "training-dynamics",
    )
    checkpoints: tuple[str, ...] = ()  # RCDM runs to compare; default: (<workdir>/run,)
    train_store: str | None = None  # default: <workdir>/stores/train
    val_store: str | None = None  # default: <workdir>/stores/val
    out: str | None = None  # default: <workdir>/analysis
    evaluations: tuple[str, ...] = ()  # `rcdm evaluate` outputs shown first in the report; default: (<workdir>/eval,) when it exists
    n_images: int = 4  # conditioning images per experiment
    n_samples: int = 4  # samples per condition
    steps: str = "50"
    ddim: bool = False
    guidance: float = 1.0  # classifier-free guidance scale for every sample drawn (see sample.guidance)
    seed: int = 0
    batch_size: int = 32
    transforms: tuple[str, ...] = (
        "vshift",
        "zoom-in",
        "zoom-out",
        "grayscale",
        "color-jitter",
        "hflip",
    )
    custom_transforms: tuple[str, ...] = ()  # torchvision expressions, e.g. "RandomRotation(30)"
    epsilons: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1)
    target_class: int | None = None  # adversarial: None = untargeted
    probe_epochs: int = 100
    knn_k: int = 20
    knn_m: int = 14
    dynamics_checkpoints: tuple[str, ...] = ()  # training-dynamics: runs in training order
    trust_checkpoint: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # sampling: auto = bf16 on GPU, fp32 on CPU
    image_keys: tuple[str, ...] = ()  # val-store keys of the conditioning images; default: seeded pick
    layers: tuple[str, ...] = ("trunk",)  # invariance: encoder layers whose distances are reported
    probe_train_stores: tuple[str, ...] = ()  # probe: train stores (one per encoder/layer); default: train_store
    probe_val_stores: tuple[str, ...] = ()  # probe: the matching val stores, same order
    probe_lr: float = 0.01  # probe: Adam learning rate
    interp_steps: int = 8  # interpolation: points on each path, both ends included
    neighbours_k: int = 5  # neighbours / distances: nearest training images shown
    n_distance: int = 6  # distances: images shown per group (random, same class, augmentations)
    class_labels: tuple[int, ...] = ()  # class-mean: labels; default: n_images labels picked by seed
    algebra_keys: tuple[str, ...] = ()  # manipulation: val keys a, b, c per algebra row (a - b + c)


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)


_SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "extract": ExtractConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
    "analyze": AnalyzeConfig,
}


# --------------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML / command-line value to ``tp``, or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none", "~") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare no/off/false as False: map it back to the one allowed word.
            words = {"no", "off", "false"} if not value else {"yes", "on", "true"}
            match = [a for a in allowed if isinstance(a, str) and a.lower() in words]
            if len(match) == 1:
                return match[0]
        if value in allowed:
            return value
        raise ConfigError(
            f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
        )
    if origin is tuple:
        (item,) = get_args(tp)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        hint = " (YAML reads bare yes/no/on/off as booleans: quote the value)" if isinstance(value, bool) else ""
        raise ConfigError(f"{where}: expected a string, got {value!r}{hint}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # internal


def _section_from_dict(cls: type, raw: Any, section: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"section '{section}' must be a mapping of keys to values, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            close = _close_matches(key, known)
            raise ConfigError(
                f"unknown key '{key}' in section '{section}'"
                + (f"; did you mean '{close}'?" if close else "")
                + f" Known keys: {', '.join(sorted(known))}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def _close_matches(word: str, options: set[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(word, sorted(options), n=1)
    return m[0] if m else None


def from_dict(raw: dict | None) -> PipelineConfig:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    for name in raw:
        if name not in _SECTION_TYPES:
            raise ConfigError(
                f"unknown section '{name}'; the sections are {', '.join(_SECTION_TYPES)}"
            )
    return PipelineConfig(
        **{name: _section_from_dict(cls, raw.get(name), name) for name, cls in _SECTION_TYPES.items()}
    )


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Load ``path`` (default ``pipeline.yaml`` if it exists, else the built-in defaults)."""
    raw: dict = {}
    if path is None:
        default = Path("pipeline.yaml")
        path = default if default.exists() else None
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist; pass --config with an existing file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from e
    cfg = from_dict(raw)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: PipelineConfig, overrides: typing.Sequence[str]) -> PipelineConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars / lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.kimg=10")
        dotted, value_text = item.split("=", 1)
        if "." not in dotted:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.kimg=10")
        section, key = dotted.strip().split(".", 1)
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else ""
        except yaml.YAMLError:
            value = value_text
        if isinstance(value, bool) and _wants_text(section, key):
            value = value_text.strip()  # --set sample.ema=no means the word, not a boolean
        cfg = set_value(cfg, section, key, value)
    return cfg


def _wants_text(section: str, key: str) -> bool:
    """True for fields typed str / str | None (not bool, not Literal)."""
    cls = _SECTION_TYPES.get(section)
    tp = get_type_hints(cls).get(key) if cls else None
    if tp is str:
        return True
    return get_origin(tp) in (Union, types.UnionType) and str in get_args(tp) and bool not in get_args(tp)


def set_value(cfg: PipelineConfig, section: str, key: str, value: Any) -> PipelineConfig:
    """Return ``cfg`` with ``section.key`` set to ``value`` (type-checked)."""
    if section not in _SECTION_TYPES:
        raise ConfigError(f"unknown section '{section}'; the sections are {', '.join(_SECTION_TYPES)}")
    cls = _SECTION_TYPES[section]
    hints = get_type_hints(cls)
    if key not in hints:
        close = _close_matches(key, set(hints))
        raise ConfigError(
            f"unknown key '{key}' in section '{section}'"
            + (f"; did you mean '{close}'?" if close else "")
        )
    sec = replace(getattr(cfg, section), **{key: _coerce(value, hints[key], f"{section}.{key}")})
    return replace(cfg, **{section: sec})


# --------------------------------------------------------------------------------------------
# Derived paths
# --------------------------------------------------------------------------------------------


def resolve(cfg: PipelineConfig) -> PipelineConfig:
    """Fill every ``null`` path from ``data.workdir`` so the config is explicit."""
    w = Path(cfg.data.workdir)
    train_store = str(w / "stores" / "train")
    val_store = str(w / "stores" / "val")
    run_dir = str(w / "run")
    ex = cfg.extract
    ex = replace(ex, source=ex.source or cfg.data.train, out=ex.out or train_store)
    tr = cfg.train
    tr = replace(tr, store=tr.store or train_store, out=tr.out or run_dir)
    sa = cfg.sample
    sa = replace(
        sa,
        checkpoint=sa.checkpoint or run_dir,
        out=sa.out or str(w / "samples"),
        store=sa.store or val_store,
    )
    ev = cfg.evaluate
    ev = replace(
        ev,
        samples=ev.samples or str(w / "samples"),
        reference=ev.reference or val_store,
        out=ev.out or str(w / "eval"),
        reference_images=ev.reference_images or cfg.data.val,
    )
    an = cfg.analyze
    an = replace(
        an,
        checkpoints=an.checkpoints or (run_dir,),
        train_store=an.train_store or train_store,
        val_store=an.val_store or val_store,
        out=an.out or str(w / "analysis"),
        evaluations=an.evaluations or (str(w / "eval"),),
    )
    return replace(cfg, extract=ex, train=tr, sample=sa, evaluate=ev, analyze=an)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


def save_resolved(obj: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write a resolved config (a section or the whole pipeline) next to a stage's outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_yaml(obj))
    tmp.replace(path)
    return path


def config_reference() -> str:
    """Markdown reference of every section and key, generated from the dataclasses."""
    import inspect

    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    out = []
    for name, cls in _SECTION_TYPES.items():
        out.append(f"### `{name}`\n\n{(cls.__doc__ or '').strip()}\n")
        hints = get_type_hints(cls)
        comments = _field_comments(inspect.getsource(cls))
        rows = list(lines)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(
                f"| `{f.name}` | {_type_name(hints[f.name])} | `{to_dict(default)!r}` | "
                f"{comments.get(f.name, '')} |"
            )
        out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def _field_comments(source: str) -> dict[str, str]:
    result = {}
    for line in source.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith("#"):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                result[name] = s.split("#", 1)[1].strip().replace("|", "\\|")
    return result
