"""rcdm.analysis: metrics (FID, IS, rank / MRR), evaluation tables and the paper's experiments.

The entry points import their modules lazily so that ``import rcdm.analysis`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcdm.config import AnalyzeConfig, EvaluateConfig


def evaluate(cfg: EvaluateConfig) -> Path:
    """Samples -> metrics.json / .csv / .md (FID, IS, rank, MRR). Returns metrics.json."""
    from rcdm.analysis.evaluate import evaluate as _evaluate

    return _evaluate(cfg)


def table(run_dirs: list[str], out: str) -> Path:
    """Assemble evaluated runs into the paper's Table 1a / 1b. Returns metrics.md."""
    from rcdm.analysis.evaluate import table as _table

    return _table(run_dirs, out)


def analyze(cfg: AnalyzeConfig) -> Path:
    """Run the configured experiments; returns report.html."""
    from rcdm.analysis.analyze import analyze as _analyze

    return _analyze(cfg)
