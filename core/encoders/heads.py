"""Projection heads of the self-supervised methods, as plain ``nn.Sequential`` MLPs.

Layout: for each linear layer ``Linear`` then, except after the last, ``[BatchNorm1d]`` and
the activation; an optional L2 normalisation at the end (SwAV). With BN the Sequential indices
are Linear 0, BN 1, act 2, Linear 3, ...; without BN Linear 0, act 1, Linear 2, ... This is
the layout of DINO's ``DINOHead.mlp``, VICReg's ``projector`` and VISSL's SwAV
``projection_head``, so their keys map onto it index for index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rcdm.encoders.registry import HeadSpec
from rcdm.errors import InvalidInput
from torch import nn


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, p=2)


def build_head(spec: HeadSpec) -> nn.Sequential:
    biases = spec.bias if spec.bias is not None else (True,) * spec.n_linear
    if len(biases) != spec.n_linear:
        raise InvalidInput(f"head spec {spec}: {len(biases)} bias flags for {spec.n_linear} layers")
    layers: list[nn.Module] = []
    for j in range(spec.n_linear):
        layers.append(nn.Linear(spec.dims[j], spec.dims[j + 1], bias=biases[j]))
        if j < spec.n_linear - 1:
            if spec.bn:
                layers.append(nn.BatchNorm1d(spec.dims[j + 1]))
            layers.append(nn.GELU() if spec.act == "gelu" else nn.ReLU(inplace=True))
    if spec.l2norm:
        layers.append(L2Norm())
    return nn.Sequential(*layers)
