"""Pieces of bench/gpu_check.py: the device info part, the end-to-end set and its checks, and the
summary table (each figure against its target and the original ADM code's figure).

    python bench/gpu_check_parts.py info [--cpu] [--out FILE]     # device, versions, bf16 matmul peak
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

# The figures for the original code (guided-diffusion, fp16, one H100) and rcdm's targets.
ORIGINAL = {
    "train_adm128": 88.9,
    "train_adm128_mem_gb": 37.6,
    "forwards_adm128": 280.0,
    "train_adm64": 154.3,
    "train_adm256": 26.2,
}
TARGET = {"train_adm128": 222.0, "forwards_adm128": 840.0, "extract": 5000.0}


def info(cpu: bool) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flops import datasheet_tflops, measure_peak_tflops

    cuda = torch.cuda.is_available() and not cpu
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu")
    d: dict = {
        "device": name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu_cores": len(__import__("os").sched_getaffinity(0)),
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        d.update(
            memory_gb=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
        try:
            import subprocess

            d["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except Exception:
            d["driver"] = None
    dtype = torch.bfloat16 if cuda else torch.float32
    d["matmul_peak_tflops"] = round(measure_peak_tflops(device, dtype, None if cuda else 512), 3)
    d["matmul_dtype"] = str(dtype).replace("torch.", "")
    d["datasheet_bf16_tflops"] = datasheet_tflops(name) if cuda else None
    return d


def pytest_results(path: Path) -> dict:
    """Each test's outcome and seconds from the plugin's JSON lines (bench/gpu_check_pytest.py), and
    the counts {tests, passed, failed, errors, skipped}; ``unfinished``: tests that started and never
    ended (the part was killed while they ran). Empty if the file is missing: pytest never started a test."""
    if not path.exists():
        return {}
    per_test: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if rec.get("event") == "start":
            per_test.setdefault(rec["nodeid"], {"outcome": "unfinished"})
        elif rec.get("event") == "done":
            per_test[rec["nodeid"]] = {k: v for k, v in rec.items() if k not in ("event", "nodeid")}
    outcomes = [t["outcome"] for t in per_test.values()]
    done = [n for n, t in per_test.items() if t["outcome"] != "unfinished"]
    return {
        "tests": len(done),
        "passed": outcomes.count("passed") + outcomes.count("xfailed"),
        "failed": outcomes.count("failed") + outcomes.count("xpassed"),
        "errors": outcomes.count("error"),
        "skipped": outcomes.count("skipped"),
        "failed_tests": [n for n, t in per_test.items() if t["outcome"] in ("failed", "error", "xpassed")][:20],
        "unfinished": [n for n, t in per_test.items() if t["outcome"] == "unfinished"],
        "per_test": per_test,
    }


def make_e2e_images(root: Path, n_train: int, n_val: int) -> Path:
    """root/{train,val}/cls_K/*.jpg: smooth random photos, 4 classes, 80x60 and 60x80."""
    from PIL import Image

    for split, n in (("train", n_train), ("val", n_val)):
        if n == 0:
            continue
        for i in range(n):
            rng = np.random.default_rng(i + (10_000 if split == "val" else 0))
            w, h = (80, 60) if i % 3 else (60, 80)
            small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            d = root / split / f"cls_{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"img_{i:04d}.jpg", quality=90)
    return root


# What each stage must leave behind (relative to the e2e folder); a glob must match something.
E2E_FILES = [
    "stores/train/manifest.json",
    "stores/train/config.yaml",
    "run/model.json",
    "run/ema.safetensors",
    "run/log.jsonl",
    "run/config.yaml",
    "run/manifest.json",
    "run/checkpoints/step-*/state.json",
    "run/checkpoints/step-*/model.safetensors",
    "samples/manifest.json",
    "samples/samples.npz",
    "samples/index.jsonl",
    "eval/metrics.json",
    "eval/metrics.csv",
    "eval/metrics.md",
    "eval/ranks.npy",
]


