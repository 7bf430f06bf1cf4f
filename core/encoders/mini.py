"""``resnet-mini``: a ResNet-shaped trunk sized for small images and a CPU (the demo's encoder).

A 3x3 stem (no stride, no max-pool: the input is 32 px), then four stages of one basic residual
block each (He et al. 2016) at widths w, 2w, 4w, 8w, strides 1, 2, 2, 2, and a global average
pool: an (N, 8w) trunk output. ``rcdm pretrain`` trains it with SimCLR (:mod:`rcdm.train.pretrain`);
the registry's ``simclr-mini`` entry ships such weights inside the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MiniResNet", "WIDTH"]

WIDTH = 16  # the shipped encoder's base width: a 128-d trunk, 0.33M parameters


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (a 1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        same = stride == 1 and cin == cout
        self.shortcut = (
            nn.Sequential()
            if same
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class MiniResNet(nn.Module):
    """``forward(x (N, 3, H, W)) -> (N, 8 * width)``, the average-pooled last stage."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layers = nn.Sequential(
            BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 8 * w, 2)
        )
        self.dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean((2, 3))
