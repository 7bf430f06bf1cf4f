"""The code paths a GPU run takes by default, run on the CPU: bf16 autocast, channels-last and
torch.compile (the aot_eager backend: dynamo's tracing and AOT autograd with eager kernels) in
training and guided sampling, and checkpoints written in the background."""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.train_setup import read_log, train_cfg, train_store

GPU_PATHS = dict(mixed_precision="bf16", compile=True, compile_backend="aot_eager", channels_last=True)


def test_compiled_bf16_channels_last_training_does_not_recompile(tmp_path, capsys):
    """The real training run with the GPU's settings: one graph, compiled at the first step and
    never again (a recompile raises), finite losses, and the run says how it trains."""
    import rcdm.train
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    store = train_store(tmp_path)
    run = tmp_path / "run"
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
            rcdm.train.run(train_cfg(store, run, kimg=0.016, checkpoint_kimg=0.008, cond_drop=0.25, **GPU_PATHS))
        assert counters["frames"]["ok"] == 1 and counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()  # the compiled UNet's code caches are not left to later tests
    log = read_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in log)
    out = capsys.readouterr().out
    assert "training on cpu (1 process; precision bf16; compile aot_eager; channels-last)" in out


def _slow_writes(monkeypatch, seconds: float) -> list[str]:
    """Weights files written from the background thread wait ``seconds`` first (training goes on
    meanwhile); the names of the threads that wrote them."""
    from rcdm.model import weights

    real, threads = weights.save_weights, []

    def save_weights(path, sd, meta):
        threads.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            time.sleep(seconds)
        return real(path, sd, meta)

    monkeypatch.setattr(weights, "save_weights", save_weights)
    return threads


def test_background_checkpoints_equal_synchronous_ones_byte_for_byte(tmp_path, monkeypatch):
    """Weights written by the background thread while training goes on are those of the step
    saved: the files equal the synchronous run's, byte for byte."""
    import rcdm.train

    store = train_store(tmp_path)
    cfg = train_cfg(store, tmp_path / "sync", kimg=0.024, checkpoint_kimg=0.008, keep_checkpoints=0)
    rcdm.train.run(replace(cfg, checkpoint_async="off"))
    threads = _slow_writes(monkeypatch, 0.5)
    rcdm.train.run(replace(cfg, out=str(tmp_path / "async"), checkpoint_async="on"))
    assert threads and all(name.startswith("rcdm-ckpt") for name in threads)
    names = sorted(p.name for p in (tmp_path / "sync" / "checkpoints").iterdir())
    assert names == ["step-0000002", "step-0000004", "step-0000006"]
    for name in names:
        files = sorted(p.name for p in (tmp_path / "sync" / "checkpoints" / name).glob("*.safetensors"))
        assert len(files) == 3  # the model and its two EMAs
        for f in files:
            _same_weights(tmp_path / "sync" / "checkpoints" / name / f, tmp_path / "async" / "checkpoints" / name / f)
    _same_weights(tmp_path / "sync" / "ema.safetensors", tmp_path / "async" / "ema.safetensors")


def _same_weights(a, b) -> None:
    """Every tensor's bytes and the metadata equal (safetensors orders its metadata keys at random,
    so the files themselves differ even between two synchronous saves)."""
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata()
        assert sorted(fa.keys()) == sorted(fb.keys())
        for k in fa.keys():
            ta, tb = fa.get_tensor(k), fb.get_tensor(k)
            assert ta.dtype == tb.dtype and ta.shape == tb.shape
            assert ta.numpy().tobytes() == tb.numpy().tobytes(), (str(a), k)


@pytest.mark.parametrize(
    ("error", "raised", "said"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), OSError, "no space left on device writing"),
        (PermissionError(errno.EACCES, "Permission denied"), PermissionError, "Permission denied"),
    ],
)
def test_a_background_write_error_reaches_the_user(tmp_path, monkeypatch, error, raised, said):
    """The background thread's error stops training (at the next checkpoint or the end) with the
    error itself: a full disk in one line naming the file, no checkpoint half written."""
    import rcdm.train
    from rcdm.model import weights

    def save_weights(path, sd, meta):
        if threading.current_thread() is not threading.main_thread():
            raise error
        raise AssertionError("checkpoint_async=on: the weights are written in the background")

    monkeypatch.setattr(weights, "save_weights", save_weights)
    store = train_store(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(raised, match=said):
        rcdm.train.run(train_cfg(store, run, kimg=0.016, checkpoint_kimg=0.008, checkpoint_async="on"))
    assert not (run / "manifest.json").exists()
    assert not list((run / "checkpoints").glob("step-*")), "no checkpoint is complete"


@pytest.mark.slow  # a minute: four compilations
def test_compiled_bf16_channels_last_guided_sampling_matches_eager(tmp_path, store_dir):
    """`rcdm sample` with the GPU's settings (bf16, channels-last, compile via aot_eager), guidance in
    an interval (some steps guided: a doubled batch, some not) and a short last batch: the samples
    are those of the eager model, to bf16's rounding."""
    import rcdm.sample
    import torch._dynamo
    from rcdm.model.weights import save_weights
    from torch._dynamo.utils import counters

    from tests.sample_setup import run_cfg, tiny_model

    model = tiny_model()
    ckpt = tmp_path / "ema.safetensors"
    meta = {"unet": model.cfg.to_dict(), "encoder": None, "store_manifest_sha256": None, "kimg": 0, "cond_drop": 0.25}
    save_weights(ckpt, model.state_dict(), meta)
    # 3 conditions x 2 samples in batches of 4: a last batch of 2; 5 steps, 3 of them in the interval
    kw = dict(guidance=3.0, guidance_interval=(0.2, 0.8), batch_size=4, steps="5", mixed_precision="bf16")
    eager = rcdm.sample.run(run_cfg(ckpt, store_dir, tmp_path / "eager", compile=False, **kw))
    torch._dynamo.reset()
    counters.clear()
    try:
        out = rcdm.sample.run(
            run_cfg(
                ckpt,
                store_dir,
                tmp_path / "compiled",
                compile=True,
                compile_backend="aot_eager",
                channels_last=True,
                **kw,
            )
        )
        # the compiled model ran, in at most 4 graphs: a guided call (doubled batch, cond_drop) and an
        # unguided one, each again once for the short last batch (then with a dynamic batch size)
        assert 1 <= counters["frames"]["ok"] <= 4 and counters["stats"]["unique_graphs"] <= 4
    finally:
        torch._dynamo.reset()
    a = np.load(eager / "samples.npz")["arr_0"].astype(int)
    b = np.load(out / "samples.npz")["arr_0"].astype(int)
    assert a.shape == b.shape == (6, 32, 32, 3)
    diff = np.abs(a - b)
    assert diff.mean() < 1.0 and (diff > 8).mean() < 0.01, (diff.mean(), diff.max())


def test_sampling_says_its_device_first(tmp_path, ckpt, store_dir, capsys):
    """The first line of `rcdm sample` is where it runs, at the precision it resolved."""
    import rcdm.sample

    from tests.sample_setup import run_cfg

    rcdm.sample.run(run_cfg(ckpt, store_dir, tmp_path / "s", mixed_precision="auto"))
    assert capsys.readouterr().out.splitlines()[0] == "sampling on cpu (1 process; precision fp32)"
