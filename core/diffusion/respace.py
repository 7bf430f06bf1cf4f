"""Timestep respacing: sample with a subset of the training timesteps (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import torch


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> set[int]:
    """Which of the ``num_timesteps`` original steps to keep.

    ``section_counts``: ``"ddimN"`` (a constant stride giving exactly N steps, as in DDIM), or a
    comma list ``"10,15,20"`` that splits the steps into equal sections and keeps that many evenly
    spaced steps from each (``"100"``: 100 steps spread over the whole range).
    """
    spec = section_counts
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            try:
                desired = int(section_counts[len("ddim") :])
            except ValueError:
                raise ValueError(
                    f"bad respacing {spec!r}: expected 'ddimN', e.g. 'ddim50'"
                ) from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            if desired == num_timesteps:
                return set(range(num_timesteps))
            raise ValueError(
                f"cannot take exactly {desired} steps of {num_timesteps} with a constant stride "
                f"(respacing {spec!r}); use a plain count like '{desired}' instead"
            )
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing {spec!r}: expected a step count ('100'), a comma list ('10,20') "
                "or 'ddimN'"
            ) from None
    if not section_counts or any(c <= 0 for c in section_counts):
        raise ValueError(f"bad respacing {spec!r}: step counts must be positive")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"respacing {spec!r}: cannot take {count} steps from a section of {size} "
                f"(of {num_timesteps} steps in all)"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return set(kept)


def respaced_betas(
    alphas_cumprod: torch.Tensor, use_timesteps: set[int]
) -> tuple[torch.Tensor, list[int]]:
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
