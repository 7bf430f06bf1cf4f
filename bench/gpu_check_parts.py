"""Pieces of bench/gpu_check.py: the device info part, the end-to-end set and its checks, and the
summary table (each figure against its target and the original ADM code's figure).

    python bench/gpu_check_parts.py info [--cpu] [--out FILE]     # device, versions, bf16 matmul peak
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import xml.etree.ElementTree as ET
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


def junit_counts(path: Path) -> dict:
    """{tests, passed, failed, errors, skipped} from pytest's JUnit XML (empty if missing)."""
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed_names = [
        f"{tc.get('classname')}::{tc.get('name')}"
        for s in suites
        for tc in s.iter("testcase")
        if tc.find("failure") is not None or tc.find("error") is not None
    ]
    return {
        "tests": c["tests"],
        "passed": c["tests"] - c["failures"] - c["errors"] - c["skipped"],
        "failed": c["failures"],
        "errors": c["errors"],
        "skipped": c["skipped"],
        "failed_tests": failed_names[:20],
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


def summary_rows(report: dict) -> list[dict]:
    """One row per headline figure: value, target, original ADM figure, ratio to the original."""
    rows = []

    def add(what: str, value, unit: str, target=None, original=None, part: str = ""):
        st = (report["parts"].get(part) or {}).get("status", "not run")
        ratio = round(value / original, 2) if isinstance(value, (int, float)) and original else None
        rows.append(
            {
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
        )

    add("bf16 matmul peak (measured)", _first(report, "info", "matmul_peak_tflops"), "TFLOP/s", part="info")
    for part, preset, okey in (
        ("train_adm128_compiled", "adm128", "train_adm128"),
        ("train_adm128_eager", "adm128", None),
        ("train_adm64_eager", "adm64", "train_adm64"),
        ("train_adm256_eager", "adm256", "train_adm256"),
        ("train_tiny", "tiny", None),
    ):
        if part not in report["parts"]:
            continue
        add(
            f"{part}: img/s",
            _first(report, part, "img_per_s", preset),
            "img/s",
            TARGET.get(okey or ""),
            ORIGINAL.get(okey or ""),
            part,
        )
        add(
            f"{part}: peak memory",
            _first(report, part, "peak_mem_gb", preset),
            "GiB",
            None,
            ORIGINAL.get("train_adm128_mem_gb") if okey == "train_adm128" else None,
            part,
        )
        add(f"{part}: MFU (measured peak)", _first(report, part, "mfu", preset), "", part=part)
        add(f"{part}: MFU (datasheet peak)", _first(report, part, "mfu_datasheet", preset), "", part=part)
    s = "sample_adm128"
    gpu = report["mode"] == "gpu"
    add(
        "UNet forwards/s (sample bench)",
        _first(report, s, "forwards_per_s"),
        "img/s",
        TARGET["forwards_adm128"] if gpu else None,
        ORIGINAL["forwards_adm128"] if gpu else None,
        s,
    )
    add("100-step sampling (sample bench)", _first(report, s, "images_per_s"), "img/s", part=s)
    add(
        "UNet forwards/s, CUDA graph",
        _first(report, "sample_adm128_graphs", "forwards_per_s"),
        "img/s",
        TARGET["forwards_adm128"],
        ORIGINAL["forwards_adm128"],
        "sample_adm128_graphs",
    )
    for part in ("extract_cpu_decode", "extract_gpu_decode"):
        add(
            f"{part}: end to end",
            _first(report, part, "end_to_end_img_s"),
            "img/s",
            TARGET["extract"] if gpu else None,
            part=part,
        )
        add(
            f"{part}: encoding loop",
            _first(report, part, "loop_img_s"),
            "img/s",
            TARGET["extract"] if gpu else None,
            part=part,
        )
    diff = ((report["parts"].get("extract_gpu_decode") or {}).get("result") or {}).get("decode_difference") or {}
    add("decode difference: feature rel. L2 (mean)", diff.get("feature_rel_l2_mean"), "", part="extract_gpu_decode")
    add("decode difference: pixel mean abs", diff.get("pixel_mean_abs_diff"), "levels", part="extract_gpu_decode")
    per_core = ((report["parts"].get("loader") or {}).get("result") or {}).get("img_per_s_per_core") or {}
    add("train loader, full decode (per core)", per_core.get("decode_full"), "img/s", part="loader")
    add("train loader, image cache (per core)", per_core.get("cache"), "img/s", part="loader")
    t = (report["parts"].get("pytest_gpu") or {}).get("result") or {}
    add(
        "pytest -m gpu: passed",
        t.get("passed"),
        f"of {t.get('tests')}, {t.get('failed')} failed, {t.get('errors')} errors",
        part="pytest_gpu",
    )
    e2e = report["parts"].get("e2e") or {}
    add("end-to-end smoke (accelerate launch)", 1.0 if e2e.get("status") == "ok" else 0.0, "ok", part="e2e")
    return rows


def to_markdown(report: dict) -> str:
    info_ = (report["parts"].get("info") or {}).get("result") or {}
    head = (
        f"gpu_check ({report['mode']}) {report['started_utc']} UTC on {info_.get('device', '?')}, torch {info_.get('torch', '?')}, "
        f"CUDA {info_.get('cuda')}, {report['seconds']} s of {report['budget_s']:.0f} s\n\n"
    )
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
