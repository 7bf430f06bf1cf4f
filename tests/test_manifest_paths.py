"""Nothing a manifest says can make rcdm read, write or delete a file outside its folder: every file
name read from a store's manifest or a shard record, and from a sample set's manifest, must be a
file of that folder (no absolute path, no '..', no link leading out), or the command refuses."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rcdm.extract
from rcdm import store as S
from rcdm.errors import InvalidInput
from rcdm.utils import inside, with_checksum

from tests.extract_setup import extract_cfg, tiny_encoder  # noqa: F401 (the fixture `tiny`)
from tests.synthetic import make_image_folder
from tests.synthetic_store import make_store


def _edit_manifest(store: Path, shard: int, name: str) -> None:
    """Name another file, and sign the edit (the checksum alone refuses an unsigned one): what
    each reader does with the name itself."""
    m = json.loads((store / "manifest.json").read_text())
    m["shards"][shard]["file"] = name
    (store / "manifest.json").write_text(json.dumps(with_checksum(m)))


@pytest.mark.parametrize("name", ["../victim.h5", "/tmp/victim.h5", "sub/../../victim.h5", "other.h5", ""])
def test_a_store_manifest_naming_a_file_elsewhere_is_refused(tmp_path, name):
    store = make_store(tmp_path / "store", np.ones((4, 3), np.float32), shard_size=2)
    victim = tmp_path / "victim.h5"
    shutil.copyfile(store / "shard-00000.h5", victim)
    _edit_manifest(store, 0, name)
    for read in (S.FeatureStore, S.verify, S.info):
        with pytest.raises(InvalidInput, match="not the name of one of this store's h5 shards"):
            read(store)
    assert victim.is_file()


def test_a_shard_that_is_a_link_out_of_the_store_is_refused(tmp_path):
    store = make_store(tmp_path / "store", np.ones((4, 3), np.float32), shard_size=2)
    elsewhere = tmp_path / "elsewhere.h5"
    shutil.move(store / "shard-00000.h5", elsewhere)
    os.symlink(elsewhere, store / "shard-00000.h5")
    with pytest.raises(InvalidInput, match="a link out of the folder"):
        S.FeatureStore(store)


def test_inside_refuses_every_way_out(tmp_path):
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path, tmp_path / "a" / "up")
    assert inside(tmp_path / "a", "x.h5", "w", "f") == tmp_path / "a" / "x.h5"
    for name in ("../x", "/etc/passwd", "up/x", "b/../../x", ""):
        with pytest.raises(InvalidInput, match="not a file inside"):
            inside(tmp_path / "a", name, "w", "f")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "train", n_classes=2, per_class=2, size=(40, 32))


def test_repair_never_deletes_a_file_outside_the_store(tiny, images, tmp_path):
    """The probe that lost data: a manifest naming '../victim' made `--repair` delete it."""
    out = rcdm.extract.run(extract_cfg(images, tmp_path / "store", encoder="tiny"))
    victim = tmp_path / "victim.h5"
    victim.write_bytes(b"not yours")
    _edit_manifest(out, 0, "../victim.h5")
    with pytest.raises(InvalidInput, match="not the name of one of this store's h5 shards"):
        rcdm.extract.run(extract_cfg(images, out, encoder="tiny", repair=True))
    assert victim.read_bytes() == b"not yours"
    # a shard record naming another file is not a finished shard: the shard is redone, nothing deleted
    (out / "manifest.json").unlink()
    rec = json.loads((out / "shard-00000.json").read_text())
    (out / "shard-00000.json").write_text(json.dumps({**rec, "file": "../victim.h5"}))
    assert 0 not in S.completed_shards(out)
    rcdm.extract.run(extract_cfg(images, out, encoder="tiny"))
    assert victim.read_bytes() == b"not yours" and S.verify(out) == []


def test_a_sample_set_listing_a_file_elsewhere_is_refused(tmp_path):
    from rcdm.run.sampleset import IndexRow, read_samples, write_sample_set

    images = np.zeros((2, 8, 8, 3), np.uint8)
    rows = [IndexRow(sample=i, condition=0, key="k", description="d", kind="store", seed=i) for i in range(2)]
    path = write_sample_set(tmp_path / "s", images, rows, np.zeros((1, 4), np.float32), {"sampler": {"steps": "10"}})
    m = json.loads((path / "manifest.json").read_text())
    m["files"]["../../etc/passwd"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(with_checksum(m)))
    with pytest.raises(InvalidInput, match="not a file inside"):
        read_samples(path)
