"""Feature store: round trips in both formats, random access, verify, info."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rcdm import store as S
from rcdm.errors import InvalidInput
from rcdm.utils import with_checksum

from tests.synthetic import jpeg_bytes, random_image
from tests.synthetic_store import make_store


def _data(n=10, d=6, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, 2, d)).astype(np.float32)
    keys = [f"cls_{i % 3}/img.{i:03d}" for i in range(n)]  # '/' and '.' inside keys
    labels = np.arange(n) % 3
    return feats, keys, labels


@pytest.mark.parametrize("fmt", ["h5", "wds"])
def test_round_trip(tmp_path, fmt):
    feats, keys, labels = _data()
    rng = np.random.default_rng(1)
    images = [jpeg_bytes(random_image(rng)) for _ in keys] if fmt == "wds" else None
    make_store(tmp_path / "s", feats, keys, labels, fmt=fmt, images=images, shard_size=4)
    st = S.FeatureStore(tmp_path / "s")
    assert len(st) == 10 and st.dim == 6 and st.format == fmt
    assert len(st.manifest["shards"]) == 3  # 4 + 4 + 2 rows
    assert st.views == ["orig", "hflip"] and st.layer == "trunk"
    f16 = feats.astype(np.float16).astype(np.float32)  # stored as float16
    np.testing.assert_array_equal(st.features(), f16[:, 0])
    np.testing.assert_array_equal(st.features(1), f16[:, 1])
    np.testing.assert_array_equal(st.features(None), f16)
    assert st.keys == keys
    np.testing.assert_array_equal(st.labels, labels)
    # random access by index and by key, across shard boundaries
    for i in (0, 3, 4, 9, -1):
        feat, key, label = st[i]
        assert feat.shape == (2, 6) and feat.dtype == np.float32
        np.testing.assert_array_equal(feat, f16[i])
        assert key == keys[i] and label == labels[i]
        assert st.index_of(key) == (i % 10)
    with pytest.raises(IndexError):
        st[10]
    with pytest.raises(KeyError, match="not in store"):
        st.index_of("nope")
    if fmt == "wds":
        assert st.has_images and st.image_bytes(5) == images[5]
    else:
        assert not st.has_images
        with pytest.raises(ValueError, match="include-images"):
            st.image_bytes(0)
    assert S.verify(tmp_path / "s") == []


def test_float32_and_2d_features(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 3)).astype(np.float32)
    make_store(tmp_path / "s", feats, dtype="float32")
    st = S.FeatureStore(tmp_path / "s")
    np.testing.assert_array_equal(st.features(0), feats)
    np.testing.assert_array_equal(st.features(1), feats)
    assert S.verify(tmp_path / "s") == []


def test_store_pickles_for_workers(tmp_path):
    import pickle

    feats, keys, labels = _data()
    make_store(tmp_path / "s", feats, keys, labels, shard_size=4)
    st = S.FeatureStore(tmp_path / "s")
    _ = st[5]  # opens a handle
    st2 = pickle.loads(pickle.dumps(st))
    np.testing.assert_array_equal(st2[5][0], st[5][0])


@pytest.mark.parametrize("fmt", ["h5", "wds"])
def test_verify_catches_a_flipped_byte(tmp_path, fmt):
    feats, keys, labels = _data(n=8, d=16)
    make_store(tmp_path / "s", feats, keys, labels, fmt=fmt, shard_size=4)
    assert S.verify(tmp_path / "s") == []
    shard = tmp_path / "s" / S.shard_name(1, fmt)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = S.verify(tmp_path / "s")
    assert any(shard.name in p and "sha256" in p for p in problems), problems


def test_verify_catches_missing_shard_and_wrong_counts(tmp_path):
    feats, keys, labels = _data(n=8)
    make_store(tmp_path / "s", feats, keys, labels, shard_size=4)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["shards"][0]["rows"] = 5
    m["rows"] = 9
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(with_checksum(m)))  # signed: verify's own checks
    problems = S.verify(tmp_path / "s")
    assert any("feat shape" in p for p in problems), problems
    assert any("source items" in p for p in problems), problems
    (tmp_path / "s" / S.shard_name(1)).unlink()
    assert any("missing" in p for p in S.verify(tmp_path / "s"))


def test_verify_catches_wrong_dtype(tmp_path):
    feats, keys, labels = _data(n=4)
    make_store(tmp_path / "s", feats, keys, labels, dtype="float32")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["dtype"] = "float16"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(with_checksum(m)))  # a signed edit: verify's check
    assert any("dtype" in p for p in S.verify(tmp_path / "s"))


def test_missing_and_incomplete_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.FeatureStore(tmp_path / "nowhere")
    feats, keys, labels = _data(n=4)
    S.write_shard(tmp_path / "s", 0, feats, keys, labels, first_item=0)
    assert list(S.completed_shards(tmp_path / "s")) == [0]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        S.FeatureStore(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        S.verify(tmp_path / "s")
    # a record whose shard file is gone does not count as complete
    (tmp_path / "s" / S.shard_name(0)).unlink()
    assert S.completed_shards(tmp_path / "s") == {}


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: with_checksum({**m, "format_version": 1}), "format_version 1 is not supported"),
        (lambda m: {k: v for k, v in m.items() if k != "format_version"}, "format_version None is not supported"),
        (lambda m: {**m, "layer": "head"}, "does not match its checksum: it was edited or damaged"),
        (lambda m: {k: v for k, v in m.items() if k != "checksum"}, "has no checksum of its fields"),
        (lambda m: with_checksum({k: v for k, v in m.items() if k not in ("layer", "failed")}), "lacks layer, failed"),
        (
            lambda m: with_checksum({**m, "shards": [{"file": "x", "rows": 1}]}),
            r"lacks shards\[\]\.first_item, shards\[\]\.sha256",
        ),
    ],
    ids=["version-1", "no-version", "edited", "no-checksum", "fields", "shard-fields"],
)
def test_only_the_current_format_is_read(tmp_path, edit, words):
    """The one reader (FeatureStore, verify, extraction) refuses any other manifest, and any edit
    of one (its checksum), naming the fix."""
    from rcdm.errors import InvalidInput

    feats, keys, labels = _data(n=4)
    make_store(tmp_path / "s", feats, keys, labels)
    m = S.read_manifest(tmp_path / "s")
    assert set(m) >= set(S.format.MANIFEST_FIELDS)  # build_manifest writes the whole format
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(edit(m)))
    for reader in (S.read_manifest, S.FeatureStore, S.verify):
        with pytest.raises(InvalidInput, match=f"{words}.*re-extract the store"):
            reader(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{")
    with pytest.raises(InvalidInput, match="not valid JSON.*re-extract the store"):
        S.verify(tmp_path / "s")


def test_write_shard_is_atomic_and_validates(tmp_path):
    feats, keys, labels = _data(n=4)
    with pytest.raises(ValueError, match="keys"):
        S.write_shard(tmp_path, 0, feats, keys[:3], labels, first_item=0)
    with pytest.raises(ValueError, match="wds"):
        S.write_shard(tmp_path, 0, feats, keys, labels, images=[b""] * 4, first_item=0)
    rec = S.write_shard(tmp_path, 0, feats, keys, labels, first_item=0, failed=[{"key": "x", "reason": "r"}])
    assert rec["rows"] == 4 and rec["failed"] == [{"key": "x", "reason": "r"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.h5", "shard-00000.json"]  # no temp left
    # the same content gives the same bytes (deterministic shards)
    rec2 = S.write_shard(tmp_path / "b", 0, feats, keys, labels, first_item=0)
    assert rec2["sha256"] == rec["sha256"]


def test_check_compatible_and_info(tmp_path):
    feats, keys, labels = _data(n=4)
    enc = {"name": "dino-rn50", "arch": "resnet50", "layer": "trunk", "dim": 6, "weights_sha256": "ab" * 32}
    make_store(
        tmp_path / "s",
        feats,
        keys,
        labels,
        encoder_info=enc,
        failed=[{"key": "bad", "index": 4, "reason": "truncated"}],
    )
    st = S.FeatureStore(tmp_path / "s")
    st.check_compatible("dino-rn50", "trunk", 6)
    st.check_compatible(enc)
    with pytest.raises(ValueError, match="swav-rn50"):
        st.check_compatible("swav-rn50")
    with pytest.raises(ValueError, match="head"):
        st.check_compatible(layer="head")
    with pytest.raises(ValueError, match="128"):
        st.check_compatible(dim=128)
    with pytest.raises(ValueError, match="sha256"):
        st.check_compatible({**enc, "weights_sha256": "cd" * 32})
    text = S.info(tmp_path / "s")
    assert "dino-rn50" in text and "trunk" in text and "4 in 1 shard" in text
    assert "bad: truncated" in text
    assert st.failed == [{"key": "bad", "index": 4, "reason": "truncated"}]
    assert S.verify(tmp_path / "s") == []  # 4 rows + 1 failed == 5 source items


def test_store_images_from_source_or_from_the_store(tmp_path):
    from PIL import Image
    from rcdm.data.images import open_source
    from rcdm.store import StoreImages

    from tests.synthetic import make_image_folder
    from tests.synthetic_store import make_store

    root = make_image_folder(tmp_path / "img", n_classes=2, per_class=2)
    src = open_source(root)
    keys = [it.key for it in src.items]
    feats = np.zeros((len(keys), 2, 4), np.float32)
    h5 = S.FeatureStore(make_store(tmp_path / "h5", feats, keys=keys, source={"root": str(root), "kind": "folder"}))
    imgs = StoreImages(h5)
    np.testing.assert_array_equal(imgs.index(), np.arange(len(keys)))
    assert np.array_equal(np.asarray(imgs.load(2)), np.asarray(src.load(2)))
    # the images moved: a clear error with the hint, naming the old root
    with pytest.raises(FileNotFoundError, match="which does not exist; look elsewhere"):
        StoreImages(h5, root=str(tmp_path / "gone"), hint="look elsewhere").load(0)
    # a key the source lacks is named
    other = S.FeatureStore(
        make_store(
            tmp_path / "h5b", feats, keys=[*keys[:3], "cls_9/nope"], source={"root": str(root), "kind": "folder"}
        )
    )
    with pytest.raises(ValueError, match="cls_9/nope"):
        StoreImages(other).index()
    # a webdataset store carrying its images needs no source at all
    data = [(root / f"{k}.jpg").read_bytes() for k in keys]
    wds = S.FeatureStore(
        make_store(
            tmp_path / "wds",
            feats,
            keys=keys,
            fmt="wds",
            images=data,
            source={"root": str(tmp_path / "gone"), "kind": "folder"},
        )
    )
    assert isinstance(StoreImages(wds).load(1), Image.Image)


def test_a_full_disk_writing_a_record_or_the_manifest_is_one_line(tmp_path, monkeypatch):
    import errno

    import rcdm.store.write as W
    from rcdm.errors import DiskFull

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(W, "atomic_write_json", full)
    with pytest.raises(DiskFull, match="shard-00000.json.*re-run the same"):
        W.write_shard(tmp_path, 0, np.zeros((1, 2, 3)), ["k"], [0], first_item=0)
    assert (tmp_path / "shard-00000.h5").is_file()  # the shard stays; a re-run writes its record
    with pytest.raises(DiskFull, match="manifest.json"):
        W.write_manifest(tmp_path, {})

    def other(path, obj):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(W, "atomic_write_json", other)
    with pytest.raises(PermissionError):  # not a full disk: as it is
        W.write_manifest(tmp_path, {})


def test_a_store_of_more_shards_than_open_files_reads_whole(tmp_path):
    """ImageNet's train store is 1,252 shards at the default shard_size, over the common limit of
    1,024 open files: a reader holds at most MAX_OPEN_SHARDS of them (here 60 shards under a limit
    of 48 open files, where every shard held open failed with "Too many open files")."""
    import subprocess
    import sys

    feats = np.arange(120 * 2 * 3, dtype=np.float32).reshape(120, 2, 3) / 100
    store = make_store(tmp_path / "s", feats, shard_size=2)
    code = f"""
