"""The encoder registry: frozen image encoders whose representations RCDM visualises.

Every entry names an architecture, a checkpoint reader (:mod:`rcdm.encoders.readers`), its layers
and its default preprocessing. Layers:

- ``trunk``: the 2048-d average-pooled ResNet-50 features, or a ViT's pooled output (= ``cls``);
- ViTs also have ``cls`` (the pooled output the method uses: the normalised CLS token; SigLIP's
  attention pool; the patch-token mean for I-JEPA, which has no CLS token), ``mean`` (the mean of
  the normalised patch tokens) and ``tokens`` (the patch grid, T x D values per view, stored
  flat, row-major over the (crop/patch)^2 grid; its shape is in the store manifest);
- ``head``: the method's projector output, where the checkpoint has one.

Default preprocessing (``extract.preprocess: default``), chosen per entry:

- ``rcdm`` (guided-diffusion center crop to 224, [-1, 1], no mean/std) for the encoders the
  official RCDM code and checkpoints use (``guided_diffusion/get_ssl_models.py``): dino-rn50,
  simclr-rn50, barlow-rn50, vicreg-rn50, supervised-rn50, and for random-rn50 (the paper's
  untrained baseline, extracted the same way). Features extracted this way match what the
  official RCDM checkpoints were trained on.
- ``imagenet`` (resize 256, crop 224, [0, 1], ImageNet mean/std: the encoders' own training
  normalisation) for swav-rn50, moco-rn50, supervised-vissl-rn50 and dino-vits16, for which
  there is no official RCDM checkpoint.
- ``imagenet-bicubic`` (the same with bicubic resizing: the evaluation transform of DINOv2,
  MAE and I-JEPA), ``clip`` (resize 224 bicubic, crop 224, OpenAI CLIP mean/std) and ``siglip``
  (resize 224 bicubic, crop 224, mean = std = 0.5) for the other ViTs.

Weights come from a local file; the public URLs are recorded for the README and are fetched
only with ``allow_download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcdm.errors import InvalidInput

__all__ = ["HeadSpec", "EncoderSpec", "REGISTRY", "get_spec", "describe_registry"]


@dataclass(frozen=True)
class HeadSpec:
    dims: tuple[int, ...]  # (in, hidden..., out), e.g. (2048, 2048, 128)
    bn: bool = False  # BatchNorm1d after every hidden Linear
    act: str = "relu"  # "relu" | "gelu"
    bias: tuple[bool, ...] | None = None  # per Linear; None = all True
    l2norm: bool = False  # normalise the output to unit L2 norm (SwAV)

    @property
    def n_linear(self) -> int:
        return len(self.dims) - 1

    def linear_index(self, j: int) -> int:
        """Sequential index of the j-th Linear (its BN, if any, is at index + 1)."""
        return j * (3 if self.bn else 2)

    def describe(self) -> str:
        parts = [str(self.dims[0])]
        for j, d in enumerate(self.dims[1:]):
            parts.append(str(d))
            if j < self.n_linear - 1:
                parts.append(("BN-" if self.bn else "") + self.act.upper())
        return "-".join(parts) + (" then L2-normalised" if self.l2norm else "")


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    arch: str  # "resnet50" | "vit_small_patch16"
    reader: str | None  # key of ckpt_readers.READERS; None: no weights (random init)
    head: HeadSpec | None  # the projector, if the method has one in the checkpoint
    preprocess: str  # default preprocessing: a key of rcdm.data.images.PREPROCESS
    url: str | None  # public weights (README; fetched only with allow_download)
    description: str
    trunk_dim: int = 2048
    head_note: str = ""  # what the head output is
    patch_size: int = 0  # ViTs: the patch side (0: a ResNet, layers trunk / head only)
    pooled_note: str = ""  # ViTs: what ``cls`` (and ``trunk``) is for this method
    shipped: str = ""  # weights inside the package (rcdm/encoders/weights/<file>), used when none is given
    shipped_sha256: str = ""  # ... and their sha256, checked on every load

    @property
    def is_vit(self) -> bool:
        return self.patch_size > 0

    def token_grid(self, input_size: int | None = None) -> tuple[int, int]:
        """The patch grid (rows, columns) of a square ``input_size`` input (default: the crop of
        the entry's default preprocessing)."""
        if not input_size:
            from rcdm.data.preprocess import get_preprocess  # numpy and PIL only, no torch

            input_size = get_preprocess(self.preprocess).crop
        g = input_size // self.patch_size
        return g, g

    def token_shape(self, input_size: int | None = None) -> tuple[int, int]:
        """(T, D) of the ``tokens`` layer."""
        gh, gw = self.token_grid(input_size)
        return gh * gw, self.trunk_dim

    def layer_dim(self, layer: str, input_size: int | None = None) -> int:
        """The length of one view's vector of ``layer`` (``tokens``: T * D, flat)."""
        if layer == "tokens" and self.is_vit:
            t, d = self.token_shape(input_size)
            return t * d
        return self.dims[layer]

    @property
    def dims(self) -> dict[str, int]:
        d = {"trunk": self.trunk_dim}
        if self.is_vit:
            d.update(cls=self.trunk_dim, mean=self.trunk_dim, tokens=self.layer_dim("tokens"))
        if self.head is not None:
            d["head"] = self.head.dims[-1]
        return d

    @property
    def needs_weights(self) -> bool:
        return self.reader is not None


_VISSL = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
# The shipped weights of simclr-mini (rcdm/encoders/weights/; how they were made: their .json record)
SIMCLR_MINI_SHA256 = "1ee82fd3ff68235997ab1b63675809ac31dd79de853aea2b1222cd9eac2328a9"
_RN50 = 2048


def _mlp(dims, bn=False, act="relu", bias=None, l2norm=False) -> HeadSpec:
    return HeadSpec(tuple(dims), bn=bn, act=act, bias=bias, l2norm=l2norm)


# fmt: off
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
        "simclr-mini", "resnet-mini", "rcdm", _mlp([128, 128, 64]), "rcdm32", None,
        "SimCLR resnet-mini trained by `rcdm pretrain` on the demo set, 32 px (shipped: docs/encoder.md)",
        trunk_dim=128, head_note="Linear-ReLU-Linear projector",
        shipped="simclr-mini.safetensors", shipped_sha256=SIMCLR_MINI_SHA256,
    ),
    EncoderSpec(
        "dino-vits16", "vit_small_patch16", "dino", _mlp([384, 2048, 2048, 256], act="gelu"),
        "imagenet",
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        "DINO ViT-S/16 (backbone file, timm-style keys; the head needs "
        "dino_deitsmall16_pretrain_full_checkpoint.pth)",
        trunk_dim=384,
        head_note="DINOHead mlp output before normalisation and last_layer",
        patch_size=16, pooled_note="normalised CLS token",
    ),
]
# fmt: on

