"""A damaged store is never used: each shard's sha256 is checked when a process first opens it,
and a shard that is not what its manifest records (flipped bytes, truncated, not HDF5 at all)
stops the reader with one message naming the shard and the fix (`rcdm extract ... --repair`).
`rcdm store verify` and the readers agree on which shard is bad."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rcdm import store as S
from rcdm.errors import InvalidInput, MissingInput
from rcdm.utils import atomic_write_json, read_json, sha256_file, with_checksum

from tests.store_damage import flip_feature_byte
from tests.synthetic_store import make_store


def _store(tmp_path: Path, fmt: str = "h5") -> Path:
    rng = np.random.default_rng(0)
    return make_store(tmp_path / f"store-{fmt}", rng.normal(size=(8, 2, 6)).astype(np.float32), fmt=fmt, shard_size=4)


@pytest.mark.parametrize("fmt", ["h5", "wds"])
def test_a_corrupted_shard_is_refused_when_first_opened(tmp_path, fmt):
    store = _store(tmp_path, fmt)
    shard = store / S.shard_name(1, fmt)
    flip_feature_byte(shard)
    st = S.FeatureStore(store)  # the manifest alone opens: nothing is read yet
    feat, key, _ = st[0]  # a row of the intact shard 0 reads
    assert key == "item_00000" and feat.shape == (2, 6)
    for read in (lambda: st[5], lambda: st.features(), lambda: S.FeatureStore(store).keys):
        with pytest.raises(InvalidInput) as e:
            read()
        msg = str(e.value)
        assert shard.name in msg and "sha256" in msg and "--repair" in msg and "\n" not in msg, msg
    # `rcdm store verify` names the same shard, and only that one
    problems = S.verify(store)
    assert problems and all(shard.name in p for p in problems), problems


def test_each_shard_is_hashed_once_per_process_and_only_when_touched(tmp_path, monkeypatch):
    import rcdm.store.integrity as integrity

    store = _store(tmp_path)
    hashed: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    st = S.FeatureStore(store)
    for _ in range(3):
        st[1], st[2]  # noqa: B018 (rows of shard 0 only)
    assert hashed == ["shard-00000.h5"]
    S.FeatureStore(store)[3]  # another reader of the same file in this process: no re-hash
    st.features()  # touches shard 1 for the first time
    st.features()
    assert hashed == ["shard-00000.h5", "shard-00001.h5"]
    # the same file rewritten (new mtime / size) is hashed again
    shard = store / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes())
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    S.FeatureStore(store).features()
    assert hashed[-1] == "shard-00001.h5" and len(hashed) == 3


@pytest.mark.parametrize("damage", ["truncated", "not-hdf5", "missing"])
def test_a_damaged_shard_file_is_one_line_naming_it(tmp_path, damage):
    store = _store(tmp_path)
    shard = store / "shard-00001.h5"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:1500])
    elif damage == "not-hdf5":
        shard.write_text("hello, not an HDF5 file\n")
    else:
        shard.unlink()
    with pytest.raises((InvalidInput, MissingInput)) as e:
        S.FeatureStore(store).features()
    assert shard.name in str(e.value) and "--repair" in str(e.value) and "\n" not in str(e.value)
    if damage == "missing":
        return
    # The direct open path, where the manifest's sha256 matches the damaged file (a store whose
    # manifest was rewritten after the damage): h5py's OSError becomes the same kind of message.
    m = read_json(store / "manifest.json")
    m["shards"][1]["sha256"] = sha256_file(shard)
    atomic_write_json(store / "manifest.json", with_checksum(m))
    with pytest.raises(InvalidInput) as e:
        S.FeatureStore(store).features()
    assert shard.name in str(e.value) and "cannot be read" in str(e.value) and "--repair" in str(e.value)


def test_cli_verify_and_readers_agree(tmp_path):
    from rcdm.app.cli import cli

    store = _store(tmp_path)
    flip_feature_byte(store / "shard-00000.h5")
    r = CliRunner().invoke(cli, ["store", "verify", str(store)])
    assert r.exit_code == 1 and "shard-00000.h5" in r.output and "shard-00001.h5" not in r.output
    assert "--repair" in r.output
    with pytest.raises(InvalidInput, match="shard-00000.h5"):
        S.FeatureStore(store).features()


def test_train_refuses_a_corrupted_store(tmp_path):
    import rcdm.train

    from tests.train_setup import train_cfg, train_store

    store = train_store(tmp_path)
    flip_feature_byte(store / "shard-00000.h5")
    with pytest.raises(InvalidInput, match="shard-00000.h5.*--repair"):
        rcdm.train.run(train_cfg(store, tmp_path / "run"))


def test_sample_refuses_a_corrupted_store(ckpt, store_dir, tmp_path):
    import rcdm.sample

    from tests.sample_setup import run_cfg

    store = tmp_path / "val"
    shutil.copytree(store_dir, store)
    flip_feature_byte(store / "shard-00000.tar", row=0)
    with pytest.raises(InvalidInput, match="shard-00000.tar.*--repair"):
        rcdm.sample.run(run_cfg(ckpt, store, tmp_path / "samples"))
    assert not (tmp_path / "samples" / "manifest.json").exists()
