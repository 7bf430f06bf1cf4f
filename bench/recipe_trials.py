"""Side-by-side recipe trials with the faithfulness curve (docs/recipes.md).

    python bench/recipe_trials.py digits-data WORKDIR      # the second data set (sklearn digits)
    python bench/recipe_trials.py trial WORKDIR NAME KIMG [--set k=v ...]
    python bench/recipe_trials.py mean-image WORKDIR [STORES]  # the linear E[x | h] probe
    python bench/recipe_trials.py steer WORKDIR [STORES]  # why the encoder stays out of the loop

``digits-data`` writes scikit-learn's packaged handwritten digits (1797 8x8 grey images,
upscaled to 32 px RGB; not the demo's photographs) as an ImageFolder ``WORKDIR/data/digits/
{train,val}`` (val: 192 images, as the demo's) and extracts both with the demo's encoder.
``trial`` trains one run of the demo profile under ``WORKDIR/runs/NAME`` with the given
overrides and prints the faithfulness records as JSON (one line per check). Both run from
WORKDIR, one process, ``train.threads=1``.
``mean-image`` fits a ridge regression from standardised h to the training images at a few
resolutions, predicts each validation image's conditional mean image E[x | h] from its h, and
ranks it as a sample (re-encoded, as ``rcdm evaluate`` does): what "the average image of this h"
alone scores, a reference point for the curves. STORES defaults to WORKDIR/runs/demo/stores.
``steer`` starts from that ridge-1 mean image and takes a few Adam steps on the pixels towards
f(x) = h through the frozen encoder, printing the rank / MRR the encoder gives them beside a
pixel-space MRR (the rank of the true validation image among all 192 by pixel distance): what a
training loss or a sampler that uses the encoder would buy on the metric, and on the image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

COMMON = [
    "train.threads=1",
    "train.grid_kimg=0",
    "train.eval_conditions=32",
    "train.eval_steps=ddim10",
]


def digits_data(work: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d.images))
    val = set(order[:192].tolist())
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        split = "val" if i in val else "train"
        folder = work / "data" / "digits" / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        g = (img / 16.0 * 255).astype(np.uint8)  # 0..16 ink -> 0..255
        Image.fromarray(g).resize((32, 32), Image.BICUBIC).convert("RGB").save(folder / f"{i:04d}.png")
    cfg = work / "digits.yaml"
    cfg.write_text("data: {demo: false, train: data/digits/train, val: data/digits/val, workdir: runs/digits}\n")
    _rcdm(work, ["run", "--profile", "demo", "--config", str(cfg), "--stages", "extract"])


def _rcdm(work: Path, args: list[str]) -> None:
    subprocess.run(["rcdm", *args], cwd=work, check=True)


def trial(work: Path, name: str, kimg: str, sets: list[str], config: str | None) -> None:
    args = ["train", "--profile", "demo", "--set", f"train.out=runs/{name}", "--set", f"train.kimg={kimg}"]
    if config:
        args += ["--config", config]
    for s in COMMON + sets:
        args += ["--set", s]
    _rcdm(work, args)
    for line in (work / "runs" / name / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "faithfulness":
            print(json.dumps({"trial": name, **rec}))


def _load_pixels(path: Path):
    import numpy as np
    from PIL import Image
    from rcdm.store import FeatureStore
    from rcdm.store.images import StoreImages

    store = FeatureStore(path)
    images = StoreImages(store)
    pixels = [images.load(i).convert("RGB").resize((32, 32), Image.BICUBIC) for i in range(len(store))]
    return store, store.features(view=0), np.stack([np.asarray(x) for x in pixels])


def _probe_data(stores: Path):
    """Both stores with their 32 px images, h standardised by the training store's statistics,
    and the conditioning encoder: (val store, z_train, z_val, f_val, x_train, x_val, sd, encoder)."""
    from rcdm.encoders.build import encoder_from_info

    _, f_train, x_train = _load_pixels(stores / "train")
    val, f_val, x_val = _load_pixels(stores / "val")
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    encoder = encoder_from_info(val.encoder_info).eval()
    return val, (f_train - mu) / sd, (f_val - mu) / sd, f_val, x_train, x_val, sd, encoder


def _ridge(z, y, lam: float):
    """Ridge regression of y (n, k) on z (n, d) with centred y: (weights (d, k), the mean of y)."""
    import numpy as np

    ym = y.mean(0)
    return np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - ym)), ym


def steer(stores: Path, steps=(5, 10, 20), lr: float = 0.01) -> None:
    import numpy as np
    import torch
    from rcdm.faithfulness import nearest_neighbour_ranks, rank_summary, reencode_ranks

    val, z_train, z_val, f_val, x_train, x_val, sd, encoder = _probe_data(stores)
    w, ym = _ridge(z_train, x_train.reshape(len(x_train), -1) / 255.0, 1.0)
    truth, rows = x_val.reshape(len(x_val), -1) / 255.0, np.arange(len(f_val))

    def report(x: torch.Tensor, n: int) -> None:
        img = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        enc = rank_summary(reencode_ranks(encoder, img, val.preprocess, f_val, rows), len(f_val))
        pix = rank_summary(nearest_neighbour_ranks(img.reshape(len(img), -1) / 255.0, truth, rows), len(f_val))
        print(
            json.dumps(
                {
                    "adam_steps": n,
                    "lr": lr,
                    "mean_rank": enc["mean_rank"],
                    "mrr": enc["mrr"],
                    "pixel_mrr": pix["mrr"],
                    "pixel_change_rms": float((x - x0).pow(2).mean().sqrt()),
                }
            )
        )

    x0 = torch.tensor((z_val @ w + ym).reshape(-1, 32, 32, 3), dtype=torch.float32).permute(0, 3, 1, 2).clamp(0, 1)
    report(x0, 0)
    x = x0.clone().requires_grad_(True)
    h, scale = torch.tensor(f_val, dtype=torch.float32), torch.tensor(sd, dtype=torch.float32)
    opt = torch.optim.Adam([x], lr=lr)
    for n in range(1, max(steps) + 1):
        loss = (((encoder(x.clamp(0, 1) * 2 - 1) - h) / scale) ** 2).mean()  # the store's [-1, 1] input
        opt.zero_grad()
        loss.backward()
        opt.step()
        if n in steps:
            report(x.detach(), n)


def mean_image(stores: Path) -> None:
    import numpy as np
    from PIL import Image
    from rcdm.faithfulness import rank_summary, reencode_ranks

    val, z_train, z_val, f_val, x_train, _, _, encoder = _probe_data(stores)
    for r in (4, 8, 16, 32):
        y = np.stack([np.asarray(Image.fromarray(x).resize((r, r), Image.BOX)) for x in x_train])
        y = y.reshape(len(y), -1) / 255.0
        for lam in (1.0, 3.0, 1e1, 1e2, 1e3):
            w, ym = _ridge(z_train, y, lam)
            pred = np.clip(z_val @ w + ym, 0, 1).reshape(len(z_val), r, r, 3)
            up = np.stack(
                [
                    np.asarray(Image.fromarray((p * 255).round().astype(np.uint8)).resize((32, 32), Image.BICUBIC))
                    for p in pred
                ]
            )
            ranks = reencode_ranks(encoder, up, val.preprocess, f_val, np.arange(len(f_val)))
            print(json.dumps({"resolution": r, "ridge": lam, **rank_summary(ranks, len(f_val))}))


if __name__ == "__main__":
    cmd, work = sys.argv[1], Path(sys.argv[2])
    if cmd == "digits-data":
        digits_data(work)
    elif cmd in ("mean-image", "steer"):
        stores = Path(sys.argv[3]) if len(sys.argv) > 3 else work / "runs" / "demo" / "stores"
        (mean_image if cmd == "mean-image" else steer)(stores)
    else:
        rest = sys.argv[5:]
        sets = [rest[i + 1] for i in range(len(rest)) if rest[i] == "--set"]
        config = next((rest[i + 1] for i in range(len(rest)) if rest[i] == "--config"), None)
        trial(work, sys.argv[3], sys.argv[4], sets, config)
