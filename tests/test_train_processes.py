"""Training with several processes on the CPU (torchrun, gloo): resuming with 2 or 1 processes,
a rank that dies, the image cache built across ranks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train_setup import ROOT, read_log, train_store

# A training run of the tests' tiny config; argv: store, run folder, kimg, then key=value overrides
# (python literals) of the config.
_TRAIN = f"""
import ast, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.train_setup import train_cfg
import rcdm.train
kw = dict(a.split("=", 1) for a in sys.argv[4:])
kw = {{k: ast.literal_eval(v) for k, v in kw.items()}}
rcdm.train.run(train_cfg(sys.argv[1], sys.argv[2], kimg=float(sys.argv[3]), **kw))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp: Path, nproc: int, args: list[str], *, env: dict | None = None, timeout: float = 240):
    """``python -m torch.distributed.run --nproc_per_node nproc`` of the tiny training script with
    ``args``; the completed process (stdout and stderr as text)."""
    script = tmp / "train_script.py"
    script.write_text(_TRAIN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=tmp)


def _ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


@pytest.mark.slow
def test_resume_with_two_processes_then_one(tmp_path):
    """A 2-process run stopped at 16 images resumes with 2 processes (the same losses and weights as
    an uninterrupted 2-process run) and then with 1 process."""
    from safetensors.torch import load_file

    store = train_store(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    _ok(torchrun(tmp_path, 2, [str(store), str(a), "0.024"]))  # uninterrupted: 6 steps of 4 images
    _ok(torchrun(tmp_path, 2, [str(store), str(b), "0.016"]))  # stopped at step 4
    proc = torchrun(tmp_path, 2, [str(store), str(b), "0.024"])  # resumed with 2 processes
    _ok(proc)
    assert "resuming" in proc.stdout and "step-0000004" in proc.stdout
    full, resumed = read_log(a), read_log(b)
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == list(range(1, 7))
    for x, y in zip(full, resumed, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-6), x["step"]
    wa, wb = load_file(str(a / "ema.safetensors")), load_file(str(b / "ema.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)

    proc = torchrun(tmp_path, 1, [str(store), str(b), "0.032"])  # and with 1 process
    _ok(proc)
    assert "step-0000006" in proc.stdout
    assert [r["step"] for r in read_log(b)] == list(range(1, 9))
    assert (b / "manifest.json").exists()


# ------------------------------------------------------------------------------ one launch, one device


def test_accelerate_launch_of_several_cpu_processes_that_starts_one_is_refused(tmp_path):
    """`accelerate launch --num_processes 2 --cpu` runs the command once, in one process: refused in
    one line that says how to start several CPU processes."""
    store = train_store(tmp_path)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]
    cmd += [str(_free_port()), "-m", "rcdm", "train", "--store", str(store), "--out", str(tmp_path / "run")]
    cmd += ["--preset", "tiny", "--kimg", "0.008", "--batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # accelerate's launcher repeats the process's output in its own traceback; the process says one line
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1, errors
    (error,) = errors
    assert "started only this one" in error and "torchrun --nproc_per_node" in error
    # no traceback through rcdm's code (accelerate's own launcher reports the exit; a venv may live in ROOT)
    frames = re.findall(r'File "([^"]+)"', proc.stderr)
    assert not [f for f in frames if f.startswith(str(ROOT)) and "site-packages" not in f], proc.stderr[-3000:]
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_one_process_launch_is_not_refused(monkeypatch):
    """A plain command, and a one-process `accelerate launch --cpu` (no MASTER_ADDR), run."""
    from accelerate.state import AcceleratorState
    from rcdm.launch import launch_state

    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(k, raising=False)
    assert launch_state("cpu").num_processes == 1
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert launch_state("cpu").num_processes == 1
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what accelerate sets for --num_processes 2
    with pytest.raises(ValueError, match="started only this one"):
        launch_state("cpu")
    AcceleratorState._reset_state(reset_partial_state=True)


def test_training_gets_the_gpu_after_a_cpu_stage_in_the_same_process(monkeypatch):
    """An extraction on the CPU made accelerate's (shared) state for the CPU; training asks for the
    GPU (faked: CUDA said available) and gets it, not the CPU without a word."""
    from accelerate.state import AcceleratorState
    from rcdm.config import TrainConfig
    from rcdm.launch import launch_state
    from rcdm.train import loop

    for k in ("MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(k, raising=False)
    try:
        assert launch_state("cpu").device.type == "cpu"  # as extraction with device=cpu (and its lock) makes it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        acc = loop._accelerator(TrainConfig(), "no", False)
        assert acc.device.type == "cuda" and not acc.state._cpu
        assert "training on cuda" in loop._describe(acc, "no", None, False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # no fake CUDA state for later tests


# ------------------------------------------------------------------------------ a process lost

# `rcdm train` in which rank 1 exits (DIE=exit:K) or hangs (DIE=hang:K) at its step K.
_DYING = f"""
import os, sys, time
sys.path.insert(0, {str(ROOT)!r})
from rcdm.train import loop
mode, at = os.environ["DIE"].split(":")
real = loop._step
def step(r, m, state, lp):
    if r.rank == 1 and state.step == int(at):
        if mode == "exit":
            os._exit(7)
        time.sleep(3600)
    return real(r, m, state, lp)
loop._step = step
from rcdm.app.cli import main
sys.argv = ["rcdm", "train", *sys.argv[1:]]
main()
"""


def _two_processes(tmp: Path, die: str, timeout_s: float) -> tuple[subprocess.CompletedProcess, float]:
    """Rank 0 and rank 1 of a 2-process launch started as a launcher that does not stop the others
    (a node of several): rank 0's completed process and how long it ran."""
    store = train_store(tmp)
    script = tmp / "dying.py"
    script.write_text(_DYING)
    args = [str(script), "--store", str(store), "--out", str(tmp / "run"), "--preset", "tiny", "--kimg", "0.064"]
    args += ["--batch-size", "4", "--set", "train.resolution=16", "--set", "train.workers=0", "--set"]
    args += ["train.checkpoint_kimg=0.008", "--set", "train.grid_kimg=0", "--set", f"train.pg_timeout_s={timeout_s}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), DIE=die, MASTER_ADDR="127.0.0.1")
    env.update(MASTER_PORT=str(_free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    rank1 = subprocess.Popen(
        [sys.executable, *args],
        env=dict(env, RANK="1", LOCAL_RANK="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp,
    )
    try:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, *args],
            env=dict(env, RANK="0", LOCAL_RANK="0"),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
        )
        return proc, time.monotonic() - t0
    finally:
        rank1.kill()
        rank1.wait()


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_a_killed_process_stops_the_others_with_one_line(tmp_path):
    """Rank 1 dies at step 3: rank 0 stops at once, in one line that says what happened and where
    training resumes, not with gloo's traceback."""
    proc, took = _two_processes(tmp_path, "exit:3", timeout_s=600)
    error = _one_line_error(proc)
    # gloo says 'closed' or 'reset' by peer, by which side of the socket saw the exit first
    assert "process 0 of 2 lost the others" in error and re.search(r"Connection (closed|reset) by peer", error)
    assert "resume from step-0000002" in error
    assert took < 100  # not the 600 s of the timeout: a closed connection is seen at once


def test_a_process_that_hangs_stops_the_others_after_the_timeout(tmp_path):
    """Rank 1 hangs at step 3: rank 0 stops after train.pg_timeout_s (5 s), not torch's 30 minutes."""
    proc, took = _two_processes(tmp_path, "hang:3", timeout_s=5)
    error = _one_line_error(proc)
    assert "lost the others (Timed out" in error and "train.pg_timeout_s=5 s" in error
    assert took < 100


# ------------------------------------------------------------------------------ the image cache

# Every process of the launch builds the image cache of the store argv[1]; each says how many rows it decoded.
_CACHE = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from rcdm.launch import launch_state
from rcdm.store import FeatureStore
from rcdm.train import cache
from rcdm.train.data import ImageFeatureDataset
state = launch_state("cpu")
ds = ImageFeatureDataset(sys.argv[1], 16)
decoded = []
real = ds.load_image
fail = int(os.environ.get("FAIL_ROW", -1))
def load_image(row):
    if row == fail:
        raise ValueError(f"row {{row}} cannot be decoded")
    decoded.append(row)
    return real(row)
ds.load_image = load_image
d = cache.build(ds, FeatureStore(sys.argv[1]), 0, show=False, rank=state.process_index, world=state.num_processes)
print(f"rank {{state.process_index}} decoded {{min(decoded)}}-{{max(decoded)}} ({{len(decoded)}}) into {{d}}")
state.destroy_process_group()  # as training's end does (gloo's threads left at exit can abort it)
"""


def test_image_cache_built_by_two_processes_equals_one_process_cache(tmp_path):
    """Two processes each decode their half of the rows into the one cache file: the cache is
    byte for byte the one a single process builds."""
    import shutil

    import numpy as np
    from rcdm.store import FeatureStore
    from rcdm.train import cache
    from rcdm.train.data import ImageFeatureDataset

    store = train_store(tmp_path, n_classes=3, per_class=3)  # 9 rows: 4 on rank 0, 5 on rank 1
    alone = tmp_path / "alone" / "store"
    shutil.copytree(store, alone)
    one = cache.build(ImageFeatureDataset(alone, 16), FeatureStore(alone), 0, show=False)

    script = tmp_path / "cache_script.py"
    script.write_text(_CACHE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), str(script), str(store)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    _ok(proc)
    two = cache.cache_dir(store, 16)
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank"))
    assert lines == [f"rank 0 decoded 0-3 (4) into {two}", f"rank 1 decoded 4-8 (5) into {two}"]
    a, b = np.load(one / "images.npy"), np.load(two / "images.npy")
    assert a.shape == b.shape == (9, 16, 16, 3) and np.array_equal(a, b)
    assert (one / "images.npy").read_bytes() == (two / "images.npy").read_bytes()
    assert (two / "meta.json").exists() and not list(store.parent.glob("*.tmp-*"))

    # a row that rank 1 cannot decode: both processes stop with its error, nothing is left behind
    shutil.rmtree(two)
    env["FAIL_ROW"] = "6"
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("ValueError: row 6 cannot be decoded") == 2, proc.stderr[-3000:]  # rank 0 and rank 1
    assert not two.exists() and not list(store.parent.glob("*.tmp-*"))
