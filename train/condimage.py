"""The ``cond_image`` map's starting point (``train.cond_image``, an rcdm addition): a ridge
regression from h, as the model sees it, to the training images at N x N.

The UNet's ``cond_image_map`` (``rcdm.model.unet``) turns h into a 3 x N x N image given to the
network as 3 more input channels. Learned from zero by the diffusion loss alone it would take many
steps to carry information; fitted in closed form first, it is the best linear guess of the image
from h from the first step. Training keeps it fixed (``rcdm.train.model.fit_and_freeze_cond_image``,
where the model is built, fits it and freezes it): trained with the rest by Adam at the UNet's
learning rate, its image drifted into noise (on the demo, RMS 1.65 from the fit after 750 steps,
against a spread of 0.67 across images) and the network lost the guess. On the demo store a linear
map from h to the 32 px image already ranks its condition with MRR 0.59
(``bench/recipe_trials.py mean-image``; docs/recipes.md).

The fit streams over at most ``MAX_ROWS`` seeded training rows (view 0, unflipped), accumulating
Z^T Z and Z^T Y in float64, so its memory is d x (d + 3 N^2) whatever the store's size. The ridge
is ``RIDGE`` x n x (the features' mean variance): scale-free, so raw and standardised h get the
same regularisation.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from rcdm.errors import InvalidInput
from rcdm.model.config import UNetConfig
from tqdm.auto import tqdm

MAX_ROWS = 20_000  # rows the fit reads (the demo's 2,400 all; ImageNet: a seeded 20k)
RIDGE = 1e-3  # lambda / (n x mean feature variance); 4e-4 .. 1.2e-3 were best on the demo (docs/recipes.md)
# lambda's floor, per row: features that do not vary (one row, or all alike) made the system singular;
# far below RIDGE x any real variance, so it only ever decides there (the map is then the mean image)
LAMBDA_FLOOR = 1e-8
MIN_ROWS = 2  # a linear map of h needs h to vary: at least two training rows


@torch.no_grad()
def fit(net: torch.nn.Module, dataset, seed: int, workers: int = 0, show: bool = True) -> str:
    """Set ``net.cond_image_map`` to the ridge regression of ``dataset``'s images (at the map's
    N x N, in the model's [-1, 1] pixels) on ``net.cond_vector(h)``. Returns a one-line summary."""
    t0 = time.perf_counter()
    r = net.cfg.cond_image
    n_all = len(dataset)
    if n_all < MIN_ROWS:
        raise InvalidInput(
            f"train.cond_image fits a map of h on the training rows, which needs at least {MIN_ROWS}; the store "
            f"holds {n_all}: train on more images, or turn the map off with --set train.cond_image=0"
        )
    rows = np.sort(np.random.default_rng(seed).choice(n_all, min(n_all, MAX_ROWS), replace=False))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=256, sampler=[(int(i), False) for i in rows], num_workers=workers
    )
    d, k = net.cfg.token_dim, 3 * r * r
    ztz, zty = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, k, dtype=torch.float64)
    sz, sy, n = torch.zeros(d, dtype=torch.float64), torch.zeros(k, dtype=torch.float64), 0
    dev = net.cond_image_map.weight.device
    for x, h, _ in tqdm(loader, desc=f"fitting cond_image ({r}x{r})", unit="batch", disable=not show):
        y = x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        y = F.interpolate(y, size=(r, r), mode="area").reshape(len(y), k).double()
        z = net.cond_vector(h.to(dev, torch.float32)).double().cpu()
        ztz += z.T @ z
        zty += z.T @ y
        sz += z.sum(0)
        sy += y.sum(0)
        n += len(y)
    mz, my = sz / n, sy / n
    czz = ztz - n * torch.outer(mz, mz)  # centred Z^T Z
    czy = zty - n * torch.outer(mz, my)
    lam = max(RIDGE * float(torch.trace(czz)) / d, LAMBDA_FLOOR * n)  # RIDGE x n x mean variance, floored
    w = torch.linalg.solve(czz + lam * torch.eye(d, dtype=torch.float64), czy)  # (d, k)
    b = my - mz @ w
    net.cond_image_map.weight.copy_(w.T.to(net.cond_image_map.weight))
    net.cond_image_map.bias.copy_(b.to(net.cond_image_map.bias))
    return (
        f"cond_image: fitted the {r}x{r} map of h by ridge regression on {n} training rows "
        f"(lambda {lam:.3g}) in {time.perf_counter() - t0:.0f} s"
    )


def wanted(ucfg: UNetConfig, fresh: bool, init_from: str | None = None) -> bool:
    """Fit only a fresh run's map (``ucfg.cond_image`` > 0) that ``--init-from`` does not bring."""
    return bool(ucfg.cond_image) and fresh and not init_from
