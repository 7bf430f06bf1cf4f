"""Typed, frozen configuration for every stage: one dataclass per section of ``pipeline.yaml``.

The defaults are the paper's recipe (224 px encoder input, the ``adm128`` preset, lr 1e-4, raw h,
no P2 weighting, no condition dropout, no guidance, 100 respaced ancestral steps), so a command
typed without a config does what the README's ImageNet recipe says. The embedded demo's
shortcuts live in a named profile (``app/profiles/demo.yaml``), never here.

Every section remembers where each value that is not a default came from (``origin``), and
:func:`rcdm.app.configio.dump_yaml` writes it as a comment: the config printed by ``--dry-run`` and the
``config.yaml`` written beside every output say which file, profile or option set what. Loading
(layers, type checks, paths derived from ``data.workdir``) is :mod:`rcdm.app.load`.

This module must not import torch: ``rcdm --help`` and ``--dry-run`` use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from rcdm.diffusion.spec import Sampler, Steps
from rcdm.errors import InvalidInput

__all__ = [
    "AnalyzeConfig",
    "ConfigError",
    "DataConfig",
    "EXPERIMENTS",
    "EXTRA_EXPERIMENTS",
    "EvaluateConfig",
    "RECIPES",
    "ExtractConfig",
    "PipelineConfig",
    "PriorConfig",
    "SECTIONS",
    "SampleConfig",
    "TrainConfig",
    "check_experiments",
    "section_fields",
    "to_dict",
]

# The paper's analyses, in the order the report shows them (``rcdm analyze --help``).
EXPERIMENTS: tuple[str, ...] = (
    "invariance", "probe", "adversarial", "manipulation", "interpolation", "distances",
    "neighbours", "class-mean", "training-dynamics",
)  # fmt: skip
# Analyses beyond the paper's, run only when named (``rcdm analyze pooled-vs-tokens``).
EXTRA_EXPERIMENTS: tuple[str, ...] = ("pooled-vs-tokens",)


def check_experiments(names: tuple[str, ...], origin: str = "analyze.experiments") -> None:
    """``names`` (analyze.experiments, set by ``origin``) are known experiments, at least one."""
    known = EXPERIMENTS + EXTRA_EXPERIMENTS
    if unknown := [e for e in names if e not in known]:
        raise InvalidInput(f"unknown experiment(s) {', '.join(unknown)} (from {origin}); choose from {', '.join(known)}")
    if not names:
        raise InvalidInput(f"no experiment selected; choose from {', '.join(EXPERIMENTS)}")


# Named training recipes (``train.recipe``; docs/recipes.md has the measurements behind them).
# "paper" is the fields' defaults; another name fills the fields it lists that no layer set.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "fast": {"prediction": "v", "zero_terminal_snr": True, "min_snr_gamma": 5.0, "p2_gamma": 0.0},
}


class ConfigError(InvalidInput):
    """A configuration value is unknown, mistyped or inconsistent."""


@dataclass(frozen=True)
class Section:
    """Base of every section: ``origin`` maps a key to where its non-default value came from
    ("file pipeline.yaml", "profile demo", "option --lr", "--set train.lr", "derived from data.workdir")."""

    origin: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A section built in code (tests, notebooks) may spell steps as text: parse it here too.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("Steps", Steps) and not isinstance(value, Steps):
                object.__setattr__(self, f.name, Steps.parse(value))

    def derived(self, key: str, *, unknown: bool) -> bool:
        """Was ``key`` filled in by :mod:`rcdm.app.load` ("derived from ...")? ``unknown``: the answer
        when no origin is recorded for it (a section built in code, or a default)."""
        where = self.origin.get(key)
        return unknown if where is None else where.startswith("derived ")


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the images are and where outputs go."""

    demo: bool = False  # build the embedded demonstration set into train/val (the demo profile sets it)
    train: str | None = None  # training images: ImageFolder tree, file list or tars (e.g. /data/imagenet/train)
    val: str | None = None  # validation images (reference set for rank / MRR)
    workdir: str = "runs"  # stores, runs, samples, metrics and the report go under here
    demo_size: int = 64  # side of each demo image in pixels
    demo_train_per_photo: int = 200  # random-resized crops per source photo (train split)
    demo_val_per_photo: int = 16  # crops per source photo (validation split)
    demo_seed: int = 0


