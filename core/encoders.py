"""The encoder registry: frozen image encoders whose representations RCDM visualises.

Every entry names an architecture, a checkpoint reader (:mod:`rcdm.ckpt_readers`), its layers
(``trunk``: the 2048-d average-pooled ResNet-50 features or the ViT CLS token; ``head``: the
method's projector output, where it has one) and its default preprocessing.

Default preprocessing (``extract.preprocess: default``), chosen per entry:

- ``rcdm`` (guided-diffusion center crop to 224, [-1, 1], no mean/std) for the encoders the
  official RCDM code and checkpoints use (``guided_diffusion/get_ssl_models.py``): dino-rn50,
  simclr-rn50, barlow-rn50, vicreg-rn50, supervised-rn50, and for random-rn50 (the paper's
  untrained baseline, extracted the same way). Features extracted this way match what the
  official RCDM checkpoints were trained on.
- ``imagenet`` (resize 256, crop 224, [0, 1], ImageNet mean/std: the encoders' own training
  normalisation) for swav-rn50, moco-rn50, supervised-vissl-rn50 and dino-vits16, for which
  there is no official RCDM checkpoint.

Weights come from a local file; the public URLs are recorded for the README and are fetched
only with ``allow_download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rcdm.ckpt_readers import READERS, read_checkpoint, strict_load
from rcdm.heads import HeadSpec, build_head
from rcdm.images import PREPROCESS, Preprocess, encoder_input, get_preprocess
from rcdm.utils import sha256_file
from torch import nn

__all__ = [
    "EncoderSpec",
    "REGISTRY",
    "get_spec",
    "describe_registry",
    "read_checkpoint",
    "Encoder",
    "load_encoder",
    "encoder_from_info",
    "encode",
]


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    arch: str  # "resnet50" | "vit_small_patch16"
    reader: str | None  # key of ckpt_readers.READERS; None: no weights (random init)
    head: HeadSpec | None  # the projector, if the method has one in the checkpoint
    preprocess: str  # default preprocessing: a key of rcdm.images.PREPROCESS
    url: str | None  # public weights (README; fetched only with allow_download)
    description: str
    trunk_dim: int = 2048
    head_note: str = ""  # what the head output is

    @property
    def dims(self) -> dict[str, int]:
        d = {"trunk": self.trunk_dim}
        if self.head is not None:
            d["head"] = self.head.dims[-1]
        return d

    @property
    def needs_weights(self) -> bool:
        return self.reader is not None


_VISSL = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
_RN50 = 2048


def _mlp(dims, bn=False, act="relu", bias=None, l2norm=False) -> HeadSpec:
    return HeadSpec(tuple(dims), bn=bn, act=act, bias=bias, l2norm=l2norm)


_SPECS = [
    EncoderSpec(
        "simclr-rn50", "resnet50", "vissl-mlp", _mlp([_RN50, 2048, 128]), "rcdm",
        f"{_VISSL}/simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/model_final_checkpoint_phase999.torch",
        "SimCLR ResNet-50, 1000 epochs (VISSL model zoo; the checkpoint the RCDM code uses)",
        head_note="Linear-ReLU-Linear projector",
    ),
    EncoderSpec(
        "swav-rn50", "resnet50", "vissl-swav", _mlp([_RN50, 2048, 128], bn=True, l2norm=True),
        "imagenet",
        f"{_VISSL}/swav_in1k_rn50_800ep_swav_8node_resnet_27_07_20.a0a6b676/model_final_checkpoint_phase799.torch",
        "SwAV ResNet-50, 800 epochs, 2x224+6x96 (VISSL model zoo)",
        head_note="projection head, L2-normalised (before the prototypes)",
    ),
    EncoderSpec(
        "barlow-rn50", "resnet50", "vissl-mlp",
        _mlp([_RN50, 8192, 8192, 8192], bn=True, bias=(False, False, False)), "rcdm",
        f"{_VISSL}/barlow_twins/barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch",
        "Barlow Twins ResNet-50, 1000 epochs (VISSL model zoo; used by the RCDM code)",
        head_note="projector, Linear without bias, BN-ReLU between",
    ),
    EncoderSpec(
        "moco-rn50", "resnet50", "vissl-mlp", _mlp([_RN50, 2048, 128]), "imagenet",
        f"{_VISSL}/moco_v2_1node_lr.03_step_b32_zero_init/model_final_checkpoint_phase199.torch",
        "MoCo v2 ResNet-50, 200 epochs (VISSL model zoo)",
        head_note="Linear-ReLU-Linear projector",
    ),
    EncoderSpec(
        "supervised-vissl-rn50", "resnet50", "vissl-mlp", _mlp([_RN50, 1000]), "imagenet",
        f"{_VISSL}/sup_rn50_in1k_ep105_supervised_8gpu_resnet_17_07_20.733dbdee/model_final_checkpoint_phase208.torch",
        "supervised ResNet-50, 105 epochs (VISSL model zoo)",
        head_note="ImageNet class logits",
    ),
    EncoderSpec(
        "dino-rn50", "resnet50", "dino", _mlp([_RN50, 4096, 256], bn=True, act="gelu"), "rcdm",
        "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",
        "DINO ResNet-50 teacher (full checkpoint; the backbone-only "
        "dino_resnet50_pretrain.pth gives the trunk only)",
        # the published RN50 head has 2 layers, 4096 hidden, BN (facebookresearch/dino#189;
        # RCDM's get_ssl_models.py), not main_dino.py's defaults
        head_note="DINOHead mlp output before normalisation and last_layer",
    ),
    EncoderSpec(
        "vicreg-rn50", "resnet50", "vicreg",
        _mlp([_RN50, 8192, 8192, 8192], bn=True, bias=(True, True, False)), "rcdm",
        "https://dl.fbaipublicfiles.com/vicreg/resnet50_fullckpt.pth",
        "VICReg ResNet-50 (full checkpoint; resnet50.pth gives the trunk only)",
        head_note="expander / projector output",
    ),
    EncoderSpec(
        "supervised-rn50", "resnet50", "torchvision", _mlp([_RN50, 1000]), "rcdm",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "torchvision ResNet-50 IMAGENET1K_V1 (the supervised model of the RCDM code)",
        head_note="ImageNet class logits (fc)",
    ),
    EncoderSpec(
        "random-rn50", "resnet50", None, None, "rcdm", None,
        "randomly initialised ResNet-50 (torchvision init, seeded): the untrained baseline",
    ),
    EncoderSpec(
        "dino-vits16", "vit_small_patch16", "dino", _mlp([384, 2048, 2048, 256], act="gelu"),
        "imagenet",
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        "DINO ViT-S/16 (backbone file, timm-style keys; the head needs "
        "dino_deitsmall16_pretrain_full_checkpoint.pth)",
        trunk_dim=384,
        head_note="DINOHead mlp output before normalisation and last_layer",
    ),
]  # fmt: skip

REGISTRY: dict[str, EncoderSpec] = {s.name: s for s in _SPECS}


def get_spec(name: str | EncoderSpec) -> EncoderSpec:
    if isinstance(name, EncoderSpec):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown encoder {name!r}; the known encoders are: {', '.join(REGISTRY)}"
        ) from None


def describe_registry() -> str:
    """A markdown table of the registry: name, layers and dims, preprocessing, weights URL."""
    rows = ["| encoder | layers (dim) | preprocessing | weights |", "|---|---|---|---|"]
    for s in REGISTRY.values():
        layers = ", ".join(f"{k} ({v})" for k, v in s.dims.items())
        if s.head is not None:
            layers += f"; head = {s.head.describe()}"
        rows.append(f"| `{s.name}` | {layers} | `{s.preprocess}` | {s.url or 'none (seeded init)'} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def build_trunk(arch: str) -> nn.Module:
    """The trunk with random init: ResNet-50 without ``fc`` (avgpool output) or ViT-S/16.

    ``resnet50-tiny`` (one narrow bottleneck per stage) and ``vit_tiny_patch16`` (2 blocks,
    64-d) keep the key layout of the real trunks at a fraction of the size: they exist for
    tests and demos (``dataclasses.replace(spec, arch="resnet50-tiny")``).
    """
    if arch in ("resnet50", "resnet50-tiny"):
        import torchvision
        from torchvision.models.resnet import Bottleneck, ResNet

        if arch == "resnet50":
            m = torchvision.models.resnet50(weights=None)
        else:
            m = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8)  # still 2048-d output
        m.fc = nn.Identity()  # (N, 2048) average-pooled features
        return m
    if arch == "vit_small_patch16":
        from rcdm.vit import vit_small_patch16

        return vit_small_patch16()
    if arch == "vit_tiny_patch16":
        from rcdm.vit import VisionTransformer

        return VisionTransformer(224, 16, 64, 2, 2, 4.0)
    raise ValueError(f"unknown encoder architecture {arch!r}")


class Encoder(nn.Module):
    """A frozen encoder: ``forward(x (N, 3, H, W) preprocessed) -> (N, dim)`` float32."""

    def __init__(
        self,
        spec: EncoderSpec,
        layer: str,
        trunk: nn.Module,
        head: nn.Module | None,
        preprocess: Preprocess,
        weights: str | None = None,
        weights_sha256: str | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.layer = layer
        self.dim = spec.dims[layer]
        self.trunk = trunk
        self.head = head
        self.preprocess = preprocess
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)  # (N, 2048) or (N, 384)
        if self.layer == "head":
            h = self.head(h)  # type: ignore[misc]
        return h.float()

    def info(self) -> dict[str, Any]:
        """The manifest's ``encoder`` field."""
        return {
            "name": self.name,
            "arch": self.spec.arch,
            "layer": self.layer,
            "dim": self.dim,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "seed": self.seed,
            "url": self.spec.url,
            "preprocess": self.preprocess.to_dict(),
            # the architecture as built, so encoder_from_info rebuilds exactly this module
            "trunk_dim": self.spec.trunk_dim,
            "head_dims": list(self.spec.head.dims) if self.spec.head is not None else None,
        }