import resource, sys
import numpy as np
from rcdm.store import FeatureStore
from rcdm.store.read import MAX_OPEN_SHARDS
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
st = FeatureStore({str(store)!r})
assert len(st.manifest["shards"]) == 60 > 48 > MAX_OPEN_SHARDS
f = st.features(None)
keys, rows = st.keys, [st[i][0] for i in range(len(st))]
print(f.shape, len(keys), float(np.abs(np.stack(rows) - f).max()), st.index_of(keys[-1]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(120,", "2,", "3)", "120", "0.0", "119"]


def test_a_shard_with_fewer_rows_than_its_manifest_is_refused(tmp_path):
    """A shard rewritten with fewer rows (and its sha256 recorded again) reads as damaged, at the
    stage that opens it, not as a shorter store."""
    import h5py
    from rcdm.utils import sha256_file

    store = make_store(tmp_path / "s", np.ones((4, 3), np.float32), shard_size=2)
    with h5py.File(store / "shard-00001.h5", "a") as f:
        for name in ("feat", "key", "label"):
            data = f[name][:1]
            del f[name]
            f.create_dataset(name, data=data)
    m = json.loads((store / "manifest.json").read_text())
    m["shards"][1]["sha256"] = sha256_file(store / "shard-00001.h5")
    (store / "manifest.json").write_text(json.dumps(with_checksum(m)))  # a consistent, signed edit
    st = S.FeatureStore(store)
    with pytest.raises(InvalidInput, match=r"holds 1/1/1 rows .* not the 2 its manifest records"):
        st.features()
    with pytest.raises(InvalidInput, match="not the 2 its manifest records"):
        st[3]
