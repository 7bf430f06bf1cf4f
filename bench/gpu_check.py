"""Everything one GPU can show about rcdm, in one command: ``bash bench/gpu_check.sh`` (this driver).

Parts, each a subprocess with its own timeout inside one overall budget (default 470 s); a part
that fails or times out is recorded and the rest still run. The order (``plan``):

  info                  device, driver, torch / CUDA / cuDNN versions, measured bf16 matmul peak
  -- the headline figures, eager (nothing to compile), each part's timeout reserved --
  train_adm128_eager    bench/train.py adm128 b32 bf16: img/s, peak memory, MFU (measured / datasheet peak)
  sample_adm128_eager   bench/sample.py adm128 forwards/s at batch 64
  extract_gpu_decode    bench/extract.py on 3,000 ImageNet-sized JPEGs with nvjpeg decoding, plus the
                        PIL vs nvjpeg pixel and feature differences
  -- then --
  train_adm128_compiled the same training row compiled, channels-last; its compile time as a figure
  sample_adm128         compiled forwards/s + 100-step sampling images/s; the forward's compile time
  pytest_gpu            every GPU-marked test (``pytest -m gpu``), cheapest first, each test's outcome
                        and seconds recorded as it ends (bench/gpu_check_pytest.py)
  e2e                   ``accelerate launch --num_processes 1`` of extract -> train (adm64, a few steps)
                        -> sample -> evaluate on a small synthetic set, checking every output file
                        (compile off there: the benches time it; GPU decoding and the image cache on)
  extract_cpu_decode, sample_adm128_graphs (the forward replayed from a CUDA graph),
  train_adm64_eager, train_adm256_eager, loader (training loader img/s per core)

Time: a part gets its own timeout, cut to the budget left less the timeouts of the headline parts
still to run (``part_timeout``), so no part can starve a headline figure; parts the budget no
longer covers are recorded as skipped. A part killed at its timeout keeps what it wrote: the JSON
and the markdown are rewritten before and after every part (``complete: false`` until the end), and
SIGTERM kills the running part's process group and leaves the JSON with that part "interrupted".

Compile: every part runs with ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` in
``<out>/cache``, one cache for the whole check (a part compiling a graph an earlier part compiled,
or a second run into the same ``--out``, starts warm; each part's ``cache_files_added`` says whether
it compiled anything new); ``compile_s`` is the first compiled step (or forward) less a timed one.

Writes ``<out>/gpu_check.json`` (every figure, each part's status, seconds and log file) and
``<out>/gpu_check.md`` (the table for docs/benchmarks.md). ``--cpu``: the same plan's shape with the
tiny preset, 32 px encoder input and a handful of images (train_tiny, sample_tiny,
extract_gpu_decode with CPU decoding, train_tiny_compiled with the aot_eager backend, pytest_gpu,
e2e), so CI (tests/test_gpu_check.py, marked slow) exercises the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gpu_check_parts import (  # noqa: E402
    check_e2e_outputs,
    make_e2e_images,
    pytest_results,
    summary_rows,
    to_markdown,
)


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _bench(res: Path, name: str, script: str, args: list[str], timeout: float, headline: bool = False) -> dict:
    """A part that runs ``bench/<script>`` with ``args`` and reads its JSON from ``results/<name>.json``."""
    out = res / f"{name}.json"
    return {
        "name": name,
        "argv": _py(str(HERE / script), *args, "--out", str(out)),
        "timeout": timeout,
        "json": out,
        "headline": headline,
    }


def _train_args(preset: str, batch: int, compiled: bool, steps: int, warmup: int, *extra: str) -> list[str]:
    on = "on" if compiled else "off"
    args = ["--preset", preset, "--batch-size", str(batch), "--compile", on]
    return [*args, "--steps", str(steps), "--warmup", str(warmup), *extra]


def pytest_part(name: str, args: list[str], res: Path, timeout: float) -> dict:
    """A part that runs pytest with bench/gpu_check_pytest.py: each test's outcome is on disk as it ends."""
    log = res / f"{name}.jsonl"
    argv = _py("-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-p", "bench.gpu_check_pytest")
    return {"name": name, "argv": [*argv, "--gpu-check-log", str(log), *args], "timeout": timeout, "pytest_log": log}


