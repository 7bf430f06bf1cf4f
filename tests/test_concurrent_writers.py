"""Two writers on one output: the second is refused, naming the first (issue 12).

The reproduction of the report: `rcdm extract --overwrite` with seed 0 is held after its first
shard while a second one with seed 1 runs on the same store. Without a lock the second clears the
store and writes seed-1 shards, the first then finishes and writes a manifest saying seed 0 over
seed-1 shards, and `rcdm store verify` passes. With the lock the second is refused at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rcdm import store as S
from rcdm.errors import OutputExists

from tests.extract_setup import extract_cfg
from tests.synthetic import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
LOCK = ".rcdm.lock"

# Extraction with seed 0 that stops after writing shard 0 until the file argv[4] exists.
HELD_EXTRACT = """
import sys, time
from pathlib import Path
import rcdm.extract.loop as loop
from tests.extract_setup import extract_cfg

real = loop.write_shard
def write_then_wait(out, k, *args, **kw):
    record = real(out, k, *args, **kw)
    if k == 0:
        Path(sys.argv[3]).touch()
        while not Path(sys.argv[4]).exists():
            time.sleep(0.05)
    return record
loop.write_shard = write_then_wait
loop.run(extract_cfg(Path(sys.argv[1]), Path(sys.argv[2]), seed=0, overwrite=True))
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first writer ended early: {proc.communicate()[1][-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the first writer did not reach its first shard")
        time.sleep(0.05)


@pytest.mark.slow
def test_second_extract_on_a_store_being_written_is_refused(tmp_path):
    import rcdm.extract

    images = make_image_folder(tmp_path / "img", n_classes=2, per_class=2, size=(40, 32))
    out, paused, go = tmp_path / "store", tmp_path / "paused", tmp_path / "go"
    script = tmp_path / "held.py"
    script.write_text(HELD_EXTRACT)
    first = subprocess.Popen(
        [sys.executable, str(script), str(images), str(out), str(paused), str(go)],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(paused, first)
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(OutputExists) as e:
            rcdm.extract.run(extract_cfg(images, out, seed=1, overwrite=True))
        msg = str(e.value)
        for part in (str(out), f"pid {first.pid}", socket.gethostname(), "rcdm extract", "since"):
            assert part in msg, (part, msg)
        assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    finally:
        go.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    # the store is the first writer's alone: seed 0 in the manifest and in every row
    assert S.verify(out) == [] and not (out / LOCK).exists()
    st = S.FeatureStore(out)
    assert st.encoder_info["seed"] == 0
    ref = rcdm.extract.run(extract_cfg(images, tmp_path / "ref", seed=0))
    np.testing.assert_allclose(st.features(None), S.FeatureStore(ref).features(None), rtol=2e-3, atol=2e-3)


def _hold(folder: Path, command: str, pid: int | None = None) -> Path:
    """A lock file naming a live holder (this test process, on this host) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": pid or os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": "2024-01-01T00:00:00",
    }
    (folder / LOCK).write_text(json.dumps(holder))
    return folder / LOCK


def test_train_refuses_a_run_folder_being_written(tmp_path):
    import rcdm.train

    from tests.train_setup import train_cfg, train_store

    store = train_store(tmp_path)
    lock = _hold(tmp_path / "run", "rcdm train --out run")
    with pytest.raises(OutputExists, match=rf"pid {os.getpid()}.*rcdm train --out run"):
        rcdm.train.run(train_cfg(store, tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK] and lock.exists()


def test_sample_refuses_a_sample_folder_being_written(ckpt, store_dir, tmp_path):
    import rcdm.sample

    from tests.sample_setup import run_cfg

    lock = _hold(tmp_path / "samples", "rcdm sample --out samples")
    with pytest.raises(OutputExists, match=rf"pid {os.getpid()}.*rcdm sample --out samples"):
        rcdm.sample.run(run_cfg(ckpt, store_dir, tmp_path / "samples"))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [LOCK] and lock.exists()
