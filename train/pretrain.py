"""``rcdm pretrain``: a small self-supervised encoder trained by rcdm itself, for the demo.

SimCLR (Chen et al. 2020): two augmented views of each image of a batch, a ResNet-shaped trunk
(:class:`rcdm.encoders.mini.MiniResNet`) and an MLP projector head, and the NT-Xent loss that
makes the head's two views of one image agree against every other image of the batch. The
augmentations are SimCLR's (random resized crop, flip, colour jitter, greyscale; no blur at
32 px), so the head learns to discard colour: what the paper's figures show of a projector head.

Writes ``<out>/simclr-mini.safetensors`` (``trunk.*`` and ``head.*``: the registry's ``rcdm``
reader) and ``<out>/simclr-mini.json`` last (the record: settings, loss curve, probes, time,
sha256). The same command with the same seed and threads gives the same file. The images are
held in memory at twice the crop size: this is a demo-sized tool, not an ImageNet trainer.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rcdm.config import PretrainConfig, save_resolved
from rcdm.errors import InvalidInput, OutputExists
from rcdm.run.lock import holding_output_lock
from rcdm.train.threads import threads_restored
from rcdm.utils import atomic_write_json, now_iso, sha256_file

__all__ = ["FILE", "RECORD", "augment", "nt_xent", "pretrain"]

FILE = "simclr-mini.safetensors"
RECORD = "simclr-mini.json"
FORMAT = "rcdm-encoder/1"


@holding_output_lock("rcdm pretrain")  # one writer per encoder folder
def pretrain(cfg: PretrainConfig) -> Path:
    """Train the encoder on ``cfg.source``; returns its weights file."""
    out = _check(cfg)
    with threads_restored():
        return _pretrain(cfg, out)


def _pretrain(cfg: PretrainConfig, out: Path) -> Path:
    torch.set_num_threads(cfg.threads)
    images, labels = load_images(cfg.source, 2 * cfg.image_size)  # (N, 3, 2s, 2s) uint8
    torch.manual_seed(cfg.seed)
    net = build(cfg)
    t0 = time.perf_counter()
    losses = train_steps(net, images, cfg)
    seconds = time.perf_counter() - t0
    path = save(net, out)
    record = _record(cfg, net, losses, seconds, path)
    if cfg.probe and cfg.val:
        record["probe"] = probes(net, cfg, images, labels)
    save_resolved(cfg, out)
    atomic_write_json(out / RECORD, record)  # last: the encoder is finished
    print(f"pretrain: {cfg.steps} steps in {seconds:.0f} s, final loss {record['final_loss']:.3f} -> {path}")
    return path


def _check(cfg: PretrainConfig) -> Path:
    if not cfg.source or not cfg.out:
        raise InvalidInput("pretrain needs pretrain.source and pretrain.out (--source, --out)")
    out = Path(cfg.out)
    if (out / RECORD).is_file() and not cfg.overwrite:
        raise OutputExists(f"{out} already holds a trained encoder; pass --overwrite to replace it, or another --out")
    return out


def load_images(source: str, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Every image of ``source``, ADM-center-cropped to ``size``: (N, 3, size, size) uint8 and labels."""
    from rcdm.data.images import UnreadableImage, adm_center_crop, open_source

    src = open_source(source)
    arrs, labels = [], []
    for i, item in enumerate(src.items):
        try:
            arrs.append(adm_center_crop(src.load(i), size))
        except UnreadableImage:
            continue  # skipped, as extraction skips it
        labels.append(item.label)
    if len(arrs) < 2:
        raise InvalidInput(f"pretrain needs at least 2 readable images; {source} has {len(arrs)}")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous(), np.asarray(labels)


def build(cfg: PretrainConfig) -> torch.nn.Module:
    """The trunk and its projector head (``trunk`` and ``head`` attributes, as the files name them)."""
    from rcdm.encoders.heads import build_head
    from rcdm.encoders.mini import MiniResNet
    from rcdm.encoders.registry import HeadSpec

    net = torch.nn.Module()
    net.trunk = MiniResNet(cfg.width)
    net.head = build_head(HeadSpec((net.trunk.dim, net.trunk.dim, cfg.head_dim)))
    return net


