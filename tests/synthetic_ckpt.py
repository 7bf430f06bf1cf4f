"""Synthetic encoder checkpoints in the real repositories' key layouts (no network).

Each ``save_*`` writes a file laid out like the published checkpoints of one repository, from
a trunk (torchvision ResNet-50 without ``fc``, or rcdm's ViT) and an optional head
(``nn.Sequential`` built by :func:`rcdm.encoders.heads.build_head`). The layouts are rebuilt here from
the repositories' own module structures (VISSL's ``_feature_blocks`` ModuleDict and MLP heads
with ``clf``, DINO's MultiCropWrapper and DINOHead, VICReg's DDP-wrapped model), independently
of rcdm's readers, so a test that loads them checks the readers against the real layouts.

Usage::

    trunk, head = random_modules(get_spec("simclr-rn50"))
    save_vissl("simclr.torch", trunk, head)
    enc = load_encoder("simclr-rn50", "simclr.torch", layer="head")
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from rcdm.encoders.build import build_trunk
from rcdm.encoders.heads import L2Norm, build_head
from rcdm.encoders.registry import EncoderSpec
from torch import nn


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (so a loader that
    skipped them would be caught), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.num_batches_tracked.fill_(1000)
    return module


def random_modules(spec: EncoderSpec, seed: int = 0, head: bool = True):
    """(trunk, head or None) for ``spec``, randomly initialised, in eval mode."""
    torch.manual_seed(seed)
    trunk = randomize_(build_trunk(spec.arch), seed).eval()
    h = randomize_(build_head(spec.head), seed + 1).eval() if head and spec.head else None
    return trunk, h


# ---------------------------------------------------------------------------------- VISSL


class _VisslTrunk(nn.Module):
    """VISSL's ResNe(X)t trunk: the torchvision layers in a ModuleDict ``_feature_blocks``."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        r = copy.deepcopy(resnet)
        self._feature_blocks = nn.ModuleDict(
            {
                "conv1": r.conv1,
                "bn1": r.bn1,
                "conv1_relu": r.relu,
                "maxpool": r.maxpool,
                "layer1": r.layer1,
                "layer2": r.layer2,
                "layer3": r.layer3,
                "layer4": r.layer4,
                "avgpool": r.avgpool,
                "flatten": nn.Flatten(1),
            }
        )


class _VisslMLP(nn.Module):
    """vissl.models.heads.MLP: ``clf = Sequential(Linear, [BatchNorm1d], [ReLU])``."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.clf = nn.Sequential(*layers)


class _VisslSwavHead(nn.Module):
    """vissl.models.heads.SwAVPrototypesHead: ``projection_head`` and ``prototypes0``."""

    def __init__(self, projection: nn.Sequential, n_prototypes: int = 30):
        super().__init__()
        self.projection_head = projection
        self.prototypes0 = nn.Linear(projection[-1].out_features, n_prototypes, bias=False)


def _split_at_linears(head: nn.Sequential) -> list[list[nn.Module]]:
    """[Linear, BN, act, Linear, ...] -> [[Linear, BN, act], [Linear], ...] (one VISSL MLP each)."""
    groups: list[list[nn.Module]] = []
    for m in copy.deepcopy(head):
        if isinstance(m, L2Norm):
            continue
        if isinstance(m, nn.Linear):
            groups.append([])
        groups[-1].append(m)
    return groups


def save_vissl(path: str | Path, trunk: nn.Module, head: nn.Sequential | None, head_style: str = "mlp") -> Path:
    """A VISSL model-zoo checkpoint: ``classy_state_dict.base_model.model.{trunk,heads}``.

    ``head_style="mlp"``: a list of VISSL MLP heads (SimCLR, MoCo, Barlow Twins, supervised);
    ``"swav"``: one SwAV prototypes head."""
    heads: dict = {}
    if head is not None:
        if head_style == "mlp":
            heads_mod = nn.ModuleList(_VisslMLP(g) for g in _split_at_linears(head))
        elif head_style == "swav":
            proj = nn.Sequential(*[m for m in copy.deepcopy(head) if not isinstance(m, L2Norm)])
            heads_mod = nn.ModuleList([_VisslSwavHead(proj)])
        else:
            raise ValueError(f"unknown VISSL head style {head_style!r}")
        heads = heads_mod.state_dict()
    ckpt = {
        "phase_idx": 3,
        "iteration_num": 1000,
        "train_phase_idx": 1,
        "iteration": 1000,
        "type": "consolidated",
        "classy_state_dict": {
            "train": True,
            "base_model": {
                "model": {"trunk": _VisslTrunk(trunk).state_dict(), "heads": heads},
                "meta": {"model_version": 1},
            },
            "loss": {},
        },
    }
    torch.save(ckpt, path)
    return Path(path)


# ---------------------------------------------------------------------------------- DINO


class _DINOHead(nn.Module):
    """DINO's DINOHead: ``mlp`` then (weight-normalised) ``last_layer``."""

    def __init__(self, mlp: nn.Sequential, out_dim: int = 60):
        super().__init__()
        self.mlp = copy.deepcopy(mlp)
        bottleneck = self.mlp[-1].out_features
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)


