"""bench/gpu_check.sh: the one-command GPU check, exercised on the CPU (``--cpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
import gpu_check_parts as parts  # noqa: E402


@pytest.mark.slow
def test_gpu_check_cpu_runs_every_part_and_writes_json(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    p = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "cpu"
    want = {"info", "pytest_gpu", "train_tiny", "sample_adm128", "extract_gpu_decode", "e2e"}
    assert set(report["parts"]) == want
    bad = {
        k: (v["status"], (out / v["log"]).read_text()[-1500:])
        for k, v in report["parts"].items()
        if v["status"] != "ok"
    }
    assert not bad, bad
    assert report["parts"]["info"]["result"]["matmul_peak_tflops"] > 0
    train = report["parts"]["train_tiny"]["result"]["results"][0]
    assert train["img_per_s"] > 0 and train["train_gflop_per_img"] > 0 and train["mfu"] > 0
    assert report["parts"]["sample_adm128"]["result"]["results"][0]["forwards_per_s"] > 0
    diff = report["parts"]["extract_gpu_decode"]["result"]["decode_difference"]
    assert diff["images"] == 16 and diff["pixel_max_abs_diff"] >= 0
    e2e = report["parts"]["e2e"]["result"]
    assert (
        e2e["ok"]
        and e2e["missing_files"] == []
        and set(e2e["steps"]) == {"extract_train", "train", "sample", "evaluate"}
    )
    rows = {r["figure"]: r for r in report["rows"]}
    assert rows["end-to-end smoke (accelerate launch)"]["value"] == 1.0
    assert rows["train_tiny: img/s"]["value"] == pytest.approx(train["img_per_s"], rel=1e-3)
    md = (out / "gpu_check.md").read_text()
    assert "| figure | value |" in md and "train_tiny: img/s" in md


def test_parts_out_of_budget_are_skipped_and_recorded(tmp_path):
    report = gpu_check.main(["--cpu", "--out", str(tmp_path), "--budget", "5", "--only", "info", "e2e"])
    assert {k: v["status"] for k, v in report["parts"].items()} == {"info": "skipped", "e2e": "skipped"}
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["parts"]["info"]["why"] == "out of the overall time budget"
    assert "| info | skipped |" in (tmp_path / "gpu_check.md").read_text()


def test_a_part_that_hangs_is_killed_at_its_timeout(tmp_path):
    log = tmp_path / "hang.log"
    status, rc = gpu_check._run(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2, log
    )
    assert (status, rc) == ("timeout", None)
    assert "started" in log.read_text()
    assert gpu_check._run([sys.executable, "-c", "raise SystemExit(3)"], 30, log) == ("failed", 3)


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="2">'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b"><failure/></testcase>'
        '<testcase classname="t" name="c"><skipped/></testcase><testcase classname="t" name="d"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    c = parts.junit_counts(xml)
    assert (c["tests"], c["passed"], c["failed"], c["skipped"]) == (4, 1, 1, 2) and c["failed_tests"] == ["t::b"]
    assert parts.junit_counts(tmp_path / "missing.xml") == {}


def test_summary_compares_with_targets_and_the_original():
    report = {
        "mode": "gpu",
        "started_utc": "x",
        "budget_s": 470,
        "seconds": 1.0,
        "parts": {
            "info": {"status": "ok", "result": {"device": "NVIDIA H200", "matmul_peak_tflops": 700.0}},
            "train_adm128_compiled": {
                "status": "ok",
                "result": {
                    "results": [
                        {"preset": "adm128", "img_per_s": 266.7, "peak_mem_gb": 20.0, "mfu": 0.3, "mfu_datasheet": 0.2}
                    ]
                },
            },
            "sample_adm128": {"status": "timeout"},
        },
    }
    rows = {r["figure"]: r for r in parts.summary_rows(report)}
    r = rows["train_adm128_compiled: img/s"]
    assert r["target"] == 222.0 and r["original"] == 88.9 and r["x_original"] == 3.0 and r["meets_target"] is True
    assert (
        rows["UNet forwards/s (sample bench)"]["status"] == "timeout"
        and rows["UNet forwards/s (sample bench)"]["value"] is None
    )
    report["rows"] = list(rows.values())
    assert "| train_adm128_compiled: img/s | 266.7 | img/s | 222.0 | 88.9 | 3.0 | ok |" in parts.to_markdown(report)


def test_bench_jpegs_have_imagenet_like_sizes():
    """A handful of sizes make most of the bench's JPEGs (jittering each gave ~1,300 sizes in 3,000,
    so the GPU-decode bench measured its per-size set-up)."""
    import jpegs

    sizes = jpegs.imagenet_sizes(3000)
    counts = sorted((sizes.count(s) for s in set(sizes)), reverse=True)
    assert sum(counts[:6]) >= 0.75 * 3000 and len(counts) < 400
    assert sizes == jpegs.imagenet_sizes(3000) and all(max(s) == 500 for s in sizes)
