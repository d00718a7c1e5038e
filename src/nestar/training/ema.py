"""Exponential moving average of model weights, kept as a module (saved next to the model)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up so early averages are not dominated by the random init: min(decay, (1+s)/(10+s))."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, decay: float) -> None:
        d = ema_decay_at(step, decay)
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