def _cpu_plan(res: Path, out: Path) -> list[dict]:
    """The GPU plan's shape with the tiny preset on the CPU; the compiled row uses aot_eager (no C++ build)."""
    dev = ["--device", "cpu"]
    tiny = ["--resolution", "16", "--cond-dim", "64", *dev]
    extract = ["--images", str(out / "jpegs"), "--n", "16", "--size", "96x72", "--input-size", "32"]
    extract += ["--batch-size", "16", "--workers", "0", "--forward-seconds", "0.2", *dev]
    sample = ["--presets", "tiny", "--image-size", "16", "--batch", "2", "--iters", "1", "--warmup", "1"]
    sample += ["--sample-steps", "2", "--cond-dim", "64", "--compile", "off", *dev]
    compiled = _train_args("tiny", 2, True, 1, 1, "--compile-backend", "aot_eager", *tiny)
    return [
        _bench(res, "info", "gpu_check_parts.py", ["info", "--cpu"], 60),
        _bench(res, "train_tiny", "train.py", _train_args("tiny", 2, False, 1, 0, *tiny), 120, headline=True),
        _bench(res, "sample_tiny", "sample.py", sample, 120, headline=True),
        _bench(res, "extract_gpu_decode", "extract.py", [*extract, "--decode", "cpu", "--compare-decode"], 120, True),
        _bench(res, "train_tiny_compiled", "train.py", compiled, 180),
        pytest_part("pytest_gpu", ["-m", "gpu", "tests/test_gpu_decode.py"], res, 120),
        {"name": "e2e", "argv": None, "timeout": 300, "e2e": True},
    ]


def _gpu_plan(res: Path, out: Path) -> list[dict]:
    extract = ["--images", str(out / "jpegs"), "--n", "3000", "--batch-size", "256", "--forward-seconds", "3"]
    eager_fwd = ["--presets", "adm128", "--batch", "64", "--compile", "off", "--sample-steps", "0"]
    compiled_fwd = ["--presets", "adm128", "--batch", "64", "--compile", "on", "--sample-steps", "100"]
    graphs = ["--presets", "adm128", "--batch", "64", "--cuda-graphs", "--dtype", "bf16", "--sample-steps", "0"]
    cl_off, cl_on = ("--channels-last", "off"), ("--channels-last", "on")
    return [
        _bench(res, "info", "gpu_check_parts.py", ["info"], 30),
        # the headline figures first, eager (no compile to wait for), each with its time reserved
        _bench(res, "train_adm128_eager", "train.py", _train_args("adm128", 32, False, 10, 2, *cl_off), 60, True),
        _bench(res, "sample_adm128_eager", "sample.py", eager_fwd, 45, headline=True),
        _bench(res, "extract_gpu_decode", "extract.py", [*extract, "--decode", "gpu", "--compare-decode"], 60, True),
        # then the compiled rows (a cold inductor compile of adm128 forward + backward can take minutes)
        _bench(res, "train_adm128_compiled", "train.py", _train_args("adm128", 32, True, 10, 3, *cl_on), 180),
        _bench(res, "sample_adm128", "sample.py", compiled_fwd, 75),
        pytest_part("pytest_gpu", ["-m", "gpu"], res, 90),
        {"name": "e2e", "argv": None, "timeout": 75, "e2e": True},
        _bench(res, "extract_cpu_decode", "extract.py", [*extract, "--decode", "cpu"], 50),
        _bench(res, "sample_adm128_graphs", "sample.py", graphs, 25),
        # eager: compiling each preset would not fit the budget (the adm128 rows show what compile buys)
        _bench(res, "train_adm64_eager", "train.py", _train_args("adm64", 64, False, 10, 2, *cl_off), 45),
        _bench(res, "train_adm256_eager", "train.py", _train_args("adm256", 16, False, 6, 2, *cl_off), 45),
        _bench(res, "loader", "loader.py", ["--n", "200", "--resolution", "128"], 30),
    ]


def plan(cpu: bool, out: Path) -> list[dict]:
    """The parts in order: name, argv (None: the end-to-end run), timeout, result file, headline.

    The headline figures come first (eager adm128 training img/s, UNet forwards/s, extraction img/s
    with GPU decoding): no compile, and no later part can take their time (:func:`part_timeout`)."""
    res = out / "results"
    return _cpu_plan(res, out) if cpu else _gpu_plan(res, out)


def part_timeout(part: dict, later: list[dict], left: float) -> float:
    """The part's own timeout, cut to the time ``left`` less the timeouts of the headline parts still
    to run (a headline part is cut only by what is left)."""
    reserve = 0.0 if part.get("headline") else sum(p["timeout"] for p in later if p.get("headline"))
    return min(part["timeout"], left - reserve)


