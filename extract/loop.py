"""Stage 1 entry point: images + frozen encoder -> feature store.

Shard k holds source items [k * shard_size, (k + 1) * shard_size) minus the unreadable ones, and
is written by process k % world_size (``accelerate launch`` / ``torchrun``), so any number of
processes writes the same shards. Finished shards are skipped on a re-run; process 0 writes the
manifest, last, once every process is done. A re-run first checks the shards it would keep against
their recorded sha256; ``--repair`` re-encodes the damaged ones.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rcdm.config import ExtractConfig, save_resolved, to_dict
from rcdm.data.preprocess import Preprocess, effective_preprocess
from rcdm.encoders.registry import EncoderSpec, get_spec
from rcdm.errors import InvalidInput, UserError
from rcdm.extract import prepare
from rcdm.extract.dataset import (
    ExtractDataset,
    ShardBatches,
    collate,
    device_normalisation_is_exact,
    normalize,
)
from rcdm.extract.gpudecode import decode_on_device, resolve_decode
from rcdm.launch import launch_state, on_main, processes
from rcdm.run.lock import holding_output_lock
from rcdm.speed import auto_workers, enable_fast_math, resolve_channels_last
from rcdm.store import build_manifest, completed_shards, write_manifest, write_shard
from tqdm.auto import tqdm


def _device(spec: str, state) -> torch.device:
    from rcdm.utils import pick_device

    if state.num_processes > 1 and spec in ("auto", "cuda") and torch.cuda.is_available():
        return state.device  # cuda:<local rank>
    return pick_device(spec)


def _open_source(cfg: ExtractConfig):
    from rcdm.data.images import open_source

    if not cfg.source:
        raise InvalidInput(
            "extract.source is not set; pass --source PATH (an image folder, a list file or .tar shards)"
        )
    # An absolute root in the manifest: later stages find the images from any directory.
    src = open_source(os.path.abspath(cfg.source))
    if len(src) == 0:
        raise InvalidInput(f"image source {cfg.source} holds no images; point --source at a folder of images")
    return src


def _check_config(cfg: ExtractConfig) -> EncoderSpec:
    """The encoder's registry entry, once the settings are checked (before any work)."""
    spec = get_spec(cfg.encoder)  # a missing or unknown name: the error lists the known ones
    if not cfg.source:
        raise InvalidInput("extract.source is not set; pass --source with an image folder, list or tars")
    if not cfg.out:
        raise InvalidInput("extract.out is not set; pass --out STORE_DIR")
    cfg.check()  # each key's bounds were checked when the section was made; here the rules between keys
    prepare.check_out(Path(cfg.out))
    return spec


def _preprocess(cfg: ExtractConfig, spec: EncoderSpec) -> str | Preprocess:
    """The encoder's preprocessing ("default": its own), with ``input_size`` applied if set."""
    if cfg.input_size is None:
        return cfg.preprocess  # the encoder resolves "default" to its own
    return effective_preprocess(spec.preprocess, cfg.preprocess, cfg.input_size)


@holding_output_lock("rcdm extract")  # one writer per store (rank 0 holds it for a launch)
def run(cfg: ExtractConfig) -> Path:
    """Extract features of ``cfg.source`` into the store ``cfg.out``; return the store directory."""
    from rcdm.encoders.build import load_encoder

    spec = _check_config(cfg)  # resolved once: what follows is given the spec, not the name
    out = Path(cfg.out)
    source = _open_source(cfg)
    n_items = min(len(source), cfg.limit or len(source))
    state = launch_state(cfg.device)
    rank, world = state.process_index, state.num_processes
    device = _device(cfg.device, state)
    if rank == 0:  # where it runs, first
        print(f"extracting on {device} ({processes(world)})", flush=True)
    cfg = _resolve_auto(cfg, device)

    encoder = load_encoder(
        spec,
        cfg.weights,
        cfg.layer,
        trust_checkpoint=cfg.trust_checkpoint,
        preprocess=_preprocess(cfg, spec),
        allow_download=cfg.allow_download,
        seed=cfg.seed,
    )
    pp = encoder.preprocess
    # Resolved here, not per shard: the decoder makes the pixels, so the header records it and a
    # resume on another device (auto: gpu on CUDA, cpu elsewhere) or with another --decode is refused.
    cfg = replace(cfg, decode=resolve_decode(cfg.decode, device, device_normalisation_is_exact(pp)))
    enc_info = encoder.info()
    src_info = source.describe()
    src_info.update(n_items=n_items, n_items_in_source=len(source), limit=cfg.limit)
    header = prepare.make_header(enc_info, pp.to_dict(), src_info, cfg)

    if _prepare_out(cfg, out, header, state) == "finished":
        return out

    n_shards = math.ceil(n_items / cfg.shard_size)
    done = completed_shards(out)
    mine = [k for k in range(n_shards) if k % world == rank and k not in done]
    timing = {"images": 0, "seconds": 0.0}
    if mine:
        timing = _encode_shards(cfg, source, encoder, pp, mine, n_items, out, device, show=state.is_main_process)

    # Process 0 writes the manifest once every process has written its shards.
    timing.update(world_size=world, device=str(device), note="process 0 only, this run only")
    _after_everyone(state, lambda: _finish(cfg, out, n_shards, enc_info, pp, src_info, timing))
    return out


