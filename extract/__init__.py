"""Stage 1: run a frozen encoder over an image source and write a feature store.

``run(cfg: ExtractConfig) -> Path`` is the entry point (``rcdm extract`` calls it).
"""

from __future__ import annotations

from rcdm.extract.loop import run

__all__ = ["run"]