_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
_SIZES = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024), "g": ("giant", 1536)}
for _k, (_size, _dim) in _SIZES.items():
    for _reg in (False, True):
        _SPECS.append(
            EncoderSpec(
                f"dinov2-vit{_k}14" + ("-reg" if _reg else ""),
                f"vit_{_size}_patch14" + ("_reg4" if _reg else "") + "_dinov2",
                "dinov2",
                None,
                "imagenet-bicubic",
                f"{_DINOV2}/dinov2_vit{_k}14/dinov2_vit{_k}14" + ("_reg4" if _reg else "") + "_pretrain.pth",
                f"DINOv2 ViT-{_k.upper() if _k != 'g' else 'g'}/14"
                + (" with 4 registers" if _reg else "")
                + " (facebookresearch/dinov2 hub backbone; position embeddings of 518 px resized)",
                trunk_dim=_dim,
                patch_size=14,
                pooled_note="normalised CLS token",
            )
        )
_MAE = "https://dl.fbaipublicfiles.com/mae/pretrain"
for _k, _size, _dim, _p in (("b", "base", 768, 16), ("l", "large", 1024, 16), ("h", "huge", 1280, 14)):
    _SPECS.append(
        EncoderSpec(
            f"mae-vit{_k}{_p}",
            f"vit_{_size}_patch{_p}_mae",
            "mae",
            None,
            "imagenet-bicubic",
            f"{_MAE}/mae_pretrain_vit_{_size}.pth",
            f"MAE ViT-{_k.upper()}/{_p} encoder (facebookresearch/mae mae_pretrain_vit_{_size}.pth; "
            "the decoder of a full checkpoint is not used)",
            trunk_dim=_dim,
            patch_size=_p,
            pooled_note="normalised CLS token (MAE's linear-probe feature)",
        )
    )