def _prepare_out(cfg: ExtractConfig, out: Path, header: dict, state) -> prepare.Action:
    """Decide what to do with ``out`` on every process (the same answer), then let process 0 touch
    the directory; returns the action. The shards a re-run would keep must be what they record:
    process 0 hashes, all act on it."""
    action, clear_first = prepare.decide(out, header, cfg.overwrite)
    damaged = on_main(lambda: prepare.damaged_shards(out)) if action != "start" else {}
    action = prepare.after_damage(out, action, damaged, cfg.repair)
    state.wait_for_everyone()
    if state.is_main_process:
        if action == "finished":
            tqdm.write(f"store {out} is already complete and matches its manifest; nothing to do", file=sys.stderr)
        else:
            if clear_first:
                prepare.clear(out)
            if damaged:
                tqdm.write(f"store {out}: re-encoding {', '.join(sorted(damaged))}", file=sys.stderr)
                prepare.drop(out, sorted(damaged))
            prepare.write_header(out, header)
            prepare.clear_temp(out)
            save_resolved(replace(cfg, out=str(out)), out)
    state.wait_for_everyone()
    return action


def _after_everyone(state, fn) -> None:
    """``fn()`` on process 0 once every process got here; its error is raised after the last
    barrier, so the other processes do not hang."""
    state.wait_for_everyone()
    error: Exception | None = None
    if state.is_main_process:
        try:
            fn()
        except Exception as e:  # raised after the barrier
            error = e
    state.wait_for_everyone()
    if error is not None:
        raise error


def _resolve_auto(cfg: ExtractConfig, device: torch.device) -> ExtractConfig:
    """The ``auto`` settings for this device (bf16, channels-last, cuDNN autotune + TF32 on CUDA;
    none of them on a CPU): what ``bench/extract.py`` measures. ``decode`` resolves per run."""
    enable_fast_math(device)
    cuda = device.type == "cuda"
    amp = ("bf16" if cuda else "none") if cfg.amp == "auto" else cfg.amp
    return replace(cfg, amp=amp, channels_last=resolve_channels_last(cfg.channels_last, cuda, device))


