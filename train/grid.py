"""Sample grids during training: each conditioning image beside samples drawn from its feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rcdm.config import Sampler
from rcdm.train.data import ImageFeatureDataset


class GridMaker:
    """Fixed conditioning rows and seeds, so successive grids show the same cells improving."""

    def __init__(
        self,
        dataset: ImageFeatureDataset,
        diffusion_meta: dict,
        n_images: int,
        n_samples: int,
        sampler: Sampler,
        seed: int,
    ) -> None:
        from rcdm.diffusion.generate import diffusion_for
        from rcdm.store import FeatureStore

        n = max(1, min(n_images, dataset.n))
        self.rows = np.unique(np.linspace(0, dataset.n - 1, n).round().astype(int))
        store = FeatureStore(dataset.store_path)
        feats = np.stack([store[int(r)][0][0] for r in self.rows])  # (n, D) view 0: not flipped
        store.close()
        self.images = [dataset.load_image(int(r)) for r in self.rows]  # (H, W, 3) uint8 each
        self.n_samples = max(1, n_samples)
        self.conds = np.repeat(feats, self.n_samples, axis=0)  # (n * S, D)
        self.seeds = seed * 1_000_003 + np.arange(len(self.conds))
        self.diffusion = diffusion_for(diffusion_meta, sampler.steps)
        self.sampler = sampler

    def make(
        self, model: torch.nn.Module, device: torch.device, mixed_precision: str, path: Path, kimg: float | None = None
    ) -> Path:
        from rcdm import viz
        from rcdm.diffusion.generate import generate

        out = generate(
            model,
            self.diffusion,
            self.conds,
            self.seeds,
            self.sampler,
            batch_size=64,
            device=device,
            progress=False,
            mixed_precision=mixed_precision,
        )  # (n * S, H, W, 3) uint8
        s = self.n_samples
        rows = [[img] + list(out[i * s : (i + 1) * s]) for i, img in enumerate(self.images)]
        heads = ["training image"] + [f"sample {j + 1}" for j in range(s)]
        return viz.save_png(viz.headed_grid(rows, heads, self.title(path, kimg), viz.display_scale(out.shape[1])), path)

    def title(self, path: Path, kimg: float | None = None) -> str:
        """What the grid shows: the training progress (``kimg``; not given: from the file name,
        ``kimg-N.png``), the sampler and the guidance scale."""
        stem = Path(path).stem
        if kimg is not None:
            when = f"{kimg:g} kimg"
        else:
            when = f"{float(stem[5:]):g} kimg" if stem.startswith("kimg-") and _number(stem[5:]) else stem
        return f"{when}; sampler {self.sampler.label()}" + ("" if self.sampler.guided else ", no guidance")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
