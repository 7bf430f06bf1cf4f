"""Linear probe on frozen representations, and FGSM through encoder + probe.

The probe is the paper's linear evaluation (Table a, and the classifier attacked in Fig. 4):
standardise the features with the training split's mean / std, then fit multinomial logistic
regression with Adam (full batch when the store is small, minibatches otherwise). Everything is
torch in, torch / numpy out, with no I/O, so it is checked directly in tests/test_probe.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from torch import nn

__all__ = ["LinearProbe", "ProbeResult", "train_probe", "accuracy", "check_labels", "fgsm"]


class LinearProbe(nn.Module):
    """``logits = W ((h - mean) / std) + b``: standardisation is part of the module, so the
    FGSM gradient flows through exactly what was trained."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())  # (D,)
        self.register_buffer("std", std.float())  # (D,)
        self.linear = nn.Linear(mean.numel(), n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, C)
        return self.linear((h - self.mean) / self.std)


@dataclass
class ProbeResult:
    probe: LinearProbe
    train_accuracy: float
    val_accuracy: float
    n_classes: int
    epochs: int
    final_loss: float

    def to_dict(self) -> dict:
        return {
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "n_classes": self.n_classes,
            "epochs": self.epochs,
            "final_train_loss": self.final_loss,
        }


def check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Labels must be known (>= 0) for a probe; -1 means the store was built without classes."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise InvalidInput(f"{what} is empty; a linear probe needs labelled features")
    if (labels < 0).any():
        n = int((labels < 0).sum())
        raise InvalidInput(
            f"{what} has {n} of {labels.size} entries without a label (-1); the probe and the "
            "adversarial experiment need a labelled store: extract it from an ImageFolder tree "
            "(one folder per class) or a file list with labels"
        )
    return labels


@torch.no_grad()
def accuracy(probe: nn.Module, feats: torch.Tensor, labels: torch.Tensor, batch: int = 8192) -> float:
    correct = 0
    for s in range(0, feats.shape[0], batch):
        pred = probe(feats[s : s + batch]).argmax(1)
        correct += int((pred == labels[s : s + batch]).sum())
    return correct / max(1, feats.shape[0])


def train_probe(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    val_feats: np.ndarray,
    val_labels: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
    n_classes: int | None = None,
    device: torch.device | str = "cpu",
) -> ProbeResult:
    """Fit a linear probe on ``train_feats (N, D)`` and report accuracy on ``val_feats (M, D)``.

    ``batch_size=None`` trains full batch when N <= 65536 rows, else minibatches of 4096.
    Seeded: the same inputs and seed give the same probe.
    """
    ytr = check_labels(train_labels, "the training features' labels")
    yva = check_labels(val_labels, "the validation features' labels")
    xtr = np.asarray(train_feats, dtype=np.float32)
    xva = np.asarray(val_feats, dtype=np.float32)
    if xtr.ndim != 2 or xva.ndim != 2 or xtr.shape[1] != xva.shape[1]:
        raise InvalidInput(
            f"probe: train features {xtr.shape} and val features {xva.shape} must be (N, D) with the same D"
        )
    if xtr.shape[0] != ytr.shape[0] or xva.shape[0] != yva.shape[0]:
        raise InvalidInput("probe: features and labels have different lengths")
    n_classes = int(n_classes or max(ytr.max(), yva.max()) + 1)
    if n_classes < 2:
        raise InvalidInput("probe: the training labels hold a single class; a probe needs at least 2")
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    Xtr = torch.from_numpy(xtr).to(device)
    Ytr = torch.tensor(ytr).to(device)  # a copy: a store's labels are read-only
    mean = Xtr.mean(0)
    std = Xtr.std(0, unbiased=False).clamp_min(1e-6)  # constant dims stay finite
    probe = LinearProbe(mean, std, n_classes).to(device)
    # Seeded initialisation (zeros would also be fine for a convex problem; keep it explicit).
    with torch.no_grad():
        probe.linear.weight.copy_(torch.randn(probe.linear.weight.shape, generator=g) * 0.01)
        probe.linear.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = Xtr.shape[0]
    bs = batch_size or (n if n <= 65536 else 4096)
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device) if bs < n else torch.arange(n, device=device)
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            loss = F.cross_entropy(probe(Xtr[idx]), Ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    probe.eval()
    Xva = torch.from_numpy(xva).to(device)
    Yva = torch.tensor(yva).to(device)
    return ProbeResult(
        probe=probe,
        train_accuracy=accuracy(probe, Xtr, Ytr),
        val_accuracy=accuracy(probe, Xva, Yva),
        n_classes=n_classes,
        epochs=epochs,
        final_loss=float(loss.detach()),
    )


def fgsm(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    targeted: bool = False,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), one step of size ``eps``.

    ``forward`` maps ``x`` (e.g. pixels (N, 3, H, W) in [0, 1]) to logits (N, C). Untargeted:
    ``x + eps sign(grad CE(forward(x), labels))`` (labels = the true / clean class) raises the
    loss. Targeted: ``x - eps sign(grad CE(forward(x), target))`` moves toward the target class.
    """
    if eps < 0:
        raise InvalidInput(f"FGSM epsilon must be >= 0, got {eps}")
    x0 = x.detach()
    if eps == 0:
        return x0.clone()
    xg = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(forward(xg), labels)
        (grad,) = torch.autograd.grad(loss, xg)
    step = eps * grad.sign()
    x_adv = x0 - step if targeted else x0 + step
    if clamp is not None:
        x_adv = x_adv.clamp(*clamp)
    return x_adv.detach()
