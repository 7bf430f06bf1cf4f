"""Everything one GPU can show about rcdm, in one command: ``bash bench/gpu_check.sh`` (this driver).

Parts, each a subprocess with its own timeout inside one overall budget (default 470 s), run in
order of importance; a part that fails or times out is recorded and the rest still run:

  info         device, driver, torch / CUDA / cuDNN versions, measured bf16 matmul peak
  pytest_gpu   every GPU-marked test (``pytest -m gpu``): pass / fail / skip counts
  train_*      bench/train.py rows: adm128 b32 bf16 compiled channels-last, then eager rows for
               adm64 b64, adm256 b16 and adm128 b32 (warm-up + timed steps; img/s, peak memory,
               MFU vs the measured and the datasheet peak)
  sample_*     bench/sample.py: adm128 forwards/s at batch 64 compiled + 100-step images/s,
               and the same forward replayed from a CUDA graph
  extract_*    bench/extract.py on a few thousand synthetic JPEGs, CPU-worker then GPU decoding
               (the latter also measures PIL vs nvjpeg pixel and feature differences)
  loader       bench/loader.py: training loader img/s per core, decoding vs the image cache
  e2e          ``accelerate launch --num_processes 1`` of extract -> train (adm64, a few steps)
               -> sample -> evaluate on a small synthetic set, checking every output file
               (compile off there: the benches time it; GPU decoding and the image cache on)

Writes ``<out>/gpu_check.json`` (every figure, each part's status, seconds and log file) and
``<out>/gpu_check.md`` (the table for docs/benchmarks.md). ``--cpu``: the same parts with the
tiny preset, 32 px encoder input, no compile and a handful of images, in well under a minute of
work, so CI (tests/test_gpu_check.py) exercises the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gpu_check_parts import (  # noqa: E402
    check_e2e_outputs,
    junit_counts,
    make_e2e_images,
    summary_rows,
    to_markdown,
)


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def plan(cpu: bool, out: Path) -> list[dict]:
    """The parts in order: name, argv (or a callable), timeout on a GPU / on a CPU, result file."""
    res = out / "results"
    dev = ["--device", "cpu"] if cpu else []
    train = [str(HERE / "train.py"), *dev]
    if cpu:
        train_rows = [
            (
                "train_tiny",
                [
                    "--preset",
                    "tiny",
                    "--resolution",
                    "16",
                    "--cond-dim",
                    "64",
                    "--batch-size",
                    "2",
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--compile",
                    "off",
                ],
            ),
        ]
    else:
        train_rows = [
            (
                "train_adm128_compiled",
                [
                    "--preset",
                    "adm128",
                    "--batch-size",
                    "32",
                    "--compile",
                    "on",
                    "--channels-last",
                    "on",
                    "--steps",
                    "10",
                    "--warmup",
                    "3",
                ],
            ),
            # eager: compiling each preset would not fit the budget (the adm128 rows show what compile buys)
            (
                "train_adm64_eager",
                [
                    "--preset",
                    "adm64",
                    "--batch-size",
                    "64",
                    "--compile",
                    "off",
                    "--channels-last",
                    "off",
                    "--steps",
                    "10",
                    "--warmup",
                    "2",
                ],
            ),
            (
                "train_adm256_eager",
                [
                    "--preset",
                    "adm256",
                    "--batch-size",
                    "16",
                    "--compile",
                    "off",
                    "--channels-last",
                    "off",
                    "--steps",
                    "6",
                    "--warmup",
                    "2",
                ],
            ),
            (
                "train_adm128_eager",
                [
                    "--preset",
                    "adm128",
                    "--batch-size",
                    "32",
                    "--compile",
                    "off",
                    "--channels-last",
                    "off",
                    "--steps",
                    "10",
                    "--warmup",
                    "2",
                ],
            ),
        ]
    images = out / "jpegs"
    extract = [str(HERE / "extract.py"), "--images", str(images), *dev]
    if cpu:
        extract += [
            "--n",
            "16",
            "--size",
            "96x72",
            "--input-size",
            "32",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--forward-seconds",
            "0.2",
        ]
    else:
        extract += ["--n", "3000", "--batch-size", "256", "--forward-seconds", "3"]
    sample = [str(HERE / "sample.py"), *dev]
    sample += (
        [
            "--presets",
            "tiny",
            "--image-size",
            "16",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--sample-steps",
            "2",
            "--cond-dim",
            "64",
            "--compile",
            "off",
        ]
        if cpu
        else ["--presets", "adm128", "--batch", "64", "--compile", "on", "--sample-steps", "100"]
    )
    parts = [
        {
            "name": "info",
            "argv": _py(
                str(HERE / "gpu_check_parts.py"), "info", *(["--cpu"] if cpu else []), "--out", str(res / "info.json")
            ),
            "gpu_s": 30,
            "cpu_s": 60,
            "json": res / "info.json",
        },
        {
            "name": "pytest_gpu",
            "argv": _py(
                "-m",
                "pytest",
                "-m",
                "gpu",
                "-q",
                "-n",
                "0",
                "-p",
                "no:cacheprovider",
                "--junitxml",
                str(res / "pytest_gpu.xml"),
                *(["tests/test_gpu_decode.py"] if cpu else []),
            ),
            "gpu_s": 75,
            "cpu_s": 120,
            "junit": res / "pytest_gpu.xml",
        },
        *[
            {
                "name": n,
                "argv": _py(*train, *a, "--out", str(res / f"{n}.json")),
                "gpu_s": 100 if "compiled" in n else 55,
                "cpu_s": 120,
                "json": res / f"{n}.json",
            }
            for n, a in train_rows[:1]
        ],
        {
            "name": "sample_adm128",
            "argv": _py(*sample, "--out", str(res / "sample_adm128.json")),
            "gpu_s": 75,
            "cpu_s": 120,
            "json": res / "sample_adm128.json",
        },
        *(
            []
            if cpu
            else [
                {
                    "name": "extract_cpu_decode",
                    "argv": _py(*extract, "--decode", "cpu", "--out", str(res / "extract_cpu_decode.json")),
                    "gpu_s": 50,
                    "json": res / "extract_cpu_decode.json",
                }
            ]
        ),
        {
            "name": "extract_gpu_decode",
            "argv": _py(
                *extract,
                "--decode",
                "cpu" if cpu else "gpu",
                "--compare-decode",
                "--out",
                str(res / "extract_gpu_decode.json"),
            ),
            "gpu_s": 40,
            "cpu_s": 120,
            "json": res / "extract_gpu_decode.json",
        },
        {"name": "e2e", "argv": None, "gpu_s": 75, "cpu_s": 300},
        *[
            {
                "name": n,
                "argv": _py(*train, *a, "--out", str(res / f"{n}.json")),
                "gpu_s": 45,
                "cpu_s": 120,
                "json": res / f"{n}.json",
            }
            for n, a in train_rows[1:]
        ],
    ]
    if not cpu:
        graphs = [
            str(HERE / "sample.py"),
            "--presets",
            "adm128",
            "--batch",
            "64",
            "--cuda-graphs",
            "--dtype",
            "bf16",
            "--sample-steps",
            "0",
            "--out",
            str(res / "sample_adm128_graphs.json"),
        ]
        parts.append(
            {
                "name": "sample_adm128_graphs",
                "argv": _py(*graphs),
                "gpu_s": 25,
                "json": res / "sample_adm128_graphs.json",
            }
        )
        loader = [str(HERE / "loader.py"), "--n", "200", "--resolution", "128", "--out", str(res / "loader.json")]
        parts.append({"name": "loader", "argv": _py(*loader), "gpu_s": 30, "json": res / "loader.json"})
    return parts


def _run(
    argv: list[str], timeout: float, log: Path, cwd: Path = ROOT, env: dict | None = None
) -> tuple[str, int | None]:
    """Run ``argv``; ("ok" | "failed" | "timeout", return code). Output goes to ``log``."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(p.pid, signal.SIGKILL)  # the part's whole process group (workers, compile)
            p.wait()
            return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def run_e2e(cpu: bool, out: Path, deadline: float, log: Path) -> dict:
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
    env = dict(os.environ)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cpu", action="store_true", help="tiny preset on the CPU, no compile: checks the script in seconds"
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
    deadline = start + budget
    report: dict = {"mode": "cpu" if a.cpu else "gpu", "started_utc": stamp, "budget_s": budget, "parts": {}}
    for part in plan(a.cpu, out):
        name = part["name"]
        if a.only and name not in a.only:
            continue
        left = deadline - time.monotonic()
        timeout = min(part["cpu_s" if a.cpu else "gpu_s"], left)
        log = out / "logs" / f"{name}.log"
        entry: dict = {"timeout_s": round(timeout, 1), "log": str(log.relative_to(out))}
        if timeout < 10:
            entry.update(status="skipped", why="out of the overall time budget")
            report["parts"][name] = entry
            continue
        print(f"[gpu_check] {name} (timeout {timeout:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            if part["argv"] is None:
                entry["result"] = run_e2e(a.cpu, out, time.monotonic() + timeout, log)
                entry["status"] = "ok" if entry["result"]["ok"] else "failed"
            else:
                entry["status"], entry["rc"] = _run(part["argv"], timeout, log)
                if part.get("json") and Path(part["json"]).exists():
                    entry["result"] = json.loads(Path(part["json"]).read_text())
                if part.get("junit"):
                    entry["result"] = junit_counts(Path(part["junit"]))
                    if (
                        entry["status"] == "failed"
                        and entry["result"].get("failed", 1) == 0
                        and entry["result"].get("errors", 1) == 0
                    ):
                        entry["status"] = "ok"  # pytest exits 5 when every test was deselected
        except Exception as e:  # a part's own failure never stops the check
            entry.update(status="failed", error=f"{type(e).__name__}: {e}")
        entry["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s", flush=True)
        report["parts"][name] = entry
    report["seconds"] = round(time.monotonic() - start, 1)
    report["rows"] = summary_rows(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(to_markdown(report))
    print((out / "gpu_check.md").read_text())
    print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
