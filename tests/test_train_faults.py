"""Training killed or out of disk while it checkpoints: what the run folder gives a reader right
after, and what the re-run ends with (issue 12: nothing that reads as finished can be wrong).

A kill is simulated by raising a BaseException (nothing in rcdm catches it, as nothing runs after
SIGKILL) just before or just after one ``os.replace``: every file of a checkpoint and of the run
folder is put in place by one.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from rcdm.run.rundir import RunDir

from tests.train_setup import read_log, train_cfg, train_store

KIMG, CKPT_KIMG = 0.024, 0.012  # 6 steps of 4 images; checkpoints at steps 3 and 6
RATES = (0.999, 0.9)


class _Killed(BaseException):
    """Stands for SIGKILL."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The store and an uninterrupted run of the same command."""
    import rcdm.train

    root = tmp_path_factory.mktemp("faults")
    store = train_store(root)
    rcdm.train.run(train_cfg(store, root / "reference", kimg=KIMG, checkpoint_kimg=CKPT_KIMG, ema_rates=RATES))
    return {"root": root, "store": store, "reference": root / "reference"}


def _cfg(world, out: Path):
    return train_cfg(world["store"], out, kimg=KIMG, checkpoint_kimg=CKPT_KIMG, ema_rates=RATES)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _equal(a: Path, b: Path) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _check_reader_gets_latest(run: Path) -> None:
    """What rcdm sample / analyze / load_model read is the newest complete checkpoint."""
    from rcdm.run.models import load_model

    rd = RunDir(run)
    latest = rd.latest()
    assert latest is not None
    state = RunDir.read_state(latest)
    want = _tensors(latest / RunDir.ema_name(RATES[0]))
    model, meta = load_model(run)
    sd = model.state_dict()
    assert set(sd) == set(want) and all(torch.equal(sd[k], want[k]) for k in want), latest.name
    assert meta["kimg"] == pytest.approx(state["kimg"]) and rd.meta()["kimg"] == pytest.approx(state["kimg"])
    assert _equal(rd.weights(), latest / RunDir.ema_name(RATES[0]))
    assert _equal(rd.weights(RATES[1]), latest / RunDir.ema_name(RATES[1]))


def _check_same_as_reference(run: Path, reference: Path) -> None:
    """Every tensor the re-run ends with equals the uninterrupted run's."""
    assert (run / RunDir.MANIFEST).is_file()
    assert _equal(run / RunDir.WEIGHTS, reference / RunDir.WEIGHTS)
    last, ref_last = RunDir(run).latest(), RunDir(reference).latest()
    assert last is not None and ref_last is not None and last.name == ref_last.name
    for name in (RunDir.RAW, *(RunDir.ema_name(r) for r in RATES)):
        assert _equal(last / name, ref_last / name), name
    assert RunDir(run).meta() == RunDir(reference).meta()
    assert [r["step"] for r in read_log(run)] == [r["step"] for r in read_log(reference)]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], "temporary files left behind"


# (destination of the os.replace, "before" / "after" it, which occurrence): every point between a
# checkpoint's temporary write, its rename, the run's weights, model.json and the manifest.
KILL_POINTS = {
    "final: temp folder half written": ("checkpoints/.step-0000006.tmp/ema-0.9.safetensors", "before", 1),
    "final: state.json written, not renamed": ("checkpoints/.step-0000006.tmp/state.json", "after", 1),
    "final: renamed, nothing published": ("checkpoints/step-0000006", "after", 1),
    "final: ema.safetensors.json published": ("ema.safetensors.json", "after", 2),
    "final: ema.safetensors published": ("ema.safetensors", "after", 2),
    "final: model.json published, no manifest": ("model.json", "after", 2),
    "final: manifest being written": ("manifest.json", "before", 1),
    # killed at the first checkpoint: the re-run trains on from it
    "first: renamed, nothing published": ("checkpoints/step-0000003", "after", 1),
    "first: ema.safetensors published": ("ema.safetensors", "after", 1),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_while_checkpointing(world, tmp_path, monkeypatch, point):
    import rcdm.train

    dest, when, nth = KILL_POINTS[point]
    run = tmp_path / "run"
    target = run / dest
    real_replace = os.replace
    seen = {"n": 0}

    def replace(src, dst, *a, **kw):
        hit = False
        if Path(dst) == target:
            seen["n"] += 1
            hit = seen["n"] == nth
        if hit and when == "before":
            raise _Killed
        real_replace(src, dst, *a, **kw)
        if hit:
            raise _Killed

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        rcdm.train.run(_cfg(world, run))
    monkeypatch.setattr(os, "replace", real_replace)
    assert seen["n"] >= nth

    _check_reader_gets_latest(run)
    rcdm.train.run(_cfg(world, run))
    _check_reader_gets_latest(run)
    _check_same_as_reference(run, world["reference"])


# ------------------------------------------------------------------------------ full disk


def _no_space(*_a, **_kw):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("what", "file", "latest"),
    [
        ("ema", "checkpoints/.step-0000006.tmp/ema-0.9.safetensors", "step-0000003"),
        ("optimizer", "checkpoints/.step-0000006.tmp/accelerate/optimizer.bin", "step-0000003"),
        ("publish", "ema.safetensors", "step-0000006"),
    ],
)
def test_full_disk_while_checkpointing(world, tmp_path, monkeypatch, what, file, latest):
    import rcdm.train
    import safetensors.torch
    from rcdm.errors import UserError

    run = tmp_path / "run"
    # the write that finds the disk full: (module, function, is it this call)
    module, name, writes = {
        # one of the checkpoint's own safetensors files (written to a temporary name first)
        "ema": (
            safetensors.torch,
            "save_file",
            lambda _t, f: ".step-0000006.tmp" in str(f) and "ema-0.9.saf" in Path(f).name,
        ),
        # accelerate's optimizer state (torch.save)
        "optimizer": (torch, "save", lambda _o, f: str(f).endswith(".step-0000006.tmp/accelerate/optimizer.bin")),
        # the run-level copy of the new checkpoint's EMA
        "publish": (shutil, "copyfile", lambda src, _dst: str(src).endswith("step-0000006/ema-0.999.safetensors")),
    }[what]
    real = getattr(module, name)

    def write(obj, f, *a, **kw):
        if writes(obj, f):
            _no_space()
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(module, name, write)
    with pytest.raises(UserError) as err:
        rcdm.train.run(_cfg(world, run))
    monkeypatch.undo()
    msg = str(err.value)
    assert "\n" not in msg and str(run / file) in msg, msg
    assert "free" in msg and "re-run" in msg and latest in msg, msg
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert not (run / "checkpoints" / ".step-0000006.tmp").exists()
    assert RunDir(run).latest().name == latest
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    _check_reader_gets_latest(run)
    rcdm.train.run(_cfg(world, run))  # space freed: the same command resumes
    _check_same_as_reference(run, world["reference"])