def part_env(out: Path, cpu: bool) -> dict:
    """The parts' environment: one inductor / Triton cache inside ``out`` for every part, so a later
    part (or a second run into the same folder) reuses what an earlier one compiled."""
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(out / "cache" / "inductor")
    env["TRITON_CACHE_DIR"] = str(out / "cache" / "triton")
    env.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    env.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(
    argv: list[str], timeout: float, log: Path, cwd: Path = ROOT, env: dict | None = None
) -> tuple[str, int | None]:
    """Run ``argv``; ("ok" | "failed" | "timeout", return code). Output goes to ``log``. The part's
    whole process group (workers, compile workers) is killed at the timeout, or when this is stopped."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except BaseException as e:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                return "timeout", None
            raise
    return ("ok" if rc == 0 else "failed"), rc


def run_e2e(cpu: bool, out: Path, deadline: float, log: Path, env: dict) -> dict:
    """extract (train + val) -> train -> sample -> evaluate under ``accelerate launch``; checks files."""
    work = out / "e2e"
    imgs = make_e2e_images(work / "images", n_train=32 if cpu else 256, n_val=0 if cpu else 32)
    (work / "empty.yaml").write_text("{}\n")
    launch = _py(
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *(["--cpu"] if cpu else []),
        "-m",
        "rcdm",
    )
    common = ["--config", str(work / "empty.yaml")]
    dev = ["--set", "extract.device=cpu"] if cpu else []
    preset = "tiny" if cpu else "adm64"
    steps = {
        "extract_train": [
            *launch,
            "extract",
            *common,
            "--encoder",
            "random-rn50",
            "--input-size",
            "32",
            "--source",
            str(imgs / "train"),
            "--out",
            str(work / "stores/train"),
            "--workers",
            "0",
            *dev,
        ],
        "extract_val": [
            *launch,
            "extract",
            *common,
            "--encoder",
            "random-rn50",
            "--input-size",
            "32",
            "--source",
            str(imgs / "val"),
            "--out",
            str(work / "stores/val"),
            "--workers",
            "0",
            *dev,
        ],  # --cpu: the train store serves
        "train": [
            *launch,
            "train",
            *common,
            "--store",
            str(work / "stores/train"),
            "--out",
            str(work / "run"),
            "--preset",
            preset,
            "--kimg",
            "0.016" if cpu else "0.128",
            "--batch-size",
            "8" if cpu else "32",
            "--set",
            "train.workers=0",
            "--set",
            "train.checkpoint_kimg=0.008" if cpu else "train.checkpoint_kimg=0.064",
            "--set",
            "train.grid_kimg=0",
            "--set",
            "train.compile=false",  # compile is timed by the benches; here it would eat the budget
            *(["--set", "train.resolution=16"] if cpu else []),
        ],
        "sample": [
            *launch,
            "sample",
            *common,
            "--checkpoint",
            str(work / "run"),
            "--store",
            str(work / "stores/val"),
            "--out",
            str(work / "samples"),
            "--subset",
            "4",
            "--n-per-condition",
            "2",
            "--steps",
            "2" if cpu else "25",
            "--set",
            "sample.compile=false",
            *(["--set", "sample.device=cpu"] if cpu else []),
        ],
        "evaluate": [
            *launch,
            "evaluate",
            *common,
            "--samples",
            str(work / "samples"),
            "--reference",
            str(work / "stores/val"),
            "--out",
            str(work / "eval"),
            "--fid",
            "off",
            *(["--set", "evaluate.device=cpu"] if cpu else []),
        ],
    }
    if cpu:  # seconds matter more than a separate validation store
        del steps["extract_val"]
        for argv in steps.values():
            argv[:] = [str(work / "stores/train") if v == str(work / "stores/val") else v for v in argv]
    result: dict = {"steps": {}}
    for name, argv in steps.items():
        left = deadline - time.monotonic()
        if left < 5:
            result["steps"][name] = {"status": "skipped", "why": "out of time"}
            continue
        t0 = time.monotonic()
        status, rc = _run(argv, left, log, cwd=work, env=env)
        result["steps"][name] = {"status": status, "rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        if status != "ok":
            break
    result["missing_files"] = check_e2e_outputs(work, val=not cpu)
    result["ok"] = (
        all(s.get("status") == "ok" for s in result["steps"].values())
        and len(result["steps"]) == len(steps)
        and not result["missing_files"]
    )
    return result


def run_part(part: dict, timeout: float, log: Path, env: dict, cpu: bool = False, out: Path | None = None) -> dict:
    """Run one part of the plan: {status, rc, result}. A part's result file from an earlier run into
    the same folder is removed first, so a part that dies early never reports stale figures."""
    if part.get("e2e"):
        result = run_e2e(cpu, out, time.monotonic() + timeout, log, env)
        return {"status": "ok" if result["ok"] else "failed", "result": result}
    for f in (part.get("json"), part.get("pytest_log")):
        if f is not None:
            Path(f).unlink(missing_ok=True)
    status, rc = _run(part["argv"], timeout, log, env=env)
    entry: dict = {"status": status, "rc": rc}
    if part.get("pytest_log"):
        entry["result"] = r = pytest_results(Path(part["pytest_log"]))
        if rc == 5 and not r.get("failed") and not r.get("errors"):
            entry["status"] = "ok"  # pytest exits 5 when every test was deselected
    elif part.get("json") and Path(part["json"]).exists():
        entry["result"] = json.loads(Path(part["json"]).read_text())
    return entry


def write_report(out: Path, report: dict) -> None:
    """gpu_check.json and .md as they stand (after every part: a check killed later keeps these)."""
    report["rows"] = summary_rows(report)
    for name, text in (("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"), ("gpu_check.md", None)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text if text is not None else to_markdown(report))
        tmp.replace(out / name)  # never a half-written file


def _cache_files(out: Path) -> int:
    return sum(1 for p in (out / "cache").rglob("*") if p.is_file())


def _one(part: dict, later: list[dict], deadline: float, out: Path, cpu: bool, report: dict) -> None:
    """Run one part into ``report["parts"]`` and write the report to disk before and after it."""
    name = part["name"]
    timeout = part_timeout(part, later, deadline - time.monotonic())
    log = out / "logs" / f"{name}.log"
    entry: dict = {"timeout_s": round(timeout, 1), "log": str(log.relative_to(out))}
    if part.get("headline"):
        entry["headline"] = True
    report["parts"][name] = entry
    if timeout < 10:
        entry.update(status="skipped", why="out of the overall time budget")
        write_report(out, report)
        return
    entry["status"] = "running"  # what a check killed during this part leaves on disk
    write_report(out, report)
    print(f"[gpu_check] {name} (timeout {timeout:.0f} s)", flush=True)
    t0, cached = time.monotonic(), _cache_files(out)
    try:
        entry.update(run_part(part, timeout, log, part_env(out, cpu), cpu, out))
    except KeyboardInterrupt:
        entry.update(status="interrupted", seconds=round(time.monotonic() - t0, 1))
        write_report(out, report)
        raise
    except Exception as e:  # a part's own failure never stops the check
        entry.update(status="failed", error=f"{type(e).__name__}: {e}")
    entry["seconds"] = round(time.monotonic() - t0, 1)
    entry["cache_files_added"] = _cache_files(out) - cached  # 0 for a compiling part: its compiles were cached
    print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s", flush=True)
    report["seconds"] = round(time.monotonic() - (deadline - report["budget_s"]), 1)
    write_report(out, report)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cpu", action="store_true", help="tiny preset on the CPU (compiled row: aot_eager): checks the script"
    )
    ap.add_argument("--out", default=None, help="output folder (default: runs/gpu-check-<UTC time>)")
    ap.add_argument("--budget", type=float, default=None, help="overall seconds (default 470 on a GPU, 900 with --cpu)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these parts (names as in the JSON)")
    a = ap.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(a.out or ROOT / "runs" / f"gpu-check-{stamp}").resolve()
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    budget = a.budget or (900.0 if a.cpu else 470.0)
    start = time.monotonic()
    report: dict = {
        "mode": "cpu" if a.cpu else "gpu",
        "started_utc": stamp,
        "budget_s": budget,
        "complete": False,
        "seconds": 0.0,
        "compile_cache": str(out / "cache"),
        "parts": {},
    }
    steps = plan(a.cpu, out)
    unknown = sorted(set(a.only or ()) - {p["name"] for p in steps})
    if unknown:
        ap.error(f"--only: no part {', '.join(unknown)}; the parts are {' '.join(p['name'] for p in steps)}")
    todo = [p for p in steps if not a.only or p["name"] in a.only]
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # a stopped check kills its part
    try:
        for i, part in enumerate(todo):
            _one(part, todo[i + 1 :], start + budget, out, a.cpu, report)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)
    report["seconds"] = round(time.monotonic() - start, 1)
    report["complete"] = True
    write_report(out, report)
    print((out / "gpu_check.md").read_text())
    print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
