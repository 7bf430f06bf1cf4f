"""The paper's analyses, one module per experiment; each has ``run(ctx) -> Entry``."""

from __future__ import annotations

from rcdm.app.config import EXPERIMENTS as NAMES

# experiment name (as in ``analyze.experiments``; the list is the config's) -> module here
EXPERIMENTS: dict[str, str] = {name: name.replace("-", "_") for name in NAMES}
