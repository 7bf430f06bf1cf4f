"""Exponential moving averages of the model weights, at several rates.

Each rate keeps a full fp32 copy of the model (a frozen ``nn.Module``), so sampling a training grid
or saving the EMA is the same as for the model itself. The update is one fused ``_foreach_lerp_``
per rate: no host synchronisation in the training step.
"""

from __future__ import annotations

import copy

import torch
from rcdm.errors import InvalidInput
from torch import nn


def ema_rate_at(rate: float, step: int, warmup: bool) -> float:
    """The decay used after optimiser step ``step`` (1-based).

    With ``warmup`` the rate is ``min(rate, (1 + step) / (10 + step))`` (the usual EMA warm-up of
    TF / timm), so the average is useful after a few hundred steps instead of ~1/(1 - rate).
    """
    if not warmup:
        return rate
    return min(rate, (1.0 + step) / (10.0 + step))


class EMA:
    """``rates`` -> an averaged copy of ``model`` (fp32, eval mode, no gradients)."""

    def __init__(self, model: nn.Module, rates: tuple[float, ...], warmup: bool = True) -> None:
        self.rates = tuple(float(r) for r in rates)
        self.warmup = warmup
        self.models: dict[float, nn.Module] = {}
        for r in self.rates:
            m = copy.deepcopy(model).float().eval()
            m.requires_grad_(False)
            self.models[r] = m

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """ema <- rate * ema + (1 - rate) * model, for each rate (``step`` is 1-based)."""
        src = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in model.parameters()]
        for r, m in self.models.items():
            rate = ema_rate_at(r, step, self.warmup)
            dst = list(m.parameters())
            # lerp_(end, w): dst + w * (end - dst) == rate * dst + (1 - rate) * src
            torch._foreach_lerp_(dst, src, 1.0 - rate)

    def state_dicts(self) -> dict[float, dict[str, torch.Tensor]]:
        return {r: m.state_dict() for r, m in self.models.items()}

    def load_state_dicts(self, sds: dict[float, dict[str, torch.Tensor]]) -> None:
        missing = [r for r in self.rates if r not in sds]
        if missing:
            raise InvalidInput(f"the checkpoint has no EMA for rate(s) {missing}; it has {sorted(sds)}")
        for r, m in self.models.items():
            m.load_state_dict(sds[r], strict=True)

    def to(self, device: torch.device) -> EMA:
        for m in self.models.values():
            m.to(device)
        return self