def _finish(cfg: ExtractConfig, out: Path, n_shards: int, enc_info: dict, pp, src_info: dict, timing: dict) -> None:
    records = completed_shards(out)
    missing = [k for k in range(n_shards) if k not in records]
    if missing:
        raise UserError(
            f"shards {missing[:5]} of {out} were not written (a process failed?); re-run the same command to finish"
        )
    records = {k: records[k] for k in range(n_shards)}
    rows = sum(r["rows"] for r in records.values())
    if rows == 0:
        failed = [f for r in records.values() for f in r["failed"]]
        prepare.clear(out)  # no store of zero rows; the source is untouched
        raise InvalidInput(
            f"none of the {src_info['n_items']} images in {cfg.source} could be read "
            f"(e.g. {failed[0]['key']}: {failed[0]['reason']}); check the source files"
        )
    manifest = build_manifest(
        records,
        encoder_info=enc_info,
        preprocess=pp.to_dict(),
        source=src_info,
        fmt=cfg.format,
        dtype=cfg.dtype,
        dim=int(enc_info["dim"]),
        has_images=cfg.include_images,
        extract_config=to_dict(cfg),
        extra={"timing": timing},
    )
    write_manifest(out, manifest)
    n_failed = manifest["n_failed"]
    tqdm.write(
        f"store {out}: {rows} rows in {n_shards} shard(s)"
        + (f", {n_failed} unreadable image(s) skipped" if n_failed else ""),
        file=sys.stderr,
    )


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class _ShardWriter:
    """Writes shards on one background thread, so hashing and fsync overlap the encoding.

    After a failed write no later shard is written (as if the process had died there), and the
    error is raised in the main thread at the next submit or at ``close``.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rcdm-shard-writer")
        self.futures: list = []
        self.error: BaseException | None = None

    def _guarded(self, *args) -> None:
        if self.error is not None:
            return
        try:
            _write(*args)
        except BaseException as e:
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, *args) -> None:
        self.check()
        self.futures.append(self.pool.submit(self._guarded, *args))

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # in-flight shards are complete shards: let them land
        self.check()


def _encode_shards(cfg, source, encoder, pp, shards: list[int], n_items: int, out: Path, device, *, show: bool) -> dict:
    """Encode the items of ``shards``, writing each shard as soon as its last item is in.

    The device works on batch t while the host files the features of batch t-1 and the loader
    prepares t+1. Returns {images, seconds, img_per_s} of the loop (the DataLoader start included).
    """
    encoder = encoder.to(device).eval()
    if cfg.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    uint8 = device_normalisation_is_exact(pp)  # else normalise in the workers (exact by definition)
    decode = resolve_decode(cfg.decode, device, uint8)
    workers = auto_workers(cfg.workers)
    loader = _loader(cfg, source, pp, shards, n_items, device, workers, uint8=uint8, device_decode=decode == "gpu")
    total = sum(_shard_items(k, cfg.shard_size, n_items) for k in shards)
    writer = _ShardWriter()
    buffers = _ShardBuffers(cfg, source, n_items, out, encoder.dim, writer)

    t0 = time.perf_counter()
    try:
        with tqdm(
            total=total, unit="img", desc=f"extract {cfg.encoder}/{cfg.layer}", disable=not show, smoothing=0.1
        ) as bar:
            _encode_batches(loader, encoder, cfg, pp, device, decode == "gpu", uint8, buffers, bar)
    finally:
        writer.close()
    if buffers.pending:  # internal invariant: every shard's items came through
        raise RuntimeError(f"extraction ended with incomplete shards {sorted(buffers.pending)}")
    dt = time.perf_counter() - t0
    encoded = total - buffers.skipped
    if show:
        tqdm.write(
            f"encoded {encoded} images in {dt:.1f} s ({encoded / max(dt, 1e-9):.1f} img/s) on {device}"
            + (f"; {buffers.skipped} unreadable image(s) skipped" if buffers.skipped else ""),
            file=sys.stderr,
        )
    return {
        "images": encoded,
        "skipped": buffers.skipped,
        "seconds": round(dt, 3),
        "img_per_s": round(encoded / max(dt, 1e-9), 1),
        "decode": decode,
        "workers": workers,
    }


def _shard_items(k: int, shard_size: int, n_items: int) -> int:
    """How many source items shard ``k`` covers (the last one may be short)."""
    return min((k + 1) * shard_size, n_items) - k * shard_size


def _loader(
    cfg, source, pp, shards: list[int], n_items: int, device, workers: int, *, uint8: bool, device_decode: bool
):
    """The DataLoader of the items of ``shards``, in batches that never straddle two shards."""
    return torch.utils.data.DataLoader(
        ExtractDataset(
            source,
            pp,
            draft=cfg.draft,
            keep_bytes=cfg.include_images,
            uint8=uint8,
            max_pixels=cfg.max_pixels,
            device_decode=device_decode,
        ),
        batch_sampler=ShardBatches(shards, cfg.shard_size, n_items, cfg.batch_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )


def _encode_batches(loader, encoder, cfg, pp, device, device_decode: bool, uint8: bool, buffers, bar) -> None:
    """Launch each batch on the device, then file the previous one's features while it runs."""
    previous = None
    for batch in loader:
        # Copy the whole (pinned) batch first, then decode JPEGs and drop failures on the device.
        x = batch["x"].to(device, non_blocking=True)
        if device_decode:
            decode_on_device(batch, pp, device, x)
        ok = batch["ok"]
        result = None
        if ok.any():
            x = x if ok.all() else x[ok.to(device)]
            result = _launch(encoder, normalize(x, pp) if uint8 else x, cfg, device)
        if previous is not None:
            buffers.file(previous[0], _collect(previous[1], encoder.dim))
            bar.update(len(previous[0]["index"]))
        previous = (batch, result)
    if previous is not None:
        buffers.file(previous[0], _collect(previous[1], encoder.dim))
        bar.update(len(previous[0]["index"]))


