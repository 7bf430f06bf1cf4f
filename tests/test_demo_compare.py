"""`rcdm demo --compare` end to end on reduced settings: the demo's trunk run, a head run and a
random floor, their evaluations, and one report of them side by side with the verdict line."""

from __future__ import annotations

import json
from html import escape as html_escape

import pytest
from click.testing import CliRunner
from rcdm.app.cli import cli

from tests.test_pipeline import REDUCED


@pytest.mark.slow
def test_demo_compare_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    sets = [a for s in REDUCED for a in ("--set", s)]
    r = CliRunner().invoke(cli, ["demo", "--compare", *sets], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = tmp_path / "runs/demo-compare/analysis/report.html"
    assert r.output.strip().endswith(f"open the comparison: {report.relative_to(tmp_path)}")
    # three runs: the demo's own (the trunk), the head and the random floor, each evaluated
    runs = {"trunk": "runs/demo", "head": "runs/demo-compare/head", "random": "runs/demo-compare/random"}
    for name, w in runs.items():
        m = json.loads((tmp_path / w / "eval" / "metrics.json").read_text())
        assert m["faithfulness"]["colour"]["ratio"] > 0, name
        store = json.loads((tmp_path / w / "stores" / "train" / "manifest.json").read_text())
        want = ("random-rn50", "trunk") if name == "random" else ("simclr-mini", name)
        assert (store["encoder"]["name"], store["encoder"]["layer"]) == want
    layers = json.loads((tmp_path / "runs/demo-compare/analysis/layers/layers.json").read_text())
    assert len(layers["numbers"]) == 3 and all(n["mrr"] is not None for n in layers["numbers"].values())
    assert layers["verdict"].startswith(("As in the paper", "At this scale the numbers do not show"))
    html = report.read_text()
    assert "Trunk against head" in html
    assert html_escape(layers["verdict"]) in html
    # run again: every stage of the three runs and the analysis are finished, nothing is redone
    r = CliRunner().invoke(cli, ["demo", "--compare", *sets], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.count("finished earlier, skipping") == 16, r.output
