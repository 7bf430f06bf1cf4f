"""The linear probe and FGSM of rcdm.analysis.probe (pure torch, no stores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rcdm.analysis.probe import fgsm, train_probe


def _separable(n_per_class: int, n_classes: int, dim: int, seed: int):
    """Gaussian blobs around well-separated class centres, with a big common offset and very
    different per-dimension scales (what standardisation is for)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(n_classes, dim))
    x = np.concatenate([c + rng.normal(0, 1, size=(n_per_class, dim)) for c in centres])
    x = x * rng.uniform(0.01, 100, size=dim) + 50.0
    y = np.repeat(np.arange(n_classes), n_per_class)
    return x.astype(np.float32), y


def test_probe_separable_high_accuracy():
    x, y = _separable(80, 4, 16, seed=0)
    val = np.arange(len(y)) % 4 == 0  # a held-out quarter of every class
    xtr, ytr, xva, yva = x[~val], y[~val], x[val], y[val]
    res = train_probe(xtr, ytr, xva, yva, epochs=200, seed=0)
    assert res.n_classes == 4
    assert res.train_accuracy >= 0.98
    assert res.val_accuracy >= 0.95


def test_probe_random_labels_near_chance():
    """A probe cannot do better than chance on held-out data when labels are random."""
    rng = np.random.default_rng(0)
    xtr = rng.normal(size=(400, 8)).astype(np.float32)
    xva = rng.normal(size=(400, 8)).astype(np.float32)
    ytr, yva = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    res = train_probe(xtr, ytr, xva, yva, epochs=50, seed=0)
    assert res.val_accuracy < 0.4


def test_probe_seeded_and_minibatch():
    xtr, ytr = _separable(30, 3, 8, seed=2)
    a = train_probe(xtr, ytr, xtr, ytr, epochs=20, seed=3, batch_size=16)
    b = train_probe(xtr, ytr, xtr, ytr, epochs=20, seed=3, batch_size=16)
    assert torch.equal(a.probe.linear.weight, b.probe.linear.weight)
    assert a.val_accuracy >= 0.9


def test_probe_rejects_unlabelled():
    xtr, ytr = _separable(10, 2, 4, seed=0)
    with pytest.raises(ValueError, match="without a label"):
        train_probe(xtr, np.full_like(ytr, -1), xtr, ytr, epochs=1)


def test_fgsm_increases_loss_and_targeted_decreases_target_loss():
    xtr, ytr = _separable(50, 3, 12, seed=4)
    res = train_probe(xtr, ytr, xtr, ytr, epochs=100, seed=0)
    probe = res.probe
    # An "encoder" that is a fixed differentiable map from [0, 1] inputs to the feature space.
    torch.manual_seed(0)
    x = torch.rand(6, 12)
    enc_w = torch.from_numpy(np.linalg.pinv(np.eye(12, dtype=np.float32)))
    feats = torch.from_numpy(xtr[::25][:6])  # (6, 12) real features, classes 0, 0, 1, 1, 2, 2
    offset = feats - x @ enc_w  # so that encoder(x) == feats exactly

    def forward(z: torch.Tensor) -> torch.Tensor:
        return probe(z @ enc_w + offset)

    y = torch.from_numpy(ytr[::25][:6])
    eps = 0.05
    with torch.no_grad():
        clean = F.cross_entropy(forward(x), y, reduction="none")
    x_adv = fgsm(forward, x, y, eps, clamp=None)
    assert torch.allclose((x_adv - x).abs(), torch.full_like(x, eps), atol=1e-6)
    with torch.no_grad():
        attacked = F.cross_entropy(forward(x_adv), y, reduction="none")
    assert attacked.mean() > clean.mean()
    # Targeted: the loss toward the target class goes down.
    target = (y + 1) % 3
    with torch.no_grad():
        before = F.cross_entropy(forward(x), target)
    x_t = fgsm(forward, x, target, eps, targeted=True, clamp=None)
    with torch.no_grad():
        after = F.cross_entropy(forward(x_t), target)
    assert after < before
    # eps = 0 changes nothing; clamping keeps the valid range.
    assert torch.equal(fgsm(forward, x, y, 0.0), x)
    assert fgsm(forward, x, y, 10.0).min() >= 0 and fgsm(forward, x, y, 10.0).max() <= 1
