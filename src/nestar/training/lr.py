"""Learning-rate schedule and AdamW parameter groups (MAR recipe)."""

from __future__ import annotations

import math

import torch


def lr_at(step: int, cfg) -> float:
    """LR for update `step` (0-based): linear warm-up, then constant or cosine to min_lr_ratio * lr.

    A pure function of (step, TrainConfig), so a resumed run follows the same curve.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norm scales and other vectors (ndim < 2) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas)
    )


def apply_hparams(optimizer: torch.optim.Optimizer, cfg) -> None:
    """Re-apply betas / weight decay of the current config after loading a checkpoint's param groups,
    so `--train.weight_decay=...` on a resumed run takes effect (the LR is set every step)."""
    decay, no_decay = optimizer.param_groups
    decay["weight_decay"], no_decay["weight_decay"] = cfg.weight_decay, 0.0
    for g in optimizer.param_groups:
        g["betas"] = tuple(cfg.betas)
