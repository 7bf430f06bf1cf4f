"""rcdm.analysis: metrics (FID, IS, rank / MRR), evaluation tables and the paper's experiments.

Entry points:
- ``evaluate(cfg: EvaluateConfig) -> Path``: samples -> metrics.json / .csv / .md.
- ``table(run_dirs, out) -> Path``: several evaluated runs -> the paper's Table 1a / 1b.
- ``analyze(cfg: AnalyzeConfig) -> Path``: the configured experiments -> report.html.
- ``curve.curve(runs, out) -> Path``: faithfulness against training images, several runs.

Modules:
- ``evaluation/``: ``rcdm evaluate`` and every metric it computes (see its ``__init__``).
- ``analyze.py``: ``rcdm analyze``; ``report.py``: the report's entries and report.html.
- ``evaluation_entry.py``: the report's section on what ``rcdm evaluate`` measured.
- ``prior_entry.py``: the report's learned prior vs KDE; ``recipe.py``: a run's recipe in words.
- ``probe.py``: the linear probe and FGSM; ``experiments/``: the paper's experiments.
"""

from __future__ import annotations

from rcdm.analysis.analyze import analyze
from rcdm.analysis.evaluation import evaluate, table

__all__ = ["analyze", "evaluate", "table"]
