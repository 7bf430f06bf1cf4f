"""rcdm.run.lock: one writer per output folder, released on every exit, stale locks taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rcdm.errors import OutputExists
from rcdm.run.lock import LOCK_FILE, OutputLocked, holding_output_lock, output_lock, read_holder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# Holds the lock on argv[1] until a line arrives on stdin.
HOLDER = """
import sys
from rcdm.run.lock import output_lock
with output_lock(sys.argv[1], "rcdm extract --seed 0"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder: Path, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"pid": os.getpid(), "host": socket.gethostname(), "command": "rcdm train", "since": "2024-05-01T10:00:00"}
    (folder / LOCK_FILE).write_text(json.dumps({**base, **holder}))
    return folder / LOCK_FILE


def test_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        env=ENV,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        info = read_holder(out)
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        with pytest.raises(OutputLocked) as e:
            with output_lock(out, "rcdm extract --seed 1"):
                pass
        msg = str(e.value)
        for part in (
            str(out),
            f"pid {holder.pid}",
            f"on {socket.gethostname()}",
            "rcdm extract --seed 0",
            f"since {info['since']}",
            "Wait for it to finish",
        ):
            assert part in msg, (part, msg)
        assert isinstance(e.value, OutputExists)  # a UserError: the CLI prints it without a traceback
        # a third process, also refused: the CLI's one-line error
        third = subprocess.run(
            [sys.executable, "-c", HOLDER, str(out)], env=ENV, text=True, input="\n", capture_output=True, timeout=120
        )
        assert third.returncode != 0 and f"pid {holder.pid}" in third.stderr
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert not (out / LOCK_FILE).exists()  # released on exit
    with output_lock(out, "rcdm extract --seed 1"):  # free again
        assert read_holder(out)["pid"] == os.getpid()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = _dead_pid()
    _write_lock(tmp_path / "run", pid=dead, command="rcdm train --kimg 10")
    with output_lock(tmp_path / "run", "rcdm train --kimg 20"):
        info = read_holder(tmp_path / "run")
        assert info["pid"] == os.getpid() and info["command"] == "rcdm train --kimg 20"
    err = capsys.readouterr().err
    assert f"pid {dead}" in err and "no longer running" in err and "rcdm train --kimg 10" in err
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_lock_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
    lock = _write_lock(tmp_path / "run", host="gpu-node-17", pid=4242)
    with pytest.raises(OutputLocked) as e:
        with output_lock(tmp_path / "run", "rcdm train"):
            pass
    msg = str(e.value)
    assert "pid 4242 on gpu-node-17" in msg and f"delete {lock}" in msg and "gpu-node-17" in msg
    assert lock.exists()  # not ours to remove


def test_unreadable_lock_is_refused_not_taken(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK_FILE).write_text("{not json")
    with pytest.raises(OutputLocked, match=r"cannot be read.*delete"):
        with output_lock(tmp_path / "s", "rcdm sample", wait_s=0.2):
            pass


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_lock_is_released_after_an_exception(tmp_path, error):
    out = tmp_path / "samples"
    with pytest.raises(error):
        with output_lock(out, "rcdm sample"):
            assert (out / LOCK_FILE).exists()
            (out / "partial.npy").write_bytes(b"x")
            raise error("stop")
    assert not (out / LOCK_FILE).exists() and (out / "partial.npy").exists()
    with output_lock(out, "rcdm sample"):
        pass


def test_lock_is_released_when_the_holder_gets_sigterm(tmp_path):
    import signal

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        env=ENV,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    holder.send_signal(signal.SIGTERM)  # how a scheduler or torchrun stops a job
    holder.communicate(timeout=60)
    assert holder.returncode == 128 + signal.SIGTERM and not (out / LOCK_FILE).exists()


