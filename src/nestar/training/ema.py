"""Exponential moving average of model weights, kept as a plain module copy.

The EMA is an ordinary nn.Module (same class as the model), so it is saved, exported and sampled
from exactly like the model itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up so early averages are not dominated by the random init: min(decay, (1+s)/(10+s))."""
    return min(decay, (1 + step) / (10 + step))


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of `model` that `update_ema` averages into."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> float:
    """ema <- d * ema + (1 - d) * model with d = ema_decay_at(step, decay); buffers are copied.

    Returns the decay used.
    """
    d = ema_decay_at(step, decay)
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    if len(e_params) != len(m_params):
        raise ValueError(f"EMA has {len(e_params)} parameters but the model {len(m_params)}")
    torch._foreach_lerp_(e_params, [p.detach() for p in m_params], 1.0 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
    return d
