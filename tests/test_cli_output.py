"""What the terminal shows: a short summary of the resolved config (not the YAML) before a
stage runs, the result at the end (numbers, pictures, report), and clear messages for the
mistakes a new user makes."""

from __future__ import annotations

import json

from click.testing import CliRunner
from rcdm.app.cli import cli


def test_summary_lists_only_non_default_values_with_their_source():
    from rcdm.app.commandline import summary
    from rcdm.app.load import load_config

    cfg = load_config(None, ["train.kimg=2", "sample.subset=16"], profile="demo", options={"train.lr": (0.01, "--lr")})
    text = summary("pipeline", cfg)
    lines = text.splitlines()
    assert len(lines) < 12  # a few lines, not the 150-line YAML
    assert "differ from rcdm's defaults" in lines[0] and "--dry-run" in lines[0]
    assert "#   profile demo: data.demo=true" in text and "train.preset=tiny" in text
    assert "#   options: train.lr=0.01" in text and "#   --set: train.kimg=2.0" in text
    assert "sample.subset" not in text  # set, but to the default: nothing to say
    assert "runs/demo/run" not in text  # paths derived from data.workdir are left out
    assert "rcdm's defaults (the paper's recipe)" in summary("train", load_config(None, [], profile=None).train)


def test_a_stage_prints_the_summary_not_the_yaml_unless_dry_run(tmp_path):
    r = CliRunner().invoke(
        cli, ["train", "--store", str(tmp_path / "nowhere"), "--kimg", "3", "--set", f"data.workdir={tmp_path}"]
    )
    assert r.exit_code == 1  # the store is missing: the error follows the short summary
    assert "# train: 2 value(s) differ" in r.output and "train.kimg=3.0" in r.output
    assert "batch_size:" not in r.output  # no YAML before the error
    d = CliRunner().invoke(cli, ["train", "--dry-run", "--kimg", "3", "--set", f"data.workdir={tmp_path}"])
    assert "\nbatch_size: " in d.output  # --dry-run: the full resolved config


def test_train_source_option_and_unknown_experiment_in_dry_run():
    r = CliRunner().invoke(cli, ["train", "--dry-run", "--source", "/moved/images"])
    assert r.exit_code == 0, r.output
    assert "source: /moved/images  # option --source" in r.output
    r = CliRunner().invoke(cli, ["analyze", "--dry-run", "--set", "analyze.experiments=[invariance,manipulaton]"])
    assert r.exit_code == 2  # a config error: click's usage error, before anything runs
    assert "analyze.experiments has unknown experiment(s) manipulaton" in r.output
    assert "(from --set analyze.experiments)" in r.output
    assert "manipulation" in r.output.split("choose from")[1]


def _metrics(tmp_path, fid=None):
    ev = tmp_path / "eval"
    ev.mkdir()
    m = {
        "n_samples": 64,
        "rank": {
            "in_reference": {
                "n": 64,
                "N": 192,
                "mean_rank": 32.03,
                "mrr": 0.1538,
                "chance_mean_rank": 96.5,
                "chance_mrr": 0.0304,
            }
        },
        "fid": fid or {"skipped": True, "reason": "no Inception weights", "how_to_enable": "pass --inception-weights"},
    }
    (ev / "metrics.json").write_text(json.dumps(m))
    return ev / "metrics.json"


def test_evaluate_and_run_end_with_the_numbers(tmp_path):
    from rcdm.app.load import load_config
    from rcdm.app.results import evaluate_lines, run_lines

    path = _metrics(tmp_path)
    lines = evaluate_lines(path)
    assert lines[0].startswith(
        "faithfulness (64 samples): Weak: MRR 0.154 (chance 0.030; chance-corrected 0.127), mean rank 32.0 of 192"
    )
    assert lines[1:3] == ["FID / IS not computed: no Inception weights", "  to compute them: pass --inception-weights"]
    assert lines[-1] == f"tables: {path.with_name('metrics.md')}"
    cfg = load_config(None, [f"evaluate.out={path.parent}"])
    assert run_lines(cfg, ("evaluate", "analyze")) == lines
    assert run_lines(cfg, ("extract",)) == []


def test_sample_ends_with_counts_pictures_and_next_step(tmp_path):
    from rcdm.app.results import sample_lines

    (tmp_path / "manifest.json").write_text(json.dumps({"n_samples": 8, "n_conditions": 4, "image_size": 32}))
    (tmp_path / "grid-000.png").write_bytes(b"")
    lines = sample_lines(tmp_path)
    assert lines[0] == "8 samples of 4 condition(s), 32 px"
    assert str(tmp_path / "grid-000.png") in lines[1]
    assert lines[2].startswith(f"next: rcdm evaluate --samples {tmp_path}")
