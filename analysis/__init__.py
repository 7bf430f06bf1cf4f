"""rcdm.analysis: metrics (FID, IS, rank / MRR), evaluation tables and the paper's experiments.

Entry points:
- ``evaluate(cfg: EvaluateConfig) -> Path``: samples -> metrics.json / .csv / .md.
- ``table(run_dirs, out) -> Path``: several evaluated runs -> the paper's Table 1a / 1b.
- ``analyze(cfg: AnalyzeConfig) -> Path``: the configured experiments -> report.html.

The functions are imported after their submodules, so the package attributes are the functions
(importing a submodule would otherwise rebind ``rcdm.analysis.evaluate`` to the module).
"""

from __future__ import annotations

from rcdm.analysis.analyze import analyze
from rcdm.analysis.evaluate import evaluate, table

__all__ = ["analyze", "evaluate", "table"]
