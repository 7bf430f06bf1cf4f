"""Config loading: the recipe as defaults, the demo profile, layers with origins, strict keys,
typed values (steps parsed once), derived paths, the generated reference."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from rcdm import config as C
from rcdm.app.load import apply_mapping, load_config, profile_path, resolve
from rcdm.config import Steps
from rcdm.config import io as configio

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


# ------------------------------------------------------------------ one schema, checked once
def _options(command: str) -> dict:
    import click
    from rcdm.app.cli import cli

    return {p.name: p for p in cli.commands[command].params if isinstance(p, click.Option)}


def test_options_are_made_from_the_schema():
    """A key's choices, type and help exist once, in its declaration: the command line's options
    are made from it (a choice added to the Literal is an option choice, with no other edit)."""
    import click
    from rcdm.app.options import choices
    from rcdm.config import SECTIONS, section_fields, setting_of
    from rcdm.encoders.registry import REGISTRY

    for command, section in (("train", "train"), ("sample", "sample"), ("extract", "extract"), ("analyze", "analyze")):
        fields = {f.name: f for f in section_fields(SECTIONS[section])}
        for name, opt in _options(command).items():
            if name not in fields:
                continue
            assert setting_of(fields[name]).help[1:] in opt.help, (command, name)
            if isinstance(opt.type, click.Choice):  # the encoder's choices are the registry's names
                owner = tuple(REGISTRY) if name == "encoder" else choices(section, name)
                assert tuple(opt.type.choices) == owner, (command, name)
    # the sampling options: every field of the spec, on each command that samples
    from rcdm.config import SamplerSettings

    spec = {f.name for f in section_fields(SamplerSettings)}
    assert spec <= set(_options("sample")) and spec <= set(_options("analyze"))


def test_schema_choices_match_their_owners():
    """Where another module owns a set of names (presets, conditioning methods, preprocessing,
    layers, conditions), the schema's Literal holds exactly those names."""
    from rcdm.app.options import choices
    from rcdm.data.preprocess import PREPROCESS
    from rcdm.encoders.registry import REGISTRY
    from rcdm.model.config import COND_METHODS, PRESETS
    from rcdm.sample.conds import BUILDERS

    assert choices("train", "preset") == PRESETS
    assert set(choices("train", "cond")) == set(COND_METHODS) - {"none"}
    assert set(choices("extract", "preprocess")) == {"default", *PREPROCESS}
    assert {layer for spec in REGISTRY.values() for layer in spec.dims} <= set(choices("extract", "layer"))
    assert set(choices("sample", "condition")) == set(BUILDERS)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "train.lr must be >= 0, got -1.0 (from --set train.lr)"),
        ("train.cond_drop=1", "train.cond_drop must be in [0, 1), got 1.0"),
        ("sample.guidance=-2", "sample.guidance must be >= 0, got -2.0"),
        ("sample.guidance_interval=[0.8,0.2]", "sample.guidance_interval must be [lo, hi]"),
        ("sample.guidance_rescale=1.5", "sample.guidance_rescale must be in [0, 1], got 1.5"),
        ("train.ema_rates=[0.9,0.9]", "train.ema_rates has duplicates"),
        ("analyze.epsilons=[0.1,-0.1]", "analyze.epsilons must be >= 0"),
        ("prior.ema_rate=1", "prior.ema_rate must be in [0, 1)"),
    ],
)
def test_values_are_checked_where_declared(override, message):
    """The same bound refuses a value however it is set: --set, a file, an option or code."""
    from rcdm.app.load import load_config
    from rcdm.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_a_bad_option_value_is_refused_by_the_schema(tmp_path):
    from click.testing import CliRunner
    from rcdm.app.cli import cli

    r = CliRunner().invoke(cli, ["train", "--lr", "-1", "--dry-run", "--set", f"data.workdir={tmp_path}"])
    assert r.exit_code != 0 and "train.lr must be >= 0, got -1.0 (from option --lr)" in r.output


def test_sections_built_in_code_are_checked_too():
    from rcdm.config import ConfigError, SampleConfig, Sampler, Steps

    with pytest.raises(ConfigError, match=r"sample.n_per_condition must be >= 1, got 0"):
        SampleConfig(n_per_condition=0)
    with pytest.raises(ConfigError, match=r"^guidance must be >= 0, got -1"):
        Sampler(Steps.parse("10"), guidance=-1)


def test_a_missing_input_is_reported_before_torch_is_imported(tmp_path):
    """`rcdm sample` with a store that does not exist fails at once, naming the key, and never
    imports torch (which takes 12-19 s on this machine)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom rcdm.app.cli import main\nsys.argv = ['rcdm', 'sample', '--store', "
        f"{str(tmp_path / 'nope')!r}, '--checkpoint', {str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('torch' in sys.modules, e.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip() == "False 1", done.stdout + done.stderr
    assert f"sample.store: {tmp_path / 'nope'} does not exist" in done.stderr
