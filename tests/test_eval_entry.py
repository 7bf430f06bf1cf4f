"""The report's evaluation section: numbers, chance level and the sample grids."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from rcdm.analysis.eval_entry import evaluation_entry, verdict


def test_verdict_compares_with_chance():
    assert verdict(10.0, 96.5, 0.3, 0.03).startswith("Faithful")
    assert "9.7x better" in verdict(10.0, 96.5, 0.3, 0.03)
    assert verdict(70.0, 96.5, 0.05, 0.03).startswith("Somewhat better")
    assert verdict(109.4, 96.5, 0.048, 0.03).startswith("Not better than chance")


def _eval_dir(tmp_path, fid_skipped=True):
    samples = tmp_path / "samples"
    samples.mkdir()
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(samples / "grid-000.png")
    ev = tmp_path / "eval"
    ev.mkdir()
    metrics = {
        "method": "RCDM (random-rn50, embed)", "encoder": "random-rn50", "layer": "trunk",
        "resolution": 32, "n_samples": 8, "sampler": "ancestral", "steps": "50",
        "samples": {"path": str(samples), "checkpoint": "runs/demo/run"},
        "reference": {"N": 100},
        "fid": {"skipped": True, "reason": "the Inception weights file is missing", "how_to_enable": "put it there"}
        if fid_skipped else {"value": 12.345},
        "is": {"skipped": True} if fid_skipped else {"mean": 3.2, "std": 0.1},
        "rank": {"in_reference": {"n": 8, "N": 100, "mean_rank": 5.0, "mrr": 0.4, "median_rank": 3.0,
                                  "chance_mean_rank": 50.5, "chance_mrr": 0.05}},
    }  # fmt: skip
    (ev / "metrics.json").write_text(json.dumps(metrics))
    return ev


def test_entry_needs_a_finished_evaluation(tmp_path):
    ev = _eval_dir(tmp_path)
    assert evaluation_entry(ev, tmp_path / "analysis") is None  # no manifest: not finished
    (ev / "manifest.json").write_text("{}")
    entry = evaluation_entry(ev, tmp_path / "analysis")
    assert entry is not None and entry.experiment == "evaluation"
    row = entry.tables[0].rows[0]
    assert row[2:6] == [5.0, 50.5, 0.4, 0.05]
    assert entry.summary.startswith("Faithful") and entry.summary.endswith("Sampler: ancestral, 50 steps.")
    assert not any(n.startswith("Faithful") for n in entry.notes)  # said once, as the summary
    assert any("put it there" in n for n in entry.notes)  # how to enable FID / IS
    fig = entry.figures[0]
    assert (tmp_path / "analysis" / fig.path).exists() and "conditioning image" in fig.caption


def test_entry_with_fid(tmp_path):
    ev = _eval_dir(tmp_path, fid_skipped=False)
    (ev / "manifest.json").write_text("{}")
    entry = evaluation_entry(ev, tmp_path / "analysis")
    quality = [t for t in entry.tables if "quality" in t.title][0]
    assert quality.rows[0][2:4] == ["12.35", "3.20 ± 0.10"]
