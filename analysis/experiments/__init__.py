"""The paper's analyses, one module per experiment; each has ``run(ctx) -> Entry``."""

from __future__ import annotations

from rcdm.config import EXPERIMENTS as NAMES
from rcdm.config import EXTRA_EXPERIMENTS

# experiment name (as in ``analyze.experiments``; the lists are the config's) -> module here
EXPERIMENTS: dict[str, str] = {name: name.replace("-", "_") for name in NAMES + EXTRA_EXPERIMENTS}