@dataclass(frozen=True)
class ExtractConfig(Section):
    """Stage 1: run a frozen encoder over images into a feature store."""

    encoder: str | None = None  # registry name, required (``rcdm extract --list-encoders``)
    weights: str | None = None  # local checkpoint file; random-rn50 needs none
    layer: Literal["trunk", "cls", "mean", "tokens", "head"] = "trunk"  # ViTs: cls (the method's pooled output), mean (of the patch tokens), tokens (the patch grid)
    source: str | None = None  # default: data.train (the pipeline also extracts data.val)
    out: str | None = None  # default: <workdir>/stores/train
    format: Literal["h5", "wds"] = "h5"
    preprocess: Literal["default", "rcdm", "imagenet", "imagenet-bicubic", "clip", "siglip"] = "default"  # default: the encoder's own
    input_size: int | None = None  # encoder input crop; null: the encoder's own (224 for every registry entry); recorded in the manifest
    batch_size: int = 64
    workers: int | Literal["auto"] = "auto"  # DataLoader decode workers; auto: the CPU cores less one (max 16)
    shard_size: int = 1024  # rows per shard
    dtype: Literal["float16", "float32"] = "float16"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, none on a CPU
    channels_last: bool | Literal["auto"] = "auto"  # auto: on CUDA
    decode: Literal["auto", "cpu", "gpu"] = "auto"  # JPEG decoding: cpu (PIL in workers) or gpu (nvjpeg, exact resize/crop); auto: gpu on CUDA
    include_images: bool = False  # wds only: store the source image bytes beside the features
    overwrite: bool = False
    trust_checkpoint: bool = False  # allow pickle in torch.load (only for files you trust)
    allow_download: bool = False  # fetch the registry's public weights URL if weights is missing
    seed: int = 0  # random-rn50 initialisation seed
    limit: int | None = None  # encode only the first N images (debugging)
    draft: bool = True  # JPEG draft-mode decoding (libjpeg DCT downscale when >= 2x the resize; faster, not bit-identical)
    max_pixels: int = 64_000_000  # images larger than this (width x height, read from the header) are skipped and listed like unreadable ones, never decoded; recorded with the store
    repair: bool = False  # re-encode only the shards whose file is missing or differs from its recorded sha256, keep the rest


@dataclass(frozen=True)
class TrainConfig(Section):
    """Stage 2: train RCDM on a feature store."""

    store: str | None = None  # default: <workdir>/stores/train
    out: str | None = None  # default: <workdir>/run
    preset: Literal["tiny", "adm64", "adm128", "adm256"] = "adm128"
    cond: Literal["embed", "cbn", "both", "xattn"] = "embed"  # how h enters the UNet: embed (RCDM's code), cbn (the paper's conditional norm), both (an rcdm addition), xattn (cross-attention to a tokens store's patch grid; embed / cbn / both on a tokens store condition on the token mean)
    cond_norm: Literal["none", "standardize"] = "none"  # none: raw h, as RCDM; standardize h with the training store's per-dimension mean/std (saved with the model)
    cond_image: int = 0  # > 0: also give the UNet a linear map of h to a 3 x N x N image (upsampled; 3 extra input channels), fitted by ridge regression on the training store before the first step and kept fixed (an rcdm addition, docs/recipes.md); 0: off, as RCDM
    resolution: int | None = None  # default: the preset's
    init_from: str | None = None  # official RCDM / ADM checkpoint or our safetensors
    kimg: float = 50000.0  # total training images, in thousands
    batch_size: int = 16  # global batch size (all processes, one optimiser step)
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_rates: tuple[float, ...] = (0.9999,)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, no on CPU
    compile: bool | Literal["auto"] = "auto"  # torch.compile; auto: on CUDA
    channels_last: bool | Literal["auto"] = "auto"  # auto: on CUDA when compiled (eager GroupNorm wants NCHW)
    checkpoint_kimg: float = 500.0  # checkpoint every N kimg (an adm128 checkpoint is ~7 GB; written in the background on CUDA)
    milestone_kimg: float = 5000.0  # checkpoints at multiples of this are kept whatever keep_checkpoints says (0: none)
    grid_kimg: float = 2500.0  # sample grid every N kimg (0: never)
    grid_steps: Steps = Steps.parse("25")  # respacing of the training grids' sampler
    log_every: int = 10  # optimiser steps between log.jsonl lines
    workers: int | Literal["auto"] = "auto"  # DataLoader workers; auto: the CPU cores less one (max 8)
    image_cache: Literal["auto", "on", "off"] = "auto"  # images decoded + ADM-resized once into <store>.images-<R>px; auto: on CUDA if it fits
    draft: bool = False  # JPEG draft-mode decoding (faster; not guided-diffusion's exact pixels)
    seed: int = 0
    schedule: Literal["default", "linear", "cosine"] = "default"
    dropout: float | None = None  # default: the preset's
    p2_gamma: float = 0.0  # P2 loss weighting 1/(p2_k + SNR)^gamma (Choi et al. 2022); 0: ADM's uniform loss
    p2_k: float = 1.0
    cond_drop: float = 0.0  # train this fraction of samples without h, for classifier-free guidance (sample.guidance)
    trust_checkpoint: bool = False
    source: str | None = None  # image source of the store's keys; null: the store manifest's source root
    encoder: str | None = None  # expected store encoder name; null: accept the store's
    layer: Literal["trunk", "cls", "mean", "tokens", "head"] | None = None  # expected store layer; null: accept the store's
    ema_warmup: bool = True  # EMA rate min(rate, (1+step)/(10+step)), so short runs get a useful EMA
    keep_checkpoints: int = 3  # keep only the newest N step-* checkpoints, plus milestones (0: keep all)
    grid_images: int = 4  # conditioning images (rows) in each sample grid
    grid_samples: int = 3  # samples per conditioning image in each grid
    grid_guidance: float = 1.0  # classifier-free guidance of the grids' samples (> 1 needs cond_drop > 0)
    recipe: Literal["paper", "fast"] = "paper"  # named recipe (docs/recipes.md): paper = these defaults; fast fills the options it names that no layer set (origin "recipe fast")
    threads: int = 0  # torch CPU threads; 0: auto = on a CPU device the cores not busy with other processes (1-minute load), on a GPU the cores minus train.workers; at least 1, so torch and the loader do not oversubscribe the cores; the value used is written to the run's config.yaml
    val_store: str | None = None  # held-out store for faithfulness while training (rank / MRR logged at each eval_kimg); null: <workdir>/stores/val when data.val is set, else the check is skipped
    eval_kimg: float = 0.0  # faithfulness check every N kimg; 0: with each checkpoint
    eval_conditions: int = 64  # val_store rows (a seeded pick, the same at every check) sampled once each; 0: no check
    eval_steps: Steps = Steps.parse("ddim25")  # respacing of the check's sampler
    eval_guidance: float | None = None  # guidance of the check; null: grid_guidance. Unguided is logged too when cond_drop > 0
    eval_guidance_interval: tuple[float, float] = (0.0, 1.0)  # the check's guided steps, as sample.guidance_interval
    prediction: Literal["eps", "v"] = "eps"  # what the network predicts: eps (ADM, the paper) or v = sqrt(acp) eps - sqrt(1 - acp) x0 (Salimans & Ho 2022)
    min_snr_gamma: float = 0.0  # min-SNR-gamma loss weight min(SNR, gamma) / SNR (eps) or / (SNR + 1) (v) (Hang et al. 2023); 0: off
    zero_terminal_snr: bool = False  # rescale the schedule so SNR(T) = 0 (Lin et al. 2024; use with prediction v and trailing steps)

    @property
    def grid_sampler(self) -> Sampler:
        """The training grids' sampler (ancestral unless grid_steps is "ddimN")."""
        return Sampler(self.grid_steps, guidance=self.grid_guidance)


