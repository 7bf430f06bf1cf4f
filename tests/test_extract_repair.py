"""Nothing that reads as finished can be wrong: a re-run of `rcdm extract` checks the shards it
would call complete, `--repair` re-encodes just the bad ones (byte-identical to an uninterrupted
run), a full disk is one line and a re-run resumes, `--out` must be a folder, the source root is
recorded as an absolute path, and huge images are skipped without being decoded."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rcdm.extract
from click.testing import CliRunner
from PIL import Image
from rcdm import store as S
from rcdm.errors import InvalidInput, OutputExists, UserError
from rcdm.extract.prepare import HEADER
from rcdm.utils import read_json

from tests.extract_setup import (
    extract_cfg,
    tiny_encoder,  # noqa: F401 (the fixture `tiny`)
)
from tests.store_damage import flip_feature_byte
from tests.synthetic import make_image_folder

# manifest fields that differ between two runs of the same extraction (when, how fast, how asked)
RUN_FIELDS = ("created", "timing", "extract_config", "checksum")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "train", n_classes=2, per_class=3, size=(40, 32))


def _cfg(images: Path, out: Path, **kw):
    return extract_cfg(images, out, encoder="tiny", **kw)


def _same_store(a: Path, b: Path) -> None:
    """Byte-identical shards and the same manifest but for the fields of the run itself."""
    ma, mb = S.FeatureStore(a).manifest, S.FeatureStore(b).manifest
    assert {k: v for k, v in ma.items() if k not in RUN_FIELDS} == {k: v for k, v in mb.items() if k not in RUN_FIELDS}
    for s in ma["shards"]:
        assert (a / s["file"]).read_bytes() == (b / s["file"]).read_bytes(), s["file"]
    assert S.verify(b) == []


@pytest.fixture
def ref(tiny, images, tmp_path) -> Path:
    return rcdm.extract.run(_cfg(images, tmp_path / "ref"))  # 3 shards of 2 images


def _writes(monkeypatch) -> list[int]:
    import rcdm.extract.loop as loop

    written: list[int] = []
    real = loop.write_shard

    def record(*args, **kw):
        written.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(loop, "write_shard", record)
    return written


def test_rerun_of_a_finished_store_finds_a_corrupted_shard_and_repair_fixes_it(ref, images, tmp_path, monkeypatch):
    out = tmp_path / "store"
    shutil.copytree(ref, out)
    flip_feature_byte(out / "shard-00001.h5")
    before = (out / "shard-00000.h5").stat().st_mtime_ns
    with pytest.raises(InvalidInput) as e:
        rcdm.extract.run(_cfg(images, out))  # not "already complete"
    msg = str(e.value)
    assert "shard-00001.h5" in msg and "--repair" in msg and "shard-00000" not in msg, msg
    written = _writes(monkeypatch)
    rcdm.extract.run(_cfg(images, out, repair=True))
    assert written == [1]  # just the bad shard
    assert (out / "shard-00000.h5").stat().st_mtime_ns == before  # the others are kept
    _same_store(ref, out)
    # a repair of an intact store changes nothing
    sha = S.FeatureStore(out).manifest_sha256
    rcdm.extract.run(_cfg(images, out, repair=True))
    assert written == [1] and S.FeatureStore(out).manifest_sha256 == sha


def test_missing_shards_are_re_extracted_by_a_plain_rerun(ref, images, tmp_path, monkeypatch):
    out = tmp_path / "store"
    shutil.copytree(ref, out)
    (out / "shard-00002.h5").unlink()  # "delete them and re-run"
    flip_feature_byte(out / "shard-00000.h5")
    with pytest.raises(InvalidInput, match="shard-00000.h5"):  # a corrupted one still needs --repair
        rcdm.extract.run(_cfg(images, out))
    (out / "shard-00000.h5").unlink()
    written = _writes(monkeypatch)
    rcdm.extract.run(_cfg(images, out))
    assert sorted(written) == [0, 2]
    _same_store(ref, out)


def test_resume_checks_the_shards_it_keeps(ref, images, tmp_path, monkeypatch):
    out = tmp_path / "store"
    shutil.copytree(ref, out)
    (out / "manifest.json").unlink()  # an interrupted run
    flip_feature_byte(out / "shard-00002.h5")
    with pytest.raises(InvalidInput, match="shard-00002.h5.*--repair"):
        rcdm.extract.run(_cfg(images, out))
    assert not (out / "manifest.json").exists()
    written = _writes(monkeypatch)
    rcdm.extract.run(_cfg(images, out, repair=True))
    assert written == [2]
    _same_store(ref, out)


def test_full_disk_is_one_line_and_the_rerun_resumes(ref, images, tmp_path, monkeypatch):
    import h5py

    out = tmp_path / "store"
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def create_dataset(self, *args, **kw):  # the second shard's first write finds the disk full
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    with pytest.raises(UserError) as e:
        rcdm.extract.run(_cfg(images, out))
    msg = str(e.value)
    assert "shard-00001.h5" in msg and "space" in msg and "re-run the same" in msg and "\n" not in msg, msg
    assert not list(out.glob(".shard-*")) and not (out / "manifest.json").exists()  # no temporary file left
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    rcdm.extract.run(_cfg(images, out))
    _same_store(ref, out)


def test_cli_full_disk_prints_one_line(images, tmp_path, monkeypatch):
    import tarfile

    from rcdm.app.cli import cli

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        cli,
        [
            "extract",
            "--encoder",
            "random-rn50",
            "--source",
            str(images),
            "--out",
            "s",
            "--format",
            "wds",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--set",
            "extract.limit=2",
        ],
    )
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "error: no space left" in r.output and "shard-00000.tar" in r.output


def test_out_naming_a_file_is_refused_first(images, tmp_path, monkeypatch):
    import rcdm.encoders.build

    monkeypatch.setattr(rcdm.encoders.build, "load_encoder", lambda *a, **k: pytest.fail("the encoder was loaded"))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "store"):
        with pytest.raises(OutputExists) as e:
            rcdm.extract.run(_cfg(images, out))
        assert "is a file" in str(e.value) and "folder" in str(e.value) and "afile" in str(e.value)
    assert (tmp_path / "afile").read_text() == "x"


def test_source_root_is_recorded_absolute(tiny, images, tmp_path, monkeypatch):
    from rcdm.store import StoreImages

    monkeypatch.chdir(images.parent)
    out = rcdm.extract.run(extract_cfg(Path(images.name), tmp_path / "store", encoder="tiny", limit=2))
    st = S.FeatureStore(out)
    assert st.source["root"] == str(images) and os.path.isabs(st.source["root"])
    monkeypatch.chdir(tmp_path)  # `rcdm train` from another directory finds the images
    assert StoreImages(st).load(0).size == (40, 32)


def test_huge_images_are_skipped_and_the_budget_is_recorded(tiny, images, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(images, src)
    Image.new("L", (11000, 11000), 128).save(src / "cls_0" / "huge.png")  # ~140 KB, 121 Mpx
    Image.new("RGB", (50, 40), (9, 9, 9)).save(src / "cls_1" / "wide.png")
    out = rcdm.extract.run(_cfg(src, tmp_path / "store", max_pixels=1800))
    st = S.FeatureStore(out)
    reasons = {f["key"]: f["reason"] for f in st.failed}
    assert set(reasons) == {"cls_0/huge", "cls_1/wide"}, reasons
    assert "11000x11000" in reasons["cls_0/huge"] and "max_pixels" in reasons["cls_0/huge"]
    assert len(st) == 6 and st.manifest["extract_config"]["max_pixels"] == 1800
    assert read_json(out / HEADER)["max_pixels"] == 1800  # the settings a resume must match
    with pytest.raises(InvalidInput, match="max_pixels"):  # another budget is another store
        rcdm.extract.run(_cfg(src, tmp_path / "store", max_pixels=10**6))
    np.testing.assert_array_equal(st.labels, [0, 0, 0, 1, 1, 1])


def test_a_resume_must_use_the_same_decode_path(ref, images, tmp_path):
    """The resolved decode path and draft mode make the pixels: a resume that would mix them is refused."""
    out = tmp_path / "store"
    shutil.copytree(ref, out)
    (out / "manifest.json").unlink()  # an interrupted run
    (out / "shard-00002.h5").unlink()
    header = read_json(out / HEADER)
    assert (header["decode"], header["draft"]) == ("cpu", True)  # auto, resolved on a CPU
    with pytest.raises(InvalidInput, match="draft") as e:
        rcdm.extract.run(_cfg(images, out, draft=False))
    assert "decode cpu (draft True)" in str(e.value) and "--overwrite" in str(e.value)
    rcdm.extract.run(_cfg(images, out, decode="cpu"))  # what auto resolved to: resumes
    _same_store(ref, out)
    for k in ("decode", "draft"):  # a header without them is not this format's: refused, not guessed
        del header[k]
    (out / HEADER).write_text(json.dumps(header))
    with pytest.raises(InvalidInput, match="different decode, draft") as e:
        rcdm.extract.run(_cfg(images, out))
    assert "existing: " in str(e.value) and "decode None (draft None)" in str(e.value) and "--overwrite" in str(e.value)


def test_a_store_of_another_format_is_refused_or_replaced(ref, images, tmp_path):
    """Only the current format is read: a manifest of another version, or a finished store without
    the header extraction writes, is refused (naming the fix) and replaced with --overwrite, never
    resumed."""
    out = tmp_path / "store"
    shutil.copytree(ref, out)
    m = read_json(out / "manifest.json")
    S.write_manifest(out, {**m, "format_version": 1})
    for reader in (S.FeatureStore, S.verify, lambda p: rcdm.extract.run(_cfg(images, p))):
        with pytest.raises(InvalidInput, match="format_version 1 is not supported.*re-extract the store"):
            reader(out)
    rcdm.extract.run(_cfg(images, out, overwrite=True))
    _same_store(ref, out)
    (out / HEADER).unlink()  # a finished store rcdm extract did not write
    with pytest.raises(OutputExists, match="has no extract.json.*--overwrite"):
        rcdm.extract.run(_cfg(images, out))
    rcdm.extract.run(_cfg(images, out, overwrite=True))
    _same_store(ref, out)
