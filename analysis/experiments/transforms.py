"""Image transformations for the invariance and distances experiments.

Named transforms (the paper's Fig. 3 / 25), single augmentations and the SwAV/DINO multi-crop
recipe (Fig. 21 / 22), and user transforms written as torchvision expressions in the config.
User expressions are parsed with ``ast``: only ``torchvision.transforms`` class names called with
literal arguments (``ast.literal_eval``) or other such calls are accepted; nothing is ``eval``-ed.
Random transforms are applied under a fixed seed, so the same config gives the same image.
"""

from __future__ import annotations

import ast
import random
import zlib
from collections.abc import Callable

import torch
from PIL import Image
from rcdm.errors import InvalidInput

__all__ = [
    "NAMED",
    "parse_transform",
    "get_transform",
    "seeded_apply",
    "single_augmentations",
    "multicrop",
]

Transform = Callable[[Image.Image], Image.Image]


def _vshift(img: Image.Image) -> Image.Image:
    """Shift the content down by a quarter of the height (black fill)."""
    import torchvision.transforms.functional as TF

    return TF.affine(img, angle=0.0, translate=[0, round(0.25 * img.height)], scale=1.0, shear=[0.0])


def _zoom_in(img: Image.Image) -> Image.Image:
    """The central half (per side), scaled back to the original size."""
    w, h = img.size
    box = (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)
    return img.crop(box).resize((w, h), Image.BICUBIC)


def _zoom_out(img: Image.Image) -> Image.Image:
    """The image at half size in the middle of a black canvas of the original size."""
    w, h = img.size
    small = img.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC)
    canvas = Image.new("RGB", (w, h))
    canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return canvas


def _grayscale(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def _color_jitter(img: Image.Image) -> Image.Image:
    import torchvision.transforms as T

    return T.ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)(img)  # seeded by caller


def _hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


NAMED: dict[str, Transform] = {
    "vshift": _vshift,
    "zoom-in": _zoom_in,
    "zoom-out": _zoom_out,
    "grayscale": _grayscale,
    "color-jitter": _color_jitter,
    "hflip": _hflip,
}

# transforms that do not map a PIL image to a PIL image (or need a callable argument)
_REFUSED = {
    "ToTensor",
    "PILToTensor",
    "ToPILImage",
    "Normalize",
    "ConvertImageDtype",
    "Lambda",
    "LinearTransformation",
    "ToImage",
    "ToDtype",
}
_PREFIXES = ("", "T.", "transforms.", "torchvision.transforms.")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise InvalidInput("expected a transform name such as RandomRotation")


def _value(node: ast.AST, expr: str):
    if isinstance(node, ast.Call):
        return _build(node, expr)
    if isinstance(node, (ast.List, ast.Tuple)) and any(isinstance(e, ast.Call) for e in node.elts):
        vals = [_value(e, expr) for e in node.elts]
        return vals if isinstance(node, ast.List) else tuple(vals)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise InvalidInput(
            f"custom transform {expr!r}: argument {ast.unparse(node)!r} is not a literal "
            "(numbers, strings, tuples, lists, True/False/None) or a torchvision transform"
        ) from None


def _allowed_names(T) -> list[str]:
    """The transform classes of ``torchvision.transforms`` (not enums, not the refused ones)."""
    import enum

    return [
        n
        for n, v in vars(T).items()
        if isinstance(v, type)
        and not n.startswith("_")
        and not issubclass(v, enum.Enum)
        and v.__module__.startswith("torchvision.transforms")
        and n not in _REFUSED
    ]


def _build(node: ast.Call, expr: str):
    import torchvision.transforms as T

    try:
        name = _dotted(node.func)
    except ValueError:
        raise InvalidInput(f"custom transform {expr!r}: {ast.unparse(node.func)!r} is not a transform name") from None
    prefix, _, base = name.rpartition(".")
    prefix = prefix + "." if prefix else ""
    allowed = _allowed_names(T)
    if prefix not in _PREFIXES or base not in allowed:
        raise InvalidInput(
            f"custom transform {expr!r}: {name!r} is not an allowed torchvision.transforms class; "
            f"use one of {', '.join(sorted(allowed))}"
        )
    if any(kw.arg is None for kw in node.keywords):
        raise InvalidInput(f"custom transform {expr!r}: **kwargs are not supported; name each argument")
    args = [_value(a, expr) for a in node.args]
    kwargs = {kw.arg: _value(kw.value, expr) for kw in node.keywords}
    try:
        return getattr(T, base)(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"custom transform {expr!r}: {base} rejected its arguments: {e}") from None