@dataclass(frozen=True)
class SampleConfig(Section):
    """Stage 3a: draw images from representations."""

    checkpoint: str | None = None  # run directory or weights file; default: <workdir>/run
    out: str | None = None  # default: <workdir>/samples
    store: str | None = None  # conditions' store; default: <workdir>/stores/val
    condition: Literal[
        "store", "images", "interpolate", "class-mean", "kde", "algebra", "manipulate", "prior"
    ] = "store"  # what the samples are conditioned on (rcdm sample --help)
    images: tuple[str, ...] = ()  # files, folders or globs (condition: images)
    indices: tuple[int, ...] = ()  # store rows (condition: store)
    keys: tuple[str, ...] = ()  # store keys (condition: store; also a, b, c for algebra etc.)
    subset: int = 16  # random store rows when no indices/keys are given
    n_per_condition: int = 4
    steps: Steps = Steps.parse("100")  # respacing: "100" (the paper), "1000", "10,20,30" or "ddim50"
    ddim: bool = False  # DDIM update on the respaced steps (always for "ddimN")
    eta: float = 0.0
    guidance: float = 1.0  # classifier-free guidance scale (1: none, RCDM's sampler); > 1 needs train.cond_drop > 0
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # guide only the steps with lo <= t/T <= hi (Kynkaanniemi et al. 2024); [0, 1]: every step
    guidance_rescale: float = 0.0  # phi in [0, 1]: rescale the guided prediction to the conditional one's std, against over-exposure (Lin et al. 2024 use 0.7); 0: off
    clip_denoised: bool = True
    seed: int = 0
    batch_size: int = 32
    interp_steps: int = 8
    fixed_noise: bool = True
    labels: tuple[int, ...] = ()  # class-mean: which labels
    kde_sigma: float = 0.01  # KDE bandwidth: standard deviation of the Gaussian kernel
    kde_n: int = 16
    prior: str | None = None  # condition prior: a `rcdm train-prior` folder; default: <workdir>/prior
    prior_n: int = 16  # condition prior: representations drawn from the prior
    knn_k: int = 20
    knn_m: int = 14
    manipulate_mode: Literal["zero", "replace"] = "zero"
    ema: str = "auto"  # which EMA rate's weights; auto: the first
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # torch.compile the UNet; auto: on CUDA (with channels-last)
    trust_checkpoint: bool = False
    encoder_weights: str | None = None  # images condition: encoder weights; default: the store's recorded file
    chunk_size: int = 256  # samples per resumable chunk (<out>/partial/chunk-NNNNN.npy)
    grid_rows: int = 16  # conditions per grid PNG (grid-NNN.png)
    grid_conditions: int = 64  # grids show the first N conditions (the samples hold all of them)
    device: str = "auto"  # single process: auto | cpu | cuda | cuda:N (accelerate launch picks per rank)
    overwrite: bool = False  # discard partial or finished samples made with a different configuration

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.steps, self.ddim, self.eta, self.guidance, self.guidance_interval, self.guidance_rescale)


