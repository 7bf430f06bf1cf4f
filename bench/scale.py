"""ImageNet-shaped inputs, built cheaply, and the real stage code run on them: the cost of each stage
that is not per-image compute, at N = 10k, 100k and 1.28M rows, as JSON.

    python bench/scale.py --n 10000 100000               # every stage at these sizes (JSON on stdout)
    python bench/scale.py --n 1280000 --stages scan_folder,open_lookup,retrieval_baseline
    python bench/scale.py --plot runs/scale.json --png docs/scale.png   # the log-log plot + exponents
    python bench/scale.py --keep ...                      # keep the inputs under --root for a re-run

Inputs (under ``--root``, default /tmp/rcdm_scale, removed at the end unless ``--keep``):

- an ImageFolder tree of 1,000 class folders holding N tiny JPEGs, hard links to a few real 16 px
  files (each a distinct key; 40,000 links an inode at most); a webdataset source of the same N images in tars of 10,000
  samples; a ``.txt`` file list of the same N paths with labels;
- a store of N rows written through the real store writer (:func:`rcdm.store.write_shard`, the
  default ``shard_size`` 1024, 16-d features, float16, both views), keyed like the folder source so
  the training data set joins it to the images; a 50k-row validation store; a 50k-sample set.

Each stage runs in its own process under a lowered open-file limit (``--nofile``, default 256: a
stage that keeps one handle per shard or per image fails there), and reports its wall time, its
peak RSS (``ru_maxrss``) and the most file descriptors it held (sampled every 2 ms from
/proc/self/fd). A stage that takes longer than ``--timeout`` seconds is recorded as such.
Nothing here is part of the test run; docs/benchmarks.md ("Data-set scale") has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

N_CLASSES = 1000
DIM = 16
VAL_N = 50_000
WDS_PER_TAR = 10_000
SMALL_ROOT = "/tmp/rcdm_scale"
# rcdm.store.stats.IN_MEMORY_BYTES (1 GiB of float32) scaled to the bench's 16-d rows, so each stage
# takes the path a 2048-d store of the same number of rows would (streamed above ~65k rows)
IN_MEMORY = (1 << 30) * DIM // 2048


# ---------------------------------------------------------------------------------------- inputs
def _tiny_jpegs(folder: Path, n: int) -> list[Path]:
    """Real 16 px JPEGs to hard-link ``n`` images to: a file takes at most 40,000 links (ext4 allows
    65,000)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(max(4, -(-n // 40_000))):
        p = folder / f"base{i}.JPEG"
        if not p.exists():
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(p)
    return out


def _names(n: int) -> list[tuple[str, int]]:
    """(relative path, label) of the N images: class c holds images c, c + 1000, ..."""
    return [(f"n{i % N_CLASSES:08d}/img_{i:08d}.JPEG", i % N_CLASSES) for i in range(n)]


def build_folder(root: Path, n: int, bases: list[Path]) -> Path:
    folder = root / "images"
    if (folder / ".done").exists():
        return folder
    for c in range(N_CLASSES):
        (folder / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    for i, (rel, _) in enumerate(_names(n)):
        p = folder / rel
        if not p.exists():
            os.link(bases[i % len(bases)], p)
    (folder / ".done").touch()
    return folder


def build_list(root: Path, n: int) -> Path:
    path = root / "list.txt"
    if not path.exists():
        path.write_text("".join(f"images/{rel}\t{lab}\n" for rel, lab in _names(n)))
    return path


def build_wds(root: Path, n: int, bases: list[Path]) -> Path:
    folder = root / "wds"
    if (folder / ".done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    datas = [b.read_bytes() for b in bases]
    names = _names(n)
    for t, start in enumerate(range(0, n, WDS_PER_TAR)):
        with tarfile.open(folder / f"train-{t:04d}.tar", "w") as tf:
            for i in range(start, min(n, start + WDS_PER_TAR)):
                key = names[i][0].replace("/", "_").removesuffix(".JPEG")
                for suffix, data in (("jpg", datas[i % len(datas)]), ("cls", str(names[i][1]).encode())):
                    ti = tarfile.TarInfo(f"{key}.{suffix}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    (folder / ".done").touch()
    return folder


def build_store(out: Path, n: int, source_root: Path | None, seed: int = 0, shard_size: int = 1024) -> Path:
    """A finished store of n rows written by the real writer, keyed like the folder source."""
    from rcdm.data.images import PREPROCESS
    from rcdm.store import build_manifest, write_manifest, write_shard

    if (out / "manifest.json").exists():
        return out
    rng = np.random.default_rng(seed)
    names = _names(n)
    records = []
    for k, start in enumerate(range(0, n, shard_size)):
        stop = min(n, start + shard_size)
        feats = rng.standard_normal((stop - start, 2, DIM), dtype=np.float32)
        keys = [rel.removesuffix(".JPEG") for rel, _ in names[start:stop]]
        labels = [lab for _, lab in names[start:stop]]
        records.append(write_shard(out, k, feats, keys, labels, first_item=start))
    classes = [f"n{c:08d}" for c in range(N_CLASSES)]
    source = {"kind": "folder", "root": str(source_root or out / "no-images"), "split": "train", "n_items": n}
    source.update(key_rule="synthetic (bench/scale.py)", n_classes=N_CLASSES, classes=classes)
    enc = {"name": "synthetic", "arch": "none", "layer": "trunk", "dim": DIM, "weights": None, "weights_sha256": None}
    m = build_manifest(
        records,
        encoder_info=enc,
        preprocess=PREPROCESS["rcdm"].to_dict(),
        source=source,
        fmt="h5",
        dtype="float16",
        dim=DIM,
    )
    write_manifest(out, m)
    return out


def build_inputs(root: Path, n: int, need: set[str]) -> dict:
    """The inputs the chosen stages need, built once per size under ``root / str(n)``."""
    t0 = time.perf_counter()
    base = root / (str(n) if DIM == 16 else f"{n}-d{DIM}")
    base.mkdir(parents=True, exist_ok=True)
    bases = _tiny_jpegs(base / "base", n)
    paths = {"root": str(base), "n": n}
    if need & {"folder", "list", "store"}:
        paths["folder"] = str(build_folder(base, n, bases))
    if "list" in need:
        paths["list"] = str(build_list(base, n))
    if "wds" in need:
        paths["wds"] = str(build_wds(base, n, bases))
    if "store" in need:
        paths["store"] = str(build_store(base / "store", n, Path(paths["folder"])))
    if "val" in need:
        paths["val"] = str(build_store(root / ("val" if DIM == 16 else f"val-d{DIM}"), VAL_N, None, seed=1))
    paths["build_s"] = round(time.perf_counter() - t0, 1)
    return paths


# ---------------------------------------------------------------------------------------- stages
def st_scan_folder(p: dict) -> dict:
    from rcdm.data.images import open_source

    src = open_source(p["folder"])
    src.index_of(src.items[-1].key)  # the key -> index map every later lookup uses
    return {"items": len(src)}


def st_scan_wds(p: dict) -> dict:
    from rcdm.data.images import open_source

    src = open_source(p["wds"])
    return {"items": len(src)}


def st_scan_list(p: dict) -> dict:
    from rcdm.data.images import open_source

    src = open_source(p["list"])
    return {"items": len(src)}


def st_store_info(p: dict) -> dict:
    from rcdm.store import info

    return {"lines": len(info(p["store"]).splitlines())}


def st_store_verify(p: dict) -> dict:
    from rcdm.store import verify

    problems = verify(p["store"])
    if problems:
        raise RuntimeError(problems[:3])
    return {}


def st_open_lookup(p: dict) -> dict:
    from rcdm.store import FeatureStore

    t0 = time.perf_counter()
    st = FeatureStore(p["store"])
    t_open = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(st), 2000)
    t0 = time.perf_counter()
    keys = [st[int(i)][1] for i in rows]  # random rows: shards opened through the bounded LRU
    t_rows = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = [st.index_of(k) for k in keys]  # the first builds the key map (all shards' keys)
    t_keys = time.perf_counter() - t0
    assert found == rows.tolist()
    return {"open_s": round(t_open, 3), "rows_2000_s": round(t_rows, 3), "index_of_2000_s": round(t_keys, 3)}


def st_train_dataset(p: dict) -> dict:
    from rcdm.train.data import ImageFeatureDataset

    ds = ImageFeatureDataset(p["store"], 16)
    x, h, _ = ds[(len(ds) - 1, True)]
    return {"rows": len(ds), "image": list(x.shape)}


def st_cond_stats(p: dict) -> dict:
    from rcdm.store import FeatureStore
    from rcdm.train.model import condition_statistics

    mean, std = condition_statistics(FeatureStore(p["store"]), in_memory_bytes=IN_MEMORY)
    return {"dim": int(mean.shape[0])}


def st_cond_image(p: dict) -> dict:
    import torch
    from rcdm.model.config import preset
    from rcdm.model.unet import UNetModel
    from rcdm.train import condimage
    from rcdm.train.data import ImageFeatureDataset

    net = UNetModel(preset("tiny", cond_dim=DIM, image_size=16, cond_image=8))
    torch.set_num_threads(1)
    ds = ImageFeatureDataset(p["store"], 16)
    said = condimage.fit(net, ds, 0, 0, show=False)
    return {"said": said}


def st_sample_conditions(p: dict) -> dict:
    from rcdm.config import SampleConfig
    from rcdm.sample.conds import build
    from rcdm.store import FeatureStore

    cfg = SampleConfig(condition="store", subset=VAL_N, store=p["val"])
    conds = build(cfg, FeatureStore(p["val"]), "cpu")
    return {"conditions": len(conds.conditions)}


def _fake_sample_set(p: dict, out: Path) -> Path:
    from rcdm.run.sampleset import IndexRow, write_sample_set
    from rcdm.store import FeatureStore

    st = FeatureStore(p["val"])
    feats, keys = st.features(0), st.keys
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (VAL_N, 16, 16, 3), dtype=np.uint8)
    rows = [IndexRow(sample=i, condition=i, key=keys[i], kind="store", seed=i, store_index=i) for i in range(VAL_N)]
    return write_sample_set(out, images, rows, feats, {"note": "bench/scale.py"})


def st_sample_set_io(p: dict) -> dict:
    from rcdm.run.sampleset import read_samples

    out = Path(p["root"]) / "samples"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    _fake_sample_set(p, out)
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    ss = read_samples(out)
    return {"write_s": round(t_write, 2), "read_s": round(time.perf_counter() - t0, 2), "samples": len(ss.images)}


def st_evaluate_rank(p: dict) -> dict:
    from rcdm.analysis.evaluation.ranking import match_conditions
    from rcdm.faithfulness import nearest_neighbour_ranks
    from rcdm.run.sampleset import read_samples
    from rcdm.store import FeatureStore

    out = Path(p["root"]) / "samples"
    if not (out / "manifest.json").exists():
        _fake_sample_set(p, out)
    ss = read_samples(out)
    st = FeatureStore(p["val"])
    ref = st.features(0)
    queries = ref + 0.1 * np.random.default_rng(0).standard_normal(ref.shape, dtype=np.float32)
    t0 = time.perf_counter()
    cond_index = match_conditions(ss, st.keys, ref)
    t_match = time.perf_counter() - t0
    ranks = nearest_neighbour_ranks(queries, ref, cond_index, ss.conds)
    return {"match_s": round(t_match, 2), "mean_rank": float(ranks.mean()), "M": len(queries), "N": len(ref)}


def st_retrieval_baseline(p: dict) -> dict:
    from rcdm.analysis.evaluation.spaces import retrieval_baseline
    from rcdm.store import FeatureStore

    conds = FeatureStore(p["val"]).features(0)
    base = retrieval_baseline(conds, FeatureStore(p["store"]), [])
    return {"M": len(conds), "N_train": base.info["N_train"]}


def st_train_prior(p: dict) -> dict:
    from rcdm.config import PriorConfig
    from rcdm.train import prior
    from rcdm.train.prior import train_prior

    prior.IN_MEMORY_BYTES = IN_MEMORY  # the path a 2048-d store of this many rows takes
    out = Path(p["root"]) / "prior"
    cfg = PriorConfig(store=p["store"], out=str(out), iters=20, width=64, blocks=2, overwrite=True)
    train_prior(cfg)
    return {"iters": 20}


def st_resume_extract(p: dict) -> dict:
    """A half-done extraction of the folder source (the first half of its shards written by the
    real writer, then the run stopped), resumed with the real ``rcdm extract`` entry point. The
    encoder is random-rn50 (built, never run: the shards are written by a stand-in for the encoding
    loop, so what is timed is everything but the per-image work), to a store of 16-d rows."""
    from rcdm.config import ExtractConfig
    from rcdm.extract import loop

    out = Path(p["root"]) / "extract"
    shutil.rmtree(out, ignore_errors=True)
    seen: dict = {}

    def stand_in(cfg, source, encoder, pp, shards, n_items, out_, device, *, show):
        t0 = time.perf_counter()
        seen.setdefault("first_shards", shards)
        for k in shards[: (len(shards) + 1) // 2] if "stop" not in seen else shards:
            start, stop = k * cfg.shard_size, min(n_items, (k + 1) * cfg.shard_size)
            items = source.items[start:stop]
            feats = np.zeros((len(items), 2, DIM), np.float32)
            loop.write_shard(out_, k, feats, [it.key for it in items], [it.label for it in items], first_item=start)
        seen["write_s"] = seen.get("write_s", 0) + time.perf_counter() - t0
        if "stop" not in seen:
            seen["stop"] = True
            raise KeyboardInterrupt("the first run stops half-way")
        seen["resumed_shards"] = len(shards)
        return {"images": 0, "seconds": 0.0}

    loop._encode_shards = stand_in
    cfg = ExtractConfig(encoder="random-rn50", source=p["folder"], out=str(out), device="cpu", workers=0)
    t0 = time.perf_counter()
    with contextlib.suppress(KeyboardInterrupt):
        loop.run(cfg)
    first = time.perf_counter() - t0 - seen["write_s"]
    seen["write_s"] = 0
    t0 = time.perf_counter()
    loop.run(cfg)  # resumes: checks the finished shards, encodes the rest, writes the manifest
    resume = time.perf_counter() - t0
    return {
        "first_run_s_without_writing": round(first, 2),
        "resume_s_without_writing": round(resume - seen["write_s"], 2),
        "shards_done_before": len(seen["first_shards"]) - seen["resumed_shards"],
        "shards_resumed": seen["resumed_shards"],
    }


def st_train_resume(p: dict) -> dict:
    """A training run (tiny preset, 16 px, standardised condition, 2 steps) stopped, then resumed
    for 2 more: the resumed start (store, the keys joined to the images, statistics, checkpoint)
    is what grows with N; the 4 steps of a tiny model are not."""
    import torch
    from rcdm.config import TrainConfig
    from rcdm.train import run

    torch.set_num_threads(1)
    out = Path(p["root"]) / "run"
    shutil.rmtree(out, ignore_errors=True)
    kw = dict(store=p["store"], out=str(out), preset="tiny", resolution=16, batch_size=4, workers=0)
    kw.update(cond_norm="standardize", grid_kimg=0, checkpoint_kimg=0.008, image_cache="off")
    t0 = time.perf_counter()
    run(TrainConfig(kimg=0.008, **kw))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(TrainConfig(kimg=0.016, **kw))
    return {"first_run_s": round(first, 2), "resumed_run_s": round(time.perf_counter() - t0, 2)}


def st_kde(p: dict) -> dict:
    from rcdm.config import SampleConfig
    from rcdm.sample.conds import build
    from rcdm.store import FeatureStore

    cfg = SampleConfig(condition="kde", kde_n=64, store=p["store"])
    return {"conditions": len(build(cfg, FeatureStore(p["store"]), "cpu").conditions)}


def st_neighbours(p: dict) -> dict:
    """The nearest training rows of 32 sample representations (the neighbours analysis' search)."""
    from rcdm.analysis.experiments.common import nearest_training_rows
    from rcdm.store import FeatureStore

    train = FeatureStore(p["store"])
    hs = np.random.default_rng(0).standard_normal((32, DIM)).astype(np.float32)
    nn = nearest_training_rows(train, hs, 8)
    return {"queries": len(nn), "k": int(nn.shape[1])}


def st_probe(p: dict) -> dict:
    """The linear probe on the training store's rows (1 epoch), accuracy on the 50k val store: the
    analysis' path (streamed through a shuffle buffer above IN_MEMORY, as a 2048-d store would be)."""
    import torch
    from rcdm.analysis.experiments.probe import store_probe
    from rcdm.store import FeatureStore
    from rcdm.store.stats import fits_in_memory

    torch.set_num_threads(1)
    train, val = FeatureStore(p["store"]), FeatureStore(p["val"])
    r = store_probe(train, train.labels, val, val.labels, in_memory_bytes=IN_MEMORY, epochs=1, n_classes=N_CLASSES)
    return {"val_accuracy": round(float(r.val_accuracy), 4), "streamed": not fits_in_memory(train, 0, IN_MEMORY)}


def st_manipulate(p: dict) -> dict:
    """Sampling's ``manipulate`` condition: 20 nearest training rows of 2 store rows, streamed."""
    from rcdm.config import SampleConfig
    from rcdm.sample.conds import build
    from rcdm.store import FeatureStore

    cfg = SampleConfig(condition="manipulate", indices=(5, 1000), knn_k=20, knn_m=14)
    return {"conditions": len(build(cfg, FeatureStore(p["store"])).conditions)}


def st_manipulation_thresholds(p: dict) -> dict:
    """The manipulation analysis' per-dimension 75th percentiles over the training store (streamed
    above IN_MEMORY: as many columns per pass as IN_MEMORY holds for every row)."""
    from rcdm.analysis.experiments import common
    from rcdm.analysis.experiments.manipulation import active_thresholds, streamed_thresholds
    from rcdm.store import FeatureStore
    from rcdm.store.stats import fits_in_memory

    common.IN_MEMORY_BYTES = IN_MEMORY
    train = FeatureStore(p["store"])
    held = fits_in_memory(train, 0, IN_MEMORY)
    t = active_thresholds(train.features(0)) if held else streamed_thresholds(train)
    return {
        "dims": len(t),
        "streamed": not held,
        "passes": 1 if held else -(-DIM // max(1, IN_MEMORY // (4 * len(train)))),
    }


def st_invariance_nn(p: dict) -> dict:
    """The invariance analysis' nearest-training-neighbour distance of 8 images (a pass each, streamed)."""
    from rcdm.analysis.experiments.invariance_scores import StoreReference, nn_distance
    from rcdm.store import FeatureStore

    ref = StoreReference(FeatureStore(p["store"]))
    hs = np.random.default_rng(0).standard_normal((8, DIM))
    return {"images": len([nn_distance(h, ref) for h in hs])}


STAGES = {
    "scan_folder": ({"folder"}, st_scan_folder),
    "scan_wds": ({"wds"}, st_scan_wds),
    "scan_list": ({"list"}, st_scan_list),
    "resume_extract": ({"folder"}, st_resume_extract),
    "store_info": ({"store"}, st_store_info),
    "store_verify": ({"store"}, st_store_verify),
    "open_lookup": ({"store"}, st_open_lookup),
    "train_dataset": ({"store"}, st_train_dataset),
    "cond_stats": ({"store"}, st_cond_stats),
    "cond_image": ({"store"}, st_cond_image),
    "sample_conditions": ({"val"}, st_sample_conditions),
    "sample_set_io": ({"val"}, st_sample_set_io),
    "evaluate_rank": ({"val"}, st_evaluate_rank),
    "retrieval_baseline": ({"store", "val"}, st_retrieval_baseline),
    "train_resume": ({"store"}, st_train_resume),
    "train_prior": ({"store"}, st_train_prior),
    "kde": ({"store"}, st_kde),
    "neighbours": ({"store"}, st_neighbours),
    "probe": ({"store", "val"}, st_probe),
    "manipulate": ({"store"}, st_manipulate),
    "manipulation_thresholds": ({"store"}, st_manipulation_thresholds),
    "invariance_nn": ({"store"}, st_invariance_nn),
}


# ------------------------------------------------------------------------------ one stage, measured
class _FdWatch(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self) -> None:
        while not self.stop:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, len(os.listdir("/proc/self/fd")))
            time.sleep(0.002)


def run_stage_here(name: str, paths: dict) -> dict:
    """Run ``name`` in this process; its time, peak RSS and peak open descriptors."""
    watch = _FdWatch()
    watch.start()
    t0 = time.perf_counter()
    try:
        extra = STAGES[name][1](paths)
        status = "ok"
    except Exception as e:  # recorded, the other stages still run
        extra, status = {"error": f"{type(e).__name__}: {str(e)[:300]}"}, "error"
    seconds = time.perf_counter() - t0
    watch.stop = True
    watch.join()
    return {
        "status": status,
        "seconds": round(seconds, 3),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_fds": watch.peak,
        **extra,
    }


def _peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: ru_maxrss would count the parent's from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_stage(name: str, paths: dict, nofile: int, timeout: float) -> dict:
    """``name`` in a child process under ``ulimit -n nofile`` and ``timeout`` seconds."""
    cmd = [sys.executable, __file__, "--child", name, "--paths", json.dumps(paths), "--nofile", str(nofile)]
    cmd += ["--dim", str(DIM), "--in-memory-bytes", str(IN_MEMORY)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        return {"status": "crashed", "rc": r.returncode, "stderr": r.stderr[-600:]}
    return json.loads(lines[-1])


def child(name: str, paths: dict, nofile: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    print(json.dumps({"nofile": nofile, **run_stage_here(name, paths)}))


# ------------------------------------------------------------------------------------ the plot
def fit_exponent(ns: list[int], secs: list[float]) -> float | None:
    """The slope of log(seconds) against log(N) (least squares), or None under two points."""
    pts = [(n, s) for n, s in zip(ns, secs, strict=True) if s and s > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([n for n, _ in pts]), np.log([s for _, s in pts])
    return float(np.polyfit(x, y, 1)[0])


def plot(results: dict, png: Path) -> dict:
    """The log-log plot of each stage whose cost can grow with N (the 50k-only stages are flat by
    construction); returns ``{stage: {"fit": exponent over every N, "last": over the two largest}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    exps = {}
    colours = iter(plt.get_cmap("tab20").colors)
    for stage, (need, _) in STAGES.items():
        pts = sorted(
            (int(n), r[stage]["seconds"])
            for n, r in results.items()
            if stage in r and r[stage].get("status") == "ok" and r[stage]["seconds"] > 0
        )
        if len(pts) < 2 or need == {"val"}:
            continue
        ns, ss = [n for n, _ in pts], [s for _, s in pts]
        exps[stage] = {"fit": round(fit_exponent(ns, ss), 2), "last": round(fit_exponent(ns[-2:], ss[-2:]), 2)}
        ax.plot(
            ns,
            ss,
            "o-",
            color=next(colours),
            label=f"{stage} (N^{exps[stage]['fit']:.2f}; last N^{exps[stage]['last']:.2f})",
        )
    ns = np.array([1e4, 1.28e6])
    for ref, style in ((1.0, ":"), (2.0, "--")):
        ax.plot(ns, 0.2 * (ns / 1e4) ** ref, "k" + style, lw=0.8, label=f"slope {ref:g} (reference)")
    ax.axhline(120, color="r", lw=0.8, label="2 minutes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (training images / store rows)")
    ax.set_ylabel("seconds (whole stage, one process, 2 shared cores)")
    ax.set_title("rcdm at ImageNet's counts: each stage's cost against N (bench/scale.py)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return exps


def main() -> None:
    global DIM, IN_MEMORY
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--root", default=SMALL_ROOT)
    ap.add_argument("--nofile", type=int, default=256, help="open-file limit each stage runs under")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the built inputs under --root")
    ap.add_argument("--plot", help="a JSON written by this script: plot it (with --png) and print the exponents")
    ap.add_argument("--png", default="docs/scale.png")
    ap.add_argument("--dim", type=int, default=DIM, help="feature dimension of the stores (the D-scaling; default 16)")
    ap.add_argument(
        "--in-memory-bytes",
        type=int,
        help="the float32 budget above which stages stream (default: 1 GiB scaled by dim / 2048, the path a "
        "2048-d store of the same rows takes)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    a = ap.parse_args()
    DIM = a.dim
    IN_MEMORY = a.in_memory_bytes if a.in_memory_bytes is not None else (1 << 30) * DIM // 2048
    if a.child:
        return child(a.child, json.loads(a.paths), a.nofile)
    if a.plot:
        print(json.dumps(plot(json.loads(Path(a.plot).read_text())["results"], Path(a.png)), indent=1))
        return None
    stages = [s for s in a.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    root = Path(a.root)
    results: dict = {}
    builds: dict = {}
    try:
        for n in a.n:
            need = set().union(*(STAGES[s][0] for s in stages))
            paths = build_inputs(root, n, need)
            builds[n] = paths["build_s"]
            results[n] = {}
            for s in stages:
                results[n][s] = run_stage(s, paths, a.nofile, a.timeout)
                print(f"N={n} {s}: {json.dumps(results[n][s])}", file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {"nofile": a.nofile, "dim": DIM, "in_memory_bytes": IN_MEMORY, "build_s": builds, "results": results},
            indent=1,
        )
    )
    return None


if __name__ == "__main__":
    main()