# fmt: off
_SPECS += [
    EncoderSpec(
        "ijepa-vith14", "vit_huge_patch14_ijepa", "ijepa", None, "imagenet-bicubic",
        "https://dl.fbaipublicfiles.com/ijepa/IN1K-vit.h.14-300e.pth.tar",
        "I-JEPA ViT-H/14, ImageNet-1k, 300 epochs (facebookresearch/ijepa; the target encoder)",
        trunk_dim=1280, patch_size=14, pooled_note="mean of the patch tokens (I-JEPA has no CLS token)",
    ),
    *(
        EncoderSpec(
            name, arch, "clip", _mlp([768, 512], bias=(False,)), "clip", url, desc,
            trunk_dim=768, patch_size=16, pooled_note="ln_post(CLS token), before the projection",
            head_note="visual.proj: the image embedding (512-d)",
        )
        for name, arch, url, desc in (
            ("clip-vitb16", "vit_base_patch16_clip_quickgelu",
             "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_pytorch_model.bin",
             "OpenAI CLIP ViT-B/16 image tower (open_clip layout; timm's model.safetensors also reads)"),
            ("clip-vitb16-laion2b", "vit_base_patch16_clip",
             "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_pytorch_model.bin",
             "open_clip ViT-B/16 trained on LAION-2B image tower (open_clip layout)"),
        )
    ),
    EncoderSpec(
        "siglip-vitb16", "vit_base_patch16_siglip", "siglip", None, "siglip",
        "https://huggingface.co/timm/ViT-B-16-SigLIP/resolve/main/open_clip_pytorch_model.bin",
        "SigLIP ViT-B/16, 224 px, WebLI image tower (open_clip layout, visual.trunk.*; timm's "
        "vit_base_patch16_siglip_224 model.safetensors also reads)",
        trunk_dim=768, patch_size=16, pooled_note="attention-pool (MAP) output, SigLIP's image embedding",
    ),
]
# fmt: on

REGISTRY: dict[str, EncoderSpec] = {s.name: s for s in _SPECS}


def get_spec(name: str | EncoderSpec | None) -> EncoderSpec:
    if isinstance(name, EncoderSpec):
        return name
    if not name:
        raise InvalidInput(
            "extract.encoder is not set; pass --encoder NAME (`rcdm extract --list-encoders` lists them)"
        )
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInput(f"unknown encoder {name!r}; the known encoders are: {', '.join(REGISTRY)}") from None


def describe_registry() -> str:
    """A markdown table of the registry: name, layers and dims, preprocessing, weights URL."""
    rows = ["| encoder | layers (dim) | preprocessing | weights |", "|---|---|---|---|"]
    for s in REGISTRY.values():
        layers = ", ".join(
            f"{k} ({s.token_shape()[0]}x{s.trunk_dim})" if k == "tokens" else f"{k} ({v})" for k, v in s.dims.items()
        )
        if s.is_vit:
            layers += f"; patch {s.patch_size}; cls = {s.pooled_note}"
        if s.head is not None:
            layers += f"; head = {s.head.describe()}"
        weights = s.url or ("shipped with rcdm" if s.shipped else "none (seeded init)")
        rows.append(f"| `{s.name}` | {layers} | `{s.preprocess}` | {weights} |")
    return "\n".join(rows)
