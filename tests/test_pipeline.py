"""End to end: `rcdm demo` (the shipped demo profile) on reduced settings, every output
checked, then a re-run skips."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from rcdm.app.cli import cli

REDUCED = [
    "data.demo_size=32",
    "data.demo_train_per_photo=3",
    "data.demo_val_per_photo=2",
    "extract.input_size=32",
    "extract.batch_size=16",
    "extract.workers=0",
    "train.kimg=0.032",
    "train.batch_size=8",
    "train.checkpoint_kimg=0.016",
    "train.grid_kimg=0.032",
    "train.grid_steps=3",
    "train.workers=0",
    "train.eval_conditions=4",
    "train.eval_steps=ddim2",
    "sample.subset=4",
    "sample.n_per_condition=2",
    "sample.steps=4",
    "analyze.n_images=2",
    "analyze.n_samples=1",
    "analyze.steps=3",
    "analyze.probe_epochs=5",
    "analyze.n_distance=2",
    "analyze.interp_steps=3",
]


@pytest.mark.slow
def test_rcdm_run_end_to_end_then_skips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no Inception weights here
    from rcdm import viz

    sets = [a for s in REDUCED for a in ("--set", s)]
    with viz.recording() as labels:  # every label of every figure the run draws
        r = CliRunner().invoke(cli, ["demo", *sets], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len(labels) > 50
    cut = [p for lab in labels for p in viz.label_problems(lab.text, lab.lines, lab.width, viz.font(lab.font_size))]
    assert not cut, cut
    report = tmp_path / "runs/demo/analysis/report.html"
    assert f"open the report: {report.relative_to(tmp_path)}" in r.output
    # the run ends with the numbers a user came for, then the report
    tail = r.output.strip().splitlines()[-6:]
    assert tail[0].startswith("faithfulness (8 samples): ") and "MRR" in tail[0] and "chance" in tail[0], tail
    assert tail[1].startswith("  in pixel space (no encoder to fool): mean rank ") and "of 24" in tail[1]
    assert tail[2].startswith("FID / IS not computed: ") and tail[3].startswith("  to compute them: ")
    assert tail[4].startswith("tables: ") and tail[5] == f"done. open the report: {report.relative_to(tmp_path)}"
    assert "# pipeline: " in r.output and "\nbatch_size:" not in r.output  # a summary, not the YAML

    w = tmp_path / "runs/demo"
    _check_data_and_stores(tmp_path, w)
    _check_run(w)
    _check_samples_and_evaluation(w)
    _check_report(w, report)

    # a second run skips every finished stage
    r = CliRunner().invoke(cli, ["run", "--profile", "demo", *sets], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.count("finished earlier, skipping") == 6
    assert f"open the report: {report.relative_to(tmp_path)}" in r.output


def _check_data_and_stores(tmp_path, w) -> None:
    """data: the demonstration set, verified by checksum; extract: both stores, complete and verified."""
    from rcdm.store import FeatureStore, verify

    man = json.loads((tmp_path / "data/cache/demo/manifest.json").read_text())
    assert man["n_files"] == 12 * 5 and "not a benchmark" in man["notice"]
    for split, n in (("train", 36), ("val", 24)):
        assert verify(w / "stores" / split) == []
        st = FeatureStore(w / "stores" / split)
        assert len(st) == n and st.dim == 128 and st.encoder_info["name"] == "simclr-mini"  # the trained trunk


def _check_run(w) -> None:
    """train: weights, model config, log and the finished marker; the faithfulness check ran at
    each checkpoint against the val store (derived from data.val)."""
    for f in ("manifest.json", "model.json", "ema.safetensors", "log.jsonl", "config.yaml"):
        assert (w / "run" / f).exists(), f
    assert list((w / "run/grids").glob("*.png"))
    checks = [json.loads(x) for x in (w / "run/log.jsonl").read_text().splitlines() if '"faithfulness"' in x]
    assert [c["kimg"] for c in checks] == [0.016, 0.032] and all(
        c["eval_N"] == 24 and "eval_mrr_g1p5" in c for c in checks
    )
    assert json.loads((w / "run/model.json").read_text())["cond_drop"] == 0.1


def _check_samples_and_evaluation(w) -> None:
    """sample: uint8 NHWC samples with one index line each; evaluate: rank / MRR against the
    validation split, chance beside it, FID explained, the sampler named."""
    arr = np.load(w / "samples/samples.npz")["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (8, 32, 32, 3)
    assert len((w / "samples/index.jsonl").read_text().splitlines()) == 8
    assert list((w / "samples").glob("grid-*.png"))
    metrics = json.loads((w / "eval/metrics.json").read_text())
    rank = metrics["rank"]["in_reference"]
    assert rank["n"] == 8 and 1 <= rank["mean_rank"] <= 24 and rank["chance_mean_rank"] == 12.5
    assert metrics["fid"]["skipped"] and "weights-inception" in metrics["fid"]["how_to_enable"]
    assert metrics["sampler"] == "ancestral, 4 steps, guidance 1.5 rescaled 0.7"  # guided, and labelled so
    for f in ("metrics.md", "metrics.csv", "ranks.npy", "manifest.json"):
        assert (w / "eval" / f).exists(), f


def _check_report(w, report) -> None:
    """analyze: the report opens with the evaluation and holds every experiment."""
    html = report.read_text()
    assert "Evaluation" in html and "chance" in html
    assert re.search(
        r'<p class="summary">[^<]*chance[^<]*Sampler: ancestral, 4 steps, guidance 1\.5 rescaled 0\.7\.</p>', html
    )
    for title in ("Invariance", "Interpolation", "Distances", "Probe"):
        assert title.lower() in html.lower(), title
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= 8
    assert (w / "analysis/manifest.json").exists()
    from tests.test_report_browser import check_in_browser, chromium_missing

    if chromium_missing() is None:  # the report has no cut label, no squeezed figure
        assert check_in_browser(report)["images"] >= 8
