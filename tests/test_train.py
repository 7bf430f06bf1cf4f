"""Stage 2 (rcdm.train): data pairing, loop, checkpoints, resume, mismatch errors (CPU, tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.synthetic_store import make_store
from tests.train_setup import DIM, RES, ROOT, read_log, train_cfg, train_store

# ------------------------------------------------------------------------------------- loop


def test_overfit_checkpoints_and_run_files(tmp_path):
    """A few dozen steps on 4 images drive the loss down; the run directory is complete."""
    import rcdm.train
    from rcdm.run.models import load_model
    from safetensors.torch import load_file

    store = train_store(tmp_path)
    run = tmp_path / "run"
    cfg = train_cfg(
        store,
        run,
        kimg=0.160,
        checkpoint_kimg=0.080,
        grid_kimg=0.160,
        grid_images=2,
        grid_samples=2,
        grid_steps=4,
        lr=2e-3,
        ema_rates=(0.9,),
        keep_checkpoints=1,
    )
    assert rcdm.train.run(cfg) == run
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, 41))
    first = np.mean([r["mse"] for r in log[:8]])
    last = np.mean([r["mse"] for r in log[-8:]])
    assert last < 0.6 * first, (first, last)
    for r in log:
        assert {"loss", "mse", "vb", "loss_q0", "loss_q3", "grad_norm", "img_per_s", "mem_gb"} <= set(r)
    # files: keep_checkpoints=1 leaves the newest step only
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000040"]
    ck = run / "checkpoints" / "step-0000040"
    assert (ck / "model.safetensors").exists() and (ck / "ema-0.9.safetensors").exists()
    assert (ck / "accelerate").is_dir() and (ck / "state.json").exists()
    meta = json.loads((run / "model.json").read_text())
    assert meta["unet"]["cond_dim"] == DIM and meta["unet"]["image_size"] == RES
    assert meta["diffusion"] == {"schedule": "linear", "steps": 1000, "learn_sigma": True}
    assert meta["encoder"]["name"] == "synthetic" and meta["ema_rates"] == [0.9]
    assert meta["kimg"] == pytest.approx(0.160)
    man = json.loads((run / "manifest.json").read_text())
    from rcdm.store import FeatureStore

    assert meta["preprocess"] == FeatureStore(store).manifest["preprocess"]  # what h was made from
    assert man["store_manifest_sha256"] == FeatureStore(store).manifest_sha256 == meta["store_manifest_sha256"]
    assert (run / "config.yaml").exists() and any((run / "tb").iterdir())
    grids = sorted((run / "grids").glob("*.png"))
    assert len(grids) == 1
    from PIL import Image

    w, h = Image.open(grids[0]).size
    from rcdm import viz

    scale = viz.display_scale(RES)  # small samples enlarged by a whole factor
    assert h > 2 * RES * scale and w > 3 * RES * scale  # 2 rows of (condition + 2 samples)
    assert grids[0].name.startswith("kimg-")
    # round trip: the run directory loads as the EMA model, equal to the checkpoint's EMA file
    model, lmeta = load_model(str(run))
    ema = load_file(str(ck / "ema-0.9.safetensors"))
    sd = model.state_dict()
    assert set(sd) == set(ema)
    assert all(torch.equal(sd[k].float(), ema[k]) for k in ema)
    assert lmeta["unet"]["cond_dim"] == DIM
    # re-running a finished run does nothing
    mtime = (run / "manifest.json").stat().st_mtime_ns
    rcdm.train.run(cfg)
    assert (run / "manifest.json").stat().st_mtime_ns == mtime


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_continues_the_same_run(tmp_path, monkeypatch):
    import rcdm.train
    from rcdm.train import monitor

    store = train_store(tmp_path)
    cfg_a = train_cfg(store, tmp_path / "a", kimg=0.032, checkpoint_kimg=0.012)  # checkpoints at 3, 6, 8
    rcdm.train.run(cfg_a)
    full = read_log(tmp_path / "a")

    # the same command, killed after it logged step 5 (last checkpoint: step 3)
    cfg_b = replace(cfg_a, out=str(tmp_path / "b"))
    real_write = monitor.Logger.write

    def write(self, record):
        real_write(self, record)
        if record["step"] == 5:
            raise _Interrupt

    monkeypatch.setattr(monitor.Logger, "write", write)
    with pytest.raises(_Interrupt):
        rcdm.train.run(cfg_b)
    monkeypatch.setattr(monitor.Logger, "write", real_write)
    names = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert names == ["step-0000003"] and not (tmp_path / "b" / "manifest.json").exists()

    rcdm.train.run(cfg_b)  # re-run: resumes from step 3
    resumed = read_log(tmp_path / "b")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == list(range(1, 9))
    for a, b in zip(full, resumed, strict=True):
        for k in ("loss", "mse", "vb", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "ema.safetensors"))
    wb = load_file(str(tmp_path / "b" / "ema.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)

    # another seed would change the data order: refused
    with pytest.raises(ValueError, match="seed"):
        rcdm.train.run(replace(cfg_b, kimg=0.040, seed=1))
    # training further with a larger kimg continues from the finished run
    rcdm.train.run(replace(cfg_b, kimg=0.040))
    assert [r["step"] for r in read_log(tmp_path / "b")] == list(range(1, 11))


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
    import rcdm.diffusion.gaussian
    import rcdm.train

    real = rcdm.diffusion.gaussian.create_diffusion
    calls = {"n": 0}

    class Poisoned:
        def __init__(self, d):
            self._d = d

        def __getattr__(self, name):
            return getattr(self._d, name)

        def training_losses(self, *a, **kw):
            out = self._d.training_losses(*a, **kw)
            calls["n"] += 1
            if calls["n"] >= 5:  # step 5 onwards
                out = {k: v * float("nan") for k, v in out.items()}
            return out

    monkeypatch.setattr(rcdm.diffusion.gaussian, "create_diffusion", lambda *a, **kw: Poisoned(real(*a, **kw)))
    store = train_store(tmp_path)
    cfg = train_cfg(store, tmp_path / "run", checkpoint_kimg=0.012, log_every=100)  # checkpoint at 3
    with pytest.raises(rcdm.train.NonFiniteLoss, match=r"step 5.*step-0000003"):
        rcdm.train.run(cfg)
    # the poisoned step 6 checkpoint was never written
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000003"]


# ------------------------------------------------------------------------------ mismatches


def test_store_mismatch_errors(tmp_path):
    import rcdm.train

    store = train_store(tmp_path)
    with pytest.raises(ValueError, match="encoder 'synthetic', not 'dino-rn50'"):
        rcdm.train.run(train_cfg(store, tmp_path / "r1", encoder="dino-rn50"))
    with pytest.raises(ValueError, match="layer 'trunk', not 'head'"):
        rcdm.train.run(train_cfg(store, tmp_path / "r2", layer="head"))
    # a run directory started on one store refuses another (here: other dim)
    run = tmp_path / "run"
    rcdm.train.run(train_cfg(store, run, kimg=0.004, checkpoint_kimg=0.004))
    other = train_store(tmp_path, name="store16", dim=16)
    with pytest.raises(ValueError, match="use a new --out"):
        rcdm.train.run(train_cfg(other, run, kimg=0.008, checkpoint_kimg=0.004))


def test_init_from_checks_and_loads(tmp_path):
    import rcdm.train
    from safetensors.torch import load_file

    store = train_store(tmp_path)
    src_run = tmp_path / "src"
    rcdm.train.run(train_cfg(store, src_run, kimg=0.004, checkpoint_kimg=0.004, ema_rates=(0.5,)))
    init = src_run / "ema.safetensors"

    # dim: the checkpoint is conditioned on 8-d features, the store has 16
    s16 = train_store(tmp_path, name="s16", dim=16)
    with pytest.raises(ValueError, match="8-d features.*16-d"):
        rcdm.train.run(train_cfg(s16, tmp_path / "r1", init_from=str(init)))
    # encoder / layer recorded in our checkpoint
    s_enc = train_store(tmp_path, name="s_enc", encoder="other")
    with pytest.raises(ValueError, match="encoder synthetic/trunk.*other/trunk"):
        rcdm.train.run(train_cfg(s_enc, tmp_path / "r2", init_from=str(init)))
    s_layer = train_store(tmp_path, name="s_layer", layer="head")
    with pytest.raises(ValueError, match="synthetic/trunk.*synthetic/head"):
        rcdm.train.run(train_cfg(s_layer, tmp_path / "r3", init_from=str(init)))
    # the encoder input's preprocessing recorded in model.json
    from rcdm.data.images import PREPROCESS
    from rcdm.store import FeatureStore

    fs = FeatureStore(store)
    s_pp = make_store(
        tmp_path / "s_pp",
        fs.features(None),
        keys=fs.keys,
        labels=fs.labels,
        encoder_info=fs.encoder_info,
        preprocess=PREPROCESS["imagenet"].to_dict(),
    )
    with pytest.raises(ValueError, match=r"value range \[-1.0, 1.0\] vs \[0.0, 1.0\].*extract.preprocess=rcdm"):
        rcdm.train.run(train_cfg(s_pp, tmp_path / "r6", init_from=str(init)))
    # architecture
    with pytest.raises(ValueError, match="another architecture.*cond"):
        rcdm.train.run(train_cfg(store, tmp_path / "r4", init_from=str(init), cond="cbn"))
    with pytest.raises(FileNotFoundError):
        rcdm.train.run(train_cfg(store, tmp_path / "r5", init_from=str(tmp_path / "nope.pt")))

    # a matching checkpoint initialises the model: with lr 0 the weights stay the init
    run = tmp_path / "ok"
    rcdm.train.run(train_cfg(store, run, init_from=str(init), kimg=0.004, checkpoint_kimg=0.004, lr=0.0))
    a = load_file(str(init))
    b = load_file(str(run / "checkpoints" / "step-0000001" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_not_divisible_is_an_error(tmp_path):
    import rcdm.train

    store = train_store(tmp_path)
    with pytest.raises(ValueError, match="not divisible"):
        rcdm.train.run(train_cfg(store, tmp_path / "r", batch_size=5, grad_accum=2))


# ------------------------------------------------------------------------------ processes


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path):
    """2 CPU processes (gloo DDP): one set of files, an RNG state per rank, same step count."""
    store = train_store(tmp_path)
    run = tmp_path / "run"
    script = tmp_path / "go.py"
    script.write_text(
        "import sys\nfrom rcdm.config import TrainConfig\nimport rcdm.train\n"
        f"rcdm.train.run(TrainConfig(store={str(store)!r}, out={str(run)!r}, preset='tiny', resolution={RES}, "
        "kimg=0.016, batch_size=4, grad_accum=2, checkpoint_kimg=0.008, grid_kimg=0, log_every=1, workers=0, "
        "mixed_precision='no'))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    import socket

    with socket.socket() as s:  # a free port for the gloo rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # torchrun's environment (RANK, WORLD_SIZE, ...) is what `accelerate launch` sets up too
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(script),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert (run / "manifest.json").exists()
    acc = run / "checkpoints" / "step-0000004" / "accelerate"
    assert sorted(p.name for p in acc.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]


# ------------------------------------------------------------------------------ bench, gpu


def test_bench_train_runs_on_cpu():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train.py"),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--resolution",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--cond-dim",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    (r,) = rep["results"]
    assert r["preset"] == "tiny" and r["img_per_s"] > 0 and r["train_gflop_per_img"] > 0
    # MFU = FLOPs per image x img/s / peak (the peak is measured: on a shared CPU it is noisy)
    assert r["achieved_tflops"] == pytest.approx(r["train_gflop_per_img"] * r["img_per_s"] / 1000)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / rep["peak_tflops"]) and r["mfu"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_compile_smoke_gpu(tmp_path, capsys):
    import rcdm.train
    from rcdm.launch import launch_state

    launch_state("cpu")  # what an extraction with device=cpu leaves behind: it must not pin training to the CPU
    store = train_store(tmp_path)
    run = tmp_path / "run"
    rcdm.train.run(train_cfg(store, run, mixed_precision="bf16", compile=True, channels_last=True, kimg=0.016))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training on ")]
    assert said and said[0].startswith("training on cuda"), said  # the device it ran on, not a CPU
    log = read_log(run)
    assert all(np.isfinite(r["loss"]) for r in log) and log[-1]["mem_gb"] > 0


def test_init_from_official_pt_state_dict(tmp_path):
    """A guided-diffusion style .pt (plain state dict, architecture inferred) loads strictly."""
    import rcdm.train
    from rcdm.model.unet import UNetModel, preset
    from safetensors.torch import load_file

    store = train_store(tmp_path)
    torch.manual_seed(1)
    official = UNetModel(preset("tiny", cond="embed", cond_dim=DIM)).state_dict()
    pt = tmp_path / "rcdm_ema_test.pt"
    torch.save(official, pt)
    run = tmp_path / "run"
    rcdm.train.run(train_cfg(store, run, resolution=None, init_from=str(pt), kimg=0.004, checkpoint_kimg=0.004, lr=0.0))
    got = load_file(str(run / "checkpoints" / "step-0000001" / "model.safetensors"))
    assert set(got) == set(official) and all(torch.equal(got[k], official[k]) for k in got)
    # the same checkpoint on a store of other features is refused before training
    s16 = train_store(tmp_path, name="s16", dim=16)
    with pytest.raises(ValueError, match="8-d features"):
        rcdm.train.run(train_cfg(s16, tmp_path / "r2", resolution=None, init_from=str(pt)))


def test_training_grid_title_names_kimg_and_sampler():
    from rcdm.config import Sampler, Steps
    from rcdm.train.grid import GridMaker

    g = object.__new__(GridMaker)  # only the title: no dataset needed
    g.sampler = Sampler(Steps.parse("50"), False, 0.0, 1.0)
    assert g.title(Path("grids/kimg-000000.160.png")) == "0.16 kimg; sampler ancestral, 50 steps, no guidance"
    g.sampler = Sampler(Steps.parse("50"), False, 0.0, 5.0)
    assert g.title(Path("grids/kimg-000001.000.png")) == "1 kimg; sampler ancestral, 50 steps, guidance 5"
    assert g.title(Path("grids/any.png"), kimg=2.5) == "2.5 kimg; sampler ancestral, 50 steps, guidance 5"


def test_training_threads_do_not_reach_the_stages_after_it(tmp_path):
    """train.threads holds while training: the same process (rcdm demo, rcdm run) samples and
    analyses with the thread count it had before (it stayed at training's 1 thread)."""
    import rcdm.train

    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    store = train_store(tmp_path)
    try:
        torch.set_num_threads(want + 1)
        rcdm.train.run(train_cfg(store, tmp_path / "run", threads=want, kimg=0.004))
        assert torch.get_num_threads() == want + 1
    finally:
        torch.set_num_threads(before)
