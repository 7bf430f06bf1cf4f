"""The report's evaluation section: the verdict on its fixed scale, numbers beside chance, the
sample grids, read from a finished evaluation folder (and only from one)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rcdm.analysis.evaluation_entry import evaluation_entry, verdict
from rcdm.errors import InvalidInput
from rcdm.run.evaldir import EvalDir
from rcdm.verdict import SCALE_TEXT, grade, metrics_summary, verdict_of_metrics

from tests.evaluation_setup import fake_evaluation


def test_verdict_on_the_fixed_scale_beside_chance():
    # the demo's numbers (mean rank 32 of 192, MRR 0.154) read "weak", never "faithful"
    demo = verdict(32.03, 96.5, 0.1538, 0.0304, 192)
    assert demo.startswith(
        "Weak: MRR 0.154 (chance 0.030; chance-corrected 0.127), mean rank 32.0 of 192 (chance 96.5)"
    )
    assert SCALE_TEXT in demo and "better than chance" not in demo
    assert grade(0.19, 0.0) == "weak" and grade(0.2, 0.0) == "partial"
    assert grade(0.6, 0.0) == "partial" and grade(0.61, 0.0) == "faithful"
    assert grade(0.032, 0.03) == "no better than chance"  # within 10% of chance
    assert grade(0.5, 0.03, mean_rank=100.0, chance_rank=96.5) == "no better than chance"
    # a small reference set (24 images): MRR 0.221 is partial in absolute terms, weak above chance
    assert grade(0.221, 0.157) == "weak" and grade(0.25, 0.3) == "no better than chance"
    with_base = verdict(5.0, 50.5, 0.7, 0.05, 100, {"name": "nearest training image", "mrr": 0.8})
    assert with_base.startswith("Faithful") and "nearest training image: MRR 0.800" in with_base


def test_metrics_summary_for_the_terminal():
    m = {
        "n_samples": 8,
        "rank": {
            "in_reference": {
                "n": 8,
                "N": 100,
                "mean_rank": 5.0,
                "mrr": 0.4,
                "chance_mean_rank": 50.5,
                "chance_mrr": 0.05,
            }
        },
        "fid": {"skipped": True, "reason": "weights missing", "how_to_enable": "pass --inception-weights"},
    }
    lines = metrics_summary(m)
    assert lines[0].startswith("faithfulness (8 samples): Partial: MRR 0.400 (chance 0.050; chance-corrected 0.368)")
    assert lines[1:] == ["FID / IS not computed: weights missing", "  to compute them: pass --inception-weights"]
    m["fid"], m["is"] = {"value": 12.345}, {"mean": 3.2, "std": 0.1}
    assert metrics_summary(m)[1] == "FID 12.35, IS 3.20 ± 0.10 (8 samples)"
    assert "no rank / MRR" in metrics_summary({"rank": {}})[0]
    # the retrieval baseline rcdm evaluate computes (evaluate.train_store) is printed beside the verdict
    m["faithfulness"] = {"spaces": [{"space": "conditioning", "mrr": 0.4, "baseline": {"mrr": 0.9, "mean_rank": 1.5}}]}
    assert "retrieval baseline (nearest training image): MRR 0.900, mean rank 1.5" in metrics_summary(m)[0]
    m["faithfulness"]["spaces"][0].pop("baseline")
    assert "baseline" not in metrics_summary(m)[0]
    assert verdict_of_metrics(m).sentence == verdict(5.0, 50.5, 0.4, 0.05, 100) and verdict_of_metrics({}) is None
    # the pixel space (no encoder) gets its own line under the verdict
    m["faithfulness"]["spaces"].append({"space": "pixels", "mean_rank": 2.25, "N": 100, "mrr": 0.8, "chance_mrr": 0.05})
    assert (
        metrics_summary(m)[1] == "  in pixel space (no encoder to fool): mean rank 2.2 of 100, MRR 0.800 (chance 0.050)"
    )


def _eval_dir(tmp_path, fid_skipped=True):
    samples = tmp_path / "samples"
    samples.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(samples / "grid-000.png")
    metrics = {
        "method": "RCDM (random-rn50, embed)",
        "encoder": "random-rn50",
        "layer": "trunk",
        "resolution": 32,
        "n_samples": 8,
        "sampler": "ancestral, 50 steps",  # what evaluate writes: Sampler.label()
        "steps": "50",
        "samples": {"path": str(samples), "checkpoint": "runs/demo/run"},
        "reference": {"N": 100},
        "fid": {"skipped": True, "reason": "the Inception weights file is missing", "how_to_enable": "put it there"}
        if fid_skipped
        else {"value": 12.345},
        "is": {"skipped": True} if fid_skipped else {"mean": 3.2, "std": 0.1},
        "rank": {
            "in_reference": {
                "n": 8,
                "N": 100,
                "mean_rank": 5.0,
                "mrr": 0.4,
                "median_rank": 3.0,
                "chance_mean_rank": 50.5,
                "chance_mrr": 0.05,
            }
        },
    }
    return fake_evaluation(tmp_path / "eval", metrics)


def test_entry_needs_a_finished_evaluation(tmp_path):
    assert evaluation_entry(tmp_path / "none", tmp_path / "analysis") is None  # not evaluated
    ev = _eval_dir(tmp_path)
    EvalDir(ev).begin()  # a re-run under way: its old metrics are not a finished evaluation
    assert evaluation_entry(ev, tmp_path / "analysis") is None
    ev = _eval_dir(tmp_path)
    entry = evaluation_entry(ev, tmp_path / "analysis")
    assert entry is not None and entry.experiment == "evaluation"
    row = entry.tables[0].rows[0]
    assert row[2:6] == [5.0, 50.5, 0.4, 0.05]
    assert entry.summary.startswith("Partial: MRR 0.400 (chance 0.050; chance-corrected 0.368)")  # on the fixed scale
    assert entry.summary.endswith("Sampler: ancestral, 50 steps.")
    assert not any(n.startswith("Partial") for n in entry.notes)  # said once, as the summary
    assert any("put it there" in n for n in entry.notes)  # how to enable FID / IS
    fig = entry.figures[0]
    assert (tmp_path / "analysis" / fig.path).exists() and "conditioning image" in fig.caption


def test_entry_with_fid(tmp_path):
    ev = _eval_dir(tmp_path, fid_skipped=False)
    entry = evaluation_entry(ev, tmp_path / "analysis")
    quality = [t for t in entry.tables if "quality" in t.title][0]
    assert quality.rows[0][3:5] == ["12.35", "3.20 ± 0.10"]


def test_a_folder_of_another_stage_is_refused(tmp_path):
    """analyze.evaluations naming a table of evaluations (or any other folder with a manifest) is a
    mistake to say, not an evaluation to leave out silently."""
    from rcdm.run.evaldir import write_table

    write_table(tmp_path / "table", csv="", tables={}, markdown="", evaluations={})
    with pytest.raises(InvalidInput, match="is not an evaluation folder"):
        evaluation_entry(tmp_path / "table", tmp_path / "analysis")