def train_steps(net: torch.nn.Module, images: torch.Tensor, cfg: PretrainConfig) -> list[float]:
    """``cfg.steps`` AdamW steps of the NT-Xent loss on pairs of augmented views; the losses."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)  # batches and augmentations
    n = len(images)
    losses = []
    net.train()
    for step in tqdm(range(cfg.steps), desc="pretrain (SimCLR)", unit="step"):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        views = torch.cat([augment(images[idx], cfg.image_size, g), augment(images[idx], cfg.image_size, g)])
        loss = nt_xent(net.head(net.trunk(views)), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: rows i and i + B of ``z`` (2B, d) are the two views of one image; each must
    pick its pair among the 2B - 1 others by cosine similarity / temperature."""
    b = len(z) // 2
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def augment(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """SimCLR's views of uint8 images (B, 3, H, W): a random resized crop (scale 0.2-1, ratio
    3/4-4/3) to ``size``, a horizontal flip (p 0.5), colour jitter (brightness, contrast and
    saturation 0.4, hue 0.1; p 0.8) and greyscale (p 0.2). Float (B, 3, size, size) in [-1, 1];
    every draw from ``g``."""
    out = _crops(x, size, g) / 255.0
    flip = torch.rand(len(x), generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    jitter = torch.rand(len(x), generator=g) < 0.8
    out = torch.where(jitter.view(-1, 1, 1, 1), _jitter(out, g), out)
    grey = torch.rand(len(x), generator=g) < 0.2
    out = torch.where(grey.view(-1, 1, 1, 1), _luma(out).expand(-1, 3, -1, -1), out)
    return out * 2 - 1


def _crops(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(0.2, 1.0, generator=g) * h * w
    ratio = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
    out = torch.empty(b, 3, size, size)
    for i in range(b):
        cw = int(min(w, round(float((area[i] * ratio[i]).sqrt()))))
        ch = int(min(h, round(float((area[i] / ratio[i]).sqrt()))))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw].float()
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation by factors in [0.6, 1.4], hue turned by up to 0.1 of a
    turn (in YIQ), per image; clipped to [0, 1]."""
    b = len(x)
    bright, contrast, sat = (1 + torch.empty(b).uniform_(-0.4, 0.4, generator=g).view(-1, 1, 1, 1) for _ in range(3))
    turn = (torch.empty(b).uniform_(-0.1, 0.1, generator=g) * 2 * math.pi).view(-1, 1, 1)
    x = x * bright
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = _luma(x)
    x = (x - grey) * sat + grey
    y = _luma(x)[:, 0]
    i = 0.596 * x[:, 0] - 0.274 * x[:, 1] - 0.322 * x[:, 2]
    q = 0.211 * x[:, 0] - 0.523 * x[:, 1] + 0.312 * x[:, 2]
    i, q = i * torch.cos(turn) - q * torch.sin(turn), i * torch.sin(turn) + q * torch.cos(turn)
    rgb = torch.stack([y + 0.956 * i + 0.621 * q, y - 0.272 * i - 0.647 * q, y - 1.106 * i + 1.703 * q], 1)
    return rgb.clamp(0, 1)


def save(net: torch.nn.Module, out: Path) -> Path:
    """``trunk.*`` and ``head.*`` as safetensors (atomically)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / FILE, out / (FILE + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return path


def _record(cfg: PretrainConfig, net: torch.nn.Module, losses: list[float], seconds: float, path: Path) -> dict:
    every = max(1, len(losses) // 50)
    return {
        "format": FORMAT,
        "method": "SimCLR (Chen et al. 2020): NT-Xent on two augmented views",
        "arch": "resnet-mini",
        "width": cfg.width,
        "trunk_dim": net.trunk.dim,
        "head_dims": [net.trunk.dim, net.trunk.dim, cfg.head_dim],
        "n_parameters": sum(p.numel() for p in net.parameters()),
        "source": str(Path(cfg.source).resolve()),
        "settings": {
            k: getattr(cfg, k)
            for k in ("image_size", "steps", "batch_size", "lr", "weight_decay", "temperature", "seed", "threads")
        },  # fmt: skip
        "final_loss": float(np.mean(losses[-10:])),
        "loss_curve": [[i, float(np.mean(losses[i : i + every]))] for i in range(0, len(losses), every)],
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "weights_sha256": sha256_file(path),
        "created": now_iso(),
    }


def probes(net: torch.nn.Module, cfg: PretrainConfig, images: torch.Tensor, labels: np.ndarray) -> dict:
    """Linear probes on the val images, of the trunk, the head and two random encoders (the demo's
    random ResNet-50, and this architecture at its initialisation): accuracy with every training
    image labelled, and few-shot (k labelled per class, the mean of 10 draws)."""
    from rcdm.train.probes import probe_table

    val, val_labels = load_images(cfg.val, 2 * cfg.image_size)
    torch.manual_seed(cfg.seed)
    untrained = build(cfg).eval()  # the same initialisation the training started from
    return probe_table(
        {
            "trunk": net.trunk,
            "head": torch.nn.Sequential(net.trunk, net.head),
            "random init (same arch)": untrained.trunk,
        },
        (images, labels),
        (val, val_labels),
        cfg.image_size,
    )