class _ShardBuffers:
    """The rows of the shards being encoded, each shard handed to the writer when its last item is in."""

    def __init__(self, cfg, source, n_items: int, out: Path, dim: int, writer: _ShardWriter) -> None:
        self.cfg, self.source, self.n_items, self.out, self.dim, self.writer = cfg, source, n_items, out, dim, writer
        self.pending: dict[int, dict] = {}
        self.skipped = 0  # unreadable images: not counted as encoded

    def file(self, batch: dict, feats: np.ndarray) -> None:
        """Put a batch's rows into their shards' buffers; hand complete shards to the writer."""
        check_finite(
            feats, [self.source.items[i].key for j, i in enumerate(batch["index"]) if batch["ok"][j]], self.cfg
        )
        S = self.cfg.shard_size
        m = 0
        for j, i in enumerate(batch["index"]):
            k = i // S
            buf = self.pending.setdefault(
                k, {"feats": [], "keys": [], "labels": [], "images": [], "failed": [], "seen": 0}
            )
            item = self.source.items[i]
            if batch["ok"][j]:
                buf["feats"].append(feats[m])
                buf["keys"].append(item.key)
                buf["labels"].append(item.label)
                buf["images"].append(batch["data"][j])
                m += 1
            else:
                buf["failed"].append({"key": item.key, "index": i, "reason": batch["reason"][j]})
                self.skipped += 1
            buf["seen"] += 1
            if buf["seen"] == _shard_items(k, S, self.n_items):
                self.writer.submit(self.cfg, self.out, k, self.pending.pop(k), self.dim)


def check_finite(feats: np.ndarray, keys: list[str], cfg) -> None:
    """Stop the extraction at the first batch whose features are not finite in the storage dtype:
    a NaN or inf would flow into training, sampling and a "faithful" verdict. Says which encoder,
    layer and dtype, the first image, and whether float32 storage would hold them."""
    stored = feats.astype(cfg.dtype, copy=False)  # (m, 2, D): what the shard would hold
    bad = ~np.isfinite(stored).all(axis=(1, 2))
    if not bad.any():
        return
    first = keys[int(np.argmax(bad))]
    what = f"{int(bad.sum())} of the {len(stored)} images of a batch (the first: {first!r})"
    if np.isfinite(feats).all():  # finite in float32, out of range of the storage dtype
        fix = (
            f"their largest magnitude is {float(np.abs(feats).max()):.3g}, beyond {cfg.dtype}'s range: store them "
            "with --set extract.dtype=float32"
        )
    else:
        fix = (
            f"the encoder itself gave NaN / inf (amp {cfg.amp}): try --set extract.amp=none, and check the weights file"
        )
    raise InvalidInput(
        f"encoder {cfg.encoder} ({cfg.layer}) gave non-finite {cfg.dtype} features for {what}; {fix}. "
        "Nothing of this batch was written"
    )


@torch.inference_mode()
def _launch(encoder, x: torch.Tensor, cfg, device):
    """Queue the forward of x (m, 3, H, W) and the copy of its (m, 2, D) features to the host.

    View 0 is the input, view 1 its horizontal flip. Returns (host tensor, CUDA event or None).
    """
    m = x.shape[0]
    xx = torch.cat([x, x.flip(-1)])  # (2m, 3, H, W)
    if cfg.channels_last:
        xx = xx.contiguous(memory_format=torch.channels_last)
    with _autocast(device, cfg.amp):
        f = encoder(xx)  # (2m, D)
    f = f.float().reshape(2, m, -1).transpose(0, 1)  # (m, 2, D)
    if device.type != "cuda":
        return f.contiguous(), None
    host = torch.empty(f.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(f, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))  # the copy's stream (cuda:1 is not the current device)
    return host, event


def _collect(result, dim: int) -> np.ndarray:
    """(m, 2, D) float32 features of a launched batch (waits for its copy), or (0, 2, D)."""
    if result is None:
        return np.zeros((0, 2, dim), np.float32)
    host, event = result
    if event is not None:
        event.synchronize()
    return host.numpy()


def _write(cfg, out: Path, k: int, buf: dict, dim: int) -> None:
    feats = np.stack(buf["feats"]) if buf["feats"] else np.zeros((0, 2, dim), np.float32)
    write_shard(
        out,
        k,
        feats,
        buf["keys"],
        buf["labels"],
        fmt=cfg.format,
        dtype=cfg.dtype,
        images=buf["images"] if cfg.include_images else None,
        failed=buf["failed"],
        first_item=k * cfg.shard_size,
    )