def check_e2e_outputs(work: Path, val: bool = True) -> list[str]:
    """The expected outputs that are missing or unreadable (empty: all there and sane)."""
    missing = [f for f in E2E_FILES + (["stores/val/manifest.json"] if val else []) if not list(work.glob(f))]
    try:
        samples = np.load(work / "samples" / "samples.npz")["arr_0"]
        if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[0] != 8:
            missing.append(
                f"samples/samples.npz: unexpected array {samples.dtype} {samples.shape} (want 8 uint8 images)"
            )
        m = json.loads((work / "eval" / "metrics.json").read_text())
        if not any(k for k in json.dumps(m).split('"') if "mrr" in k.lower()):
            missing.append("eval/metrics.json: no MRR figure")
    except Exception as e:
        missing.append(f"unreadable output: {type(e).__name__}: {str(e)[:160]}")
    return missing


def _first(report: dict, part: str, key: str, preset: str | None = None):
    res = (report["parts"].get(part) or {}).get("result") or {}
    rows = res.get("results") if isinstance(res.get("results"), list) else [res]
    for r in rows:
        if preset is None or r.get("preset") == preset:
            return r.get(key)
    return None


def _row(report: dict, what: str, value, unit: str, target=None, original=None, part: str = "") -> dict:
    st = (report["parts"].get(part) or {}).get("status", "not run")
    ratio = round(value / original, 2) if isinstance(value, (int, float)) and original else None
    return {
        "figure": what,
        "value": None if value is None else round(float(value), 3),
        "unit": unit,
        "target": target,
        "original": original,
        "x_original": ratio,
        "meets_target": None if target is None or value is None else value >= target,
        "part": part,
        "status": st,
    }


# (part, preset, key of ORIGINAL / TARGET): the training rows, in the plan's order
TRAIN_PARTS = (
    ("train_adm128_eager", "adm128", None),
    ("train_adm128_compiled", "adm128", "train_adm128"),
    ("train_adm64_eager", "adm64", "train_adm64"),
    ("train_adm256_eager", "adm256", "train_adm256"),
    ("train_tiny", "tiny", None),
    ("train_tiny_compiled", "tiny", None),
)
# (part, label): the sampling rows; the forward targets apply on a GPU
SAMPLE_PARTS = (("sample_adm128_eager", "eager"), ("sample_adm128", "compiled"), ("sample_tiny", "tiny, eager"))


def _train_rows(report: dict) -> list[dict]:
    rows = []
    for part, preset, okey in TRAIN_PARTS:
        if part not in report["parts"]:
            continue
        rows_ = (report["parts"][part].get("result") or {}).get("results") or []
        first = next((r for r in rows_ if r.get("preset") == preset), {}).get
        target, original = TARGET.get(okey or ""), ORIGINAL.get(okey or "")
        rows.append(_row(report, f"{part}: img/s", first("img_per_s"), "img/s", target, original, part))
        mem_original = ORIGINAL["train_adm128_mem_gb"] if okey == "train_adm128" else None
        rows.append(_row(report, f"{part}: peak memory", first("peak_mem_gb"), "GiB", None, mem_original, part))
        if "compiled" in part:
            rows.append(_row(report, f"{part}: compile time", first("compile_s"), "s", part=part))
        rows.append(_row(report, f"{part}: MFU (measured peak)", first("mfu"), "", part=part))
        rows.append(_row(report, f"{part}: MFU (datasheet peak)", first("mfu_datasheet"), "", part=part))
    return rows


def _sample_rows(report: dict) -> list[dict]:
    gpu = report["mode"] == "gpu"
    target, original = (TARGET["forwards_adm128"], ORIGINAL["forwards_adm128"]) if gpu else (None, None)
    rows = []
    for part, label in SAMPLE_PARTS:
        if part not in report["parts"]:
            continue
        fwd = _first(report, part, "forwards_per_s")
        rows.append(_row(report, f"UNet forwards/s, {label}", fwd, "img/s", target, original, part))
        if part != "sample_adm128_eager":
            steps = _first(report, part, "sample_steps")
            what = f"{steps or 'N'}-step sampling, {label}"
            rows.append(_row(report, what, _first(report, part, "images_per_s"), "img/s", part=part))
        if label == "compiled":
            rows.append(_row(report, "UNet forward compile time", _first(report, part, "compile_s"), "s", part=part))
    if "sample_adm128_graphs" in report["parts"]:
        fwd = _first(report, "sample_adm128_graphs", "forwards_per_s")
        rows.append(_row(report, "UNet forwards/s, CUDA graph", fwd, "img/s", target, original, "sample_adm128_graphs"))
    return rows


