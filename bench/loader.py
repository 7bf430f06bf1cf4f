"""Training loader throughput on one core: full decode + ADM resize, draft-mode decode, and the
image cache (rcdm.train.cache), on synthetic ImageNet-sized JPEGs. Prints JSON.

    python bench/loader.py --n 200 --resolution 128

Images/s per core of ``ImageFeatureDataset[(row, flip)]`` (what each DataLoader worker does per
sample); multiply by ``train.workers`` for the loader's ceiling.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rate(ds, n: int) -> float:
    ds[(0, False)]  # open files first
    t0 = time.perf_counter()
    for i in range(n):
        ds[(i % ds.n, bool(i & 1))]
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="synthetic JPEGs (and samples timed per mode)")
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from jpegs import make_jpeg_folder
    from rcdm.data.images import open_source
    from rcdm.store import FeatureStore, build_manifest, write_manifest, write_shard
    from rcdm.train import cache as image_cache
    from rcdm.train.data import ImageFeatureDataset

    tmp = Path(tempfile.mkdtemp(prefix="rcdm-loader-"))
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
        make_jpeg_folder(tmp / "images", a.n, (w, h), 90)
        src = open_source(tmp / "images")
        feats = np.zeros((len(src), 2, 8), np.float32)
        store = tmp / "store"
        store.mkdir()
        rec = write_shard(
            store,
            0,
            feats,
            [it.key for it in src.items],
            [it.label for it in src.items],
            fmt="h5",
            dtype="float32",
            failed=[],
            first_item=0,
        )
        info = {
            "name": "synthetic",
            "arch": "none",
            "layer": "trunk",
            "dim": 8,
            "weights": None,
            "weights_sha256": None,
        }
        write_manifest(
            store,
            build_manifest(
                {0: rec},
                encoder_info=info,
                preprocess={},
                source=src.describe(),
                fmt="h5",
                dtype="float32",
                dim=8,
                has_images=False,
                extract_config={},
            ),
        )
        full = _rate(ImageFeatureDataset(store, a.resolution), a.n)
        draft = _rate(ImageFeatureDataset(store, a.resolution, draft=True), a.n)
        ds = ImageFeatureDataset(store, a.resolution)
        t0 = time.perf_counter()
        ds.use_cache(image_cache.build(ds, FeatureStore(store), workers=0, show=False))
        build_s = time.perf_counter() - t0
        cached = _rate(ds, a.n)
        report = {
            "bench": "loader",
            "images": a.n,
            "image_size": a.size,
            "resolution": a.resolution,
            "img_per_s_per_core": {
                "decode_full": round(full, 1),
                "decode_draft": round(draft, 1),
                "cache": round(cached, 1),
            },
            "cache_vs_full": round(cached / full, 1),
            "draft_vs_full": round(draft / full, 2),
            "cache_build_s": round(build_s, 2),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
