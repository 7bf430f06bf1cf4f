"""The evaluation folder's contract (rcdm.run.evaldir): what its writer writes its reader reads
back, the manifest is the finished marker, a folder that is not a finished evaluation is refused
with the folder and the fix named, metrics.json's keys are the schema's, and no module but the
owner spells the folder's file names."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from rcdm.config import EvaluateConfig
from rcdm.errors import InvalidInput, MissingInput
from rcdm.run import evaldir
from rcdm.run.evaldir import FILES, METRICS_KEYS, EvalDir, write_table

from tests.evaluation_setup import fake_evaluation

REPO = Path(__file__).resolve().parents[1]


def _metrics(**kw) -> dict:
    """A metrics dict with every key of the schema but the writer's own."""
    m = {k: {} for k in METRICS_KEYS if k not in ("complete", "created")}
    m.update(method="RCDM (random-rn50, embed)", encoder="random-rn50", layer="trunk", n_samples=2, **kw)
    return m


def _write(folder: EvalDir, metrics: dict) -> Path:
    return folder.write(
        metrics,
        ranks=np.array([1, 3], np.int64),
        rank_in_reference=np.array([True, False]),
        csv="run,method\n",
        markdown="# Evaluation\n",
        config=EvaluateConfig(samples="s", reference="r", out=str(folder.path)),
        upstream={"samples_manifest_sha256": "a" * 64, "reference_manifest_sha256": "b" * 64},
    )


def test_what_the_writer_writes_the_reader_reads_back(tmp_path):
    folder = EvalDir(tmp_path / "eval")
    m = _metrics()
    path = _write(folder, m)
    assert path == folder.metrics_file and folder.finished()
    back = folder.metrics()
    assert list(back) == list(METRICS_KEYS) and back["complete"] is True and back["created"]
    assert {k: back[k] for k in m} == m
    np.testing.assert_array_equal(np.load(folder.ranks_file), [1, 3])
    np.testing.assert_array_equal(np.load(folder.rank_in_reference_file), [True, False])
    assert folder.csv_file.read_text() == "run,method\n" and folder.markdown_file.read_text() == "# Evaluation\n"
    assert "samples: s" in (folder.path / evaldir.CONFIG).read_text()
    man = json.loads(folder.manifest.read_text())
    assert man["stage"] == "evaluate" and man["files"] == list(FILES)
    assert man["samples_manifest_sha256"] == "a" * 64 and man["tool_version"]
    assert all((folder.path / f).is_file() for f in man["files"])
    # the manifest is written last: nothing in the folder is newer
    newest = max(p.stat().st_mtime_ns for p in folder.path.iterdir())
    assert folder.manifest.stat().st_mtime_ns == newest
    assert len(folder.manifest_sha256()) == 64


def test_the_writer_takes_exactly_the_schemas_keys(tmp_path):
    with pytest.raises(AssertionError, match="schema"):
        _write(EvalDir(tmp_path / "a"), {**_metrics(), "extra": 1})
    m = _metrics()
    del m["fd"]
    with pytest.raises(AssertionError, match="schema"):
        _write(EvalDir(tmp_path / "b"), m)
    assert not EvalDir(tmp_path / "b").manifest.exists()  # refused before writing


def test_a_rerun_is_unfinished_until_its_manifest_is_written(tmp_path):
    folder = EvalDir(tmp_path / "eval")
    _write(folder, _metrics())
    folder.begin()  # a new evaluation starts in the same folder
    assert not folder.finished() and folder.metrics_file.is_file()  # the old metrics are not finished ones
    with pytest.raises(MissingInput) as e:
        folder.metrics()
    assert "is not a finished evaluation" in str(e.value) and "rcdm evaluate --samples SAMPLES" in str(e.value)
    assert str(folder.path) in str(e.value)


@pytest.mark.parametrize("what", ["absent", "empty", "metrics only"])
def test_an_unfinished_folder_is_missing_input_naming_it_and_the_fix(tmp_path, what):
    d = tmp_path / "eval"
    if what != "absent":
        d.mkdir()
    if what == "metrics only":
        (d / evaldir.METRICS).write_text(json.dumps({**_metrics(), "complete": True}))
    folder = EvalDir(d)
    assert not folder.finished()
    with pytest.raises(MissingInput, match="not a finished evaluation") as e:
        folder.metrics()
    assert str(d) in str(e.value) and f"--out {d}" in str(e.value)


def test_a_folder_of_another_stage_is_refused(tmp_path):
    from tests.evaluation_setup import simple_case

    samples, store, *_ = simple_case(tmp_path)
    for d, said in ((samples, "`rcdm sample`"), (store, "names none")):
        with pytest.raises(InvalidInput, match="is not an evaluation folder") as e:
            EvalDir(d).metrics()
        assert said in str(e.value) and "--out folder of `rcdm evaluate`" in str(e.value)
        assert not EvalDir(d).finished()
    table = write_table(tmp_path / "table", csv="", tables={}, markdown="", evaluations={})
    with pytest.raises(InvalidInput, match=r"written by `rcdm evaluate --table` \(a table of evaluations\)"):
        EvalDir(table.parent).metrics()


def test_metrics_not_marked_complete_are_refused(tmp_path):
    folder = EvalDir(fake_evaluation(tmp_path / "eval", {"n_samples": 2}))
    assert folder.metrics()["n_samples"] == 2
    m = json.loads(folder.metrics_file.read_text())
    folder.metrics_file.write_text(json.dumps({**m, "complete": False}))
    with pytest.raises(InvalidInput, match="not marked complete") as e:
        folder.metrics()
    assert "rcdm evaluate" in str(e.value)
    folder.metrics_file.write_text("{")  # cut short
    with pytest.raises(InvalidInput, match="unreadable"):
        folder.metrics()


def test_the_table_folder_is_written_manifest_last(tmp_path):
    md = write_table(tmp_path / "t", csv="a\n", tables={"rows": []}, markdown="# T\n", evaluations={"e": "x"})
    man = json.loads((md.parent / evaldir.MANIFEST).read_text())
    assert md.name == evaldir.METRICS_MD and man["stage"] == "evaluate-table" and man["evaluations"] == {"e": "x"}
    assert json.loads((md.parent / evaldir.METRICS).read_text()) == {"rows": []}


# ---------------------------------------------------------------------------------- one owner
OWNED = (
    evaldir.METRICS,
    evaldir.METRICS_CSV,
    evaldir.METRICS_MD,
    evaldir.RANKS,
    evaldir.RANK_IN_REFERENCE,
    evaldir.CURVE_PNG,
    evaldir.CURVE_JSON,
)


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in ``path`` but docstrings (which may name files)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_only_the_owner_spells_the_evaluation_folders_file_names():
    """metrics.json, metrics.csv, metrics.md, ranks.npy, rank_in_reference.npy and the curve's files
    are named in rcdm.run.evaldir only: every stage and core module asks it."""
    owner = REPO / "core" / "run" / "evaldir.py"
    sources = sorted(p for f in ("core", "extract", "train", "sample", "analysis") for p in (REPO / f).rglob("*.py"))
    assert owner in sources
    bad = [
        f"{p.relative_to(REPO)}:{line}: {text!r}"
        for p in sources
        if p != owner
        for line, text in _string_literals(p)
        if any(name in text for name in OWNED)
    ]
    assert bad == []
