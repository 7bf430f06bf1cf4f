"""Config loading: typed sections, strict keys, overrides, derived paths, the generated reference."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from rcdm.app import config as C


def test_default_pipeline_yaml_loads_and_matches_sections():
    cfg = C.load_config("pipeline.yaml")
    assert isinstance(cfg.train, C.TrainConfig)
    raw = yaml.safe_load(open("pipeline.yaml"))
    assert set(raw) == {"data", "extract", "train", "sample", "evaluate", "analyze"}
    assert cfg.extract.encoder == raw["extract"]["encoder"]


def test_sections_are_frozen():
    cfg = C.load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.kimg = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  kmig: 3\n")
    with pytest.raises(C.ConfigError, match=r"unknown key 'kmig' in section 'train'.*did you mean 'kimg'"):
        C.load_config(p)


def test_unknown_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  kimg: 3\n")
    with pytest.raises(C.ConfigError, match="unknown section 'trian'"):
        C.load_config(p)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.kimg=lots", "train.kimg: expected a number"),
        ("train.batch_size=1.5", "train.batch_size: expected an integer"),
        ("train.preset=huge", "train.preset: 'huge' is not allowed"),
        ("extract.overwrite=maybe", "extract.overwrite: expected true or false"),
        ("train.ema_rates=[0.9, fast]", r"train.ema_rates\[1\]: expected a number"),
        ("trainkimg=3", "expected section.key=value"),
    ],
)
def test_mistyped_values_are_errors(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(None, [override])


def test_overrides_are_typed():
    cfg = C.load_config(None, ["train.kimg=2", "train.ema_rates=[0.99, 0.999]", "extract.weights=null",
                               "sample.steps=100", "extract.overwrite=true"])
    assert cfg.train.kimg == 2.0 and isinstance(cfg.train.kimg, float)
    assert cfg.train.ema_rates == (0.99, 0.999)
    assert cfg.extract.weights is None
    assert cfg.sample.steps == "100"  # a string even though YAML reads 100 as an int
    assert cfg.extract.overwrite is True


def test_resolve_derives_paths_from_workdir():
    cfg = C.resolve(C.load_config(None, ["data.workdir=/w"]))
    assert cfg.extract.out == "/w/stores/train"
    assert cfg.train.store == "/w/stores/train" and cfg.train.out == "/w/run"
    assert cfg.sample.store == "/w/stores/val" and cfg.sample.checkpoint == "/w/run"
    assert cfg.evaluate.reference == "/w/stores/val"
    assert cfg.analyze.checkpoints == ("/w/run",)
    # explicit values win
    cfg = C.resolve(C.load_config(None, ["train.out=/elsewhere"]))
    assert cfg.train.out == "/elsewhere"


def test_saved_config_round_trips(tmp_path):
    cfg = C.resolve(C.load_config("pipeline.yaml", ["train.ema_rates=[0.5]"]))
    path = C.save_resolved(cfg, tmp_path)
    again = C.from_dict(yaml.safe_load(path.read_text()))
    assert again == cfg


def test_config_reference_covers_every_key():
    ref = C.config_reference()
    for cls in (C.DataConfig, C.ExtractConfig, C.TrainConfig, C.SampleConfig, C.EvaluateConfig, C.AnalyzeConfig):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in ref, f.name


def test_yaml_booleans_read_as_words_where_a_word_is_expected(tmp_path):
    cfg = C.load_config(None, ["sample.ema=no", "train.mixed_precision=no"])
    assert cfg.sample.ema == "no" and cfg.train.mixed_precision == "no"
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  mixed_precision: no\n")
    assert C.load_config(p).train.mixed_precision == "no"
    p.write_text("sample:\n  ema: no\n")
    with pytest.raises(C.ConfigError, match="quote the value"):
        C.load_config(p)
