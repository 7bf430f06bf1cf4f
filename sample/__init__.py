"""rcdm.sample: draw images from representations (stage 3a).

``run(cfg: SampleConfig) -> Path`` is the entry point; see ``stage.py``. Conditions are built
in ``conds.py`` (pure maths in ``rcdm.diffusion.conditions``), grids in ``outputs.py``; the
sample set's files are written by ``rcdm.run.sampleset``.
"""

from __future__ import annotations

from rcdm.sample.stage import run

__all__ = ["run"]
