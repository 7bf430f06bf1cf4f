"""Extraction throughput: synthetic ImageNet-sized JPEGs -> feature store, and the encoder alone.

    python bench/extract.py --n 20000 --batch-size 256 --decode gpu
    python bench/extract.py --n 3000 --decode cpu --compare-decode    # also: GPU vs PIL decode difference, decode rates

Defaults are ``rcdm extract``'s (``auto``: workers sized to the machine, bf16, channels-last and
GPU decoding on CUDA), so the bench measures what the stage runs.

    python bench/extract.py --encoder mae-vitb16 --random-weights --layer tokens   # ViT-B/16 (timm)

Prints one JSON object: images/s end to end (``rcdm.extract.run``, the whole call, and its
encoding loop alone) and images/s of the encoder forward alone on the same device with the same
settings (one view; extraction runs two views, the image and its flip, so its ceiling is half).
Target on one H100 with 16 cores: >= 5,000 images/s end to end for *-rn50 trunks.

``--compare-decode`` decodes a sample of the JPEGs with PIL (the CPU path, no draft) and with
``torchvision.io.decode_jpeg`` on the extraction device (nvjpeg on CUDA), crops both with the same
rule and reports the pixel difference and the encoder features' relative L2 difference and cosine;
and the device decode rate without and with the exact resize / crop (``decode_rates``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from jpegs import make_jpeg_folder


def random_weights(spec, path: Path) -> Path:
    """A randomly initialised checkpoint of the registry entry ``spec`` in its method's file layout
    (the ViT readers' layouts; throughput does not depend on the values)."""
    import torch
    from rcdm.encoders.build import build_trunk

    torch.manual_seed(0)
    sd = build_trunk(spec.arch).state_dict()
    if spec.reader == "mae":
        ckpt = {"model": sd}
    elif spec.reader == "ijepa":
        ckpt = {"target_encoder": {"module." + k: v for k, v in sd.items()}}
    elif spec.reader in ("dino", "siglip") or (spec.reader == "dinov2" and "reg_token" not in sd):
        ckpt = sd  # backbone files in timm names
    elif spec.reader == "clip":
        ckpt = {
            **sd,
            "head.weight": torch.randn(spec.head.dims[-1], spec.trunk_dim) * 0.02,
            "head.bias": torch.zeros(spec.head.dims[-1]),
        }
    else:
        raise SystemExit(f"--random-weights supports the ViT entries without registers, not {spec.name}")
    torch.save(ckpt, path)
    return path


def forward_alone(encoder, device, batch_size: int, amp: str, channels_last: bool, seconds: float = 5.0) -> float:
    """Images/s of ``encoder`` on random (batch_size, 3, 224, 224) inputs already on the device."""
    import torch
    from rcdm.extract.loop import _autocast

    enc = encoder.to(device).eval()
    crop = encoder.preprocess.crop
    x = torch.randn(batch_size, 3, crop, crop, device=device)
    if channels_last:
        enc = enc.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode(), _autocast(device, amp):
        for _ in range(3):  # warm-up (cudnn autotune, allocator)
            enc(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < batch_size:
            enc(x)
            n += batch_size
        sync()
        return n / (time.perf_counter() - t0)


def decode_difference(images: Path, encoder, device, k: int = 256) -> dict:
    """PIL vs device decoding of ``k`` JPEGs, cropped alike: pixel and feature differences."""
    import torch
    from PIL import Image
    from rcdm.data.resample import encoder_crop
    from rcdm.extract.dataset import crop_uint8, normalize
    from torchvision.io import ImageReadMode, decode_jpeg

    pp = encoder.preprocess
    files = sorted(images.rglob("*.jpg"))[:k]
    cpu, dev = [], []
    for f in files:
        data = f.read_bytes()
        with Image.open(f) as img:
            cpu.append(crop_uint8(img.convert("RGB"), pp))
        pixels = decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, device=device
        )
        dev.append(encoder_crop(pixels, pp).cpu())
    a, b = torch.stack(cpu), torch.stack(dev)  # (k, 3, crop, crop) uint8
    diff = (a.int() - b.int()).abs()
    enc = encoder.to(device).eval()
    with torch.inference_mode():
        fa = torch.cat([enc(normalize(a[i : i + 64].to(device), pp)).float() for i in range(0, len(a), 64)])
        fb = torch.cat([enc(normalize(b[i : i + 64].to(device), pp)).float() for i in range(0, len(b), 64)])
    rel = ((fa - fb).norm(dim=1) / fa.norm(dim=1).clamp_min(1e-12)).cpu()
    cos = torch.nn.functional.cosine_similarity(fa, fb, dim=1).cpu()
    return {
        "images": len(files),
        "decoder": f"torchvision.io.decode_jpeg on {device.type} vs PIL",
        "pixels_identical_fraction": round(float((diff == 0).float().mean()), 4),
        "pixel_mean_abs_diff": round(float(diff.float().mean()), 4),
        "pixel_max_abs_diff": int(diff.max()),
        "feature_rel_l2_mean": float(rel.mean()),
        "feature_rel_l2_max": float(rel.max()),
        "feature_cosine_min": float(cos.min()),
    }


def decode_rates(images: Path, pp, device, k: int = 512, batch: int = 64) -> dict:
    """The device decode rate of ``k`` JPEGs in batches of ``batch``, without and with the exact
    resize / crop that extraction runs after it (``gpudecode.decode_on_device``), in images/s
    (the files read into memory first; each pass timed after one warm-up batch)."""
    import torch
    from rcdm.extract.gpudecode import _decode_all, decode_on_device

    datas = [f.read_bytes() for f in sorted(images.rglob("*.jpg"))[:k]]
    batches = [datas[i : i + batch] for i in range(0, len(datas), batch)]

    def decode_only(b: list[bytes]) -> None:
        _decode_all(b, device)

    def decode_and_crop(b: list[bytes]) -> None:
        n = len(b)
        x = torch.empty((n, 3, pp.crop, pp.crop), dtype=torch.uint8, device=device)
        meta = {"jpeg": b, "ok": [True] * n, "reason": [None] * n, "index": list(range(n))}
        decode_on_device(meta, pp, device, x)

    def rate(fn) -> float:
        fn(batches[0])  # warm-up: the decoder's and resize's set-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for b in batches:
            fn(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(datas) / (time.perf_counter() - t)

    return {
        "images": len(datas),
        "batch": batch,
        "decode_img_s": round(rate(decode_only), 1),
        "decode_exact_resize_img_s": round(rate(decode_and_crop), 1),
    }


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="number of synthetic JPEGs")
    p.add_argument("--size", default="imagenet", help="imagenet: ImageNet-like sizes (a few common, a tail); or WxH")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--images", default=None, help="folder for the JPEGs (kept and reused); default: a temp dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", default="auto", help="auto: as rcdm extract (the cores less one, max 16)")
    p.add_argument("--encoder", default="random-rn50")
    p.add_argument("--weights", default=None)
    p.add_argument(
        "--random-weights", action="store_true", help="ViT entries: a random checkpoint in the entry's layout"
    )
    p.add_argument("--layer", default="trunk")
    p.add_argument("--input-size", type=int, default=None, help="encoder input crop (default: the encoder's, 224)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="auto: on CUDA")
    p.add_argument("--no-draft", action="store_true", help="full JPEG decode (no PIL draft mode)")
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto", help="auto: gpu on CUDA")
    p.add_argument("--compare-decode", action="store_true", help="also measure PIL vs device decoding differences")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--format", choices=["h5", "wds"], default="h5")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--forward-seconds", type=float, default=5.0)
    return p.parse_args(argv)


def _speed_settings(a: argparse.Namespace, device) -> tuple[str, bool, int | str]:
    """(amp, channels_last, workers): ``rcdm extract``'s auto rules for ``device``."""
    amp = ("bf16" if device.type == "cuda" else "none") if a.amp == "auto" else a.amp
    channels_last = {"on": True, "off": False}.get(a.channels_last, device.type == "cuda")
    workers = a.workers if a.workers == "auto" else int(a.workers)
    return amp, channels_last, workers


def _extract(a: argparse.Namespace, images: Path, out: Path, device, amp: str, channels_last: bool, workers) -> float:
    """Run ``rcdm.extract.run`` on ``images`` into ``out``; its seconds, the whole call."""
    import rcdm.extract
    import torch
    from rcdm.config import ExtractConfig

    cfg = ExtractConfig(
        encoder=a.encoder,
        weights=a.weights,
        layer=a.layer,
        source=str(images),
        out=str(out),
        format=a.format,
        batch_size=a.batch_size,
        workers=workers,
        shard_size=a.shard_size,
        device=str(device),
        amp=amp,
        channels_last=channels_last,
        draft=not a.no_draft,
        decode=a.decode,
        input_size=a.input_size,
    )
    t0 = time.perf_counter()
    rcdm.extract.run(cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _decode_crop_per_core(images: Path, pp, draft: bool, k: int = 200) -> float:
    """Images/s of decode + resize + crop on one core (what each DataLoader worker does per image)."""
    from rcdm.data.images import open_source
    from rcdm.extract.dataset import ExtractDataset

    src = open_source(images)
    ds = ExtractDataset(src, pp, draft=draft)
    k = min(k, len(src))
    t0 = time.perf_counter()
    for i in range(k):
        ds[i]
    return k / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    a = _arguments(argv)

    import torch
    from rcdm.data.preprocess import effective_preprocess
    from rcdm.encoders.build import load_encoder
    from rcdm.encoders.registry import get_spec
    from rcdm.store import FeatureStore
    from rcdm.utils import pick_device

    spec = get_spec(a.encoder)  # the registry entry, looked up once
    device = pick_device(a.device)
    amp, channels_last, workers = _speed_settings(a, device)
    size = None if a.size == "imagenet" else tuple(int(v) for v in a.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="rcdm-bench-"))
    images = Path(a.images) if a.images else tmp / "images"
    t0 = time.perf_counter()
    make_jpeg_folder(images, a.n, size, a.quality)
    t_make = time.perf_counter() - t0
    if a.random_weights:
        a.weights = str(random_weights(spec, tmp / "random.pth"))
    mean_kb = np.mean([p.stat().st_size for p in list(images.rglob("*.jpg"))[:200]]) / 1024

    store = tmp / "store"
    t_run = _extract(a, images, store, device, amp, channels_last, workers)
    st = FeatureStore(store)
    timing = st.manifest.get("timing", {})
    enc_pp = effective_preprocess(spec.preprocess, "default", a.input_size)
    per_core = _decode_crop_per_core(images, enc_pp, not a.no_draft)
    enc = load_encoder(spec, a.weights, a.layer, preprocess=enc_pp)
    fwd = forward_alone(enc, device, a.batch_size, amp, channels_last, a.forward_seconds)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_cores": os.cpu_count(),
        "encoder": f"{a.encoder}/{a.layer}",
        "n_images": a.n,
        "image_size": a.size,
        "mean_jpeg_kb": round(float(mean_kb), 1),
        "batch_size": a.batch_size,
        "workers": timing.get("workers", workers),
        "decode": timing.get("decode", a.decode),
        "amp": amp,
        "channels_last": channels_last,
        "draft": not a.no_draft,
        "rows": len(st),
        "row_values": st.dim,  # per view (tokens: T x D)
        "store_mb": round(sum(f.stat().st_size for f in Path(store).glob("shard-*")) / 2**20, 1),
        "end_to_end_img_s": round(a.n / t_run, 1),  # the whole run() call: model load, workers, writes
        "loop_img_s": timing.get("img_per_s"),  # the encoding loop (decode + 2 views + shard writes)
        "decode_crop_per_core_img_s": round(per_core, 1),  # x workers = the loader's ceiling
        "forward_alone_img_s": round(fwd, 1),  # one view, inputs already on the device
        "two_view_ceiling_img_s": round(fwd / 2, 1),
        "seconds": {"make_jpegs": round(t_make, 1), "run": round(t_run, 2)},
    }
    if a.compare_decode:
        result["decode_difference"] = decode_difference(images, enc, device)
        result["decode_rates"] = decode_rates(images, enc.preprocess, device)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    shutil.rmtree(store, ignore_errors=True)
    if not a.images:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
