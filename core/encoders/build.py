"""Encoder modules: build a registry entry, load its weights strictly, and encode images.

The registry itself (names, layers, preprocessing, URLs) is :mod:`rcdm.encoders.registry`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rcdm.data.images import PREPROCESS, Preprocess, encoder_input, get_preprocess
from rcdm.encoders.heads import build_head
from rcdm.encoders.readers import READERS, read_checkpoint, strict_load
from rcdm.encoders.registry import EncoderSpec, get_spec
from rcdm.errors import InvalidInput, MissingInput
from rcdm.utils import sha256_file
from torch import nn

__all__ = [
    "read_checkpoint",
    "Encoder",
    "load_encoder",
    "encoder_from_info",
    "encode",
]


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def build_trunk(arch: str) -> nn.Module:
    """The trunk with random init: ResNet-50 without ``fc`` (avgpool output) or a ViT of
    :data:`rcdm.encoders.vit.ARCHS` (built by timm).

    ``resnet50-tiny`` (one narrow bottleneck per stage), ``vit_tiny_patch16`` (DINO ViT-S/16 with
    2 blocks, 64-d) and ``<vit arch>-tiny`` (2 blocks, 32-d, 4x4 patch grid) keep the key layout
    of the real trunks at a fraction of the size: they exist for tests and demos
    (``dataclasses.replace(spec, arch="resnet50-tiny")``).
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
    if arch == "resnet-mini":
        from rcdm.encoders.mini import MiniResNet

        return MiniResNet()
    if arch.startswith("vit_"):
        from rcdm.encoders.vit import build_vit

        return build_vit(arch)  # timm's VisionTransformer (rcdm.encoders.vit)
    raise InvalidInput(f"unknown encoder architecture {arch!r}")


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
        self.dim = spec.layer_dim(layer, preprocess.crop)
        self.trunk = trunk
        if spec.is_vit:  # what the ViT returns; the head (if any) takes the pooled output
            trunk.output = layer if layer in ("mean", "tokens") else "cls"
        self.head = head
        self.preprocess = preprocess
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)  # (N, 2048) or (N, D); ViT tokens (N, T, D)
        if self.layer == "head":
            h = self.head(h)  # type: ignore[misc]
        return h.float().flatten(1)  # tokens: (N, T * D), row-major over the patch grid

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
            **self.token_info(),
        }

    def token_info(self) -> dict[str, Any]:
        """ViTs: the patch size and, for ``tokens``, the grid (the manifest's ``tokens`` field)."""
        if not self.spec.is_vit:
            return {}
        d: dict[str, Any] = {"patch_size": self.spec.patch_size}
        if self.layer == "tokens":
            gh, gw = self.spec.token_grid(self.preprocess.crop)
            d["tokens"] = {
                "grid": [gh, gw],
                "count": gh * gw,
                "dim": self.spec.trunk_dim,
                "order": "row-major over the patch grid; view 1 is the grid of the flipped input",
            }
        return d


def shipped_folder() -> Path:
    """The package's folder of shipped encoder weights (``rcdm/encoders/weights``)."""
    from importlib import resources

    return Path(str(resources.files("rcdm.encoders") / "weights"))


def shipped_weights(spec: EncoderSpec) -> Path:
    """The weights file the package ships for ``spec``, checked against the sha256 the registry
    records (a changed file is refused: reinstall rcdm, or rebuild it with `rcdm pretrain`)."""
    path = shipped_folder() / spec.shipped
    if not path.is_file():
        raise MissingInput(f"the weights of {spec.name} are not in the package ({path}); reinstall rcdm")
    if sha256_file(path) != spec.shipped_sha256:
        raise InvalidInput(
            f"{path} has another sha256 than the {spec.shipped_sha256[:16]}... the registry records for "
            f"{spec.name}: the packaged weights were changed; reinstall rcdm, or pass your own with --weights"
        )
    return path


