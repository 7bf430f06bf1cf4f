"""Reading encoder checkpoints: safe loading, the repositories' key layouts, strict loading.

Each reader maps a checkpoint dict (in one repository's layout) onto our module names
(:class:`rcdm.encoders.keymap.Mapped`):
``trunk`` (a torchvision ResNet-50 without ``fc``, or :class:`rcdm.encoders.vit.VisionTransformer`) and
``head`` (an ``nn.Sequential`` from :func:`rcdm.encoders.heads.build_head`). Keys the reader does not
recognise are reported as unexpected, and :func:`strict_load` refuses any missing, unexpected
or mis-shaped key, naming it: a checkpoint never half-loads into a random network.

Layouts (read without importing the training frameworks):

- VISSL: ``classy_state_dict.base_model.model.trunk`` with ``_feature_blocks.`` before the
  torchvision names; ``...model.heads`` is the list of VISSL heads: ``J.clf.0`` is the J-th
  MLP's Linear and ``J.clf.1`` its BatchNorm (SimCLR, MoCo, Barlow Twins, supervised), or SwAV's
  ``0.projection_head.K`` (plus ``0.prototypesN``, not used).
- DINO: ``teacher`` holds ``backbone.*`` and ``head.mlp.*`` (``head.last_layer``, plain or
  weight-normalised ``weight_g`` / ``weight_v``, is not used), with
  ``module.`` in front when the teacher was wrapped in DDP (ResNets); the ``*_pretrain.pth``
  files hold the backbone alone, in plain torchvision / timm names.
- VICReg: ``model`` holds ``module.backbone.*`` and ``module.projector.*``; ``resnet50.pth``
  holds the backbone alone.
- torchvision: a plain ResNet state dict, ``fc`` being the classifier.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rcdm.encoders.keymap import Mapped, Reader, first_keys, remap, strip_prefix
from rcdm.encoders.registry import HeadSpec
from rcdm.encoders.vit_readers import VIT_READERS
from rcdm.errors import InvalidInput, MissingInput
from rcdm.statedict import load_strict
from rcdm.torchload import UntrustedCheckpoint as UntrustedCheckpoint  # raised by read_checkpoint
from rcdm.torchload import load_weights_only
from torch import nn

# Globals allowed in weights-only loading besides tensors and containers: DINO's checkpoints
# pickle the training arguments as an argparse.Namespace, which holds plain values only.
SAFE_GLOBALS = [argparse.Namespace]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict:
    """Load a checkpoint file to a dict of (nested dicts of) tensors.

    ``torch.load(weights_only=True)`` (:func:`rcdm.torchload.load_weights_only`): a file that needs
    other pickled objects is refused with :class:`UntrustedCheckpoint` unless ``trust_checkpoint``
    (``--trust-checkpoint``). ``.safetensors`` files are read with safetensors. A truncated file or
    one that is not a checkpoint is a ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as e:
            raise InvalidInput(f"{path} is not a readable safetensors file ({e})") from e
    obj = load_weights_only(path, trust_checkpoint=trust_checkpoint, safe_globals=SAFE_GLOBALS)
    if not isinstance(obj, dict):
        raise InvalidInput(f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")
    return obj


# --------------------------------------------------------------------------------------------
# Key mapping and strict loading
# --------------------------------------------------------------------------------------------


def strict_load(module: nn.Module, sd: dict[str, Any], what: str, unexpected: list[str] = ()) -> None:
    """Load ``sd`` into ``module`` or raise InvalidInput naming every bad key."""
    load_strict(
        module,
        sd,
        what,
        unexpected=unexpected,
        hint="Check that the weights file belongs to this encoder (see `rcdm extract --list-encoders`)",
    )


def _dig(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


# --------------------------------------------------------------------------------------------
# Readers, one per repository layout
# --------------------------------------------------------------------------------------------


def _vissl_model(ckpt: dict) -> dict:
    model = _dig(ckpt, "classy_state_dict", "base_model", "model")
    if model is None or "trunk" not in model:
        raise InvalidInput(
            "not a VISSL checkpoint: expected classy_state_dict.base_model.model.trunk; "
            f"top-level keys are {first_keys(ckpt, 8)}"
        )
    return model


def _vissl_trunk(model: dict) -> tuple[dict, list[str]]:
    # model-zoo trunks name layers _feature_blocks.<torchvision name>; files converted from
    # torchvision may already use the plain names (anything else fails in strict_load, named)
    return remap(strip_prefix(model["trunk"]), [("_feature_blocks.", ""), ("", "")])


def _vissl_heads(model: dict) -> dict:
    # the heads ModuleList's state dict: "0.clf.0.weight", ... (tolerate a "heads." prefix)
    return strip_prefix(strip_prefix(model.get("heads") or {}), "heads.")


def read_vissl_mlp(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    """VISSL with a list of ``mlp`` heads: ``J.clf.0`` Linear J, ``J.clf.1`` its BatchNorm."""
    model = _vissl_model(ckpt)
    trunk, unexpected = _vissl_trunk(model)
    head_sd = None
    heads = _vissl_heads(model)
    if want_head and head is not None and heads:
        rules = []
        for j in range(head.n_linear):
            i = head.linear_index(j)
            rules.append((f"{j}.clf.0.", f"{i}."))
            if head.bn and j < head.n_linear - 1:
                rules.append((f"{j}.clf.1.", f"{i + 1}."))
        head_sd, bad = remap(heads, rules)
        unexpected += [f"heads.{k}" for k in bad]
    return Mapped(trunk, head_sd, unexpected, "VISSL (classy_state_dict, mlp heads)")


def read_vissl_swav(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    """VISSL SwAV: ``0.projection_head.K`` is our index K; the prototypes are not used."""
    model = _vissl_model(ckpt)
    trunk, unexpected = _vissl_trunk(model)
    head_sd = None
    heads = _vissl_heads(model)
    if want_head and heads:
        head_sd, bad = remap(heads, [("0.projection_head.", "")], ignore=("0.prototypes",))
        unexpected += [f"heads.{k}" for k in bad]
    return Mapped(trunk, head_sd, unexpected, "VISSL (classy_state_dict, swav_head)")


def read_dino(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    """DINO: the full checkpoint's ``teacher`` (backbone + head), or a backbone-only file."""
    if "teacher" in ckpt:
        sd = ckpt["teacher"]
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        sd = strip_prefix(sd)
        trunk, unexpected = remap(sd, [("backbone.", "")], ignore=("head.",))
        head_sd = None
        if want_head:
            head_part = {k: v for k, v in sd.items() if k.startswith("head.")}
            head_sd, _ = remap(head_part, [("head.mlp.", "")], ignore=("head.last_layer.",))
            unexpected += [k for k in head_part if not k.startswith(("head.mlp.", "head.last_layer."))]
        return Mapped(trunk, head_sd, unexpected, "DINO full checkpoint (teacher)")
    if "student" in ckpt:
        raise InvalidInput("DINO checkpoint without a 'teacher' entry: RCDM uses the teacher weights")
    return Mapped(strip_prefix(ckpt), None, [], "DINO backbone-only file")


def read_vicreg(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    """VICReg: ``model`` with ``module.backbone.`` / ``module.projector.``, or ``resnet50.pth``."""
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        sd = strip_prefix(ckpt["model"])
        heads = ("projector.", "head.")
        trunk, unexpected = remap(sd, [("backbone.", "")], ignore=heads)
        head_sd = None
        if want_head:
            head_sd, _ = remap(
                {k: v for k, v in sd.items() if k.startswith(heads)}, [("projector.", ""), ("head.", "")]
            )
        return Mapped(trunk, head_sd, unexpected, "VICReg full checkpoint (model)")
    return Mapped(strip_prefix(ckpt), None, [], "VICReg backbone-only file")


def read_torchvision(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    """A torchvision ResNet state dict; ``fc`` (the ImageNet classifier) is the head."""
    sd = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt
    sd = strip_prefix(sd)
    trunk = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    head_sd = None
    if want_head and any(k.startswith("fc.") for k in sd):
        head_sd, _ = remap({k: v for k, v in sd.items() if k.startswith("fc.")}, [("fc.", "0.")])
    return Mapped(trunk, head_sd, [], "torchvision state dict")


def read_rcdm(ckpt: dict, head: HeadSpec | None, want_head: bool) -> Mapped:
    """rcdm's own encoder files (``rcdm pretrain``): ``trunk.*`` and ``head.*`` in our module names."""
    trunk = {k[len("trunk.") :]: v for k, v in ckpt.items() if k.startswith("trunk.")}
    head_sd = {k[len("head.") :]: v for k, v in ckpt.items() if k.startswith("head.")} or None
    unexpected = [k for k in ckpt if not k.startswith(("trunk.", "head."))]
    if not trunk:
        raise ValueError(f"no trunk.* keys (found {first_keys(ckpt)})")
    return Mapped(trunk, head_sd if want_head else None, unexpected, "rcdm encoder file")


READERS: dict[str, Reader] = {
    "rcdm": read_rcdm,
    "vissl-mlp": read_vissl_mlp,
    "vissl-swav": read_vissl_swav,
    "dino": read_dino,
    "vicreg": read_vicreg,
    "torchvision": read_torchvision,
    # the ViT families' readers (DINOv2, MAE, I-JEPA, open_clip / timm CLIP and SigLIP)
    **VIT_READERS,
}