def test_a_folder_made_for_the_lock_alone_is_removed_again(tmp_path):
    with pytest.raises(ValueError):
        with output_lock(tmp_path / "a" / "b", "rcdm extract"):
            raise ValueError("bad config")
    assert not (tmp_path / "a" / "b").exists()
    (tmp_path / "c").mkdir()
    with output_lock(tmp_path / "c", "rcdm extract"):
        pass
    assert (tmp_path / "c").is_dir()  # it was there before: kept


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExists, match="is a file"):
        with output_lock(tmp_path / "f", "rcdm extract"):
            pass


def test_only_the_main_process_takes_it(tmp_path):
    with output_lock(tmp_path / "o", "rcdm train", main=False) as held:
        assert held is None and not (tmp_path / "o" / LOCK_FILE).exists()
    _write_lock(tmp_path / "p")  # held by someone else: a non-main process does not look
    with output_lock(tmp_path / "p", "rcdm train", main=False):
        pass


def test_stage_decorator_locks_cfg_out(tmp_path):
    class Cfg:
        out = str(tmp_path / "run")

    @holding_output_lock("rcdm train")
    def run(cfg):
        return read_holder(cfg.out)

    assert run(Cfg())["command"].startswith("rcdm train")
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_ranks_of_one_launch_share_one_lock_and_fail_together(tmp_path):
    """torchrun, 2 processes: rank 0 holds the lock for both; when the folder is held by another
    writer, both ranks stop with the same message (none waits at a barrier)."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, os, sys\nfrom accelerate import PartialState\n"
        "from rcdm.run.lock import holding_output_lock, read_holder\n"
        "class Cfg:\n    out = sys.argv[1]\n"
        "@holding_output_lock('rcdm extract', main=lambda cfg: PartialState(cpu=True).is_main_process)\n"
        "def run(cfg):\n    PartialState().wait_for_everyone()\n"
        "    rank = PartialState().process_index\n"
        "    rec = {'rank': rank, 'pid': os.getpid(), 'holder': read_holder(cfg.out)['pid']}\n"
        "    open(f'{cfg.out}.rank{rank}.json', 'w').write(json.dumps(rec))\n"
        "    PartialState().wait_for_everyone()\n"
        "try:\n    run(Cfg())\nfinally:\n    PartialState().destroy_process_group()  # gloo may abort at exit otherwise\n"
    )

    def launch(out: Path) -> subprocess.CompletedProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return subprocess.run(
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
                str(out),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=240,
            cwd=tmp_path,
        )

    proc = launch(tmp_path / "free")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"free.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in seen] == [0, 1] and seen[0]["holder"] == seen[1]["holder"] == seen[0]["pid"]
    assert not (tmp_path / "free" / LOCK_FILE).exists()

    _write_lock(tmp_path / "held", command="rcdm extract --seed 0")
    t0 = time.monotonic()
    proc = launch(tmp_path / "held")
    assert proc.returncode != 0 and time.monotonic() - t0 < 200
    assert proc.stderr.count(f"pid {os.getpid()}") >= 2, proc.stderr[-3000:]  # both ranks say why


@pytest.mark.parametrize("stage", ["train-prior", "evaluate", "analyze"])
def test_every_writing_stage_takes_the_lock(tmp_path, stage):
    """train-prior, evaluate and analyze take the lock like extract, train and sample: two
    train-prior runs into one --out both said "prior written" and one replaced the other."""
    import rcdm.analysis
    from rcdm.config import AnalyzeConfig, EvaluateConfig, PriorConfig
    from rcdm.train.prior import train_prior

    out = tmp_path / "out"
    run, cfg = {
        "train-prior": (train_prior, PriorConfig(store=str(tmp_path / "s"), out=str(out), device="cpu")),
        "evaluate": (rcdm.analysis.evaluate, EvaluateConfig(samples="s", reference="r", out=str(out), device="cpu")),
        "analyze": (rcdm.analysis.analyze, AnalyzeConfig(out=str(out), device="cpu")),
    }[stage]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        env=ENV,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(OutputLocked, match="is being written by another process"):
            run(cfg)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