def _extract_rows(report: dict) -> list[dict]:
    target = TARGET["extract"] if report["mode"] == "gpu" else None
    rows = []
    for part in ("extract_gpu_decode", "extract_cpu_decode"):
        if part not in report["parts"]:
            continue
        for key, label in (("end_to_end_img_s", "end to end"), ("loop_img_s", "encoding loop")):
            rows.append(_row(report, f"{part}: {label}", _first(report, part, key), "img/s", target, part=part))
    diff = ((report["parts"].get("extract_gpu_decode") or {}).get("result") or {}).get("decode_difference") or {}
    p = "extract_gpu_decode"
    rows.append(_row(report, "decode difference: feature rel. L2 (mean)", diff.get("feature_rel_l2_mean"), "", part=p))
    rows.append(_row(report, "decode difference: pixel mean abs", diff.get("pixel_mean_abs_diff"), "levels", part=p))
    rates = ((report["parts"].get(p) or {}).get("result") or {}).get("decode_rates") or {}
    rows.append(_row(report, "device decode alone", rates.get("decode_img_s"), "img/s", part=p))
    rows.append(
        _row(report, "device decode + exact resize/crop", rates.get("decode_exact_resize_img_s"), "img/s", part=p)
    )
    return rows


def summary_rows(report: dict) -> list[dict]:
    """One row per figure: value, target, original ADM figure, ratio to the original (the headline
    figures first, as the parts run)."""
    rows = [
        _row(
            report, "bf16 matmul peak (measured)", _first(report, "info", "matmul_peak_tflops"), "TFLOP/s", part="info"
        )
    ]
    rows += _train_rows(report) + _sample_rows(report) + _extract_rows(report)
    if "loader" in report["parts"]:
        per_core = ((report["parts"].get("loader") or {}).get("result") or {}).get("img_per_s_per_core") or {}
        rows.append(
            _row(report, "train loader, full decode (per core)", per_core.get("decode_full"), "img/s", part="loader")
        )
        rows.append(_row(report, "train loader, image cache (per core)", per_core.get("cache"), "img/s", part="loader"))
    t = (report["parts"].get("pytest_gpu") or {}).get("result") or {}
    unit = f"of {t['tests']}, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped" if t else "tests"
    if t.get("unfinished"):
        unit += f"; killed in {', '.join(t['unfinished'])}"
    rows.append(_row(report, "pytest -m gpu: passed", t.get("passed"), unit, part="pytest_gpu"))
    e2e = report["parts"].get("e2e") or {}
    ok = None if e2e.get("status") in (None, "running", "skipped") else float(e2e.get("status") == "ok")
    rows.append(_row(report, "end-to-end smoke (accelerate launch)", ok, "ok", part="e2e"))
    return rows


def to_markdown(report: dict) -> str:
    info_ = (report["parts"].get("info") or {}).get("result") or {}
    head = (
        f"gpu_check ({report['mode']}) {report['started_utc']} UTC on {info_.get('device', '?')}, torch {info_.get('torch', '?')}, "
        f"CUDA {info_.get('cuda')}, {report['seconds']} s of {report['budget_s']:.0f} s\n\n"
    )
    if not report.get("complete", True):
        running = [n for n, p in report["parts"].items() if p.get("status") in ("running", "interrupted")]
        head += f"**Incomplete**: the check stopped{' during ' + running[0] if running else ''}; these are the parts it finished.\n\n"
    if report.get("compile_cache"):
        head += f"Compile cache (inductor, Triton) shared by the parts: `{report['compile_cache']}`\n\n"
    lines = [
        "| figure | value | unit | target | original ADM | x original | part status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        v = "—" if r["value"] is None else f"{r['value']:g}"
        lines.append(
            f"| {r['figure']} | {v} | {r['unit']} | {r['target'] or ''} | {r['original'] or ''} | {r['x_original'] or ''} | {r['status']} |"
        )
    parts = ["", "| part | status | seconds | timeout |", "|---|---|---|---|"]
    for name, p in report["parts"].items():
        parts.append(f"| {name} | {p.get('status')} | {p.get('seconds', '')} | {p.get('timeout_s', '')} |")
    return head + "\n".join(lines + parts) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["info"])
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    text = json.dumps(info(a.cpu), indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
