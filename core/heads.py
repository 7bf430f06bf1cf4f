"""Projection heads of the self-supervised methods, as plain ``nn.Sequential`` MLPs.

Layout: for each linear layer ``Linear`` then, except after the last, ``[BatchNorm1d]`` and
the activation; an optional L2 normalisation at the end (SwAV). With BN the Sequential indices
are Linear 0, BN 1, act 2, Linear 3, ...; without BN Linear 0, act 1, Linear 2, ... This is
the layout of DINO's ``DINOHead.mlp``, VICReg's ``projector`` and VISSL's SwAV
``projection_head``, so their keys map onto it index for index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, p=2)


def build_head(spec: HeadSpec) -> nn.Sequential:
    biases = spec.bias if spec.bias is not None else (True,) * spec.n_linear
    if len(biases) != spec.n_linear:
        raise ValueError(f"head spec {spec}: {len(biases)} bias flags for {spec.n_linear} layers")
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
