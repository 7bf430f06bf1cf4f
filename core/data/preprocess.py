"""Pixel preprocessing: the encoder input (:class:`Preprocess`) and the diffusion image.

Two pixel pipelines live here and must not be confused:

- the *encoder input* (:class:`Preprocess`, :func:`encoder_input`): what a frozen encoder sees,
  a 224x224 crop in the encoder's value range (``rcdm``: exactly the official RCDM code's
  input, guided-diffusion's center crop scaled to [-1, 1]; ``imagenet``: torchvision's resize
  256 / crop 224, [0, 1], then ImageNet mean/std as in torchvision / VISSL);
- the *diffusion image* (:func:`adm_center_crop`, :func:`to_model_range`): what the RCDM UNet
  is trained on, guided-diffusion's center crop at the model resolution scaled to [-1, 1].

Import these from :mod:`rcdm.data.images` (which re-exports them) or from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image
from rcdm.errors import InvalidInput

__all__ = [
    "Preprocess",
    "PREPROCESS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "get_preprocess",
    "encoder_input",
    "adm_center_crop",
    "shorter_side_size",
    "center_offsets",
    "adm_sizes",
    "adm_offsets",
    "to_model_range",
    "from_model_range",
]


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
            raise InvalidInput(f"preprocess interpolation {self.interpolation!r}: use 'bicubic' or 'bilinear'")
        if self.resize_rule not in ("torchvision", "adm"):
            raise InvalidInput(f"preprocess resize_rule {self.resize_rule!r}: use 'torchvision' or 'adm'")
        if self.resize_rule == "adm" and self.interpolation != "bicubic":
            raise InvalidInput("preprocess resize_rule 'adm' resizes with bicubic interpolation only")
        if self.crop > self.resize:
            raise InvalidInput(f"preprocess crop {self.crop} is larger than resize {self.resize}")
        if self.value_range[1] <= self.value_range[0]:
            raise InvalidInput(f"preprocess value_range {self.value_range}: expected (low, high)")

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
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESS: dict[str, Preprocess] = {
    # the official RCDM code (guided_diffusion/image_datasets.py): center_crop_arr(img, 224),
    # then x / 127.5 - 1, no mean/std
    "rcdm": Preprocess(224, 224, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "adm"),
    # torchvision / VISSL evaluation: resize 256, crop 224, [0, 1], ImageNet mean/std
    "imagenet": Preprocess(256, 224, "bilinear", (0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD),
    # the same with bicubic resizing: the evaluation transform of DINOv2, MAE and I-JEPA
    "imagenet-bicubic": Preprocess(256, 224, "bicubic", (0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD),
    # OpenAI CLIP / open_clip: resize 224 bicubic, center crop 224, CLIP mean/std
    "clip": Preprocess(224, 224, "bicubic", (0.0, 1.0), CLIP_MEAN, CLIP_STD),
    # SigLIP (open_clip / timm): bicubic 224, mean = std = 0.5 (the official squash to 224x224
    # is done here as resize shorter side + center crop, like the other presets)
    "siglip": Preprocess(224, 224, "bicubic", (0.0, 1.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # the rcdm rule at 32 px: what the demo's models draw, and what rcdm pretrain's encoder sees
    "rcdm32": Preprocess(32, 32, "bicubic", (-1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "adm"),
}


def get_preprocess(name_or_pp: str | Preprocess) -> Preprocess:
    if isinstance(name_or_pp, Preprocess):
        return name_or_pp
    try:
        return PREPROCESS[name_or_pp]
    except KeyError:
        raise InvalidInput(f"unknown preprocessing {name_or_pp!r}; choose one of {', '.join(PREPROCESS)}") from None


def effective_preprocess(own: str, choice: str = "default", input_size: int | None = None) -> Preprocess:
    """What an encoder whose own preset is ``own`` is fed: ``choice`` ("default": its own), with
    the crop set to ``input_size`` when given (the preset's resize:crop ratio kept: 256:224 for
    imagenet, 1:1 for rcdm)."""
    base = get_preprocess(own if choice == "default" else choice)
    if input_size is None:
        return base
    resize = max(input_size, round(base.resize * input_size / base.crop))
    return replace(base, resize=resize, crop=input_size)


def describe_preprocess(pp: Preprocess) -> str:
    """One line for plans and logs: ``224 px (adm center crop, [-1, 1])``."""
    how = "adm center crop" if pp.resize_rule == "adm" else f"resize {pp.resize} {pp.interpolation}, center crop"
    names = {IMAGENET_STD: "ImageNet", CLIP_STD: "CLIP", (0.5, 0.5, 0.5): "0.5"}
    norm = f", {names.get(pp.std, 'custom')} mean/std" if pp.std != (1.0, 1.0, 1.0) else ""
    lo, hi = pp.value_range
    return f"{pp.crop} px ({how}, [{lo:g}, {hi:g}]{norm})"


def shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` rule: the (w, h) whose shorter side is ``size``, the longer
    side scaled and truncated (unchanged when the shorter side already is ``size``)."""
    if min(w, h) == size:
        return w, h
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def center_offsets(h: int, w: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``center_crop`` of an h x w image (the offsets rounded)."""
    return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))


def adm_sizes(w: int, h: int, size: int) -> list[tuple[int, int]]:
    """guided-diffusion's ``center_crop_arr`` resizes of a (w, h) image: the (w, h) after each box
    halving (while the shorter side is at least ``2 * size``), then the bicubic one, whose shorter
    side is ``size``. Its crop offsets are :func:`adm_offsets`."""
    steps = []
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        steps.append((w, h))
    scale = size / min(w, h)
    steps.append((round(w * scale), round(h * scale)))
    return steps


def adm_offsets(h: int, w: int, crop: int) -> tuple[int, int]:
    """(top, left) of guided-diffusion's center crop of an h x w image (the offsets floored)."""
    return (h - crop) // 2, (w - crop) // 2


def _resize_shorter(img: Image.Image, size: int, resample: int) -> Image.Image:
    new = shorter_side_size(*img.size, size)
    return img if new == img.size else img.resize(new, resample=resample)


def _center_crop(img: Image.Image, crop: int) -> Image.Image:
    w, h = img.size
    top, left = center_offsets(h, w, crop)
    return img.crop((left, top, left + crop, top + crop))


def encoder_input(img: Image.Image, pp: Preprocess):
    """PIL image -> encoder input tensor ``(3, crop, crop)`` float32."""
    import torch

    img = img.convert("RGB")
    if pp.resize_rule == "adm":
        arr = adm_center_crop(img, pp.resize)
        if pp.crop != pp.resize:
            top, left = adm_offsets(pp.resize, pp.resize, pp.crop)
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
    *halvings, final = adm_sizes(*img.size, size)
    for half in halvings:
        img = img.resize(half, resample=Image.BOX)
    img = img.resize(final, resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = adm_offsets(arr.shape[0], arr.shape[1], size)
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def to_model_range(x_uint8):
    """uint8 ``(N, H, W, 3)`` or ``(H, W, 3)`` (numpy or torch) -> float32 ``(N, 3, H, W)`` in
    [-1, 1] (x / 127.5 - 1, as guided-diffusion)."""
    import torch

    x = torch.as_tensor(np.asarray(x_uint8)) if not isinstance(x_uint8, torch.Tensor) else x_uint8
    if x.dtype != torch.uint8:
        raise InvalidInput(f"to_model_range expects uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InvalidInput(f"to_model_range expects (N, H, W, 3) pixels, got shape {tuple(x.shape)}")
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
        raise InvalidInput(f"from_model_range expects (N, 3, H, W), got shape {tuple(x.shape)}")
    y = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous().numpy()
