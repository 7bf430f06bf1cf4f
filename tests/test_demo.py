"""The embedded demonstration set: built offline, deterministic, verified by checksum."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from rcdm.config import DataConfig
from rcdm.data import demo
from rcdm.utils import read_json


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(
        train=str(tmp_path / "demo/train"),
        val=str(tmp_path / "demo/val"),
        demo_size=24,
        demo_train_per_photo=3,
        demo_val_per_photo=2,
        **kw,
    )


def test_build_writes_imagefolder_trees_with_one_class_per_photo(tmp_path):
    cfg = _cfg(tmp_path)
    train, val = demo.build(cfg)
    classes = sorted(p.name for p in train.iterdir())
    assert classes == sorted(demo.PHOTOS)
    assert sorted(p.name for p in val.iterdir()) == classes
    for c in classes:
        assert len(list((train / c).glob("*.png"))) == 3
        assert len(list((val / c).glob("*.png"))) == 2
    img = Image.open(next((train / "cat").glob("*.png")))
    assert img.size == (24, 24) and img.mode == "RGB"
    man = read_json(tmp_path / "demo/manifest.json")
    assert "not a benchmark" in man["notice"] and man["n_files"] == len(demo.PHOTOS) * 5


def test_build_is_deterministic_and_train_val_differ(tmp_path):
    a = demo.build(_cfg(tmp_path / "a"))[0].parent
    b = demo.build(_cfg(tmp_path / "b"))[0].parent
    fa, fb = read_json(a / "manifest.json")["files"], read_json(b / "manifest.json")["files"]
    assert fa == fb
    train_hashes = {v for k, v in fa.items() if k.startswith("train/")}
    val_hashes = {v for k, v in fa.items() if k.startswith("val/")}
    assert not train_hashes & val_hashes


def test_checksum_catches_damage_and_rebuild_repairs(tmp_path):
    cfg = _cfg(tmp_path)
    train, _ = demo.build(cfg)
    assert demo.is_built(cfg)
    victim = next((train / "coffee").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-10])
    assert not demo.is_built(cfg)
    demo.build(cfg)
    assert demo.is_built(cfg)


def test_changed_settings_mean_not_built(tmp_path):
    cfg = _cfg(tmp_path)
    demo.build(cfg)
    assert not demo.is_built(
        DataConfig(train=cfg.train, val=cfg.val, demo_size=32, demo_train_per_photo=3, demo_val_per_photo=2)
    )
