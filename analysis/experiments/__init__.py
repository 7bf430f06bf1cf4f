"""The paper's analyses, one module per experiment; each has ``run(ctx) -> Entry``."""

from __future__ import annotations

# experiment name (as in ``analyze.experiments``) -> module under rcdm.analysis.experiments
EXPERIMENTS: dict[str, str] = {
    "invariance": "invariance",
    "probe": "probe",
    "adversarial": "adversarial",
    "manipulation": "manipulation",
    "interpolation": "interpolation",
    "distances": "distances",
    "neighbours": "neighbours",
    "class-mean": "class_mean",
    "training-dynamics": "training_dynamics",
}