def _resolve_weights(spec: EncoderSpec, weights: str | None, allow_download: bool) -> Path:
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"weights file {p} for encoder {spec.name} does not exist"
                + (f"; the public weights are at {spec.url}" if spec.url else "")
            )
        return p
    if not allow_download or spec.url is None:
        raise FileNotFoundError(
            f"encoder {spec.name} needs a weights file: pass --weights FILE (extract.weights)"
            + (
                f"; download it from {spec.url}, or let rcdm fetch it with --allow-download "
                "(extract.allow_download: true)"
                if spec.url
                else ""
            )
        )
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / spec.url.rsplit("/", 1)[-1]
    if not target.is_file():
        torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    return target


def load_encoder(
    name: str | EncoderSpec,
    weights: str | None = None,
    layer: str = "trunk",
    *,
    preprocess: str | Preprocess | None = None,
    trust_checkpoint: bool = False,
    allow_download: bool = False,
    seed: int = 0,
) -> Encoder:
    """Build an encoder and load its weights strictly (eval mode, no gradients).

    ``name`` is a registry name (or an :class:`EncoderSpec`); ``preprocess`` defaults to the
    entry's own (``"default"`` means the same). A missing, unexpected or mis-shaped key is a
    ``ValueError`` naming the key.
    """
    spec = get_spec(name)
    if layer not in spec.dims:
        raise ValueError(
            f"encoder {spec.name} has no layer {layer!r}; its layers are {', '.join(spec.dims)}"
        )
    pp = get_preprocess(spec.preprocess if preprocess in (None, "default") else preprocess)
    if not spec.needs_weights:
        if weights is not None:
            raise ValueError(f"{spec.name} is randomly initialised and takes no weights file")
        # seeded init that leaves the global RNG untouched: same seed, same network
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trunk = build_trunk(spec.arch)
        enc = Encoder(spec, layer, trunk, None, pp, seed=seed)
        return _freeze(enc)

    path = _resolve_weights(spec, weights, allow_download)
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    try:
        mapped = READERS[spec.reader](ckpt, spec.head, layer == "head")  # type: ignore[index]
    except ValueError as e:
        raise ValueError(f"{path}: {e} (expected the {spec.name} format)") from e
    trunk = _empty(lambda: build_trunk(spec.arch))
    strict_load(trunk, mapped.trunk, f"{path} ({mapped.layout}) trunk", mapped.unexpected)
    head = None
    if layer == "head":
        if not mapped.head:
            raise ValueError(
                f"{path} ({mapped.layout}) has no head weights for {spec.name}; the head needs "
                f"the method's full checkpoint ({spec.url or 'see the registry'}), or use layer trunk"
            )
        head = _empty(lambda: build_head(spec.head))  # type: ignore[arg-type]
        strict_load(head, mapped.head, f"{path} ({mapped.layout}) head")
    enc = Encoder(spec, layer, trunk, head, pp, str(path.resolve()), sha256_file(path))
    return _freeze(enc)


