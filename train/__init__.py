"""rcdm.train: stage 2, train RCDM on a feature store (``run(cfg: TrainConfig) -> Path``)."""

from __future__ import annotations

from rcdm.train.loop import NonFiniteLoss, run

__all__ = ["run", "NonFiniteLoss"]
