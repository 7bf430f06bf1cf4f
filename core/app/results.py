"""What ``rcdm sample``, ``rcdm evaluate`` and ``rcdm run`` end with: the result a user came for
(counts and pictures; mean rank, MRR and chance, FID / IS or why not) and where to look next,
read back from the files the stages wrote. No torch: the CLI imports it."""

from __future__ import annotations

import json
from pathlib import Path

from rcdm.config import PipelineConfig
from rcdm.run.evaldir import EvalDir
from rcdm.verdict import metrics_summary

__all__ = ["evaluate_lines", "run_lines", "sample_lines"]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sample_lines(out: Path) -> list[str]:
    """``rcdm sample``: how many samples of how many conditions, the pictures, the next step."""
    out = Path(out)
    m = _read(out / "manifest.json") or {}
    grids = sorted(p.name for p in out.glob("*.png"))
    lines = [
        f"{m.get('n_samples', '?')} samples of {m.get('n_conditions', '?')} condition(s), {m.get('image_size', '?')} px"
    ]
    if grids:
        lines.append(f"pictures: {', '.join(str(out / g) for g in grids)}")
    lines.append(f"next: rcdm evaluate --samples {out} --reference STORE (faithfulness: rank / MRR)")
    return lines


def evaluate_lines(metrics: Path) -> list[str]:
    """``rcdm evaluate``: the verdict with mean rank, MRR and chance, then FID / IS or why not."""
    m = _read(Path(metrics))
    if m is None:
        return []
    return [*metrics_summary(m), f"tables: {EvalDir(Path(metrics).parent).markdown_file}"]


def run_lines(cfg: PipelineConfig, stages: tuple[str, ...]) -> list[str]:
    """``rcdm run``: the evaluation's numbers (when the pipeline evaluated), before the report path."""
    if "evaluate" not in stages and "analyze" not in stages:
        return []
    metrics = EvalDir(cfg.evaluate.out).metrics_file
    return evaluate_lines(metrics) if metrics.is_file() else []
