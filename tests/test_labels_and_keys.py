"""Labels mean the same classes in every split, and a source's names never lead out of a folder:
an empty class folder keeps every other label, the class map is recorded and compared, and a
webdataset key that is absolute or has '..' is skipped and counted, as links and unreadable labels
are."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from rcdm.data.images import open_source
from rcdm.errors import InvalidInput

from tests.synthetic import jpeg_bytes, make_image_folder, random_image
from tests.synthetic_store import make_store


def test_an_empty_class_folder_keeps_the_other_labels(tmp_path):
    train = make_image_folder(tmp_path / "train", n_classes=3, per_class=1)
    val = make_image_folder(tmp_path / "val", n_classes=3, per_class=1)
    for f in (val / "cls_0").iterdir():  # class 0 has no validation image
        f.unlink()
    a, b = open_source(train), open_source(val)
    assert a.classes == b.classes == ["cls_0", "cls_1", "cls_2"]
    assert {it.key: it.label for it in b.items} == {"cls_1/img_000": 1, "cls_2/img_000": 2}  # not renumbered
    assert b.describe()["classes"] == ["cls_0", "cls_1", "cls_2"]


def test_stores_whose_class_maps_disagree_are_refused(tmp_path):
    from rcdm.store import FeatureStore, check_same_classes

    def store(name, classes):
        src = {"kind": "folder", "root": str(tmp_path / name), "split": name, "key_rule": "k", "classes": classes}
        return FeatureStore(make_store(tmp_path / name, np.ones((2, 3), np.float32), source=src))

    a, b, c = store("a", ["cat", "dog"]), store("b", ["cat", "dog"]), store("c", ["dog", "eel"])
    check_same_classes(a, b, "the probe")
    with pytest.raises(InvalidInput, match=r"the probe compares the labels .* label 0 is 'cat' in the first and 'dog'"):
        check_same_classes(a, c, "the probe")
    check_same_classes(a, store("d", None), "the probe")  # a source without class names: not compared


def _tar(path: Path, members: list[tuple[str, bytes]], links: list[str] = ()) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return path


def test_unsafe_webdataset_keys_links_and_bad_labels_are_skipped_and_counted(tmp_path):
    img = jpeg_bytes(random_image(np.random.default_rng(0), (16, 16)))
    tar = _tar(
        tmp_path / "s.tar",
        [
            ("good.jpg", img),
            ("good.cls", b"3"),
            ("../../etc/x.jpg", img),
            ("/abs/y.jpg", img),
            ("badcls.jpg", img),
            ("badcls.cls", b"not a number"),
        ],
        links=["link.jpg"],
    )
    src = open_source(tar)
    assert {it.key: it.label for it in src.items} == {"good": 3, "badcls": -1}
    d = src.describe()
    assert d["n_samples_with_unsafe_key"] == 2 and d["n_link_members"] == 1 and d["n_unreadable_cls"] == 1


def test_extraction_records_the_class_map(tmp_path):
    import rcdm.extract
    from rcdm.config import ExtractConfig
    from rcdm.store import FeatureStore

    images = make_image_folder(tmp_path / "img", n_classes=2, per_class=1, size=(32, 32))
    shutil.rmtree(images / "cls_1")
    (images / "cls_1").mkdir()  # empty: still a class
    out = rcdm.extract.run(
        ExtractConfig(
            encoder="random-rn50",
            source=str(images),
            out=str(tmp_path / "s"),
            input_size=32,
            batch_size=2,
            workers=0,
            device="cpu",
        )
    )
    assert FeatureStore(out).classes == ["cls_0", "cls_1"]


def test_an_analysis_reading_labels_refuses_stores_whose_classes_disagree(tmp_path):
    """The probe (and every analysis that reads labels) compares train and val labels: their class
    maps must agree."""
    import torch
    from rcdm.analysis.experiments.common import Context
    from rcdm.config import AnalyzeConfig

    def store(name, classes):
        src = {"kind": "folder", "root": str(tmp_path / name), "split": name, "key_rule": "k", "classes": classes}
        return make_store(tmp_path / name, np.ones((2, 3), np.float32), labels=[0, 1], source=src)

    train, val = store("train", ["cat", "dog"]), store("val", ["dog", "eel"])
    cfg = AnalyzeConfig(train_store=str(train), val_store=str(val), out=str(tmp_path / "a"))
    ctx = Context(cfg=cfg, out=tmp_path / "a", device=torch.device("cpu"))
    with pytest.raises(InvalidInput, match=r"label 0 is 'cat' in the first and 'dog' in the second"):
        ctx.labels(ctx.store("train"), "probe: the train")
