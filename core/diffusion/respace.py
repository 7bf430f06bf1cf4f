"""Timestep respacing: sample with a subset of the training timesteps (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import torch
from rcdm.config import Steps


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int] | Steps) -> set[int]:
    """Which of the ``num_timesteps`` original steps to keep (see :class:`rcdm.config.Steps`).

    ``section_counts``: ``"ddimN"``, a count ``"100"``, a comma list ``"10,15,20"`` or a list.
    """
    if isinstance(section_counts, (list, tuple)):
        section_counts = ",".join(str(c) for c in section_counts)
    return set(Steps.parse(section_counts).timesteps(num_timesteps))


def respaced_betas(alphas_cumprod: torch.Tensor, use_timesteps: set[int]) -> tuple[torch.Tensor, list[int]]:
    """Betas of the shorter chain that keeps alphas_cumprod at ``use_timesteps`` unchanged.

    Returns (betas (K,) float64, timestep_map: kept original step for each new step).
    """
    last, betas, timestep_map = 1.0, [], []
    for i, acp in enumerate(alphas_cumprod.tolist()):
        if i in use_timesteps:
            betas.append(1.0 - acp / last)
            last = acp
            timestep_map.append(i)
    return torch.tensor(betas, dtype=torch.float64), timestep_map
