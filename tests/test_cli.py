"""The command line: help without torch, --dry-run, --set, and config errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from rcdm.app.cli import cli

STAGES = ["extract", "store", "train", "sample", "evaluate", "analyze", "run"]


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
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--kimg", "3", "--set", f"data.workdir={work}",
                                 "--set", "train.batch_size=8"])
    assert r.exit_code == 0, r.output
    assert "kimg: 3.0" in r.output and "batch_size: 8" in r.output
    assert f"{work}/run" in r.output
    assert not work.exists()


def test_extract_dry_run_plans_both_splits(tmp_path):
    r = CliRunner().invoke(cli, ["extract", "--dry-run", "--set", f"data.workdir={tmp_path}"])
    assert r.exit_code == 0, r.output
    assert f"{tmp_path}/stores/train" in r.output and f"{tmp_path}/stores/val" in r.output


def test_run_dry_run_lists_stages(tmp_path):
    r = CliRunner().invoke(cli, ["run", "--dry-run", "--stages", "train,extract", "--set", f"data.workdir={tmp_path}"])
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
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--config", str(cfgfile), "--kimg", "5", "--set", "train.kimg=9"])
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