def _resolve_weights(spec: EncoderSpec, weights: str | None, allow_download: bool) -> Path:
    if weights is None and spec.shipped:
        return shipped_weights(spec)
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise MissingInput(
                f"weights file {p} for encoder {spec.name} does not exist"
                + (f"; the public weights are at {spec.url}" if spec.url else "")
            )
        return p
    if not allow_download or spec.url is None:
        raise MissingInput(
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
        raise InvalidInput(f"encoder {spec.name} has no layer {layer!r}; its layers are {', '.join(spec.dims)}")
    pp = get_preprocess(spec.preprocess if preprocess in (None, "default") else preprocess)
    if spec.is_vit and pp.crop % spec.patch_size:
        raise InvalidInput(
            f"encoder {spec.name} cuts {spec.patch_size}x{spec.patch_size} patches, so its input size "
            f"must be a multiple of {spec.patch_size}; got {pp.crop}: set extract.input_size to "
            f"{pp.crop // spec.patch_size * spec.patch_size or spec.patch_size} or "
            f"{(pp.crop // spec.patch_size + 1) * spec.patch_size}"
        )
    if not spec.needs_weights:
        if weights is not None:
            raise InvalidInput(f"{spec.name} is randomly initialised and takes no weights file")
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
        raise InvalidInput(f"{path}: {e} (expected the {spec.name} format)") from e
    trunk = _empty(lambda: build_trunk(spec.arch))
    if spec.is_vit:
        check_vit_fits(trunk, mapped.trunk, spec, path, mapped.layout)
    strict_load(trunk, mapped.trunk, f"{path} ({mapped.layout}) trunk", mapped.unexpected)
    head = None
    if layer == "head":
        if not mapped.head:
            raise InvalidInput(
                f"{path} ({mapped.layout}) has no head weights for {spec.name}; the head needs "
                f"the method's full checkpoint ({spec.url or 'see the registry'}), or use layer trunk"
            )
        head = _empty(lambda: build_head(spec.head))  # type: ignore[arg-type]
        strict_load(head, mapped.head, f"{path} ({mapped.layout}) head")
    enc = Encoder(spec, layer, trunk, head, pp, str(path.resolve()), sha256_file(path))
    return _freeze(enc)


def check_vit_fits(trunk: nn.Module, sd: dict, spec: EncoderSpec, path: Path, layout: str) -> None:
    """A ViT file of another size (ViT-B for a ViT-L entry) or without the registers the entry
    has is one clear error naming the entry that fits, before the key-by-key comparison."""
    from rcdm.encoders.registry import REGISTRY
    from rcdm.encoders.vit import ARCHS, describe_state_dict

    want, got = describe_state_dict(trunk.state_dict()), describe_state_dict(sd)
    if want == got:
        return
    fits = [
        s.name
        for s in REGISTRY.values()
        if s.reader == spec.reader and s.arch in ARCHS and ARCHS[s.arch].describe() == got
    ]
    raise InvalidInput(
        f"{path} ({layout}) holds a {got}, but encoder {spec.name} is a {want}: pass the "
        f"{spec.name} weights ({spec.url or 'see the registry'})"
        + (f", or use --encoder {' / '.join(fits)} for this file" if fits else "")
    )


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


def encoder_from_info(info: dict, *, weights: str | None = None, trust_checkpoint: bool = False) -> Encoder:
    """Rebuild the encoder a store was made with from its manifest's ``encoder`` field.

    The weights file is ``weights`` or the recorded path; its sha256 must match the record."""
    spec = get_spec(info["name"])
    if info.get("arch", spec.arch) != spec.arch:  # a test / demo variant of the entry
        spec = replace(
            spec,
            arch=info["arch"],
            trunk_dim=int(info.get("trunk_dim", spec.trunk_dim)),
            patch_size=int(info.get("patch_size", spec.patch_size)),
        )
    if spec.head is not None and info.get("head_dims") and tuple(info["head_dims"]) != spec.head.dims:
        spec = replace(spec, head=replace(spec.head, dims=tuple(info["head_dims"])))
    pp = Preprocess.from_dict(info["preprocess"]) if info.get("preprocess") else None
    layer = info.get("layer", "trunk")
    if not spec.needs_weights:
        enc = load_encoder(spec, None, layer, preprocess=pp, seed=int(info.get("seed") or 0))
    else:
        path = weights or info.get("weights")
        if path is None or not Path(path).is_file():
            raise MissingInput(
                f"the weights of encoder {spec.name} (sha256 {info.get('weights_sha256')}) are "
                f"not at {path}; pass the weights file explicitly"
            )
        expected = info.get("weights_sha256")
        if expected and sha256_file(path) != expected:
            raise InvalidInput(
                f"weights file {path} has a different sha256 than the one the store was made "
                f"with ({expected}); pass the original weights file"
            )
        enc = load_encoder(spec, str(path), layer, preprocess=pp, trust_checkpoint=trust_checkpoint)
    if "dim" in info and int(info["dim"]) != enc.dim:  # tokens: T * D at the recorded input size
        raise InvalidInput(f"encoder info says dim {info['dim']}, but {spec.name}/{layer} gives {enc.dim}")
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
            raise InvalidInput(f"encode expects uint8 (N, H, W, 3) pixels, got {images.dtype} {images.shape}")
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
        raise InvalidInput("encode: no images given")
    return np.concatenate(out)