def _empty(make) -> nn.Module:
    """Build a module without running its random init (strict_load then fills every parameter
    and buffer: our trunks and heads have no non-persistent buffers)."""
    with torch.device("meta"):
        m = make()
    return m.to_empty(device="cpu")


def _freeze(enc: Encoder) -> Encoder:
    enc.eval()
    enc.requires_grad_(False)
    return enc


def encoder_from_info(
    info: dict, *, weights: str | None = None, trust_checkpoint: bool = False
) -> Encoder:
    """Rebuild the encoder a store was made with from its manifest's ``encoder`` field.

    The weights file is ``weights`` or the recorded path; its sha256 must match the record."""
    spec = get_spec(info["name"])
    if info.get("arch", spec.arch) != spec.arch:  # a test / demo variant of the entry
        spec = replace(spec, arch=info["arch"], trunk_dim=int(info.get("trunk_dim", spec.trunk_dim)))
    if spec.head is not None and info.get("head_dims") and tuple(info["head_dims"]) != spec.head.dims:
        spec = replace(spec, head=replace(spec.head, dims=tuple(info["head_dims"])))
    pp = Preprocess.from_dict(info["preprocess"]) if info.get("preprocess") else None
    layer = info.get("layer", "trunk")
    if not spec.needs_weights:
        enc = load_encoder(spec, None, layer, preprocess=pp, seed=int(info.get("seed") or 0))
    else:
        path = weights or info.get("weights")
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(
                f"the weights of encoder {spec.name} (sha256 {info.get('weights_sha256')}) are "
                f"not at {path}; pass the weights file explicitly"
            )
        expected = info.get("weights_sha256")
        if expected and sha256_file(path) != expected:
            raise ValueError(
                f"weights file {path} has a different sha256 than the one the store was made "
                f"with ({expected}); pass the original weights file"
            )
        enc = load_encoder(spec, str(path), layer, preprocess=pp, trust_checkpoint=trust_checkpoint)
    if "dim" in info and int(info["dim"]) != enc.dim:
        raise ValueError(f"encoder info says dim {info['dim']}, but {spec.name}/{layer} gives {enc.dim}")
    return enc


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def encode(
    encoder: nn.Module,
    images,
    pp: Preprocess | str | None = None,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    both_views: bool = False,
) -> np.ndarray:
    """Encode PIL images or uint8 ``(N, H, W, 3)`` pixels: ``(N, D)`` float32, or ``(N, 2, D)``
    with ``both_views`` (view 1 = the horizontally flipped encoder input)."""
    from PIL import Image

    if pp is None:
        pp = getattr(encoder, "preprocess", None) or PREPROCESS["rcdm"]
    pp = get_preprocess(pp)
    if device is None:
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode expects uint8 (N, H, W, 3) pixels, got {images.dtype} {images.shape}")
        images = [Image.fromarray(a) for a in images]
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([encoder_input(im, pp) for im in images[start : start + batch_size]])
        x = x.to(device)  # (B, 3, crop, crop)
        if both_views:
            f = encoder(torch.cat([x, x.flip(3)]))  # (2B, D): originals, then flips
            f = torch.stack(f.chunk(2), dim=1)  # (B, 2, D)
        else:
            f = encoder(x)
        out.append(f.float().cpu().numpy())
    if not out:
        raise ValueError("encode: no images given")
    return np.concatenate(out)
