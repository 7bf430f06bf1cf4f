"""Resuming from a damaged checkpoint, and --out naming a file (issue 12): one line naming the
file and the fix, never a traceback, never a silent change to the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from rcdm.errors import InvalidInput, OutputExists
from rcdm.run.rundir import RunDir

from tests.train_setup import read_log, train_cfg, train_store

KIMG, CKPT_KIMG = 0.024, 0.012  # 6 steps of 4 images; checkpoints at steps 3 and 6


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The store, an uninterrupted run, and a run stopped at its first checkpoint (step 3)."""
    import rcdm.train

    root = tmp_path_factory.mktemp("recovery")
    store = train_store(root)
    rcdm.train.run(train_cfg(store, root / "reference", kimg=KIMG, checkpoint_kimg=CKPT_KIMG))
    rcdm.train.run(train_cfg(store, root / "half", kimg=CKPT_KIMG, checkpoint_kimg=CKPT_KIMG))
    return {"store": store, "reference": root / "reference", "half": root / "half"}


def _copy(world, tmp_path: Path, name: str = "half") -> Path:
    run = tmp_path / "run"
    shutil.copytree(world[name], run)
    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damaged",
    ["accelerate/optimizer.bin", "model.safetensors", "ema-0.999.safetensors", "state.json"],
)
def test_corrupted_checkpoint_file_names_it_and_the_fix(world, tmp_path, damaged):
    """The newest checkpoint has a damaged file: one line naming it; deleting that checkpoint
    (the fix the message gives) resumes from the one before, to the uninterrupted result."""
    import rcdm.train
    from safetensors.torch import load_file

    run = _copy(world, tmp_path, "reference")
    newest = run / "checkpoints" / "step-0000006"
    _truncate(newest / damaged)
    cfg = train_cfg(world["store"], run, kimg=0.032, checkpoint_kimg=CKPT_KIMG)  # train further
    with pytest.raises(InvalidInput) as err:
        rcdm.train.run(cfg)
    msg = str(err.value)
    assert "\n" not in msg and str(newest / damaged) in msg, msg
    assert f"delete {newest}" in msg and "step-0000003" in msg and "new --out" in msg, msg

    shutil.rmtree(newest)
    rcdm.train.run(train_cfg(world["store"], run, kimg=KIMG, checkpoint_kimg=CKPT_KIMG))
    a = load_file(str(run / "ema.safetensors"))
    b = load_file(str(world["reference"] / "ema.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_only_checkpoint_damaged_says_start_over(world, tmp_path):
    import rcdm.train

    run = _copy(world, tmp_path)
    _truncate(run / "checkpoints" / "step-0000003" / "accelerate" / "optimizer.bin")
    with pytest.raises(InvalidInput, match=r"optimizer\.bin.*no earlier checkpoint.*new --out"):
        rcdm.train.run(train_cfg(world["store"], run, kimg=KIMG, checkpoint_kimg=CKPT_KIMG))


def test_unreadable_rng_state_is_warned_and_logged(world, tmp_path, capsys):
    """A resume without the saved RNG state goes on, but says so (stderr) and records it in
    log.jsonl: the loss sequence after it is not the uninterrupted one."""
    import rcdm.train

    run = _copy(world, tmp_path)
    rng = run / "checkpoints" / "step-0000003" / "accelerate" / "random_states_0.pkl"
    rng.write_bytes(b"not a pickle")
    rcdm.train.run(train_cfg(world["store"], run, kimg=KIMG, checkpoint_kimg=CKPT_KIMG))
    err = capsys.readouterr().err
    assert f"warning: {rng}" in err and "fresh random state" in err, err
    events = [r for r in read_log(run) if "event" in r]
    assert len(events) == 1, events
    (ev,) = events
    assert ev["event"] == "rng_state_lost" and ev["step"] == 3 and ev["file"] == str(rng), ev
    assert "not those of an uninterrupted run" in ev["what"]
    # the metrics lines are all there, each once
    assert [r["step"] for r in read_log(run) if "loss" in r] == list(range(1, 7))
    # a missing file is the same loss
    run2 = _copy(world, tmp_path / "missing")
    (run2 / "checkpoints" / "step-0000003" / "accelerate" / "random_states_0.pkl").unlink()
    rcdm.train.run(train_cfg(world["store"], run2, kimg=KIMG, checkpoint_kimg=CKPT_KIMG))
    assert [r["event"] for r in read_log(run2) if "event" in r] == ["rng_state_lost"]


def test_normal_resume_logs_no_event(world, tmp_path, capsys):
    import rcdm.train

    run = _copy(world, tmp_path)
    rcdm.train.run(train_cfg(world["store"], run, kimg=KIMG, checkpoint_kimg=CKPT_KIMG))
    assert "warning" not in capsys.readouterr().err
    log = read_log(run)
    assert all("event" not in r for r in log)
    assert log == [json.loads(json.dumps(r)) for r in log]  # plain JSON lines


def test_out_naming_a_file(world, tmp_path):
    import rcdm.train

    f = tmp_path / "not-a-folder"
    f.write_text("x")
    with pytest.raises(OutputExists, match=rf"{f} is a file, not a folder.*pass a folder") as err:
        rcdm.train.run(train_cfg(world["store"], f))
    assert "\n" not in str(err.value) and "--out" in str(err.value)
    assert f.read_text() == "x"


def test_sample_out_naming_a_file(ckpt, store_dir, tmp_path):
    import rcdm.sample

    from tests.sample_setup import run_cfg

    f = tmp_path / "not-a-folder"
    f.write_text("x")
    with pytest.raises(OutputExists, match=rf"{f} is a file, not a folder.*pass a folder") as err:
        rcdm.sample.run(run_cfg(ckpt, store_dir, f))
    assert "\n" not in str(err.value) and "--out" in str(err.value)
    assert f.read_text() == "x"


def test_latest_checkpoint_is_what_a_reader_gets_after_a_deleted_one(world, tmp_path):
    """Deleting the newest checkpoint (the fix for a damaged one) makes the one before the run's
    weights for readers too, before any re-run."""
    from rcdm.run.models import load_model
    from safetensors.torch import load_file

    run = _copy(world, tmp_path, "reference")
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    model, meta = load_model(run)
    want = load_file(str(run / "checkpoints" / "step-0000003" / RunDir.ema_name(0.999)))
    assert meta["kimg"] == pytest.approx(0.012)
    assert all(torch.equal(model.state_dict()[k], want[k]) for k in want)
