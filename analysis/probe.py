"""Linear probe on frozen representations, and FGSM through encoder + probe.

The probe is the paper's linear evaluation (Table a, and the classifier attacked in Fig. 4):
standardise the features with the training split's mean / std, then fit multinomial logistic
regression with Adam (full batch when the store is small, minibatches otherwise). :func:`train_probe`
is torch in, torch / numpy out, with no I/O, so it is checked directly in tests/test_probe.py.
:func:`train_probe_streamed` fits the same probe on a store too large to hold (ImageNet's training
rows are 10 GB of float32), reading it through ``FeatureStore.read_range`` a shuffle buffer at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from torch import nn

__all__ = ["LinearProbe", "ProbeResult", "train_probe", "train_probe_streamed", "accuracy", "check_labels", "fgsm"]

FULL_BATCH_ROWS = 65536  # train_probe: full batch up to this many rows, else minibatches of MINIBATCH
MINIBATCH = 4096
STREAM_BLOCKS = 1024  # a streamed probe's shuffle buffer mixes about this many blocks of the store
MIN_BLOCK_ROWS = 32  # ... of at least this many rows (each block is one read)


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
    n_classes = _classes(n_classes, ytr, yva)
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    Xtr = torch.from_numpy(xtr).to(device)
    Ytr = torch.tensor(ytr).to(device)  # a copy: a store's labels are read-only
    mean = Xtr.mean(0)
    std = Xtr.std(0, unbiased=False).clamp_min(1e-6)  # constant dims stay finite
    probe, opt = _new_probe(mean, std, n_classes, g, device, lr, weight_decay)
    n = Xtr.shape[0]
    bs = batch_size or (n if n <= FULL_BATCH_ROWS else MINIBATCH)
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device) if bs < n else torch.arange(n, device=device)
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            loss = _step(probe, opt, Xtr[idx], Ytr[idx])
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


def _classes(n_classes: int | None, ytr: np.ndarray, yva: np.ndarray) -> int:
    """The probe's class count (given, or one past the largest label); at least 2."""
    n = int(n_classes or max(ytr.max(), yva.max()) + 1)
    if n < 2:
        raise InvalidInput("probe: the training labels hold a single class; a probe needs at least 2")
    return n


def _new_probe(mean: torch.Tensor, std: torch.Tensor, n_classes: int, g: torch.Generator, device, lr, weight_decay):
    """The probe (standardising with ``mean`` / ``std``), seeded from ``g``, and its Adam."""
    probe = LinearProbe(mean, std, n_classes).to(device)
    # Seeded initialisation (zeros would also be fine for a convex problem; keep it explicit).
    with torch.no_grad():
        probe.linear.weight.copy_(torch.randn(probe.linear.weight.shape, generator=g) * 0.01)
        probe.linear.bias.zero_()
    return probe, torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)


