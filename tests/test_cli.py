"""The command line: help without torch, --dry-run, --set, and config errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from rcdm.app.cli import cli

STAGES = ["extract", "store", "train", "sample", "evaluate", "analyze", "run", "demo"]
DATA = ["--set", "data.train=/img/train", "--set", "data.val=/img/val"]


def test_help_lists_every_stage_without_importing_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from rcdm.app.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "NO_TORCH" in out
    for s in STAGES:
        assert s in out


def test_python_dash_m_rcdm_works():
    r = subprocess.run([sys.executable, "-m", "rcdm", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "extract" in r.stdout


@pytest.mark.parametrize("stage", ["extract", "train", "sample", "evaluate", "analyze", "run"])
def test_every_stage_has_common_options(stage):
    r = CliRunner().invoke(cli, [stage, "--help"])
    assert r.exit_code == 0
    for opt in ("--config", "--set", "--dry-run"):
        assert opt in r.output


def test_dry_run_prints_resolved_config_and_writes_nothing(tmp_path):
    work = tmp_path / "w"
    r = CliRunner().invoke(
        cli, ["train", "--dry-run", "--kimg", "3", "--set", f"data.workdir={work}", "--set", "train.batch_size=8"]
    )
    assert r.exit_code == 0, r.output
    assert "kimg: 3.0" in r.output and "batch_size: 8" in r.output
    assert f"{work}/run" in r.output
    assert not work.exists()


def test_extract_dry_run_plans_both_splits(tmp_path):
    r = CliRunner().invoke(
        cli, ["extract", "--dry-run", "--encoder", "dino-rn50", "--set", f"data.workdir={tmp_path}", *DATA]
    )
    assert r.exit_code == 0, r.output
    assert f"{tmp_path}/stores/train" in r.output and f"{tmp_path}/stores/val" in r.output
    assert r.output.count("encoder input 224 px") == 2


def test_run_dry_run_lists_stages(tmp_path):
    r = CliRunner().invoke(
        cli, ["run", "--dry-run", "--stages", "train,extract", "--set", f"data.workdir={tmp_path}", *DATA]
    )
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if " -> " in ln]
    assert [ln.split()[0] for ln in lines] == ["extract", "train"]  # pipeline order


def test_bad_stage_name():
    r = CliRunner().invoke(cli, ["run", "--dry-run", "--stages", "trian"])
    assert r.exit_code != 0 and "unknown stage(s) trian" in r.output


def test_unknown_key_is_a_usage_error():
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--set", "train.kmig=2"])
    assert r.exit_code == 2
    assert "unknown key 'kmig' in section 'train'" in r.output


def test_set_wins_over_option_and_config(tmp_path):
    cfgfile = tmp_path / "p.yaml"
    cfgfile.write_text("train:\n  kimg: 7\n")
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--config", str(cfgfile)])
    assert "kimg: 7.0" in r.output
    r = CliRunner().invoke(
        cli, ["train", "--dry-run", "--config", str(cfgfile), "--kimg", "5", "--set", "train.kimg=9"]
    )
    assert "kimg: 9.0" in r.output


def test_missing_config_file(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_guidance_option_of_sample_and_analyze(tmp_path):
    for stage in ("sample", "analyze"):
        r = CliRunner().invoke(cli, [stage, "--dry-run", "--guidance", "3", "--set", f"data.workdir={tmp_path}"])
        assert r.exit_code == 0, r.output
        assert "guidance: 3.0" in r.output
    r = CliRunner().invoke(cli, ["sample", "--dry-run", "--guidance", "-1"])
    assert r.exit_code == 2 and "--guidance" in r.output


def test_pipeline_without_data_names_the_fix(tmp_path):
    r = CliRunner().invoke(cli, ["run", "--dry-run", "--set", f"data.workdir={tmp_path}"])
    assert r.exit_code == 1 and "data.train and data.val are not set" in r.output and "rcdm demo" in r.output


def test_run_refuses_an_extract_out_it_would_not_honour(tmp_path):
    """`rcdm run --set extract.out=X` printed out: X but wrote under <workdir>/stores."""
    r = CliRunner().invoke(cli, ["run", "--dry-run", "--set", f"extract.out={tmp_path}/x", *DATA])
    assert r.exit_code == 1, r.output
    assert "cannot honour extract.out from --set extract.out" in r.output and "data.workdir" in r.output
    # an explicit single-store extraction does honour it
    r = CliRunner().invoke(
        cli, ["extract", "--dry-run", "--encoder", "random-rn50", "--source", "/img", "--out", f"{tmp_path}/x"]
    )
    assert r.exit_code == 0 and f"would write store {tmp_path}/x from /img" in r.output


def test_extract_needs_an_encoder(tmp_path):
    r = CliRunner().invoke(cli, ["extract", "--dry-run", "--source", "/img", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "extract.encoder is not set" in r.output and "--list-encoders" in r.output


def test_help_lists_the_choices_a_user_must_make():
    from rcdm.config import EXPERIMENTS
    from rcdm.encoders.registry import REGISTRY

    out = CliRunner().invoke(cli, ["analyze", "--help"]).output
    assert all(e in out for e in EXPERIMENTS)
    out = CliRunner().invoke(cli, ["sample", "--help"]).output
    for kind in ("store", "images", "interpolate", "class-mean", "kde", "algebra", "manipulate", "prior"):
        assert f"{kind}:" in " ".join(out.split())
    out = CliRunner().invoke(cli, ["extract", "--help"]).output
    assert "--list-encoders" in out and all(name in out for name in REGISTRY)


def test_evaluate_table_takes_several_runs(tmp_path):
    """The README's `rcdm evaluate --table a b c --out X` (it failed with "unexpected extra arguments")."""
    r = CliRunner().invoke(cli, ["evaluate", "--table", "eval/a", "eval/b", "eval/c", "--out", "eval/t", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would assemble 3 run(s) (eval/a, eval/b, eval/c) into eval/t" in r.output
    r = CliRunner().invoke(cli, ["evaluate", "eval/a", "--dry-run"])
    assert r.exit_code == 2 and "go after --table" in r.output


def test_dry_run_shows_where_values_came_from(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--profile", "demo", "--lr", "0.01", "--set", "train.kimg=2"])
    assert r.exit_code == 0, r.output
    assert "preset: tiny  # profile demo" in r.output and "lr: 0.01  # option --lr" in r.output
    assert "kimg: 2.0  # --set train.kimg" in r.output


def test_demo_runs_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipeline.yaml").write_text("train:\n  lr: 0.5\n")  # another folder's config: not read
    r = CliRunner().invoke(cli, ["demo", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "lr: 0.001  # profile demo" in r.output and "workdir: runs/demo  # profile demo" in r.output
    assert "data      run" in r.output


def test_user_errors_print_a_line_and_bugs_keep_their_traceback(monkeypatch, tmp_path):
    import rcdm.train
    from rcdm.errors import InvalidInput

    def user_mistake(cfg):
        raise InvalidInput("train.lr is bad; use 1e-4")

    monkeypatch.setattr(rcdm.train, "run", user_mistake)
    store = str(tmp_path)  # an input that exists: the stage's own check comes next
    r = CliRunner().invoke(cli, ["train", "--store", store, "--out", "o"])
    assert r.exit_code == 1 and "error: train.lr is bad; use 1e-4" in r.output

    def bug(cfg):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(rcdm.train, "run", bug)
    r = CliRunner().invoke(cli, ["train", "--store", store, "--out", "o"])
    assert isinstance(r.exception, RuntimeError) and "error:" not in r.output
