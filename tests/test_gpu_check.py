"""bench/gpu_check.sh: the one-command GPU check, exercised on the CPU (``--cpu``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    want = ["info", "train_tiny", "sample_tiny", "extract_gpu_decode", "train_tiny_compiled", "pytest_gpu", "e2e"]
    assert list(report["parts"]) == want and report["complete"]
    bad = {
        k: (v["status"], (out / v["log"]).read_text()[-1500:])
        for k, v in report["parts"].items()
        if v["status"] != "ok"
    }
    assert not bad, bad
    assert report["parts"]["info"]["result"]["matmul_peak_tflops"] > 0
    train = report["parts"]["train_tiny"]["result"]["results"][0]
    assert train["img_per_s"] > 0 and train["train_gflop_per_img"] > 0 and train["mfu"] > 0
    assert report["parts"]["sample_tiny"]["result"]["results"][0]["forwards_per_s"] > 0
    compiled = report["parts"]["train_tiny_compiled"]["result"]["results"][0]
    assert compiled["compile"] and compiled["compile_backend"] == "aot_eager" and compiled["compile_s"] > 0
    tests = report["parts"]["pytest_gpu"]["result"]["per_test"]  # skipped without CUDA, each recorded
    assert tests and all(t["outcome"] in ("passed", "skipped") for t in tests.values())
    diff = report["parts"]["extract_gpu_decode"]["result"]["decode_difference"]
    assert diff["images"] == 16 and diff["pixel_max_abs_diff"] >= 0
    rates = report["parts"]["extract_gpu_decode"]["result"]["decode_rates"]
    assert rates["images"] == 16 and rates["decode_img_s"] > 0 and rates["decode_exact_resize_img_s"] > 0
    e2e = report["parts"]["e2e"]["result"]
    assert (
        e2e["ok"]
        and e2e["missing_files"] == []
        and set(e2e["steps"]) == {"extract_train", "train", "sample", "evaluate"}
    )
    rows = {r["figure"]: r for r in report["rows"]}
    assert rows["end-to-end smoke (accelerate launch)"]["value"] == 1.0
    assert rows["train_tiny: img/s"]["value"] == pytest.approx(train["img_per_s"], rel=1e-3)
    assert rows["train_tiny_compiled: compile time"]["value"] == pytest.approx(compiled["compile_s"], abs=1e-3)
    md = (out / "gpu_check.md").read_text()
    assert "| figure | value |" in md and "train_tiny: img/s" in md and "train_tiny_compiled: compile time" in md


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
        rows["UNet forwards/s, compiled"]["status"] == "timeout" and rows["UNet forwards/s, compiled"]["value"] is None
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


def test_bench_decode_rates_time_the_extraction_decode_with_and_without_the_resize(tmp_path, monkeypatch):
    """bench/extract.py's decode rates run the device path's own functions: the decode alone, then
    decode + exact resize / crop, which must fill every row (on the CPU here)."""
    import importlib.util

    import numpy as np
    import torch
    from PIL import Image
    from rcdm.data.preprocess import get_preprocess
    from rcdm.extract import gpudecode

    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "bench" / "extract.py")
    bench_extract = importlib.util.module_from_spec(spec)  # "extract" alone is the stage package
    spec.loader.exec_module(bench_extract)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(500, 375), (375, 500), (500, 333)] * 3):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg", quality=90)
    filled = []
    real = gpudecode.encoder_crop

    def crop(pixels, pp):
        out = real(pixels, pp)
        filled.append(out.shape)
        return out

    monkeypatch.setattr(gpudecode, "encoder_crop", crop)
    pp = get_preprocess("rcdm")
    r = bench_extract.decode_rates(tmp_path, pp, torch.device("cpu"), k=9, batch=4)
    assert r["images"] == 9 and r["decode_img_s"] > 0 and r["decode_exact_resize_img_s"] > 0
    # the timed pass with the resize cropped all 9 images (3 batches), after a warm-up batch of 4
    assert sum(s[0] for s in filled) == 4 + 9 and all(tuple(s[1:]) == (3, pp.crop, pp.crop) for s in filled)


# ------------------------------------------------------------------ surviving the first contact


def _fake_part(name: str, code: str, timeout: float, res: Path, headline: bool = False) -> dict:
    """A plan entry that runs ``code`` with ``OUT`` (its result file) and ``REPORT`` (gpu_check.json) set."""
    out = res / f"{name}.json"
    prelude = f"import json, os, shutil, time; OUT = {str(out)!r}; REPORT = {str(res.parent / 'gpu_check.json')!r}\n"
    return {"name": name, "argv": [sys.executable, "-c", prelude + code], "timeout": timeout, "json": out} | (
        {"headline": True} if headline else {}
    )


def test_pytest_part_keeps_each_finished_test_when_it_times_out(tmp_path, monkeypatch):
    """The pytest part records each test as it ends: killed at its timeout in a hanging test, the
    JSON still has the fast test's own outcome and seconds, the test that was running, and the
    cheap test ran first although the file defines it second (compiling tests go last)."""
    tests = tmp_path / "fake"
    tests.mkdir()
    (tests / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: fake\n")
    (tests / "test_fake.py").write_text(
        "import time, pytest\n"
        "@pytest.mark.gpu\ndef test_hangs_in_compile():\n    time.sleep(600)\n"
        "@pytest.mark.gpu\ndef test_fast():\n    assert 1 + 1 == 2\n"
        "@pytest.mark.gpu\ndef test_skipped():\n    pytest.skip('needs CUDA')\n"
        "def test_not_gpu():\n    raise AssertionError('deselected')\n"
    )
    out = tmp_path / "check"
    args = ["-c", str(tests / "pytest.ini"), "--rootdir", str(tests), "-m", "gpu", str(tests / "test_fake.py")]
    part = gpu_check.pytest_part("pytest_gpu", args, out / "results", 15)
    monkeypatch.setattr(gpu_check, "plan", lambda cpu, out_: [part])
    gpu_check.main(["--cpu", "--out", str(out), "--budget", "60"])
    entry = json.loads((out / "gpu_check.json").read_text())["parts"]["pytest_gpu"]
    assert entry["status"] == "timeout", entry
    r = entry["result"]
    fast, skipped, hangs = (f"test_fake.py::{n}" for n in ("test_fast", "test_skipped", "test_hangs_in_compile"))
    assert r["per_test"][fast]["outcome"] == "passed" and 0 <= r["per_test"][fast]["seconds"] < 5
    assert r["per_test"][skipped]["outcome"] == "skipped" and "needs CUDA" in r["per_test"][skipped]["message"]
    assert r["per_test"][hangs] == {"outcome": "unfinished"} and r["unfinished"] == [hangs]
    assert (r["tests"], r["passed"], r["failed"], r["skipped"]) == (2, 1, 0, 1)
    rows = {x["figure"]: x for x in json.loads((out / "gpu_check.json").read_text())["rows"]}
    assert rows["pytest -m gpu: passed"]["value"] == 1 and hangs in rows["pytest -m gpu: passed"]["unit"]


def test_pytest_results_reads_a_log_cut_short(tmp_path):
    log = tmp_path / "p.jsonl"
    log.write_text(
        '{"event": "start", "nodeid": "t.py::a"}\n{"event": "done", "nodeid": "t.py::a", "outcome": "failed", '
        '"seconds": 1.5, "message": "assert 0"}\n{"event": "start", "nodeid": "t.py::b"}\n{"event": "do'
    )
    r = parts.pytest_results(log)
    assert r["per_test"]["t.py::a"] == {"outcome": "failed", "seconds": 1.5, "message": "assert 0"}
    assert (r["tests"], r["failed"], r["failed_tests"], r["unfinished"]) == (1, 1, ["t.py::a"], ["t.py::b"])
    assert parts.pytest_results(tmp_path / "missing.jsonl") == {}


@pytest.mark.parametrize("cpu", [False, True])
def test_plan_runs_the_headline_figures_first_with_their_time_reserved(tmp_path, cpu):
    """info, then eager training img/s, UNet forwards/s and extraction with GPU decoding (no
    compile), then the compiled rows, then pytest and e2e; even if every part before runs to its
    timeout, each headline part keeps its whole timeout within the default budget."""
    steps = gpu_check.plan(cpu, tmp_path)
    names = [p["name"] for p in steps]
    want = ["train_tiny", "sample_tiny"] if cpu else ["train_adm128_eager", "sample_adm128_eager"]
    assert names[:4] == ["info", *want, "extract_gpu_decode"]
    assert [p["name"] for p in steps if p.get("headline")] == names[1:4]

    def compile_flag(p: dict) -> str | None:
        argv = p["argv"] or []
        return argv[argv.index("--compile") + 1] if "--compile" in argv else None

    assert [compile_flag(p) for p in steps[1:3]] == ["off", "off"]
    compiled = [i for i, p in enumerate(steps) if compile_flag(p) == "on"]
    assert compiled and compiled[0] == 4 and max(compiled) < names.index("pytest_gpu") < names.index("e2e")
    left = 900.0 if cpu else 470.0
    for i, p in enumerate(steps):
        t = gpu_check.part_timeout(p, steps[i + 1 :], left)
        if p.get("headline"):
            assert t == p["timeout"], p["name"]
        left -= max(t, 0)


def test_part_timeout_reserves_the_headline_parts_time():
    slow = {"name": "slow", "timeout": 300}
    head = [{"name": "h1", "timeout": 60, "headline": True}, {"name": "h2", "timeout": 40, "headline": True}]
    assert gpu_check.part_timeout(slow, head, 200) == 100  # 200 s left, 100 reserved for h1 + h2
    assert gpu_check.part_timeout(slow, [], 200) == 200
    assert gpu_check.part_timeout(head[0], head[1:], 50) == 50  # a headline part: only what is left


def test_a_part_over_its_timeout_leaves_the_earlier_results_on_disk(tmp_path, monkeypatch):
    """The JSON is written before and after every part: a part reading it at its start sees parts
    1..k finished (a check killed then keeps them), a part killed at its timeout takes nothing
    from the parts before it, and every part gets the compile cache folder in its environment."""
    out, res = tmp_path / "check", tmp_path / "check" / "results"
    env_keys = ["TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]
    fake = [
        _fake_part(
            "first",
            f"json.dump({{k: os.environ.get(k) for k in {env_keys}}}, open(OUT, 'w'))\n"
            "d = os.environ['TORCHINDUCTOR_CACHE_DIR']; os.makedirs(d); open(d + '/graph', 'w').close()",
            30,
            res,
            True,
        ),
        _fake_part("hangs", "json.dump({'early': 1}, open(OUT, 'w')); time.sleep(600)", 10, res),
        _fake_part("snapshot", "shutil.copy(REPORT, OUT)", 30, res),
    ]
    monkeypatch.setattr(gpu_check, "plan", lambda cpu, out_: fake)
    report = gpu_check.main(["--cpu", "--out", str(out), "--budget", "120"])
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["complete"] and {k: v["status"] for k, v in saved["parts"].items()} == {
        "first": "ok",
        "hangs": "timeout",
        "snapshot": "ok",
    }
    cache = out / "cache"
    assert saved["parts"]["first"]["result"] == {
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }
    assert saved["compile_cache"] == str(cache) and report["parts"]["hangs"]["timeout_s"] == 10
    assert [p["cache_files_added"] for p in saved["parts"].values()] == [1, 0, 0]  # what each part compiled
    snap = saved["parts"]["snapshot"]["result"]  # gpu_check.json on disk while part 3 ran
    assert not snap["complete"] and snap["parts"]["first"] == saved["parts"]["first"]
    assert snap["parts"]["hangs"]["status"] == "timeout" and snap["parts"]["snapshot"]["status"] == "running"
    assert "Incomplete" in parts.to_markdown(snap) and "Incomplete" not in (out / "gpu_check.md").read_text()


def test_a_stale_result_file_is_not_reported(tmp_path, monkeypatch):
    """A second run into the same folder: a part that now dies before writing its JSON reports no figure."""
    out, res = tmp_path / "check", tmp_path / "check" / "results"
    res.mkdir(parents=True)
    (res / "dies.json").write_text('{"img_per_s": 123}')
    monkeypatch.setattr(gpu_check, "plan", lambda cpu, out_: [_fake_part("dies", "raise SystemExit(1)", 30, res)])
    before = signal.getsignal(signal.SIGTERM)
    entry = gpu_check.main(["--cpu", "--out", str(out), "--budget", "60"])["parts"]["dies"]
    assert entry["status"] == "failed" and "result" not in entry
    assert signal.getsignal(signal.SIGTERM) is before  # main's SIGTERM handler is its own while it runs


def test_a_stopped_check_kills_its_part_and_keeps_its_json(tmp_path):
    """SIGTERM to the check (a device lease running out): the running part's process group is
    killed, the part says interrupted, and the JSON keeps the parts before it."""
    out, res = tmp_path / "check", tmp_path / "check" / "results"
    pid_file = tmp_path / "child.pid"
    fake = [
        _fake_part("first", "json.dump({'v': 1}, open(OUT, 'w'))", 30, res),
        _fake_part("hangs", f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)", 120, res),
    ]
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import gpu_check; "
        f"gpu_check.plan = lambda cpu, out: {fake!r}; gpu_check.main(['--cpu', '--out', {str(out)!r}])"
    ).replace("PosixPath(", "str(")
    p = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and p.poll() is None, "the hanging part never started"
            time.sleep(0.2)
        child = int(pid_file.read_text())
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) != 0
    finally:
        p.kill()
    saved = json.loads((out / "gpu_check.json").read_text())
    assert not saved["complete"] and saved["parts"]["first"]["result"] == {"v": 1}
    assert saved["parts"]["hangs"]["status"] == "interrupted"
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_bench_train_reports_the_compile_time(tmp_path):
    """bench/train.py with compile (aot_eager on the CPU): the first step less a timed one."""
    out = tmp_path / "t.json"
    args = ["--preset", "tiny", "--device", "cpu", "--batch-size", "2", "--resolution", "16", "--cond-dim", "8"]
    args += ["--steps", "1", "--warmup", "1", "--compile", "on", "--compile-backend", "aot_eager", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train.py"), *args], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (r,) = json.loads(out.read_text())["results"]
    assert r["compile"] and r["compile_backend"] == "aot_eager"
    assert r["compile_s"] == pytest.approx(r["first_step_s"] - r["step_time_s"]) and r["compile_s"] > 0
    report = {
        "mode": "cpu",
        "parts": {"train_tiny_compiled": {"status": "ok", "result": {"results": [r]}}},
    }
    rows = {x["figure"]: x for x in parts.summary_rows(report)}
    assert rows["train_tiny_compiled: compile time"]["value"] == pytest.approx(r["compile_s"], abs=1e-3)


def test_sample_bench_writes_the_forwards_before_sampling(tmp_path):
    """bench/sample.py saves its JSON once the forwards/s are measured: the compiled sample part
    killed during its 100-step sampling still reports its forwards/s and compile time."""
    out = tmp_path / "s.json"
    args = ["--presets", "tiny", "--image-size", "16", "--batch", "8", "--iters", "1", "--warmup", "1"]
    args += ["--sample-steps", "1000", "--cond-dim", "8", "--compile", "off", "--device", "cpu", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sample.py"), *args], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not out.exists():
            assert time.monotonic() < deadline and p.poll() is None, "no JSON before the sampling run"
            time.sleep(0.1)
        (row,) = json.loads(out.read_text())["results"]
        assert p.poll() is None  # still sampling: 1,000 steps
    finally:
        p.kill()
        p.wait()
    assert row["forwards_per_s"] > 0 and row["first_forward_s"] > 0 and "images_per_s" not in row


def test_only_with_an_unknown_part_says_which_parts_there_are(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--cpu", "--out", str(tmp_path), "--only", "info", "train_adm128"])
    err = capsys.readouterr().err
    assert "--only: no part train_adm128; the parts are info train_tiny sample_tiny" in err