def _step(probe: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(probe(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def stream_blocks(shard_offsets: list[int], buffer_rows: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` row blocks a streamed probe shuffles: each shard cut into pieces of
    ``buffer_rows / STREAM_BLOCKS`` rows (at least ``MIN_BLOCK_ROWS``, at most ``buffer_rows``), so a
    buffer mixes about STREAM_BLOCKS places of the store: a store written class after class
    (ImageNet's 1,281 rows a class, 128-row blocks) gives each buffer most of its classes."""
    size = max(1, min(buffer_rows, max(MIN_BLOCK_ROWS, buffer_rows // STREAM_BLOCKS)))
    return [
        (a, min(b, a + size))
        for s, b in zip(shard_offsets[:-1], shard_offsets[1:], strict=True)
        for a in range(s, b, size)
    ]


def _buffers(blocks: list[tuple[int, int]], order: np.ndarray, buffer_rows: int) -> list[list[tuple[int, int]]]:
    """The blocks of each shuffle buffer: taken in ``order`` until the next would overflow
    ``buffer_rows``; each buffer's blocks in store order (the reads go forward through the store)."""
    out: list[list[tuple[int, int]]] = []
    held: list[tuple[int, int]] = []
    n = 0
    for b in order.tolist():
        a, z = blocks[b]
        if held and n + z - a > buffer_rows:
            out.append(sorted(held))
            held, n = [], 0
        held.append((a, z))
        n += z - a
    if held:
        out.append(sorted(held))
    return out


def read_buffer(store, blocks: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """View 0 of ``blocks`` of ``store``, one (rows, D) float32 array filled a block at a time
    (``FeatureStore.read_range``: each block's rows only), and the rows' indices."""
    rows = np.concatenate([np.arange(a, z) for a, z in blocks])
    out = np.empty((len(rows), store.dim), np.float32)
    at = 0
    for a, z in blocks:
        out[at : at + z - a] = store.read_range(a, z, 0)
        at += z - a
    return out, rows


@torch.no_grad()
def streamed_accuracy(probe: nn.Module, store, labels: np.ndarray, device, block_rows: int = 8192) -> float:
    """:func:`accuracy` on view 0 of ``store``, read ``block_rows`` at a time."""
    correct = 0
    for s, block in store.iter_features(0, block_rows):
        pred = probe(torch.from_numpy(block).to(device)).argmax(1).cpu().numpy()
        correct += int((pred == labels[s : s + len(block)]).sum())
    return correct / max(1, len(store))


def train_probe_streamed(
    train,
    train_labels: np.ndarray,
    val,
    val_labels: np.ndarray,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
    n_classes: int | None = None,
    device: torch.device | str = "cpu",
    buffer_bytes: int = 1 << 30,
) -> ProbeResult:
    """:func:`train_probe` on view 0 of two feature stores, holding at most ``buffer_bytes`` of
    float32 training rows (plus the block being read), never the store.

    The standardisation is the store's mean and population std (``rcdm.store.stats``, one streamed
    pass). Each epoch takes the store's blocks (:func:`stream_blocks`: ~1,024 of them a buffer) in a
    seeded random order, reads them a shuffle buffer at a time (:func:`read_buffer`), shuffles the
    buffer's rows and steps Adam over them in minibatches of ``batch_size`` (default 4096). This is
    not train_probe's minibatch order (a buffer mixes the rows of many blocks, not of the whole
    store), so its numbers agree with the in-memory probe's to a tolerance, not bit for bit.
    Accuracies: one streamed pass each.
    """
    from rcdm.store.stats import streamed_moments

    ytr = check_labels(train_labels, "the training features' labels")
    yva = check_labels(val_labels, "the validation features' labels")
    if len(ytr) != len(train) or len(yva) != len(val) or train.dim != val.dim:
        raise InvalidInput(
            f"probe: train store ({len(train)} x {train.dim}, {len(ytr)} labels) and val store ({len(val)} x "
            f"{val.dim}, {len(yva)} labels) must have one label per row and the same dimension"
        )
    n_classes = _classes(n_classes, ytr, yva)
    device, n = torch.device(device), len(train)
    mean, std = streamed_moments(train, 0)
    std = std * np.sqrt((n - 1) / n) if n > 1 else np.zeros_like(std)  # population std, as train_probe's
    g = torch.Generator().manual_seed(seed)
    mean_t, std_t = torch.from_numpy(mean).float(), torch.from_numpy(std).float().clamp_min(1e-6)
    probe, opt = _new_probe(mean_t, std_t, n_classes, g, device, lr, weight_decay)
    buffer_rows = max(1, buffer_bytes // (4 * train.dim))
    blocks = stream_blocks(train.shard_offsets, buffer_rows)
    bs, Ytr = batch_size or MINIBATCH, torch.from_numpy(np.array(ytr))
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        for buffer in _buffers(blocks, torch.randperm(len(blocks), generator=g).numpy(), buffer_rows):
            feats, rows = read_buffer(train, buffer)
            x, y = torch.from_numpy(feats).to(device), Ytr[torch.from_numpy(rows)].to(device)
            order = torch.randperm(len(rows), generator=g).to(device)
            for s in range(0, len(rows), bs):
                loss = _step(probe, opt, x[order[s : s + bs]], y[order[s : s + bs]])
            del x, feats
    probe.eval()
    return ProbeResult(
        probe=probe,
        train_accuracy=streamed_accuracy(probe, train, ytr, device),
        val_accuracy=streamed_accuracy(probe, val, yva, device),
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
