"""The sections of ``pipeline.yaml``: one frozen dataclass per stage, the schema of every key.

The defaults are the paper's recipe (224 px encoder input, the ``adm128`` preset, lr 1e-4, raw h,
no P2 weighting, no condition dropout, no guidance, 100 respaced ancestral steps), so a command
typed without a config does what the README's ImageNet recipe says. The embedded demo's
shortcuts live in a named profile (``rcdm.app``'s ``profiles/demo.yaml``), never here.

Each key is declared once, with :func:`rcdm.config.schema.setting`: default, help, bounds and
whether it is a path to read or write. A section checks every key against its bounds when it is
made (``__post_init__``), and the rules between keys in :meth:`Section.check`, which a stage
calls before it starts. Every section remembers where each value that is not a default came from
(``origin``), which :func:`rcdm.config.io.dump_yaml` writes as a comment.

No torch: ``rcdm --help`` and ``--dry-run`` use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from rcdm.config.sampler import Sampler, SamplerSettings, Steps, interval_problem
from rcdm.config.schema import ConfigError, check_fields, setting

__all__ = [
    "AnalyzeConfig",
    "DataConfig",
    "EXPERIMENTS",
    "EXTRA_EXPERIMENTS",
    "EvaluateConfig",
    "ExtractConfig",
    "PAPER_DIFFUSION",
    "PipelineConfig",
    "PretrainConfig",
    "PriorConfig",
    "RECIPES",
    "SECTIONS",
    "SampleConfig",
    "Section",
    "TrainConfig",
    "section_fields",
]

# The paper's analyses, in the order the report shows them (``rcdm analyze --help``).
EXPERIMENTS: tuple[str, ...] = (
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
# Analyses beyond the paper's, run only when named (``rcdm analyze pooled-vs-tokens``).
EXTRA_EXPERIMENTS: tuple[str, ...] = ("pooled-vs-tokens", "layers")

# Named training recipes (``train.recipe``; docs/recipes.md has the measurements behind them).
# "paper" is the fields' defaults; another name fills the fields it lists that no layer set.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "fast": {"prediction": "v", "zero_terminal_snr": True, "min_snr_gamma": 5.0, "p2_gamma": 0.0},
}

# The paper's (guided-diffusion's) values of the opt-in diffusion options (docs/recipes.md): a run
# records in model.json only those it changes, so an absent key means the value here.
PAPER_DIFFUSION = MappingProxyType({"prediction": "eps", "zero_terminal_snr": False})

Layer = Literal["trunk", "cls", "mean", "tokens", "head"]
LAYER_HELP = {
    "trunk": "the backbone's pooled output",
    "cls": "ViTs: the method's pooled output (CLS token, SigLIP's MAP pool, I-JEPA's token mean)",
    "mean": "ViTs: the mean of the patch tokens",
    "tokens": "ViTs: the patch grid",
    "head": "the projector head's output",
}


def _experiments_problem(names: tuple[str, ...]) -> str | None:
    known = EXPERIMENTS + EXTRA_EXPERIMENTS
    if unknown := [e for e in names if e not in known]:
        return f"has unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(known)}"
    return None if names else f"selects no experiment; choose from {', '.join(EXPERIMENTS)}"


def _rates_problem(rates: tuple[float, ...]) -> str | None:
    if not rates:
        return "is empty; give at least one rate, e.g. [0.9999]"
    return f"has duplicates: {list(rates)}" if len(set(rates)) != len(rates) else None


def _nonempty(value: tuple) -> str | None:
    return None if value else "must not be empty"


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
        check_fields(self, f"{self.name()}.", skip=("origin",))

    @classmethod
    def name(cls) -> str:
        """The section's key in ``pipeline.yaml``."""
        return next(k for k, v in SECTIONS.items() if v is cls)

    def check(self) -> None:
        """The rules between keys (each key's own bounds are checked when the section is made);
        a stage calls it before it starts, ``--dry-run`` too. ``ConfigError`` naming the keys."""

    def derived(self, key: str, *, unknown: bool) -> bool:
        """Was ``key`` filled in by :func:`rcdm.app.load.resolve` ("derived from ...")? ``unknown``: the
        answer when no origin is recorded for it (a section built in code, or a default)."""
        where = self.origin.get(key)
        return unknown if where is None else where.startswith("derived ")


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the images are and where outputs go."""

    demo: bool = setting(False, "build the embedded demonstration set into train/val (the demo profile sets it)")
    train: str | None = setting(
        None, "training images: ImageFolder tree, file list or tars (e.g. /data/imagenet/train)", path="in?"
    )
    val: str | None = setting(None, "validation images (reference set for rank / MRR)", path="in?")
    workdir: str = setting("runs", "stores, runs, samples, metrics and the report go under here")
    demo_size: int = setting(64, "side of each demo image in pixels", ge=8)
    demo_train_per_photo: int = setting(200, "random-resized crops per source photo (train split)", ge=1)
    demo_val_per_photo: int = setting(16, "crops per source photo (validation split)", ge=1)
    demo_seed: int = setting(0, "seed of the demo set's crops")


@dataclass(frozen=True)
class ExtractConfig(Section):
    """Stage 1: run a frozen encoder over images into a feature store."""

    encoder: str | None = setting(
        None, "registry name, required (--list-encoders shows layers, preprocessing and weights URLs)"
    )
    weights: str | None = setting(None, "local checkpoint file; random-rn50 needs none", path="in?")
    layer: Layer = setting("trunk", "which layer to store", choices_help=LAYER_HELP)
    source: str | None = setting(
        None, "image folder, list file or tars; default: data.train (the pipeline also extracts data.val)", path="in"
    )
    out: str | None = setting(None, "the store folder; default: <workdir>/stores/train", path="out")
    format: Literal["h5", "wds"] = setting("h5", "shard format: HDF5, or webdataset tars")
    preprocess: Literal["default", "rcdm", "imagenet", "imagenet-bicubic", "clip", "siglip", "rcdm32"] = setting(
        "default", "encoder input convention; default: the encoder's own"
    )
    input_size: int | None = setting(
        None,
        "encoder input crop; null: the encoder's own (224 for every registry entry); recorded in the manifest",
        ge=16,
    )
    batch_size: int = setting(64, "images per encoder forward", ge=1)
    workers: int | Literal["auto"] = setting(
        "auto", "DataLoader decode workers; auto: the CPU cores less one (max 16)", ge=0
    )
    shard_size: int = setting(1024, "rows per shard", ge=1)
    dtype: Literal["float16", "float32"] = setting("float16", "storage type of the features")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "none", "bf16", "fp16"] = setting(
        "auto", "encoder precision; auto: bf16 on CUDA, none on a CPU"
    )
    channels_last: bool | Literal["auto"] = setting("auto", "channels-last encoder input; auto: on CUDA")
    decode: Literal["auto", "cpu", "gpu"] = setting(
        "auto", "JPEG decoding: cpu (PIL in workers) or gpu (nvjpeg, exact resize/crop); auto: gpu on CUDA"
    )
    include_images: bool = setting(False, "wds only: store the source image bytes beside the features")
    overwrite: bool = setting(False, "replace an existing store made with other settings")
    trust_checkpoint: bool = setting(False, "allow pickle in torch.load (only for files you trust)")
    allow_download: bool = setting(False, "fetch the registry's public weights URL if weights is missing")
    seed: int = setting(0, "random-rn50 initialisation seed")
    limit: int | None = setting(None, "encode only the first N images (debugging)", ge=1)
    draft: bool = setting(
        True, "JPEG draft-mode decoding (libjpeg DCT downscale when >= 2x the resize; faster, not bit-identical)"
    )
    max_pixels: int = setting(
        64_000_000,
        "images larger than this (width x height, read from the header) are skipped and listed like "
        "unreadable ones, never decoded; recorded with the store. It bounds each decode worker's memory: "
        "a worker holds one image at a time, about 28 bytes per pixel at its peak (1.7 GB for a 62 Mpx "
        "PNG), so the extraction's decoding needs up to workers x max_pixels x 28 bytes",
        ge=1,
    )
    repair: bool = setting(
        False, "re-encode only the shards whose file is missing or differs from its recorded sha256, keep the rest"
    )

    def check(self) -> None:
        if self.include_images and self.format != "wds":
            raise ConfigError("extract.include_images needs the webdataset format; add --format wds")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Stage 2: train RCDM on a feature store."""

    store: str | None = setting(None, "the training feature store; default: <workdir>/stores/train", path="in")
    out: str | None = setting(None, "the run folder; default: <workdir>/run", path="out")
    preset: Literal["tiny", "adm64", "adm128", "adm256"] = setting(
        "adm128", "UNet architecture: ADM's for 64 / 128 / 256 px, tiny (32 px) for a CPU"
    )
    cond: Literal["embed", "cbn", "both", "xattn"] = setting(
        "embed",
        "how h enters the UNet",
        choices_help={
            "embed": "RCDM's code: h added to the timestep embedding",
            "cbn": "the paper's conditional normalisation",
            "both": "embed and cbn together (an rcdm addition)",
            "xattn": "cross-attention to a tokens store's patch grid (embed / cbn / both on a tokens store "
            "condition on the token mean)",
        },
    )
    cond_norm: Literal["none", "standardize"] = setting(
        "none",
        "none: raw h, as RCDM; standardize h with the training store's per-dimension mean/std (saved with the model)",
    )
    cond_image: int = setting(
        0,
        "> 0: also give the UNet a linear map of h to a 3 x N x N image (upsampled; 3 extra input channels), "
        "fitted by ridge regression on the training store before the first step and kept fixed (an rcdm "
        "addition, docs/recipes.md); 0: off, as RCDM",
        ge=0,
    )
    resolution: int | None = setting(None, "image side in pixels; default: the preset's", ge=8)
    init_from: str | None = setting(None, "official RCDM / ADM checkpoint or our safetensors", path="in?")
    kimg: float = setting(50000.0, "total training images, in thousands", gt=0)
    batch_size: int = setting(16, "global batch size (all processes, one optimiser step)", ge=1)
    grad_accum: int = setting(1, "micro-batches per optimiser step", ge=1)
    lr: float = setting(1e-4, "learning rate (the paper: 1e-4; 0 keeps the weights, a check of --init-from)", ge=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    grad_clip: float = setting(1.0, "gradient norm clip (0: off)", ge=0)
    ema_rates: tuple[float, ...] = setting(
        (0.9999,), "EMA rates; the first is the run's weights", ge=0, lt=1, check=_rates_problem
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = setting("auto", "auto: bf16 on GPU, no on CPU")
    compile: bool | Literal["auto"] = setting("auto", "compile the model with torch.compile; auto: on CUDA")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = setting(
        "inductor",
        "torch.compile's backend when compiling: inductor (generated kernels; the GPU's), aot_eager (traces "
        "forward and backward, runs them with eager kernels: the compiled path checked on a CPU), eager",
    )
    channels_last: bool | Literal["auto"] = setting(
        "auto", "channels-last tensors; auto: on CUDA when compiled (eager GroupNorm wants NCHW)"
    )
    checkpoint_kimg: float = setting(
        500.0,
        "checkpoint every N kimg (an adm128 checkpoint is ~7 GB; written in the background on CUDA)",
        gt=0,
    )
    checkpoint_async: Literal["auto", "on", "off"] = setting(
        "auto",
        "write a checkpoint's weights in a background thread while training goes on (the next checkpoint, or "
        "the end of training, waits for it and stops with its error); auto: on CUDA",
    )
    pg_timeout_s: float = setting(
        1800.0,
        "several processes: seconds a process waits for the others at a collective (gradient all-reduce, "
        "barrier) before the launch stops with an error; longer than anything one process does alone while "
        "the others wait (a checkpoint, a sample grid, the faithfulness check); a killed process stops the "
        "others within it",
        gt=0,
    )
    milestone_kimg: float = setting(
        5000.0, "checkpoints at multiples of this are kept whatever keep_checkpoints says (0: none)", ge=0
    )
    grid_kimg: float = setting(2500.0, "sample grid every N kimg (0: never)", ge=0)
    grid_steps: Steps = setting(Steps.parse("25"), "respacing of the training grids' sampler")
    log_every: int = setting(10, "optimiser steps between log.jsonl lines", ge=1)
    workers: int | Literal["auto"] = setting("auto", "DataLoader workers; auto: the CPU cores less one (max 8)", ge=0)
    image_cache: Literal["auto", "on", "off"] = setting(
        "auto", "images decoded + ADM-resized once into <store>.images-<R>px; auto: on CUDA if it fits"
    )
    draft: bool = setting(False, "JPEG draft-mode decoding (faster; not guided-diffusion's exact pixels)")
    seed: int = setting(0, "seed of the data order, noise, time steps and grids")
    schedule: Literal["default", "linear", "cosine"] = setting("default", "beta schedule; default: the preset's")
    dropout: float | None = setting(None, "default: the preset's", ge=0, lt=1)
    p2_gamma: float = setting(
        0.0, "P2 loss weighting 1/(p2_k + SNR)^gamma (Choi et al. 2022); 0: ADM's uniform loss", ge=0
    )
    p2_k: float = setting(1.0, "P2's k", ge=0)
    cond_drop: float = setting(
        0.0, "train this fraction of samples without h, for classifier-free guidance (sample.guidance)", ge=0, lt=1
    )
    trust_checkpoint: bool = setting(False, "allow pickle in torch.load (only for files you trust)")
    source: str | None = setting(
        None, "image source of the store's keys; null: the store manifest's source root", path="in?"
    )
    encoder: str | None = setting(None, "expected store encoder name; null: accept the store's")
    layer: Layer | None = setting(None, "expected store layer; null: accept the store's")
    ema_warmup: bool = setting(True, "EMA rate min(rate, (1+step)/(10+step)), so short runs get a useful EMA")
    keep_checkpoints: int = setting(3, "keep only the newest N step-* checkpoints, plus milestones (0: keep all)", ge=0)
    grid_images: int = setting(4, "conditioning images (rows) in each sample grid", ge=1)
    grid_samples: int = setting(3, "samples per conditioning image in each grid", ge=1)
    grid_guidance: float = setting(
        1.0, "classifier-free guidance of the grids' samples (> 1 needs cond_drop > 0)", ge=0
    )
    recipe: Literal["paper", "fast"] = setting(
        "paper",
        "named recipe (docs/recipes.md): paper = these defaults; fast fills the options it names that no layer "
        'set (origin "recipe fast")',
    )
    threads: int = setting(
        0,
        "torch CPU threads; 0: auto = on a CPU device the cores not busy with other processes (1-minute load), "
        "on a GPU the cores minus train.workers; at least 1, so torch and the loader do not oversubscribe the "
        "cores; the value used is written to the run's config.yaml",
        ge=0,
    )
    val_store: str | None = setting(
        None,
        "held-out store for faithfulness while training (rank / MRR logged at each eval_kimg); null: "
        "<workdir>/stores/val when data.val is set, else the check is skipped",
        path="in?",
    )
    eval_kimg: float = setting(0.0, "faithfulness check every N kimg; 0: with each checkpoint", ge=0)
    eval_conditions: int = setting(
        64, "val_store rows (a seeded pick, the same at every check) sampled once each; 0: no check", ge=0
    )
    eval_steps: Steps = setting(Steps.parse("ddim25"), "respacing of the check's sampler")
    eval_guidance: float | None = setting(
        None, "guidance of the check; null: grid_guidance. Unguided is logged too when cond_drop > 0", ge=0
    )
    eval_guidance_interval: tuple[float, float] = setting(
        (0.0, 1.0), "the check's guided steps, as sample.guidance_interval", check=interval_problem
    )
    prediction: Literal["eps", "v"] = setting(
        "eps",
        "what the network predicts: eps (ADM, the paper) or v = sqrt(acp) eps - sqrt(1 - acp) x0 (Salimans & Ho 2022)",
    )
    min_snr_gamma: float = setting(
        0.0, "min-SNR-gamma loss weight min(SNR, gamma) / SNR (eps) or / (SNR + 1) (v) (Hang et al. 2023); 0: off", ge=0
    )
    zero_terminal_snr: bool = setting(
        False, "rescale the schedule so SNR(T) = 0 (Lin et al. 2024; use with prediction v and trailing steps)"
    )

    @property
    def grid_sampler(self) -> Sampler:
        """The training grids' sampler (ancestral unless grid_steps is "ddimN" or "trailingN")."""
        return Sampler(self.grid_steps, guidance=self.grid_guidance)

    def check(self) -> None:
        if self.zero_terminal_snr and self.prediction != "v":
            raise ConfigError(
                "train.zero_terminal_snr needs train.prediction=v (eps cannot be predicted from pure noise); "
                "add --set train.prediction=v"
            )
        if self.grid_guidance != 1.0 and not self.cond_drop > 0:
            raise ConfigError(
                f"train.grid_guidance {self.grid_guidance:g} needs a model trained with the null condition, but "
                "train.cond_drop is 0; draw the grids with guidance 1, or train with --set train.cond_drop=0.1 "
                "(or more)"
            )


@dataclass(frozen=True)
class SampleConfig(Section, SamplerSettings):
    """Stage 3a: draw images from representations."""

    checkpoint: str | None = setting(None, "run directory or weights file; default: <workdir>/run", path="in")
    out: str | None = setting(None, "the sample folder; default: <workdir>/samples", path="out")
    store: str | None = setting(
        None, "store whose encoder and entries condition sampling; default: <workdir>/stores/val", path="in"
    )
    condition: Literal["store", "images", "interpolate", "class-mean", "kde", "algebra", "manipulate", "prior"] = (
        setting(
            "store",
            "what the samples are conditioned on",
            choices_help={
                "store": "rows of --store (--indices, --keys, or a seeded --subset)",
                "images": "your image files (--images), encoded with the store's encoder",
                "interpolate": "a path between two store rows (--keys A B)",
                "class-mean": "the mean representation of a class (sample.labels)",
                "kde": "draws from a kernel density estimate over the store (sample.kde_sigma)",
                "algebra": "a - b + c of three store rows (--keys A B C)",
                "manipulate": "a row with the dimensions common to its neighbours zeroed or replaced",
                "prior": "draws from a learned prior over representations (rcdm train-prior; sample.prior)",
            },
        )
    )
    images: tuple[str, ...] = setting((), "image files, folders or globs (condition: images)")
    indices: tuple[int, ...] = setting((), "store rows (condition: store)", ge=0)
    keys: tuple[str, ...] = setting((), "store keys (condition: store; also a, b, c for algebra etc.)")
    subset: int = setting(16, "random store rows when no indices / keys are given", ge=1)
    n_per_condition: int = setting(4, "samples drawn for each condition", ge=1)
    seed: int = setting(0, "seed of the picks and of every sample's noise")
    batch_size: int = setting(32, "samples per UNet forward", ge=1)
    interp_steps: int = setting(8, "interpolation: points on the path, both ends included", ge=2)
    fixed_noise: bool = setting(True, "interpolate / kde / prior: the same noise seeds along a path or a group")
    labels: tuple[int, ...] = setting((), "class-mean: which labels", ge=0)
    kde_sigma: float = setting(0.01, "KDE bandwidth: standard deviation of the Gaussian kernel", ge=0)
    kde_n: int = setting(16, "kde: representations drawn", ge=1)
    prior: str | None = setting(
        None, "condition prior: a `rcdm train-prior` folder; default: <workdir>/prior", path="in?"
    )
    prior_n: int = setting(16, "condition prior: representations drawn from the prior", ge=1)
    knn_k: int = setting(20, "manipulate: neighbours of the row", ge=1)
    knn_m: int = setting(14, "manipulate: a dimension is common when active in at least m of the k", ge=1)
    manipulate_mode: Literal["zero", "replace"] = setting(
        "zero", "manipulate: zero the common dimensions or replace them"
    )
    ema: str = setting("auto", "which EMA rate's weights; auto: the first")
    mixed_precision: Literal["auto", "no", "bf16"] = setting("auto", "auto: bf16 on CUDA, fp32 on a CPU")
    compile: bool | Literal["auto"] = setting(
        "auto", "compile the UNet with torch.compile; auto: on CUDA (with channels-last)"
    )
    compile_backend: Literal["inductor", "aot_eager", "eager"] = setting(
        "inductor", "torch.compile's backend when compiling, as train.compile_backend (aot_eager: on a CPU)"
    )
    channels_last: bool | Literal["auto"] = setting(
        "auto", "channels-last UNet weights; auto: on CUDA when compiled (eager GroupNorm wants NCHW)"
    )
    trust_checkpoint: bool = setting(False, "allow pickle in torch.load (only for files you trust)")
    encoder_weights: str | None = setting(
        None, "images condition: encoder weights; default: the store's recorded file", path="in?"
    )
    chunk_size: int = setting(256, "samples per resumable chunk (<out>/partial/chunk-NNNNN.npy)", ge=1)
    grid_rows: int = setting(16, "conditions per grid PNG (grid-NNN.png)", ge=1)
    grid_conditions: int = setting(64, "grids show the first N conditions (the samples hold all of them)", ge=1)
    device: str = setting("auto", "single process: auto | cpu | cuda | cuda:N (accelerate launch picks per rank)")
    overwrite: bool = setting(False, "discard partial or finished samples made with a different configuration")

    @property
    def sampler(self) -> Sampler:
        return Sampler.of(self)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """Stage 3b: FID, IS and nearest-neighbour rank / MRR."""

    samples: str | None = setting(None, "sample folder; default: <workdir>/samples", path="in")
    reference: str | None = setting(
        None, "reference feature store (validation); default: <workdir>/stores/val", path="in"
    )
    out: str | None = setting(None, "the evaluation folder; default: <workdir>/eval", path="out")
    fid: Literal["auto", "on", "off"] = setting("auto", "auto: when Inception weights are present")
    inception_weights: str | None = setting(None, "default: $TORCH_HOME or torch-fidelity's cache", path="in?")
    reference_images: str | None = setting(
        None, "image set for FID reference statistics; default: data.val", path="in?"
    )
    fid_stats_cache: str | None = setting(None, "default: <out>/../fid-ref-<res>.npz; one of another set is refused")
    allow_download: bool = setting(False, "fetch the Inception weights into torch's hub cache if missing")
    batch_size: int = setting(64, "images per forward", ge=1)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    trust_checkpoint: bool = setting(False, "allow pickle in torch.load (encoder / Inception weights)")
    is_splits: int = setting(10, "Inception Score: mean +- std over this many splits", ge=1)
    fid_method: Literal["sqrtm", "eigh"] = setting("sqrtm", "sqrtm: as published code; eigh: same, faster")
    fid_reference_limit: int | None = setting(None, "use N reference images, evenly spaced (e.g. 10000)", ge=1)
    encoder_weights: str | None = setting(None, "the reference store's encoder weights, if the file moved", path="in?")
    rank_chunk_mb: int = setting(256, "memory for one (chunk, N) block of rank distances", ge=1)
    train_store: str | None = setting(
        None,
        "retrieval baseline: the nearest training image to each condition; default: <workdir>/stores/train "
        "when it exists",
        path="in?",
    )
    second_references: tuple[str, ...] = setting(
        (),
        "stores of the same reference images by other encoders: rank / MRR, top-k, cosine and diversity in "
        "their spaces",
        path="in?",
    )
    fd_extractors: tuple[str, ...] = setting(
        ("dinov2-vit-b-14",),
        "torch-fidelity extractors for FD and precision / recall, computed when their weights are present "
        "locally (fid: off skips them)",
    )


@dataclass(frozen=True)
class AnalyzeConfig(Section, SamplerSettings):
    """The paper's analyses as experiments with figures and an HTML report."""

    experiments: tuple[str, ...] = setting(
        EXPERIMENTS, "any of them, in this order by default", check=_experiments_problem
    )
    checkpoints: tuple[str, ...] = setting((), "RCDM runs to compare; default: (<workdir>/run,)", path="in")
    train_store: str | None = setting(None, "default: <workdir>/stores/train", path="in?")
    val_store: str | None = setting(None, "default: <workdir>/stores/val", path="in?")
    out: str | None = setting(None, "the report folder; default: <workdir>/analysis", path="out")
    evaluations: tuple[str, ...] = setting(
        (), "`rcdm evaluate` outputs shown first in the report; default: (<workdir>/eval,) when it exists", path="in?"
    )
    n_images: int = setting(4, "conditioning images per experiment", ge=1)
    n_samples: int = setting(4, "samples per condition", ge=1)
    seed: int = setting(0, "every random choice of the analyses derives from it")
    batch_size: int = setting(32, "samples per UNet forward", ge=1)
    transforms: tuple[str, ...] = setting(
        ("vshift", "zoom-in", "zoom-out", "grayscale", "color-jitter", "hflip"), "invariance: the augmentations"
    )
    custom_transforms: tuple[str, ...] = setting((), 'torchvision expressions, e.g. "RandomRotation(30)"')
    epsilons: tuple[float, ...] = setting((0.0, 0.01, 0.03, 0.1), "adversarial: FGSM step sizes", ge=0, check=_nonempty)
    target_class: int | None = setting(None, "adversarial: None = untargeted", ge=0)
    probe_epochs: int = setting(100, "probe: training epochs", ge=1)
    knn_k: int = setting(20, "manipulation: neighbours of each row", ge=1)
    knn_m: int = setting(14, "manipulation: a dimension is common when active in at least m of the k", ge=1)
    dynamics_checkpoints: tuple[str, ...] = setting((), "training-dynamics: runs in training order", path="in?")
    trust_checkpoint: bool = setting(False, "allow pickle in torch.load (only for files you trust)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    mixed_precision: Literal["auto", "no", "bf16"] = setting("auto", "sampling: auto = bf16 on GPU, fp32 on CPU")
    image_keys: tuple[str, ...] = setting((), "val-store keys of the conditioning images; default: seeded pick")
    layers: tuple[str, ...] = setting(("trunk",), "invariance: encoder layers whose distances are reported")
    probe_train_stores: tuple[str, ...] = setting(
        (), "probe: train stores (one per encoder/layer); default: train_store", path="in?"
    )
    probe_val_stores: tuple[str, ...] = setting((), "probe: the matching val stores, same order", path="in?")
    probe_lr: float = setting(0.01, "probe: Adam learning rate", gt=0)
    interp_steps: int = setting(8, "interpolation: points on each path, both ends included", ge=2)
    neighbours_k: int = setting(5, "neighbours / distances: nearest training images shown", ge=1)
    n_distance: int = setting(6, "distances: images shown per group (random, same class, augmentations)", ge=1)
    class_labels: tuple[int, ...] = setting((), "class-mean: labels; default: n_images labels picked by seed", ge=0)
    algebra_keys: tuple[str, ...] = setting((), "manipulation: val keys a, b, c per algebra row (a - b + c)")
    second_store: str | None = setting(
        None,
        "invariance: a store of another encoder; sample movement is measured in its space (default: the "
        "conditioning encoder's)",
        path="in?",
    )
    prior: str | None = setting(
        None,
        "a `rcdm train-prior` folder: the report compares its draws with KDE's; default: <workdir>/prior when "
        "it exists",
        path="in?",
    )

    def check(self) -> None:
        if self.knn_m > self.knn_k:
            raise ConfigError(f"analyze.knn_m ({self.knn_m}) must not exceed analyze.knn_k ({self.knn_k})")

    @property
    def sampler(self) -> Sampler:
        return Sampler.of(self)


@dataclass(frozen=True)
class PriorConfig(Section):
    """A learned prior over representations (RCG's MLP diffusion), for sampling with no image.

    The defaults train a 2048-d prior in ~5 CPU minutes (one thread) and match held-out data on the
    demo's store (docs/prior.md). For an ImageNet-scale store, on a GPU, use RCG's size and more
    steps: --set prior.width=1536 --set prior.blocks=12 --set prior.batch_size=512
    --set prior.iters=100000 (RCG: 200 epochs), ~57x the defaults' compute per step."""

    store: str | None = setting(None, "training feature store; default: <workdir>/stores/train", path="in")
    out: str | None = setting(None, "the prior folder; default: <workdir>/prior", path="out")
    width: int = setting(512, "hidden width of the residual MLP (RCG: 1536, for 256-d features)", ge=1)
    blocks: int = setting(6, "residual blocks (RCG: 12)", ge=1)
    timesteps: int = setting(1000, "diffusion steps (RCG's linear schedule, x0 prediction)", ge=1)
    iters: int = setting(2000, "optimiser steps", ge=1)
    batch_size: int = setting(128, "rows per step", ge=1)
    lr: float = setting(1e-3, "AdamW, a 100-step warm-up then a cosine decay to 0 at iters", gt=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    ema_rate: float = setting(0.999, "EMA rate of the saved weights", ge=0, lt=1)
    sample_steps: int = setting(100, "DDIM steps when drawing from the prior", ge=1)
    sample_eta: float = setting(1.0, "DDIM eta (1: ancestral-like, RCG's; 0: deterministic)", ge=0)
    seed: int = setting(0, "seed of the initialisation, the batches and the noise")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    overwrite: bool = setting(False, "replace a finished prior in out")


@dataclass(frozen=True)
class PretrainConfig(Section):
    """A small self-supervised encoder trained by rcdm itself (SimCLR, Chen et al. 2020), for the
    demo: a ResNet-shaped trunk and an MLP projector head (``rcdm pretrain``; docs/encoder.md)."""

    source: str | None = setting(None, "training images; default: data.train", path="in")
    val: str | None = setting(None, "held-out images for the linear probes; default: data.val", path="in?")
    out: str | None = setting(None, "the encoder folder; default: <workdir>/encoder", path="out")
    width: int = setting(16, "base width of the trunk (resnet-mini: an 8 x width trunk output)", ge=4)
    head_dim: int = setting(64, "output of the projector head (hidden: the trunk's width)", ge=2)
    image_size: int = setting(32, "side of the crops the encoder sees", ge=8)
    steps: int = setting(300, "optimiser steps", ge=1)
    batch_size: int = setting(256, "images per step (two views each)", ge=2)
    lr: float = setting(2e-3, "AdamW learning rate, cosine decay to 0", gt=0)
    weight_decay: float = setting(1e-4, "AdamW weight decay", ge=0)
    temperature: float = setting(0.2, "NT-Xent temperature", gt=0)
    seed: int = setting(0, "seed of the initialisation, the batches and the augmentations")
    threads: int = setting(2, "torch CPU threads (the result depends on it: recorded with the weights)", ge=1)
    probe: bool = setting(True, "after training, linear probes of trunk, head and random encoders on the val images")
    overwrite: bool = setting(False, "replace a finished encoder in out")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "extract": ExtractConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
    "analyze": AnalyzeConfig,
    "prior": PriorConfig,
    "pretrain": PretrainConfig,
}


def section_fields(cls_or_obj: Any) -> list:
    """The user-facing fields of a section (everything but ``origin``): its own first, in the
    order declared, then the sampling options it inherits."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    own = [f for f in fields(cls) if f.name in inspect.get_annotations(cls)]
    inherited = [f for f in fields(cls) if f not in own and f.name != "origin"]
    return own + inherited
