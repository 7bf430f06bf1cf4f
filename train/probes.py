"""Linear probes of encoders on labelled images: what ``rcdm pretrain`` records as evidence that
its encoder learned (against random encoders, which already separate the demo's 12 photographs
well when every training image is labelled: the few-shot probes are what tell them apart).

Features are computed from uint8 crops at twice the encoder's input size, box-halved to it (as
the ``rcdm`` preprocessing does) and scaled to [-1, 1]; each probe is a logistic regression on
standardised features (scikit-learn).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SHOTS", "features", "few_shot", "probe_table"]

SHOTS = (1, 2, 5)  # labelled training images per class in the few-shot probes
DRAWS = 10  # draws of the labelled images each few-shot accuracy averages


@torch.no_grad()
def features(net: torch.nn.Module, images: torch.Tensor, size: int, batch: int = 256) -> np.ndarray:
    """(N, D) float32 features of uint8 images (N, 3, 2 size, 2 size)."""
    net.eval()
    out = []
    for s in range(0, len(images), batch):
        x = (
            F.avg_pool2d(images[s : s + batch].float(), 2)
            if images.shape[-1] == 2 * size
            else images[s : s + batch].float()
        )
        out.append(net(x / 127.5 - 1).float().flatten(1))
    return torch.cat(out).numpy()


def _fit_score(ftr: np.ndarray, ytr: np.ndarray, fva: np.ndarray, yva: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(ftr)
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(ftr), ytr)
    return float(clf.score(scaler.transform(fva), yva))


def few_shot(ftr: np.ndarray, ytr: np.ndarray, fva: np.ndarray, yva: np.ndarray, k: int) -> float:
    """Mean val accuracy of probes trained on ``k`` labelled images per class (``DRAWS`` seeded draws)."""
    classes = np.unique(ytr)
    accs = []
    for draw in range(DRAWS):
        rng = np.random.default_rng(draw)
        idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), k, replace=False) for c in classes])
        accs.append(_fit_score(ftr[idx], ytr[idx], fva, yva))
    return float(np.mean(accs))


def probe_table(nets: dict, train: tuple, val: tuple, size: int) -> dict:
    """``{name: {"dim", "all", "1-shot", "2-shot", "5-shot"}}`` for each net, plus the demo's
    random ResNet-50 (``random-rn50``, rcdm preprocessing at ``size`` px)."""
    from rcdm.encoders.build import load_encoder

    nets = {**nets, "random-rn50 (the demo's old encoder)": load_encoder("random-rn50")}
    (xtr, ytr), (xva, yva) = train, val
    table = {}
    for name, net in nets.items():
        ftr, fva = features(net, xtr, size), features(net, xva, size)
        row = {"dim": int(ftr.shape[1]), "all": _fit_score(ftr, ytr, fva, yva)}
        row.update({f"{k}-shot": few_shot(ftr, ytr, fva, yva, k) for k in SHOTS})
        table[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    return table