@dataclass(frozen=True)
class EvaluateConfig(Section):
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
    train_store: str | None = None  # retrieval baseline: the nearest training image to each condition; default: <workdir>/stores/train when it exists
    second_references: tuple[str, ...] = ()  # stores of the same reference images by other encoders: rank / MRR, top-k, cosine and diversity in their spaces
    fd_extractors: tuple[str, ...] = ("dinov2-vit-b-14",)  # torch-fidelity extractors for FD and precision / recall, computed when their weights are present locally (fid: off skips them)


@dataclass(frozen=True)
class AnalyzeConfig(Section):
    """The paper's analyses as experiments with figures and an HTML report."""

    experiments: tuple[str, ...] = EXPERIMENTS  # any of them, in this order by default
    checkpoints: tuple[str, ...] = ()  # RCDM runs to compare; default: (<workdir>/run,)
    train_store: str | None = None  # default: <workdir>/stores/train
    val_store: str | None = None  # default: <workdir>/stores/val
    out: str | None = None  # default: <workdir>/analysis
    evaluations: tuple[str, ...] = ()  # `rcdm evaluate` outputs shown first in the report; default: (<workdir>/eval,) when it exists
    n_images: int = 4  # conditioning images per experiment
    n_samples: int = 4  # samples per condition
    steps: Steps = Steps.parse("100")  # respacing, as sample.steps
    ddim: bool = False
    guidance: float = 1.0  # classifier-free guidance scale for every sample drawn (see sample.guidance)
    guidance_rescale: float = 0.0  # see sample.guidance_rescale
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
    second_store: str | None = None  # invariance: a store of another encoder; sample movement is measured in its space (default: the conditioning encoder's)
    prior: str | None = None  # a `rcdm train-prior` folder: the report compares its draws with KDE's; default: <workdir>/prior when it exists

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.steps, self.ddim, 0.0, self.guidance, guidance_rescale=self.guidance_rescale)


@dataclass(frozen=True)
class PriorConfig(Section):
    """A learned prior over representations (RCG's MLP diffusion), for sampling with no image."""

    # The defaults train a 2048-d prior in ~5 CPU minutes (one thread: OMP_NUM_THREADS=1 on a shared
    # CPU) and match held-out data on the demo's store (docs/prior.md). They are small for an ImageNet-scale store (1.28M entries):
    # there, on a GPU, use RCG's size and more steps, e.g. --set prior.width=1536
    # --set prior.blocks=12 --set prior.batch_size=512 --set prior.iters=100000 (RCG: 200 epochs),
    # which is ~57x the defaults' compute per step.

    store: str | None = None  # training feature store; default: <workdir>/stores/train
    out: str | None = None  # default: <workdir>/prior
    width: int = 512  # hidden width of the residual MLP (RCG: 1536, for 256-d features)
    blocks: int = 6  # residual blocks (RCG: 12)
    timesteps: int = 1000  # diffusion steps (RCG's linear schedule, x0 prediction)
    iters: int = 2000  # optimiser steps
    batch_size: int = 128
    lr: float = 1e-3  # AdamW, a 100-step warm-up then a cosine decay to 0 at iters
    weight_decay: float = 0.0
    ema_rate: float = 0.999
    sample_steps: int = 100  # DDIM steps when drawing from the prior
    sample_eta: float = 1.0  # DDIM eta (1: ancestral-like, RCG's; 0: deterministic)
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False  # replace a finished prior in out


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "extract": ExtractConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
    "analyze": AnalyzeConfig,
    "prior": PriorConfig,
}


def section_fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    """The user-facing fields of a section (everything but ``origin``)."""
    return [f for f in fields(cls_or_obj) if f.name != "origin"]


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON data: sections as dicts (without ``origin``), tuples as lists, steps as text."""
    if isinstance(obj, Steps):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in (section_fields(obj) if isinstance(obj, Section) else fields(obj))]
        return {n: to_dict(getattr(obj, n)) for n in names}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj
