"""The run directory on disk: checkpoints, the run-level EMA and model.json, the log.

    <run>/config.yaml                      resolved TrainConfig
    <run>/model.json                       unet + diffusion config, encoder, store sha256, kimg
    <run>/ema.safetensors (+ .json)    the first EMA rate's weights, newest checkpoint
    <run>/checkpoints/step-NNNNNNN/        model.safetensors, ema-<rate>.safetensors (+ meta
                                           json each), model.json, accelerate/ (optimizer,
                                           scaler, RNG), state.json (written last)
    <run>/log.jsonl, <run>/tb/, <run>/grids/
    <run>/manifest.json                    written last: the run is finished

A checkpoint is written under a temporary name and renamed into place when complete, so a
``step-*`` folder is always whole; resuming takes the newest one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from rcdm.utils import atomic_write_json, read_json

CHECKPOINT_RE = re.compile(r"^step-(\d{7})$")
STATE_FILE = "state.json"


def checkpoints_dir(run: str | Path) -> Path:
    return Path(run) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    d = checkpoints_dir(run)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run: str | Path) -> Path | None:
    cks = list_checkpoints(run)
    return cks[-1][1] if cks else None


def begin_checkpoint(run: str | Path, step: int) -> Path:
    """An empty temporary folder to write checkpoint ``step`` into (main process only)."""
    d = checkpoints_dir(run)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{checkpoint_name(step)}.tmp"
    if tmp.exists():  # left by a run killed while writing
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit_checkpoint(tmp: Path, state: dict) -> Path:
    """Write ``state.json`` last, then rename ``tmp`` to its final ``step-NNNNNNN`` name."""
    atomic_write_json(tmp / STATE_FILE, state)
    final = tmp.parent / checkpoint_name(int(state["step"]))
    if final.exists():  # same step written again (e.g. the final one after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_state(ckpt: Path) -> dict:
    return read_json(ckpt / STATE_FILE)


def prune_checkpoints(run: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` <= 0: keep all)."""
    if keep <= 0:
        return []
    cks = list_checkpoints(run)
    removed = []
    for _, p in cks[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` by a run that was killed before its next checkpoint."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a half-written last line
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)
