"""`rcdm evaluate --table`: every row names its run, a note shared by the runs is said once, and
only finished evaluations are assembled."""

from __future__ import annotations

import json

import pytest
from rcdm.analysis.evaluation.tables import run_labels, table
from rcdm.run.evaldir import EvalDir

from tests.evaluation_setup import fake_evaluation


def _evaluation(d, outside: int = 0):
    m = {
        "complete": True,
        "method": "RCDM (random-rn50, embed)",
        "encoder": "random-rn50",
        "layer": "trunk",
        "resolution": 32,
        "n_samples": 8,
        "sampler": "ancestral, 50 steps",
        "steps": "50",
        "samples": {"path": str(d / "s")},
        "fid": {"skipped": True, "reason": "no weights", "how_to_enable": "pass --inception-weights"},
        "is": {"skipped": True, "reason": "no weights", "how_to_enable": "pass --inception-weights"},
        "rank": {
            "in_reference": {
                "n": 8,
                "N": 24,
                "mean_rank": 5.0,
                "mrr": 0.3,
                "median_rank": 4.0,
                "chance_mean_rank": 12.5,
                "chance_mrr": 0.16,
            },
            "outside_reference": {"n": outside, "N": 25, "mean_rank": 3.0, "mrr": 0.5} if outside else {},
        },
    }
    return fake_evaluation(d, m)


def test_rows_name_their_run_and_notes_are_not_repeated(tmp_path):
    a = _evaluation(tmp_path / "dino" / "eval")
    b = _evaluation(tmp_path / "simclr" / "eval", outside=2)
    c = _evaluation(tmp_path / "supervised")
    md = table([str(a), str(b), str(c)], str(tmp_path / "t")).read_text()
    j = json.loads(EvalDir(tmp_path / "t").metrics_file.read_text())
    assert [r["run"] for r in j["table_1b"]] == ["dino/eval", "simclr/eval", "supervised"]
    assert [r["run"] for r in j["table_1a"]] == ["dino/eval", "simclr/eval", "supervised"]
    assert "| dino/eval | random-rn50 (trunk) |" in md
    assert md.count("FID and IS skipped (no weights)") == 1  # shared by all three: said once
    assert "conditioned outside the reference set" in md and "(run simclr/eval)" in md  # one run's note names it
    assert EvalDir(tmp_path / "t").csv_file.read_text().splitlines()[1].startswith("dino/eval,")


def test_run_labels_are_short_and_distinct(tmp_path):
    assert run_labels([tmp_path / "x" / "dino", tmp_path / "x" / "simclr"]) == ["dino", "simclr"]
    assert run_labels([tmp_path / "a" / "eval", tmp_path / "b" / "eval"]) == ["a/eval", "b/eval"]
    assert run_labels([tmp_path / "e", tmp_path / "e"]) == ["e", "e #2"]


def test_table_refuses_unfinished_evaluations(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished evaluation"):
        table([str(tmp_path / "e")], str(tmp_path / "t"))
    with pytest.raises(ValueError, match="at least one"):
        table([], str(tmp_path / "t"))
    done = _evaluation(tmp_path / "done")
    with pytest.raises(ValueError, match="is not an evaluation folder"):  # a table is not an evaluation
        table([str(done), str(table([str(done)], str(tmp_path / "t")).parent)], str(tmp_path / "t2"))
    assert not (tmp_path / "t2").exists()  # refused before any output