class _MultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.head = head


def _dino_teacher(trunk: nn.Module, head: nn.Sequential, ddp: bool, weight_norm: bool) -> dict:
    wrapper = _MultiCropWrapper(trunk, _DINOHead(head))
    sd = wrapper.state_dict()
    if weight_norm:
        # weight_norm(last_layer) stores weight_g (out, 1) and weight_v (out, bottleneck)
        w = sd.pop("head.last_layer.weight")
        sd["head.last_layer.weight_g"] = w.norm(dim=1, keepdim=True)
        sd["head.last_layer.weight_v"] = w
    return {("module." + k if ddp else k): v for k, v in sd.items()}


def save_dino(path: str | Path, trunk: nn.Module, head: nn.Sequential | None = None, ddp: bool | None = None) -> Path:
    """A DINO checkpoint. With ``head``: the full training checkpoint (``teacher``, ``student``,
    ``args`` as an argparse.Namespace, ...); ``ddp`` (default: the trunk has BatchNorm, as
    main_dino.py wraps only such teachers in DDP) prefixes ``module.``. The published ResNet-50
    file has a plain ``last_layer.weight`` and the ViT files ``weight_g`` / ``weight_v``
    (facebookresearch/dino#189). Without ``head``: the backbone-only ``*_pretrain.pth`` file."""
    if head is None:
        torch.save(copy.deepcopy(trunk).state_dict(), path)
        return Path(path)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in trunk.modules())
    teacher = _dino_teacher(trunk, head, has_bn if ddp is None else ddp, weight_norm=not has_bn)
    ckpt = {
        "student": {k: v.clone() for k, v in teacher.items()},
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet50", out_dim=60, use_bn_in_head=True, lr=0.3),
        "dino_loss": {"center": torch.zeros(1, 60)},
    }
    torch.save(ckpt, path)
    return Path(path)


# ---------------------------------------------------------------------------------- VICReg


class _VICReg(nn.Module):
    def __init__(self, backbone: nn.Module, projector: nn.Sequential):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.projector = copy.deepcopy(projector)


def save_vicreg(path: str | Path, trunk: nn.Module, head: nn.Sequential | None = None) -> Path:
    """VICReg: ``{"epoch", "model": DDP state dict, "optimizer"}`` (``resnet50_fullckpt.pth``),
    or without ``head`` the backbone-only ``resnet50.pth``."""
    if head is None:
        torch.save(copy.deepcopy(trunk).state_dict(), path)
        return Path(path)
    model = {"module." + k: v for k, v in _VICReg(trunk, head).state_dict().items()}
    torch.save({"epoch": 1000, "model": model, "optimizer": {"state": {}, "param_groups": []}}, path)
    return Path(path)


# ---------------------------------------------------------------------------------- plain


def save_torchvision(path: str | Path, trunk: nn.Module, fc: nn.Sequential | None = None) -> Path:
    """A torchvision ``resnet50`` state dict (``fc`` from the one-Linear head, else random)."""
    sd = dict(copy.deepcopy(trunk).state_dict())
    lin = fc[0] if fc is not None else nn.Linear(2048, 1000)
    sd["fc.weight"], sd["fc.bias"] = lin.weight.detach().clone(), lin.bias.detach().clone()
    torch.save(sd, path)
    return Path(path)


def save_timm_vit(path: str | Path, vit: nn.Module) -> Path:
    """A timm / DINO ViT state dict (``cls_token``, ``pos_embed``, ``blocks.N...``, ``norm``)."""
    torch.save(copy.deepcopy(vit).state_dict(), path)
    return Path(path)