def parse_transform(expr: str) -> Transform:
    """``"RandomRotation(30)"``, ``"T.ColorJitter(brightness=0.5)"``,
    ``"Compose([CenterCrop(100), Resize(224)])"`` -> a PIL -> PIL callable."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise InvalidInput(f"custom transform {expr!r} is not a Python expression: {e.msg}") from None
    if not isinstance(tree.body, ast.Call):
        raise InvalidInput(
            f"custom transform {expr!r}: expected a call of a torchvision.transforms class, e.g. RandomRotation(30)"
        )
    t = _build(tree.body, expr)

    def apply(img: Image.Image) -> Image.Image:
        try:
            out = t(img)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidInput(f"custom transform {expr!r} failed on a PIL image: {e}") from None
        if not isinstance(out, Image.Image):
            raise InvalidInput(
                f"custom transform {expr!r} returned {type(out).__name__}, not a PIL image; "
                "use transforms that map PIL images to PIL images"
            )
        return out.convert("RGB")

    return apply


def get_transform(name: str) -> Transform:
    """A named transform, or a torchvision expression (anything with a parenthesis)."""
    if name in NAMED:
        return NAMED[name]
    if "(" in name:
        return parse_transform(name)
    raise InvalidInput(
        f"unknown transform {name!r}; use one of {', '.join(NAMED)} or a torchvision expression "
        "in analyze.custom_transforms, e.g. RandomRotation(30)"
    )


def seeded_apply(t: Transform, img: Image.Image, seed: int, salt: str = "") -> Image.Image:
    """Apply ``t`` with torch's and Python's RNGs fixed (and restored afterwards)."""
    s = (int(seed) * 1_000_003 + zlib.crc32(salt.encode())) % (2**63)
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s)
        random.seed(s)
        try:
            return t(img)
        finally:
            random.setstate(state)


def single_augmentations() -> dict[str, Transform]:
    """One augmentation at a time, with the strengths of SimCLR / SwAV (Fig. 21)."""
    import torchvision.transforms as T

    return {
        "crop": T.RandomResizedCrop(224, scale=(0.14, 1.0)),
        "color-jitter": T.ColorJitter(0.8, 0.8, 0.8, 0.2),
        "grayscale": T.Grayscale(num_output_channels=3),
        "blur": T.GaussianBlur(23, sigma=(0.1, 2.0)),
        "hflip": T.RandomHorizontalFlip(p=1.0),
        "solarize": T.RandomSolarize(128, p=1.0),
    }


def multicrop(n_global: int = 2, n_local: int = 6) -> list[tuple[str, Transform]]:
    """The SwAV / DINO multi-crop recipe (Caron et al. 2020, 2021): global 224 px crops of
    scale (0.14, 1) and local 96 px crops of scale (0.05, 0.14), with flip, colour jitter (p 0.8),
    grayscale (p 0.2), blur and solarisation (second global crop)."""
    import torchvision.transforms as T

    flip_color = [
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    blur = T.GaussianBlur(23, sigma=(0.1, 2.0))
    g1 = T.Compose([T.RandomResizedCrop(224, scale=(0.14, 1.0)), *flip_color, blur])
    g2 = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.14, 1.0)),
            *flip_color,
            T.RandomApply([blur], p=0.1),
            T.RandomSolarize(128, p=0.2),
        ]
    )
    loc = T.Compose([T.RandomResizedCrop(96, scale=(0.05, 0.14)), *flip_color, T.RandomApply([blur], p=0.5)])
    out = [("global-1", g1), ("global-2", g2)][:n_global]
    out += [(f"local-{i + 1}", loc) for i in range(n_local)]
    return out
