"""Config loading: the recipe as defaults, the demo profile, layers with origins, strict keys,
typed values (steps parsed once), derived paths, the generated reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from rcdm.app import config as C
from rcdm.app import configio
from rcdm.app.load import apply_mapping, load_config, profile_path, resolve
from rcdm.diffusion.spec import Steps

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_recipe():
    cfg = C.PipelineConfig()
    assert cfg.extract.input_size is None and cfg.extract.preprocess == "default"  # the encoder's 224
    assert cfg.train.preset == "adm128" and cfg.train.lr == 1e-4 and cfg.train.cond_norm == "none"
    assert cfg.train.p2_gamma == 0.0 and cfg.train.cond_drop == 0.0 and cfg.train.grid_guidance == 1.0
    for section in (cfg.sample, cfg.analyze):
        s = section.sampler
        assert str(s.steps) == "100" and not s.ddim and s.guidance == 1.0
    assert not cfg.data.demo and cfg.data.train is None and cfg.extract.encoder is None


def test_repository_pipeline_yaml_resolves_to_the_defaults():
    cfg = load_config(REPO / "pipeline.yaml")
    assert C.to_dict(cfg) == C.to_dict(C.PipelineConfig())
    assert set(yaml.safe_load((REPO / "pipeline.yaml").read_text())) <= set(C.SECTIONS)


def test_demo_profile_holds_the_shortcuts_and_nothing_leaks():
    demo = load_config(profile="demo")
    assert (
        demo.extract.input_size == 32
        and demo.train.preset == "tiny"
        and demo.sample.guidance == 1.5
        and demo.train.cond_image == 32
    )
    assert demo.data.demo and demo.train.origin["lr"] == "profile demo"
    # a profile never reads the current folder's pipeline.yaml, and the defaults stay the recipe
    assert load_config().train.lr == 1e-4
    assert profile_path("demo").is_file()
    with pytest.raises(C.ConfigError, match="unknown profile 'dmeo'.*demo"):
        load_config(profile="dmeo")


def test_origins_of_every_layer(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  kimg: 7\n  lr: 0.002\n")
    cfg = resolve(load_config(p, ["train.kimg=9"], profile="demo", options={"train.batch_size": (8, "--batch-size")}))
    o = cfg.train.origin
    assert o["preset"] == "profile demo" and o["lr"] == f"file {p}"
    assert o["batch_size"] == "option --batch-size" and o["kimg"] == "--set train.kimg"
    assert o["store"] == "derived from data.workdir" and "grad_clip" not in o
    text = configio.dump_yaml(cfg.train)
    assert "kimg: 9.0  # --set train.kimg" in text and "batch_size: 8  # option --batch-size" in text
    assert "grad_clip: 1.0\n" in text  # a built-in default carries no comment
    # derived(): what load filled in, versus what a layer set; no origin gives the caller's answer
    assert cfg.train.derived("store", unknown=False) and not cfg.train.derived("lr", unknown=True)
    assert cfg.train.derived("grad_clip", unknown=True) and not cfg.train.derived("grad_clip", unknown=False)


def test_saved_config_round_trips_with_its_comments(tmp_path):
    cfg = resolve(load_config(REPO / "pipeline.yaml", ["train.ema_rates=[0.5]", "sample.steps=ddim25"]))
    path = configio.save_resolved(cfg, tmp_path)
    assert "# --set train.ema_rates" in path.read_text()
    again = apply_mapping(C.PipelineConfig(), yaml.safe_load(path.read_text()), "saved")
    assert C.to_dict(again) == C.to_dict(cfg) and again == cfg


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config().train.kimg = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  kmig: 3\n")
    with pytest.raises(C.ConfigError, match=r"unknown key 'kmig' in section 'train'.*did you mean 'kimg'"):
        load_config(p)


def test_unknown_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  kimg: 3\n")
    with pytest.raises(C.ConfigError, match="unknown section 'trian'"):
        load_config(p)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.kimg=lots", "train.kimg: expected a number"),
        ("train.batch_size=1.5", "train.batch_size: expected an integer"),
        ("train.preset=huge", "train.preset: 'huge' is not allowed"),
        ("extract.overwrite=maybe", "extract.overwrite: expected true or false"),
        ("train.ema_rates=[0.9, fast]", r"train.ema_rates\[1\]: expected a number"),
        ("trainkimg=3", "expected section.key=value"),
        ("sample.steps=ddimx", 'sample.steps: steps .ddimx.: expected "ddimN"'),
        ("analyze.steps=0", "analyze.steps: steps '0'"),
    ],
)
def test_mistyped_values_are_errors(override, message):
    with pytest.raises(C.ConfigError, match=message):
        load_config(None, [override])


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.kimg=2",
            "train.ema_rates=[0.99, 0.999]",
            "extract.weights=null",
            "sample.steps=100",
            "extract.overwrite=true",
            "analyze.steps=ddim50",
        ],
    )
    assert cfg.train.kimg == 2.0 and isinstance(cfg.train.kimg, float)
    assert cfg.train.ema_rates == (0.99, 0.999)
    assert cfg.extract.weights is None
    assert cfg.sample.steps == Steps((100,))  # parsed once, although YAML reads 100 as an int
    assert cfg.analyze.sampler.ddim and cfg.analyze.steps.total == 50
    assert cfg.extract.overwrite is True


def test_sections_built_in_code_parse_their_steps():
    s = C.SampleConfig(steps="ddim50", guidance=3)
    assert s.steps == Steps.parse("ddim50") and s.sampler.label() == "ddim50, guidance 3"


def test_resolve_derives_paths_from_workdir():
    cfg = resolve(load_config(None, ["data.workdir=/w", "data.val=/img/val"]))
    assert cfg.extract.out == "/w/stores/train"
    assert cfg.train.store == "/w/stores/train" and cfg.train.out == "/w/run"
    assert cfg.sample.store == "/w/stores/val" and cfg.sample.checkpoint == "/w/run"
    assert cfg.evaluate.reference == "/w/stores/val" and cfg.evaluate.reference_images == "/img/val"
    assert cfg.analyze.checkpoints == ("/w/run",)
    # explicit values win
    cfg = resolve(load_config(None, ["train.out=/elsewhere"]))
    assert cfg.train.out == "/elsewhere" and cfg.train.origin["out"] == "--set train.out"


def test_config_reference_covers_every_key():
    from rcdm.app.readme import config_reference

    ref = config_reference()
    for cls in C.SECTIONS.values():
        for f in C.section_fields(cls):
            assert f"`{f.name}`" in ref, f.name
    assert "`origin`" not in ref


def test_yaml_booleans_read_as_words_where_a_word_is_expected(tmp_path):
    cfg = load_config(None, ["sample.ema=no", "train.mixed_precision=no"])
    assert cfg.sample.ema == "no" and cfg.train.mixed_precision == "no"
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  mixed_precision: no\n")
    assert load_config(p).train.mixed_precision == "no"
    p.write_text("sample:\n  ema: no\n")
    with pytest.raises(C.ConfigError, match="quote the value"):
        load_config(p)


def test_experiment_names_match_the_analysis_modules():
    from rcdm.analysis.experiments import EXPERIMENTS

    assert tuple(EXPERIMENTS) == C.EXPERIMENTS + C.EXTRA_EXPERIMENTS
